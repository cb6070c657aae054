"""Alembic's environment for the job store. It runs on the connection `service.jobs.migrate` hands it (so URLs with
`%` in their options need no escaping), inside that connection's transaction."""

from __future__ import annotations

from alembic import context

from service.jobs.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
