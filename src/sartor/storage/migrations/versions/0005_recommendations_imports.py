"""Recommendations and imports: the catalog, the model registry, served recommendations and
their outcomes, import jobs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Document = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("item_id", sa.String(200), nullable=False),
        sa.Column("title", sa.Text, nullable=True),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("category", sa.Text, nullable=True),
        sa.Column("brand", sa.String(200), nullable=True),
        sa.Column("price", sa.Float, nullable=True),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("in_stock", sa.Integer, nullable=False),
        sa.Column("tags", Document, nullable=False),
        sa.Column("attributes", Document, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "item_id", name="pk_items"),
    )
    op.create_index("ix_items_workspace_id_updated_at", "items", ["workspace_id", "updated_at"])
    op.create_table(
        "model_versions",
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("slot", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("params", Document, nullable=False),
        sa.Column("metrics", Document, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n_users", sa.BigInteger, nullable=False),
        sa.Column("n_items", sa.BigInteger, nullable=False),
        sa.Column("n_interactions", sa.BigInteger, nullable=False),
        sa.Column("train_seconds", sa.Float, nullable=False),
        sa.Column("trained_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "slot", "version", name="pk_model_versions"),
    )
    op.create_table(
        "recommendations",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("profile_id", sa.String(40), nullable=True),
        sa.Column("slot", sa.String(100), nullable=False),
        sa.Column("models", Document, nullable=False),
        sa.Column("items", Document, nullable=False),
        sa.Column("personalized", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_recommendations"),
    )
    op.create_index(
        "ix_recommendations_workspace_id_created_at",
        "recommendations",
        ["workspace_id", "created_at"],
    )
    op.create_index(
        "ix_recommendations_workspace_id_profile_id",
        "recommendations",
        ["workspace_id", "profile_id"],
    )
    op.create_table(
        "recommendation_outcomes",
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("event_seq", sa.BigInteger, nullable=False),
        sa.Column("recommendation_id", sa.String(40), nullable=False),
        sa.Column("event", sa.String(200), nullable=False),
        sa.Column("item_id", sa.String(200), nullable=True),
        sa.Column("revenue", sa.Float, nullable=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "workspace_id", "event_seq", name="pk_recommendation_outcomes"
        ),
    )
    op.create_index(
        "ix_recommendation_outcomes_workspace_id_recommendation_id",
        "recommendation_outcomes",
        ["workspace_id", "recommendation_id"],
    )
    op.create_table(
        "import_jobs",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("options", Document, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("counts", Document, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_import_jobs"),
    )
    op.create_index(
        "ix_import_jobs_workspace_id_created_at", "import_jobs", ["workspace_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("import_jobs")
    op.drop_table("recommendation_outcomes")
    op.drop_table("recommendations")
    op.drop_table("model_versions")
    op.drop_table("items")
