"""Alembic environment: runs on the connection modelport hands it."""

from __future__ import annotations

from alembic import context

from modelport.registry.database import VERSION_TABLE
from modelport.registry.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  version_table=VERSION_TABLE, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
