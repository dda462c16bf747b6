"""Alembic environment: runs against the engine runbot hands in (no URL in an ini file)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from runbot.store import tables

target_metadata = tables.SQLModel.metadata
config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # PostgreSQL: the caller's session, holding the migration advisory lock
        _migrate(connection)
        return
    engine = config.attributes.get("engine")
    if engine is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
    with engine.connect() as connection:
        _migrate(connection)


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=False,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()


run()
