"""The run engine, on SQLite and PostgreSQL alike: steps, retries, compensation, approvals, leases, guards."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import ClassVar

import pytest
from sqlalchemy import select, text, update

from runbot.audit import log as audit
from runbot.domain import Decision, RunStatus, StepKind
from runbot.engine.control import CommandError
from runbot.engine.runner import Engine
from runbot.engine.state import APPROVALS, RUNS
from runbot.steps.base import Params, Step, StepContext, StepResult
from runbot.store.types import utcnow
from tests.conftest import write_runbook
from tests.engine.helpers import drive, run_row, start, steps

pytestmark = pytest.mark.usefixtures("db_url")


def statuses(rt, run_id):
    return [(s["step_id"], s["attempt"], s["status"]) for s in steps(rt, run_id)]


def test_a_run_goes_through_every_step_in_order_and_records_outputs(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "seq", """
        name: seq
        params:
          who: {type: string, default: world}
        steps:
          - id: hello
            type: log
            with: {message: "hello {{ params.who }}"}
          - id: again
            type: log
            with: {message: "{{ steps.hello.message }} again"}
    """)
    rt = make_runtime(db_url)
    run_id = start(rt, "seq", params={"who": "sre"})
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
    rows = steps(rt, run_id)
    assert [(r["step_id"], r["status"]) for r in rows] == [("hello", "succeeded"), ("again", "succeeded")]
    assert rows[1]["output"]["message"] == "hello sre again"
    assert rows[0]["idempotency_key"] == f"{run_id}:hello:1"
    with rt.db.read() as conn:
        actions = [e["action"] for e in audit.iter_db_records(conn) if e["run_id"] == run_id]
        assert audit.verify_db(conn).ok
    assert actions == ["run.created", "run.started", "step.started", "step.succeeded", "step.started",
                       "step.succeeded", "run.finished"]


def test_when_false_skips_the_step_and_later_steps_see_it(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "cond", """
        name: cond
        params:
          go: {type: boolean, default: false}
        steps:
          - id: maybe
            type: log
            when: "{{ params.go }}"
            with: {message: ran}
          - id: after
            type: log
            with: {message: "maybe was {{ steps.maybe.outcome }}"}
    """)
    rt = make_runtime(db_url)
    run_id = start(rt, "cond")
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
    assert statuses(rt, run_id) == [("maybe", 1, "skipped"), ("after", 1, "succeeded")]
    assert steps(rt, run_id)[1]["output"]["message"] == "maybe was skipped"


def test_retries_back_off_then_succeed(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "flaky", """
        name: flaky
        steps:
          - id: flaky
            type: fail
            with: {times: 2}
            retry: {attempts: 3, initial: 50ms, max: 200ms}
    """)
    rt = make_runtime(db_url)
    run_id = start(rt, "flaky")
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
    assert statuses(rt, run_id) == [("flaky", 1, "failed"), ("flaky", 2, "failed"), ("flaky", 3, "succeeded")]
    keys = [s["idempotency_key"] for s in steps(rt, run_id)]
    assert keys == [f"{run_id}:flaky:{n}" for n in (1, 2, 3)]


def test_exhausted_retries_run_the_compensation_and_fail_the_run(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "comp", """
        name: comp
        steps:
          - id: broken
            type: fail
            with: {message: "disk still full"}
            retry: {attempts: 2, initial: 10ms, max: 20ms}
            on_failure:
              - id: tell
                type: log
                with: {message: "broken failed"}
          - id: never
            type: log
            with: {message: unreachable}
    """)
    rt = make_runtime(db_url)
    run_id = start(rt, "comp")
    assert drive(rt, run_id) is RunStatus.FAILED
    assert statuses(rt, run_id) == [("broken", 1, "failed"), ("broken", 2, "failed"), ("tell", 1, "succeeded")]
    assert "step broken failed: disk still full" in run_row(rt, run_id)["reason"]


def test_continue_on_failure_lets_the_run_go_on(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "cont", """
        name: cont
        steps:
          - id: optional
            type: fail
            with: {retryable: false}
            continue_on_failure: true
          - id: next
            type: log
            with: {message: "optional: {{ steps.optional.outcome }}"}
    """)
    rt = make_runtime(db_url)
    run_id = start(rt, "cont")
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
    assert steps(rt, run_id)[-1]["output"]["message"] == "optional: skipped"


def test_a_template_error_fails_the_step_with_a_clear_message(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "tpl", """
        name: tpl
        steps:
          - id: t
            type: log
            with: {message: "{{ alert.labels.service }}"}
    """)
    rt = make_runtime(db_url)
    run_id = start(rt, "tpl")
    assert drive(rt, run_id) is RunStatus.FAILED
    err = steps(rt, run_id)[0]["error"]
    assert "template error in `with`" in err and "service" in err


def test_wait_is_durable_across_engine_instances(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "nap", """
        name: nap
        steps:
          - id: nap
            type: wait
            with: {duration: 300ms}
          - id: done
            type: log
            with: {message: awake}
    """)
    rt = make_runtime(db_url)
    run_id = start(rt, "nap")
    assert asyncio.run(rt.engine.drive(run_id)) is RunStatus.WAITING
    row = run_row(rt, run_id)
    assert row["wake_at"] is not None and row["lease_owner"] is None
    # a fresh engine (as after a restart) finds the timer in the database and finishes the run
    fresh = Engine(rt.settings, rt.db, rt.registry, rt.secrets, owner="second-process")
    rt.engine = fresh
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
    assert statuses(rt, run_id) == [("nap", 1, "succeeded"), ("done", 1, "succeeded")]


def test_timers_fire_in_the_engine_loop_after_a_restart(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "nap2", """
        name: nap2
        steps:
          - id: nap
            type: wait
            with: {duration: 500ms}
    """)
    rt = make_runtime(db_url, poll_interval=30)  # only the APScheduler timer can wake it in time
    run_id = start(rt, "nap2")
    asyncio.run(rt.engine.drive(run_id))

    async def serve_for(seconds: float) -> None:
        engine = Engine(rt.settings, rt.db, rt.registry, rt.secrets, owner="restarted")
        task = asyncio.create_task(engine.run_forever())
        await asyncio.sleep(seconds)
        engine.stop()
        await task

    asyncio.run(serve_for(2.0))
    assert run_row(rt, run_id)["status"] == "succeeded"


class Gate(Params):
    pass


class BlockingStep(Step[Gate]):
    """A test plugin that never finishes, standing in for a step whose worker dies mid-flight."""

    type = "test.block"
    kind = StepKind.REMEDIATION
    Params = Gate
    started: ClassVar[int] = 0

    async def run(self, params: Gate, ctx: StepContext) -> StepResult:
        BlockingStep.started += 1
        await asyncio.sleep(3600)
        return StepResult()


def _crash_mid_step(rt, run_id: str) -> None:
    """Claim the run and kill the worker while the step runs: no cleanup, as with SIGKILL."""

    async def go() -> None:
        task = asyncio.create_task(rt.engine.drive(run_id))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if BlockingStep.started:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    with rt.db.tx() as conn:  # the dead owner's lease runs out
        conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_an_interrupted_non_idempotent_step_is_in_doubt_and_waits_for_a_human(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "doubt", """
        name: doubt
        unattended: {reason: "test runbook exercising crash recovery"}
        steps:
          - id: first
            type: log
            with: {message: one}
          - id: risky
            type: test.block
          - id: last
            type: log
            with: {message: three}
    """)
    rt = make_runtime(db_url)
    rt.registry.register(BlockingStep)
    rt.catalog.reload()
    BlockingStep.started = 0
    run_id = start(rt, "doubt")
    _crash_mid_step(rt, run_id)
    assert statuses(rt, run_id) == [("first", 1, "succeeded"), ("risky", 1, "running")]

    successor = Engine(rt.settings, rt.db, rt.registry, rt.secrets, owner="successor")
    rt.engine = successor
    assert drive(rt, run_id) is RunStatus.WAITING
    assert statuses(rt, run_id) == [("first", 1, "succeeded"), ("risky", 1, "in_doubt")]
    assert BlockingStep.started == 1, "a non-idempotent step must not run again by itself"
    assert "in doubt" in run_row(rt, run_id)["reason"]

    with pytest.raises(CommandError):
        rt.engine.decide(run_id, "first", Decision.SKIP, "cli:alice")
    rt.engine.decide(run_id, "risky", Decision.SKIP, "cli:alice")
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
    assert statuses(rt, run_id)[-1] == ("last", 1, "succeeded")
    assert BlockingStep.started == 1


def test_abort_decision_ends_the_run(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "doubt2", """
        name: doubt2
        unattended: {reason: "test runbook exercising crash recovery"}
        steps:
          - id: risky
            type: test.block
    """)
    rt = make_runtime(db_url)
    rt.registry.register(BlockingStep)
    rt.catalog.reload()
    BlockingStep.started = 0
    run_id = start(rt, "doubt2")
    _crash_mid_step(rt, run_id)
    rt.engine = Engine(rt.settings, rt.db, rt.registry, rt.secrets, owner="successor")
    drive(rt, run_id)
    rt.engine.decide(run_id, "risky", Decision.ABORT, "cli:bob")
    assert drive(rt, run_id) is RunStatus.ABORTED


def test_an_interrupted_idempotent_step_simply_runs_again(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "idem", """
        name: idem
        steps:
          - id: diag
            type: log
            idempotent: false
            with: {message: diag}
    """)
    rt = make_runtime(db_url)
    run_id = start(rt, "idem")
    # Simulate a claimed-but-unfinished idempotent attempt left by a dead worker.
    fence = rt.engine.claim(run_id)
    with rt.db.tx() as conn:
        conn.execute(text("UPDATE runs SET status='running', lease_expires_at=:t WHERE id=:id"),
                     {"t": utcnow() - timedelta(seconds=1), "id": run_id})
        conn.execute(text("INSERT INTO step_executions (run_id, step_id, step_type, attempt, status, idempotent, "
                          "interrupted, idempotency_key, started_at) VALUES (:r, 'diag', 'log', 1, 'running', "
                          ":t, :f, :k, :s)"),
                     {"r": run_id, "k": f"{run_id}:diag:1", "s": utcnow(), "t": True, "f": False})
    assert fence is not None
    rt.engine = Engine(rt.settings, rt.db, rt.registry, rt.secrets, owner="successor")
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
    assert statuses(rt, run_id) == [("diag", 1, "failed"), ("diag", 2, "succeeded")]
    assert steps(rt, run_id)[0]["interrupted"]


def test_a_stale_worker_cannot_write_after_losing_its_lease(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "fence", """
        name: fence
        steps:
          - id: a
            type: log
            with: {message: a}
    """)
    rt = make_runtime(db_url)
    run_id = start(rt, "fence")
    old = rt.engine.claim(run_id)
    assert old is not None
    other = Engine(rt.settings, rt.db, rt.registry, rt.secrets, owner="other")
    assert other.claim(run_id) is None, "a live lease is exclusive"
    with rt.db.tx() as conn:
        conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    new = other.claim(run_id)
    assert new is not None and new > old
    from runbot.engine.state import LeaseLost

    state = rt.engine._load(run_id, old)
    with pytest.raises(LeaseLost):
        rt.engine._commit(state, run={"reason": "late write"})
    assert run_row(rt, run_id)["reason"] is None


APPROVAL_BOOK = """
    name: fix
    steps:
      - id: check
        type: log
        with: {message: diagnosing}
      - id: restart
        type: log
        risk: high
        with: {message: "restarting {{ params.svc }}"}
        approval:
          approvers: {slack_usergroups: [sre-oncall]}
          min_approvals: MIN
          timeout: TIMEOUT
          on_timeout: ON_TIMEOUT
      - id: after
        type: log
        with: {message: done}
    params:
      svc: {type: string, default: api}
"""


def approval_book(runbooks_dir, *, min_approvals=1, timeout="10m", on_timeout="abort"):
    write_runbook(runbooks_dir, "fix", APPROVAL_BOOK.replace("MIN", str(min_approvals))
                  .replace("ON_TIMEOUT", on_timeout).replace("TIMEOUT", timeout))


def pending(rt, run_id):
    return rt.engine.pending_approvals(run_id)


def test_a_high_risk_step_waits_for_approval_then_runs(db_url, make_runtime, runbooks_dir):
    approval_book(runbooks_dir)
    rt = make_runtime(db_url)
    run_id = start(rt, "fix", requester="U_REQ")
    assert drive(rt, run_id) is RunStatus.WAITING
    assert statuses(rt, run_id) == [("check", 1, "succeeded")]
    (appr,) = pending(rt, run_id)
    assert appr["policy"]["params"] == {"message": "restarting api"}
    res = rt.engine.vote(appr["id"], "U_OK", True, user_name="alice")
    assert res.status == "approved"
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
    assert [s for s, _, _ in statuses(rt, run_id)] == ["check", "restart", "after"]


def test_self_approval_double_votes_and_late_votes_are_refused(db_url, make_runtime, runbooks_dir):
    approval_book(runbooks_dir, min_approvals=2)
    rt = make_runtime(db_url)
    run_id = start(rt, "fix", requester="U_REQ")
    drive(rt, run_id)
    (appr,) = pending(rt, run_id)
    with pytest.raises(CommandError, match="self-approval"):
        rt.engine.vote(appr["id"], "U_REQ", True)
    assert rt.engine.vote(appr["id"], "U_A", True).status == "pending"
    with pytest.raises(CommandError, match="already decided"):
        rt.engine.vote(appr["id"], "U_A", True)
    assert drive(rt, run_id) is RunStatus.WAITING, "one approval of two is not enough"
    assert rt.engine.vote(appr["id"], "U_B", True).status == "approved"
    with pytest.raises(CommandError, match="already approved"):
        rt.engine.vote(appr["id"], "U_C", True)
    assert drive(rt, run_id) is RunStatus.SUCCEEDED


def test_a_denial_aborts_the_run_and_the_step_never_runs(db_url, make_runtime, runbooks_dir):
    approval_book(runbooks_dir)
    rt = make_runtime(db_url)
    run_id = start(rt, "fix")
    drive(rt, run_id)
    (appr,) = pending(rt, run_id)
    rt.engine.vote(appr["id"], "U_NO", False, user_name="bob", reason="not during the sale")
    assert drive(rt, run_id) is RunStatus.ABORTED
    assert "denied by bob: not during the sale" in run_row(rt, run_id)["reason"]
    assert [s for s, _, _ in statuses(rt, run_id)] == ["check"]


@pytest.mark.parametrize("on_timeout,final,ran", [("abort", RunStatus.ABORTED, False), ("skip", RunStatus.SUCCEEDED, False)])
def test_approval_timeout_policies(db_url, make_runtime, runbooks_dir, on_timeout, final, ran):
    approval_book(runbooks_dir, timeout="200ms", on_timeout=on_timeout)
    rt = make_runtime(db_url)
    run_id = start(rt, "fix")
    assert drive(rt, run_id) is final
    restart = [r for r in steps(rt, run_id) if r["step_id"] == "restart"]
    assert all(r["status"] == "skipped" for r in restart)
    with rt.db.read() as conn:
        assert conn.execute(select(APPROVALS.c.status).where(APPROVALS.c.run_id == run_id)).scalar_one() == "expired"


def test_escalation_extends_the_approval_once(db_url, make_runtime, runbooks_dir):
    approval_book(runbooks_dir, timeout="200ms", on_timeout="escalate")
    rt = make_runtime(db_url)
    run_id = start(rt, "fix")
    assert drive(rt, run_id, max_wait=0.1) is RunStatus.WAITING
    assert drive(rt, run_id, max_wait=5) is RunStatus.ABORTED
    with rt.db.read() as conn:
        actions = [e["action"] for e in audit.iter_db_records(conn) if e["run_id"] == run_id]
    assert actions.count("approval.escalated") == 1
    assert actions.count("approval.expired") == 1


def test_concurrency_limit_skips_a_second_live_run_with_the_same_key(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "one", """
        name: one
        concurrency: {key: "{{ alert.labels.service }}", limit: 1}
        steps:
          - id: nap
            type: wait
            with: {duration: 200ms}
    """)
    rt = make_runtime(db_url)
    alert = {"labels": {"service": "api"}}
    first = start(rt, "one", alert=alert)
    asyncio.run(rt.engine.drive(first))
    second = start(rt, "one", alert=alert)
    other_key = start(rt, "one", alert={"labels": {"service": "web"}})
    assert drive(rt, second) is RunStatus.SKIPPED
    assert "concurrency limit 1" in run_row(rt, second)["reason"]
    assert drive(rt, other_key) is RunStatus.SUCCEEDED
    assert drive(rt, first) is RunStatus.SUCCEEDED


def test_queued_runs_start_when_the_slot_frees(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "q", """
        name: q
        concurrency: {key: "all", limit: 1, on_limit: queue}
        steps:
          - id: nap
            type: wait
            with: {duration: 100ms}
    """)
    rt = make_runtime(db_url)
    first = start(rt, "q")
    asyncio.run(rt.engine.drive(first))
    second = start(rt, "q")
    assert asyncio.run(rt.engine.drive(second)) is RunStatus.PENDING
    assert run_row(rt, second)["wake_at"] is None
    assert drive(rt, first) is RunStatus.SUCCEEDED
    assert run_row(rt, second)["wake_at"] is not None, "finishing the first run wakes the queued one"
    assert drive(rt, second) is RunStatus.SUCCEEDED


def test_cooldown_skips_alert_runs_but_not_manual_ones(db_url, make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "cool", """
        name: cool
        cooldown: 10m
        steps:
          - id: a
            type: log
            with: {message: a}
    """)
    rt = make_runtime(db_url)
    assert drive(rt, start(rt, "cool")) is RunStatus.SUCCEEDED
    again = start(rt, "cool")
    assert drive(rt, again) is RunStatus.SKIPPED
    assert "cooldown" in run_row(rt, again)["reason"]
    assert drive(rt, start(rt, "cool", manual=True, requester="cli:alice")) is RunStatus.SUCCEEDED


def test_freeze_holds_remediation_but_not_diagnostics(db_url, make_runtime, runbooks_dir):
    approval_book(runbooks_dir)
    rt = make_runtime(db_url)
    rt.engine.set_freeze(True, "U_LEAD", "deploy freeze")
    run_id = start(rt, "fix")
    drive(rt, run_id)
    (appr,) = pending(rt, run_id)
    rt.engine.vote(appr["id"], "U_OK", True)
    assert drive(rt, run_id, max_wait=0.2) is RunStatus.WAITING
    assert statuses(rt, run_id) == [("check", 1, "succeeded")], "diagnostics ran, remediation held"
    assert "frozen by U_LEAD: deploy freeze" in run_row(rt, run_id)["reason"]
    rt.engine.set_freeze(False, "U_LEAD")
    assert drive(rt, run_id) is RunStatus.SUCCEEDED


def test_cancel_a_waiting_run(db_url, make_runtime, runbooks_dir):
    approval_book(runbooks_dir)
    rt = make_runtime(db_url)
    run_id = start(rt, "fix")
    drive(rt, run_id)
    assert rt.engine.cancel(run_id, "cli:carol", "false alarm") == "cancelled"
    assert run_row(rt, run_id)["status"] == "cancelled"
    assert pending(rt, run_id) == []
    with pytest.raises(CommandError, match="already cancelled"):
        rt.engine.cancel(run_id, "cli:carol")


def test_secrets_are_resolved_at_the_last_moment_and_never_stored(db_url, make_runtime, runbooks_dir, monkeypatch, tmp_path):
    canary = "s3cr3t-Canary-value/+=="
    monkeypatch.setenv("RUNBOT_SECRET_KV_DEPLOYER__TOKEN", canary)
    write_runbook(runbooks_dir, "sec", """
        name: sec
        steps:
          - id: leak
            type: log
            with: {message: "token={{ secret('kv/deployer#token') }}"}
          - id: leak_again
            type: fail
            with: {message: "{{ steps.leak.message }} {{ secret('kv/deployer#token') }}", retryable: false}
    """)
    rt = make_runtime(db_url)
    run_id = start(rt, "sec")
    assert drive(rt, run_id) is RunStatus.FAILED
    rows = steps(rt, run_id)
    assert rows[0]["output"]["message"] == "token=****"
    assert rows[0]["inputs"] == {"params": {"message": "token=****(kv/deployer#token)"}, "secrets": ["kv/deployer#token"]}
    assert canary not in rows[1]["error"]
    with rt.db.read() as conn:
        dump = json.dumps([dict(r) for r in conn.execute(text("SELECT * FROM audit_events")).mappings()], default=str)
        dump += json.dumps([dict(r) for r in conn.execute(text("SELECT * FROM step_executions")).mappings()], default=str)
        dump += json.dumps([dict(r) for r in conn.execute(text("SELECT * FROM runs")).mappings()], default=str)
    assert canary not in dump
    if db_url.startswith("sqlite"):
        raw = (tmp_path / "runbot.db").read_bytes() + (tmp_path / "runbot.db-wal").read_bytes() \
            if (tmp_path / "runbot.db-wal").exists() else (tmp_path / "runbot.db").read_bytes()
        assert canary.encode() not in raw


def test_a_missing_secret_fails_the_step_naming_the_reference(db_url, make_runtime, runbooks_dir, monkeypatch):
    monkeypatch.delenv("RUNBOT_SECRET_KV_NOPE__X", raising=False)
    write_runbook(runbooks_dir, "nosec", """
        name: nosec
        steps:
          - id: s
            type: log
            with: {message: "{{ secret('kv/nope#x') }}"}
    """)
    rt = make_runtime(db_url)
    run_id = start(rt, "nosec")
    assert drive(rt, run_id) is RunStatus.FAILED
    assert "secret 'kv/nope#x'" in steps(rt, run_id)[0]["error"]
