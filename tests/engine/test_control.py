"""Human commands (votes, freeze) queue their Slack messages in the same transaction, whoever issues them."""

from __future__ import annotations

from sqlalchemy import select

from runbot.domain import RunStatus
from runbot.engine.state import OUTBOX
from tests.engine.helpers import drive, start
from tests.engine.test_runner import approval_book, pending


def queued(rt) -> list[tuple[str, dict]]:
    with rt.db.read() as conn:
        return [(r.topic, r.payload) for r in conn.execute(select(OUTBOX.c.topic, OUTBOX.c.payload)
                                                           .order_by(OUTBOX.c.id))]  # fmt: skip


def test_a_break_glass_vote_and_a_freeze_from_the_cli_reach_slack(db_url, make_runtime, runbooks_dir):
    approval_book(runbooks_dir, min_approvals=2)
    rt = make_runtime(db_url, slack_bot_token="xoxb-configured-elsewhere",  # e.g. `runbot runs approve` in a shell
                      approval_cli_any_host_user=True)  # the step lists no cli_users
    run_id = start(rt, "fix", requester="U_REQ")
    assert drive(rt, run_id) is RunStatus.WAITING
    (appr,) = pending(rt, run_id)
    before = len(queued(rt))
    rt.engine.vote(appr["id"], "cli:alice", True, user_name="alice", break_glass=True)
    rt.engine.set_freeze(True, "cli:bob", "db failover in progress")
    rt.engine.set_freeze(False, "cli:bob")
    assert queued(rt)[before:] == [
        ("approval.voted", {"run_id": run_id, "approval_id": appr["id"]}),
        ("freeze.on", {"actor": "cli:bob", "reason": "db failover in progress"}),
        ("freeze.off", {"actor": "cli:bob", "reason": ""}),
    ]


def test_without_slack_nothing_is_queued(db_url, make_runtime, runbooks_dir):
    approval_book(runbooks_dir)
    rt = make_runtime(db_url, approval_cli_any_host_user=True)
    run_id = start(rt, "fix", requester="U_REQ")
    drive(rt, run_id)
    (appr,) = pending(rt, run_id)
    rt.engine.vote(appr["id"], "cli:alice", True)
    rt.engine.set_freeze(True, "cli:bob", "maintenance")
    assert queued(rt) == []


def test_human_decisions_name_the_runbook_version_the_run_started_with(db_url, make_runtime, runbooks_dir):
    from runbot.store import tables

    events = tables.AuditEvent.__table__
    approval_book(runbooks_dir)
    rt = make_runtime(db_url)
    version = rt.catalog.get("fix").short_version
    voted, cancelled = start(rt, "fix", requester="U_REQ"), start(rt, "fix", requester="U_REQ")
    drive(rt, voted)
    (appr,) = pending(rt, voted)
    rt.engine.vote(appr["id"], "U_OK", True, user_name="alice")
    rt.engine.cancel(cancelled, "cli:bob", "not needed")
    with rt.db.read() as conn:
        named = dict(conn.execute(select(events.c.action, events.c.runbook_version)
                                  .where(events.c.action.in_(["approval.approved", "run.finished"]))).all())  # fmt: skip
    assert named == {"approval.approved": version, "run.finished": version}
