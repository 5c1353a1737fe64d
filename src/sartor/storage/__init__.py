"""Storage: one schema (SQLAlchemy Core) for SQLite and PostgreSQL, migrations, stores."""

from sartor.storage.db import make_engine, migrate, write_tx
from sartor.storage.tables import metadata

__all__ = ["make_engine", "metadata", "migrate", "write_tx"]
