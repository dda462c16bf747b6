"""Migrations build exactly the schema the models describe, on both backends, and re-run harmlessly."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from runbot.store.db import Database
from runbot.store.tables import SQLModel


def test_upgrade_matches_the_models_and_is_idempotent(db_url):
    db = Database(db_url)
    try:
        db.upgrade()
        db.upgrade()
        assert db.at_head()
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == [], diff
    finally:
        db.dispose()
