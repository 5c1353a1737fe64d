"""Alembic environment: runs on the connection handed over by ``sartor.storage.db.migrate``."""

from alembic import context

from sartor.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `sartor migrate` or sartor.storage.db.migrate()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
