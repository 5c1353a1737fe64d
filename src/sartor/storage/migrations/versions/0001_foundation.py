"""Foundation: workspaces, api keys, the event log, identities, profiles, suppressions.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Document = sa.JSON().with_variant(JSONB(), "postgresql")
SeqInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("consent_mode", sa.String(16), nullable=False),
        sa.Column("settings", Document, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_workspaces"),
        sa.UniqueConstraint("name", name="uq_workspaces_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40)),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["workspaces.id"], name="fk_api_keys_workspace_id_workspaces"
        ),
    )
    op.create_index("ix_api_keys_workspace_id", "api_keys", ["workspace_id"])
    op.create_table(
        "events",
        sa.Column("seq", SeqInt, autoincrement=True),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("message_id", sa.String(100), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("event", sa.String(200), nullable=True),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("anonymous_id", sa.String(255), nullable=True),
        sa.Column("profile_id", sa.String(40), nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("payload", Document, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_events"),
        sa.UniqueConstraint("workspace_id", "message_id", name="uq_events_workspace_id_message_id"),
    )
    op.create_index("ix_events_workspace_id_profile_id", "events", ["workspace_id", "profile_id"])
    op.create_table(
        "identities",
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("profile_id", sa.String(40), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "kind", "value", name="pk_identities"),
    )
    op.create_index(
        "ix_identities_workspace_id_profile_id", "identities", ["workspace_id", "profile_id"]
    )
    op.create_table(
        "profiles",
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("profile_id", sa.String(40), nullable=False),
        sa.Column("consent", Document, nullable=False),
        sa.Column("traits", Document, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "profile_id", name="pk_profiles"),
    )
    op.create_table(
        "suppressions",
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "id_hash", name="pk_suppressions"),
    )


def downgrade() -> None:
    for table in ("suppressions", "profiles", "identities", "events", "api_keys", "workspaces"):
        op.drop_table(table)
