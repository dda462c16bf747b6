"""Fail closed: when the audit event cannot be written, the action it records does not happen either.

The audit insert is made to fail inside the database (a trigger), not by patching our code, so the test
proves the real transaction boundaries: state change and audit record commit together or not at all.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from runbot.audit import log as audit
from runbot.engine.guards import freeze_state
from runbot.engine.state import APPROVALS, RUNS, STEPS, VOTES
from tests.conftest import write_runbook
from tests.engine.helpers import drive, start

BOOK = """
    name: guarded
    steps:
      - id: look
        type: log
        with: {message: looking}
      - id: act
        type: log
        risk: high
        approval: {approvers: {slack_users: [U024ALICE]}}
        with: {message: acting}
"""


def break_audit(rt):
    """From now on every audit insert fails in the database."""
    with rt.db.tx() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("CREATE TRIGGER audit_down BEFORE INSERT ON audit_events "
                              "BEGIN SELECT RAISE(ABORT, 'audit store unavailable'); END"))
        else:
            conn.execute(text("CREATE FUNCTION audit_down() RETURNS trigger LANGUAGE plpgsql AS "
                              "$$ BEGIN RAISE EXCEPTION 'audit store unavailable'; END $$"))
            conn.execute(text("CREATE TRIGGER audit_down BEFORE INSERT ON audit_events "
                              "FOR EACH ROW EXECUTE FUNCTION audit_down()"))


def n(rt, table, *where):
    with rt.db.read() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


@pytest.fixture
def waiting(db_url, make_runtime, runbooks_dir):
    """A run parked on its approval, with the audit store then taken away."""
    write_runbook(runbooks_dir, "guarded", BOOK)
    rt = make_runtime(db_url)
    run_id = start(rt, "guarded")
    drive(rt, run_id)
    (appr,) = rt.engine.pending_approvals(run_id)
    before = n(rt, audit.EVENTS)
    break_audit(rt)
    return rt, run_id, appr, before


def test_an_approval_is_not_recorded_when_its_audit_event_cannot_be(waiting):
    rt, run_id, appr, events = waiting
    # the driver's own error (the audit insert goes straight to the DBAPI cursor)
    with pytest.raises(Exception, match="audit store unavailable"):
        rt.engine.vote(appr["id"], "U024ALICE", True, user_name="alice")
    assert rt.engine.pending_approvals(run_id)[0]["status"] == "pending"
    assert n(rt, VOTES) == 0 and n(rt, audit.EVENTS) == events


def test_no_run_starts_and_no_freeze_or_cancel_takes_effect_without_its_audit_event(waiting):
    rt, run_id, _, events = waiting
    runs = n(rt, RUNS)
    with pytest.raises(Exception, match="audit store unavailable"):
        start(rt, "guarded")
    with pytest.raises(Exception, match="audit store unavailable"):
        rt.engine.set_freeze(True, "U024ALICE", "maintenance")
    with pytest.raises(Exception, match="audit store unavailable"):
        rt.engine.cancel(run_id, "U024ALICE", "no longer needed")
    assert n(rt, RUNS) == runs and freeze_state(rt.db) is None
    with rt.db.read() as conn:
        assert conn.execute(select(RUNS.c.status).where(RUNS.c.id == run_id)).scalar_one() == "waiting"
    assert n(rt, audit.EVENTS) == events


def test_the_engine_does_not_advance_a_run_whose_audit_events_cannot_be_written(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "guarded", BOOK)
    rt = make_runtime(db_url)
    run_id = start(rt, "guarded")
    break_audit(rt)
    drive(rt, run_id, max_wait=0.5)
    with rt.db.read() as conn:
        assert conn.execute(select(RUNS.c.status).where(RUNS.c.id == run_id)).scalar_one() == "pending"
    assert n(rt, STEPS) == 0 and n(rt, APPROVALS) == 0
