"""Events by profile in log order: the index on ``(workspace_id, profile_id)`` gains ``seq``.

A fold reads a profile's events after its watermark (``profile_id = ? AND seq > ?``). On
PostgreSQL the old index found every event of the profile and the heap filtered them by
``seq``, so each fold cost more as a person's history grew; with ``seq`` in the index the
scan starts at the watermark. (SQLite's index already ended with the rowid, which is
``seq``, so it only changes name there.)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_events_workspace_id_profile_id_seq", "events", ["workspace_id", "profile_id", "seq"]
    )
    op.drop_index("ix_events_workspace_id_profile_id", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_workspace_id_profile_id", "events", ["workspace_id", "profile_id"])
    op.drop_index("ix_events_workspace_id_profile_id_seq", table_name="events")
