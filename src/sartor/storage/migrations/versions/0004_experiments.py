"""Experiments: definitions, first exposures, sticky bucket documents.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Document = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("slot", sa.String(100), nullable=True),
        sa.Column("variations", Document, nullable=False),
        sa.Column("coverage", sa.Float, nullable=False),
        sa.Column("targeting", Document, nullable=True),
        sa.Column("hash_attribute", sa.String(32), nullable=False),
        sa.Column("fallback_attribute", sa.String(32), nullable=True),
        sa.Column("seed", sa.String(200), nullable=False),
        sa.Column("hash_version", sa.Integer, nullable=False),
        sa.Column("namespace", Document, nullable=True),
        sa.Column("sticky", sa.Integer, nullable=False),
        sa.Column("bucket_version", sa.Integer, nullable=False),
        sa.Column("min_bucket_version", sa.Integer, nullable=False),
        sa.Column("goal", Document, nullable=True),
        sa.Column("guardrails", Document, nullable=False),
        sa.Column("bandit", Document, nullable=True),
        sa.Column("analysis", Document, nullable=False),
        sa.Column("start_at", sa.BigInteger, nullable=True),
        sa.Column("end_at", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "key", name="pk_experiments"),
    )
    op.create_table(
        "exposures",
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("experiment_key", sa.String(100), nullable=False),
        sa.Column("profile_id", sa.String(40), nullable=False),
        sa.Column("variation_key", sa.String(100), nullable=False),
        sa.Column("first_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "workspace_id", "experiment_key", "profile_id", name="pk_exposures"
        ),
    )
    op.create_index(
        "ix_exposures_workspace_id_profile_id", "exposures", ["workspace_id", "profile_id"]
    )
    op.create_table(
        "sticky_assignments",
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("attribute_name", sa.String(32), nullable=False),
        sa.Column("value_hash", sa.String(64), nullable=False),
        sa.Column("profile_id", sa.String(40), nullable=True),
        sa.Column("assignments", Document, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "workspace_id", "attribute_name", "value_hash", name="pk_sticky_assignments"
        ),
    )
    op.create_index(
        "ix_sticky_assignments_workspace_id_profile_id",
        "sticky_assignments",
        ["workspace_id", "profile_id"],
    )


def downgrade() -> None:
    for table in ("sticky_assignments", "exposures", "experiments"):
        op.drop_table(table)
