"""A step's commit is all or nothing and keeps the audit chain whole, whoever else appends to it.

On PostgreSQL the engine commits a step in one round trip against the audit head it last wrote; these
are the cases where that guess is wrong. The same tests run on SQLite, where every commit locks first.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from sqlalchemy import select, update

from runbot.audit import log as audit
from runbot.domain import RunStatus, StepKind
from runbot.engine.runner import Engine
from runbot.engine.state import RUNS, STEPS, LeaseLost
from runbot.steps.base import Params, Step, StepContext, StepResult
from runbot.store import tables
from runbot.store.types import utcnow
from tests.conftest import write_runbook
from tests.engine.helpers import count, drive, start

EVENTS = tables.AuditEvent.__table__


class Nothing(Params):
    pass


class OtherWriterStep(Step[Nothing]):
    """Appends an audit event from another connection while the step runs, as a CLI command or replica would."""

    type = "test.other_writer"
    kind = StepKind.DIAGNOSTIC
    Params = Nothing
    db: ClassVar[Any] = None

    async def run(self, params: Nothing, ctx: StepContext) -> StepResult:
        def elsewhere() -> None:
            with OtherWriterStep.db.tx() as conn:
                audit.append(conn, [audit.Event("test.elsewhere", actor="someone-else", run_id=ctx.run_id)])

        await asyncio.to_thread(elsewhere)
        return StepResult(summary="someone else wrote to the audit log meanwhile")


class ChartStep(Step[Nothing]):
    """Leaves an artifact (as prometheus.graph does) and fails once, so its commits carry artifacts and a timer."""

    type = "test.chart"
    kind = StepKind.DIAGNOSTIC
    Params = Nothing
    calls: ClassVar[int] = 0

    async def run(self, params: Nothing, ctx: StepContext) -> StepResult:
        ChartStep.calls += 1
        ctx.attach(f"chart-{ChartStep.calls}.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
        if ChartStep.calls == 1:
            from runbot.steps.base import StepError

            raise StepError("the first try fails", retryable=True)
        return StepResult(output={"points": 360}, summary="charted")


def verified(rt) -> audit.VerifyResult:
    with rt.db.read() as conn:
        result = audit.verify_db(conn)
    assert result.ok, result.problem
    return result


BOOK = """
    name: chain
    steps:
      - id: a
        type: noop
      - id: meanwhile
        type: test.other_writer
      - id: b
        type: noop
      - id: c
        type: noop
"""


def test_an_event_appended_by_someone_else_between_steps_keeps_the_chain_whole(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "chain", BOOK)
    rt = make_runtime(db_url)
    OtherWriterStep.db = rt.db
    rt.registry.register(OtherWriterStep)
    rt.catalog.reload()
    for _ in range(2):
        assert drive(rt, start(rt, "chain")) is RunStatus.SUCCEEDED
    result = verified(rt)
    assert count(rt, EVENTS, EVENTS.c.action == "test.elsewhere") == 2
    assert count(rt, EVENTS, EVENTS.c.action == "step.succeeded") == 8
    assert result.count == count(rt, EVENTS)
    if not rt.db.is_sqlite:  # the step after the outside write refreshed this process's view of the head
        assert rt.db.audit_cache.head == (result.head_seq, result.head_hash)


def test_a_worker_that_lost_its_lease_writes_nothing_at_all(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "one", "name: one\nsteps:\n  - id: a\n    type: noop\n")
    rt = make_runtime(db_url)
    run_id = start(rt, "one")
    old = rt.engine.claim(run_id)
    assert old is not None
    state = rt.engine._load(run_id, old)
    rt.engine._commit(state, run={"reason": "still ours"}, events=[state.event("test.ours")])  # warms the head
    with rt.db.tx() as conn:
        conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    other = Engine(rt.settings, rt.db, rt.registry, rt.secrets, owner="other")
    assert other.claim(run_id) is not None
    before = verified(rt)
    row = {"run_id": run_id, "step_id": "a", "step_type": "noop", "attempt": 1, "status": "succeeded",
           "idempotent": True, "interrupted": False, "idempotency_key": f"{run_id}:a:1", "started_at": utcnow()}  # fmt: skip
    with pytest.raises(LeaseLost):
        rt.engine._commit(state, run={"reason": "late write"}, step_insert=row, events=[state.event("test.late")],
                          outbox=[("step.succeeded", {"run_id": run_id})], relaxed=True)  # fmt: skip
    after = verified(rt)
    assert (after.head_seq, after.head_hash) == (before.head_seq, before.head_hash)  # no event, head unmoved
    assert count(rt, STEPS, STEPS.c.run_id == run_id) == 0
    assert count(rt, EVENTS, EVENTS.c.action == "test.late") == 0
    with rt.db.read() as conn:
        assert conn.execute(select(RUNS.c.reason).where(RUNS.c.id == run_id)).scalar_one() == "still ours"


def test_two_processes_driving_runs_at_once_share_one_whole_chain(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "five", "name: five\nsteps:\n" + "".join(
        f"  - id: s{i}\n    type: noop\n" for i in range(5)))  # fmt: skip
    one = make_runtime(db_url)
    two = make_runtime(db_url)  # its own Database: another process as far as connections and caches go
    runs = {id(rt): [start(rt, "five") for _ in range(6)] for rt in (one, two)}
    errors: list[BaseException] = []

    def work(rt) -> None:
        try:
            for run_id in runs[id(rt)]:
                assert drive(rt, run_id) is RunStatus.SUCCEEDED
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(rt,)) for rt in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    result = verified(one)
    assert count(one, EVENTS, EVENTS.c.action == "step.succeeded") == 60
    assert result.count == count(one, EVENTS)


def test_a_commit_with_artifacts_a_retry_timer_and_slack_messages_stores_them_all(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "chart", """
        name: chart
        steps:
          - id: graph
            type: test.chart
            retry: {attempts: 2, initial: 0.05, max: 0.05}
    """)
    rt = make_runtime(db_url, slack_bot_token="xoxb-configured")  # the outbox is on
    rt.registry.register(ChartStep)
    rt.catalog.reload()
    ChartStep.calls = 0
    run_id = start(rt, "chart")
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
    artifacts = tables.Artifact.__table__
    timers = tables.Timer.__table__
    outbox = tables.Outbox.__table__
    with rt.db.read() as conn:
        stored = conn.execute(select(artifacts.c.name, artifacts.c.data).order_by(artifacts.c.id)).all()
        retry = conn.execute(select(timers.c.purpose).where(timers.c.run_id == run_id)).scalars().all()
        topics = conn.execute(select(outbox.c.topic).where(outbox.c.run_id == run_id)).scalars().all()
    assert [n for n, _ in stored] == ["chart-1.png", "chart-2.png"]
    assert all(bytes(d).endswith(bytes(range(256))) for _, d in stored)  # binary survives byte for byte
    assert retry == ["retry"]
    assert topics.count("step.failed") == 1 and topics.count("step.succeeded") == 1
    verified(rt)
