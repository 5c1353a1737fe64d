"""The schema: SQLAlchemy Core tables, one definition for SQLite and PostgreSQL.

Times are integer epoch milliseconds (UTC) so both dialects store and compare them the same
way and the hot insert path does no datetime formatting. Documents are JSON on SQLite and
JSONB on PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Document = JSON().with_variant(JSONB(), "postgresql")
# SQLite only gives AUTOINCREMENT-style rowids to a column declared exactly INTEGER.
SeqInt = BigInteger().with_variant(Integer(), "sqlite")

workspaces = Table(
    "workspaces",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("consent_mode", String(16), nullable=False),
    Column("settings", Document, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("workspace_id", String(40), ForeignKey("workspaces.id"), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    Index(None, "workspace_id"),
)

events = Table(
    "events",
    metadata,
    Column("seq", SeqInt, primary_key=True, autoincrement=True),
    Column("workspace_id", String(40), nullable=False),
    Column("message_id", String(100), nullable=False),
    Column("type", String(16), nullable=False),
    Column("event", String(200), nullable=True),
    Column("category", String(64), nullable=False),
    Column("user_id", String(255), nullable=True),
    Column("anonymous_id", String(255), nullable=True),
    Column("profile_id", String(40), nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    Column("payload", Document, nullable=False),
    UniqueConstraint("workspace_id", "message_id"),
    # A profile's events in log order: folds read them after a watermark seq.
    Index(None, "workspace_id", "profile_id", "seq"),
)

identities = Table(
    "identities",
    metadata,
    Column("workspace_id", String(40), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("value", String(255), nullable=False),
    Column("profile_id", String(40), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("workspace_id", "kind", "value"),
    Index(None, "workspace_id", "profile_id"),
)

profiles = Table(
    "profiles",
    metadata,
    Column("workspace_id", String(40), nullable=False),
    Column("profile_id", String(40), nullable=False),
    Column("consent", Document, nullable=False),
    Column("traits", Document, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    # Fold state (sartor.profiles.folds); derived from the log, rebuilt at will.
    Column("computed", Document, nullable=True),
    # Highest event seq folded in; NULL means "fold everything again" (after a merge).
    Column("last_seq", BigInteger, nullable=True),
    # The hot-user refresh: preferences recomputed at a moment, with that moment.
    Column("refreshed", Document, nullable=True),
    PrimaryKeyConstraint("workspace_id", "profile_id"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("workspace_id", String(40), nullable=False),
    Column("id_hash", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("workspace_id", "id_hash"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

segments = Table(
    "segments",
    metadata,
    Column("workspace_id", String(40), nullable=False),
    Column("key", String(200), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),  # rule, rfm, cluster
    Column("definition", Document, nullable=True),
    Column("description", Text, nullable=False),
    Column("time_based", Integer, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("evaluated_at", BigInteger, nullable=True),
    PrimaryKeyConstraint("workspace_id", "key"),
)

memberships = Table(
    "memberships",
    metadata,
    Column("workspace_id", String(40), nullable=False),
    Column("segment_key", String(200), nullable=False),
    Column("profile_id", String(40), nullable=False),
    Column("since", BigInteger, nullable=False),
    Column("data", Document, nullable=True),
    PrimaryKeyConstraint("workspace_id", "segment_key", "profile_id"),
    Index(None, "workspace_id", "profile_id"),
)

segment_sizes = Table(
    "segment_sizes",
    metadata,
    Column("workspace_id", String(40), nullable=False),
    Column("segment_key", String(200), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    PrimaryKeyConstraint("workspace_id", "segment_key", "at"),
)

cluster_runs = Table(
    "cluster_runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("workspace_id", String(40), nullable=False),
    Column("algorithm", String(32), nullable=False),
    Column("params", Document, nullable=False),
    Column("metrics", Document, nullable=False),
    Column("clusters", Document, nullable=False),
    Column("n_profiles", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index(None, "workspace_id", "created_at"),
)

cluster_assignments = Table(
    "cluster_assignments",
    metadata,
    Column("run_id", String(40), nullable=False),
    Column("profile_id", String(40), nullable=False),
    Column("label", Integer, nullable=False),
    PrimaryKeyConstraint("run_id", "profile_id"),
)

experiments = Table(
    "experiments",
    metadata,
    Column("workspace_id", String(40), nullable=False),
    Column("key", String(100), nullable=False),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("status", String(16), nullable=False),  # draft, running, stopped
    Column("kind", String(16), nullable=False),  # ab, bandit
    Column("slot", String(100), nullable=True),
    Column("variations", Document, nullable=False),  # [{key, name, weight, payload}]
    Column("coverage", Float, nullable=False),
    Column("targeting", Document, nullable=True),  # {segments, rule, condition}
    Column("hash_attribute", String(32), nullable=False),
    Column("fallback_attribute", String(32), nullable=True),
    Column("seed", String(200), nullable=False),
    Column("hash_version", Integer, nullable=False),
    Column("namespace", Document, nullable=True),  # [id, start, end]
    Column("sticky", Integer, nullable=False),
    Column("bucket_version", Integer, nullable=False),
    Column("min_bucket_version", Integer, nullable=False),
    Column("goal", Document, nullable=True),
    Column("guardrails", Document, nullable=False),
    Column("bandit", Document, nullable=True),
    Column("analysis", Document, nullable=False),
    Column("start_at", BigInteger, nullable=True),
    Column("end_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("workspace_id", "key"),
)

exposures = Table(
    "exposures",
    metadata,
    Column("workspace_id", String(40), nullable=False),
    Column("experiment_key", String(100), nullable=False),
    Column("profile_id", String(40), nullable=False),
    Column("variation_key", String(100), nullable=False),
    Column("first_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("workspace_id", "experiment_key", "profile_id"),
    Index(None, "workspace_id", "profile_id"),
)

sticky_assignments = Table(
    "sticky_assignments",
    metadata,
    Column("workspace_id", String(40), nullable=False),
    Column("attribute_name", String(32), nullable=False),
    Column("value_hash", String(64), nullable=False),  # keyed hash of the attribute value
    Column("profile_id", String(40), nullable=True),
    Column("assignments", Document, nullable=False),  # {"<experiment>__<version>": variation}
    Column("updated_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("workspace_id", "attribute_name", "value_hash"),
    Index(None, "workspace_id", "profile_id"),
)

items = Table(
    "items",
    metadata,
    Column("workspace_id", String(40), nullable=False),
    Column("item_id", String(200), nullable=False),
    Column("title", Text, nullable=True),
    Column("description", Text, nullable=True),
    Column("category", Text, nullable=True),  # a path: "Home > Kitchen > Mugs"
    Column("brand", String(200), nullable=True),
    Column("price", Float, nullable=True),
    Column("currency", String(3), nullable=True),
    Column("in_stock", Integer, nullable=False),
    Column("tags", Document, nullable=False),
    Column("attributes", Document, nullable=False),
    Column("source", String(16), nullable=False),  # catalog (declared) or events (seen)
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("workspace_id", "item_id"),
    Index(None, "workspace_id", "updated_at"),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("workspace_id", String(40), nullable=False),
    Column("slot", String(100), nullable=False),  # the model's name in the registry, e.g. "als"
    Column("version", Integer, nullable=False),
    Column("kind", String(40), nullable=False),  # the model class, e.g. "ALS"
    Column("params", Document, nullable=False),
    Column("metrics", Document, nullable=False),
    Column("path", Text, nullable=False),  # artifact folder, relative to SARTOR_HOME/models
    Column("status", String(16), nullable=False),  # active, retired, failed
    Column("n_users", BigInteger, nullable=False),
    Column("n_items", BigInteger, nullable=False),
    Column("n_interactions", BigInteger, nullable=False),
    Column("train_seconds", Float, nullable=False),
    Column("trained_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("workspace_id", "slot", "version"),
)

recommendations = Table(
    "recommendations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("workspace_id", String(40), nullable=False),
    Column("profile_id", String(40), nullable=True),
    Column("slot", String(100), nullable=False),
    Column("models", Document, nullable=False),  # {"als": 3, "popularity": 1}
    Column("items", Document, nullable=False),  # the item ids served, in order
    Column("personalized", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index(None, "workspace_id", "created_at"),
    Index(None, "workspace_id", "profile_id"),
)

recommendation_outcomes = Table(
    "recommendation_outcomes",
    metadata,
    Column("workspace_id", String(40), nullable=False),
    Column("event_seq", BigInteger, nullable=False),
    Column("recommendation_id", String(40), nullable=False),
    Column("event", String(200), nullable=False),  # Product Clicked, Order Completed, ...
    Column("item_id", String(200), nullable=True),
    Column("revenue", Float, nullable=True),
    Column("at", BigInteger, nullable=False),
    PrimaryKeyConstraint("workspace_id", "event_seq"),
    Index(None, "workspace_id", "recommendation_id"),
)

import_jobs = Table(
    "import_jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("workspace_id", String(40), nullable=False),
    Column("kind", String(16), nullable=False),  # events, profiles, items
    Column("filename", Text, nullable=False),
    Column("options", Document, nullable=False),  # mapping, format, ...
    Column("status", String(16), nullable=False),  # queued, running, done, failed
    Column("counts", Document, nullable=False),  # read, imported, rejected, by reason
    Column("error", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index(None, "workspace_id", "created_at"),
)
