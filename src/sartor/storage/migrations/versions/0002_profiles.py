"""Profiles: fold state, log watermark, hot refresh; updater checkpoints.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Document = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("computed", Document, nullable=True))
        batch.add_column(sa.Column("last_seq", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("refreshed", Document, nullable=True))
    op.create_table(
        "checkpoints",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_checkpoints"),
    )


def downgrade() -> None:
    op.drop_table("checkpoints")
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("refreshed")
        batch.drop_column("last_seq")
        batch.drop_column("computed")
