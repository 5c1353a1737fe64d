"""Segments: definitions, memberships, size history, clustering runs and assignments.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Document = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("definition", Document, nullable=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("time_based", sa.Integer, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("evaluated_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("workspace_id", "key", name="pk_segments"),
    )
    op.create_table(
        "memberships",
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("segment_key", sa.String(200), nullable=False),
        sa.Column("profile_id", sa.String(40), nullable=False),
        sa.Column("since", sa.BigInteger, nullable=False),
        sa.Column("data", Document, nullable=True),
        sa.PrimaryKeyConstraint("workspace_id", "segment_key", "profile_id", name="pk_memberships"),
    )
    op.create_index(
        "ix_memberships_workspace_id_profile_id", "memberships", ["workspace_id", "profile_id"]
    )
    op.create_table(
        "segment_sizes",
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("segment_key", sa.String(200), nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "segment_key", "at", name="pk_segment_sizes"),
    )
    op.create_table(
        "cluster_runs",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("algorithm", sa.String(32), nullable=False),
        sa.Column("params", Document, nullable=False),
        sa.Column("metrics", Document, nullable=False),
        sa.Column("clusters", Document, nullable=False),
        sa.Column("n_profiles", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cluster_runs"),
    )
    op.create_index(
        "ix_cluster_runs_workspace_id_created_at", "cluster_runs", ["workspace_id", "created_at"]
    )
    op.create_table(
        "cluster_assignments",
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("profile_id", sa.String(40), nullable=False),
        sa.Column("label", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "profile_id", name="pk_cluster_assignments"),
    )


def downgrade() -> None:
    for table in (
        "cluster_assignments",
        "cluster_runs",
        "segment_sizes",
        "memberships",
        "segments",
    ):
        op.drop_table(table)
