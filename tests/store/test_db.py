"""The engine's own connection (raw_tx): a failed transaction leaves nothing behind and the next one works,
also after the database server dropped the connection."""

from __future__ import annotations

import psycopg
import pytest

from runbot.store.db import Database


@pytest.fixture
def db(db_url):
    d = Database(db_url)
    d.upgrade()
    yield d
    d.dispose()


def controls(db: Database) -> list[str]:
    with db.raw_tx() as raw:
        cur = raw.send("SELECT key FROM controls ORDER BY key", {})
    return [r[0] for r in cur.fetchall()]


def test_a_failed_statement_rolls_the_whole_transaction_back_and_the_next_one_works(db):
    with db.raw_tx() as raw:
        raw.insert("controls", {"key": "a", "value": "{}", "updated_at": "2026-01-01 00:00:00"})
    with pytest.raises(Exception, match=r"(?i)unique|constraint"), db.raw_tx() as raw:
        raw.insert("controls", {"key": "b", "value": "{}", "updated_at": "2026-01-01 00:00:00"})
        raw.insert("controls", {"key": "a", "value": "{}", "updated_at": "2026-01-01 00:00:00"})
    assert controls(db) == ["a"]  # b went with the failed transaction


@pytest.mark.integration
def test_after_the_server_drops_the_connection_one_transaction_fails_and_the_next_reconnects(pg_url):
    db = Database(pg_url)
    try:
        db.upgrade()
        with db.raw_tx() as raw:
            cur = raw.send("SELECT pg_backend_pid()", {})
        pid = cur.fetchone()[0]
        with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError), db.raw_tx() as raw:
            raw.insert("controls", {"key": "lost", "value": "{}", "updated_at": "2026-01-01 00:00:00"})
        with db.raw_tx() as raw:
            raw.insert("controls", {"key": "kept", "value": "{}", "updated_at": "2026-01-01 00:00:00"})
        assert controls(db) == ["kept"]
    finally:
        db.dispose()
