"""Three replicas started at the same moment on an empty PostgreSQL database (a fresh Helm install with
replicas: 3): all of them become ready, and exactly one of them creates the schema while the others wait on
the migration advisory lock."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from runbot.store.db import Database
from tests.support.runbot_serve import Replica, clean_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_three_replicas_on_an_empty_database_all_become_ready_and_migrate_once(pg_url, tmp_path, runbooks_dir):
    env = clean_env(database_url=pg_url, data_dir=str(tmp_path / "data"), runbooks_dir=str(runbooks_dir),
                    log_level="INFO", engine_loops_pg="1")
    replicas = [Replica(name, env, tmp_path) for name in ("r1", "r2", "r3")]
    try:
        for r in replicas:
            r.launch()  # all three before any is waited for
        for r in replicas:
            r.wait_ready(90)
        logs = [r.log_text() for r in replicas]
    finally:
        for r in replicas:
            r.stop()

    migrated = [i for i, text in enumerate(logs) if "migrating the database schema" in text]
    assert len(migrated) == 1, logs
    assert not any("Traceback" in text or "error" in text.lower() for text in logs), logs
    eng = sa.create_engine(pg_url)
    try:
        with eng.connect() as c:
            versions = c.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    finally:
        eng.dispose()
    assert versions == [Database(pg_url).head_revision()]


def test_a_second_upgrade_after_the_lock_sees_the_schema_at_head_and_does_nothing(pg_url):
    first, second = Database(pg_url), Database(pg_url)
    try:
        first.upgrade()
        second.upgrade()  # takes the lock, reads the version, returns
        assert second.at_head()
    finally:
        first.dispose()
        second.dispose()
