"""The audit trail is a hash chain: any edited, deleted or truncated event is found and named."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from runbot.audit import log as audit
from runbot.cli.main import app
from tests.conftest import write_runbook
from tests.engine.helpers import drive, start


@pytest.fixture
def trail(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "a", """
        name: a
        steps:
          - id: one
            type: log
            with: {message: one}
          - id: two
            type: log
            with: {message: two}
    """)
    rt = make_runtime(db_url)
    drive(rt, start(rt, "a"))
    drive(rt, start(rt, "a"))
    return rt


def verify(rt):
    with rt.db.read() as conn:
        return audit.verify_db(conn)


def test_an_untouched_log_verifies(trail):
    result = verify(trail)
    assert result.ok and result.count == 14 and result.head_seq == 14


def test_an_edited_row_is_named(trail):
    with trail.db.tx() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 5"))
    result = verify(trail)
    assert not result.ok and result.broken_seq == 5
    assert "event 5" in result.problem and "modified" in result.problem


def test_an_edited_row_with_a_recomputed_hash_breaks_the_next_link(trail):
    with trail.db.read() as conn:
        row = dict(conn.execute(text("SELECT * FROM audit_events WHERE seq = 7")).mappings().one())
    row["outcome"] = "failed"
    row["ts"] = row["ts"]
    forged = audit.event_hash({**row, "details": __import__("json").loads(row["details"]) if isinstance(row["details"], str) else row["details"]})
    with trail.db.tx() as conn:
        conn.execute(text("UPDATE audit_events SET outcome = 'failed', hash = :h WHERE seq = 7"), {"h": forged})
    result = verify(trail)
    assert not result.ok and result.broken_seq in (7, 8)


def test_a_deleted_row_is_named(trail):
    with trail.db.tx() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq = 9"))
    result = verify(trail)
    assert not result.ok and result.broken_seq == 9 and "missing" in result.problem


def test_removing_the_last_events_is_caught_by_the_head(trail):
    with trail.db.tx() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq >= 13"))
    result = verify(trail)
    assert not result.ok and "removed from the end" in result.problem


def test_cli_audit_verify_exit_codes(trail, monkeypatch, tmp_path):
    monkeypatch.setenv("RUNBOT_DATABASE_URL", trail.settings.effective_database_url)
    monkeypatch.setenv("RUNBOT_DATA_DIR", str(tmp_path / "data"))
    ok = CliRunner().invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0 and "audit chain OK: 14 event(s)" in ok.output
    with trail.db.tx() as conn:
        conn.execute(text("UPDATE audit_events SET action = 'run.deleted' WHERE seq = 3"))
    from runbot.cli.main import main

    monkeypatch.setattr("sys.argv", ["runbot", "audit", "verify"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
