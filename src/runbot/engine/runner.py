"""The run engine: claims due runs with a fenced lease and drives them step by step through the journal.

Every state change is committed before the next side effect. An idempotent step is recorded once, after
it ran (a crash before the record simply runs it again); a non-idempotent step is claimed (committed as
`running`) before it runs, so a crash leaves evidence and the step becomes *in doubt* instead of running
twice. Timers live in the database; APScheduler only wakes the loop at the right moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, and_, func, insert, or_, select, text, update

from runbot import tracing
from runbot.audit import log as audit
from runbot.domain import LIVE_RUN, RunStatus, StepKind, StepStatus
from runbot.engine import pgcommit
from runbot.engine.approvals import ApprovalRequest, PolicyConfig
from runbot.engine.control import ControlMixin
from runbot.engine.guards import HOLD_RECHECK_SECONDS, Hold, remediation_hold
from runbot.engine.ports import SecretError, SecretProvider
from runbot.engine.state import (
    APPROVALS,
    INCIDENTS,
    RUNS,
    STEPS,
    TIMERS,
    LeaseLost,
    RunState,
    backoff_delay,
    new_id,
    plus,
)
from runbot.health import Heartbeat
from runbot.observability import observe_approval, observe_step
from runbot.redaction import REGISTRY
from runbot.runbooks.loader import LoadedRunbook
from runbot.runbooks.model import RetryPolicy, StepSpec
from runbot.runbooks.templating import (
    TemplateFailure,
    mask_placeholders,
    render_async,
    resolve_secrets,
    secret_refs,
    truthy,
)
from runbot.settings import Settings
from runbot.steps.base import Step, StepContext, StepError, StepLogger, StepResult, Suspend
from runbot.steps.registry import StepRegistry, UnknownStepType
from runbot.store.db import Database
from runbot.store.raw import Raw
from runbot.store.types import utcnow

log = structlog.get_logger("runbot.engine")
EMPTY_ALERT: dict[str, Any] = {"labels": {}, "annotations": {}, "status": "", "fingerprint": "", "startsAt": None,
                               "endsAt": None, "generatorURL": ""}  # a manual run without an alert


# ---- what driving a step can come to -----------------------------------------------------------------------


@dataclass
class Done:
    output: dict[str, Any]


@dataclass
class Skipped:
    reason: str


@dataclass
class Failed:
    error: str


@dataclass
class Parked:
    """The run waits: until `wake_at`, or for an outside event (approval, human decision) when None."""

    wake_at: datetime | None
    reason: str


@dataclass
class Stopped:
    status: RunStatus
    reason: str


Outcome = Done | Skipped | Failed | Parked | Stopped


class Engine(ControlMixin):
    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: StepRegistry,
        secrets: SecretProvider,
        *,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.secrets = secrets
        self.owner = owner or settings.owner_id
        self.outbox_enabled = False
        self.on_outbox: Callable[[], None] | None = None  # called after a commit that queued outbox rows
        self._books: dict[int, LoadedRunbook] = {}
        self._books_lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_event: asyncio.Event | None = None
        self._stopping = False
        self._grace = 0.0
        self._scheduler: AsyncIOScheduler | None = None
        self.on_run_end: list[Any] = []  # callables (run_id, status) -> None, after the final commit
        self.hold_checks: list[Any] = []  # callables (RunState, StepSpec) -> Hold | None, before remediations
        # `runbot test` (runbot.rehearsal): .for_step(step_id) gives recorded responses, passed to plugins as
        # ctx.rehearsal so they answer from the recording instead of calling out. None when live.
        self.rehearsal: Any = None
        self.stats = {"steps": 0, "runs_finished": 0}
        self.peers: list[Engine] = []
        self.heartbeat: Heartbeat = Heartbeat("engine")  # replaced by the supervisor's (runbot.engine_worker)
        db.relaxed_commits = settings.pg_async_commit_idempotent and not db.is_sqlite

    # ---- loop management --------------------------------------------------------------------------------

    def wake(self) -> None:
        """Thread-safe nudge: look for due work now (this engine and its peer loops)."""
        self._nudge()
        for peer in self.peers:
            peer._nudge()

    def spawn_peer(self, n: int) -> Engine:
        """Another worker loop sharing this engine's configuration and hooks (PostgreSQL: parallel commits)."""
        peer = Engine(self.settings, self.db, self.registry, self.secrets, owner=f"{self.owner}/{n}")
        peer.outbox_enabled = self.outbox_enabled
        peer.on_outbox = self.on_outbox
        peer.on_run_end = self.on_run_end
        peer.hold_checks = self.hold_checks
        peer.stats = self.stats
        self.peers.append(peer)
        return peer

    def _nudge(self) -> None:
        loop, ev = self._loop, self._wake_event
        if loop is not None and ev is not None and not loop.is_closed():
            loop.call_soon_threadsafe(ev.set)

    async def run_forever(self, ready: threading.Event | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake_event = asyncio.Event()
        self._stopping = False
        self._scheduler = AsyncIOScheduler(event_loop=self._loop)
        self._scheduler.start()
        self._load_timers()
        heartbeat = asyncio.create_task(self._heartbeat())
        tasks: set[asyncio.Task[None]] = set()
        if ready is not None:
            ready.set()
        try:
            failures = 0
            while not self._stopping:
                self.heartbeat.busy()
                self._wake_event.clear()
                capacity = self.settings.engine_workers - len(tasks)
                pause = self.settings.poll_interval
                if capacity > 0:
                    try:
                        claimed = self._claim_due(capacity)
                        failures = 0
                    except Exception as exc:  # database failover: runs in flight go on, claiming resumes later
                        failures += 1
                        claimed, pause = [], min(30.0, 0.25 * 2**min(failures, 7))
                        log.warning("claiming runs failed; retrying", error=f"{type(exc).__name__}: {exc}",
                                    retry_in=pause)  # fmt: skip
                    for run_id, fence in claimed:
                        t = asyncio.create_task(self._advance_safely(run_id, fence))
                        tasks.add(t)
                        t.add_done_callback(tasks.discard)
                self.heartbeat.idle()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_event.wait(), timeout=pause)
        finally:
            if tasks and self._grace > 0:  # drain: in-flight steps finish and commit, then their runs are released
                await asyncio.wait(list(tasks), timeout=self._grace)
            heartbeat.cancel()
            for t in list(tasks):
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self._release_all()
            if self._scheduler is not None:
                self._scheduler.shutdown(wait=False)

    def stop(self, grace: float = 0.0) -> None:
        """Stop claiming runs; with `grace`, let steps in flight finish for up to that many seconds. Every run
        this loop holds is then released for another replica to take over at once (not after lease expiry)."""
        self._grace = grace
        self._stopping = True
        self.wake()

    def scheduler_running(self) -> bool:
        """The loop's APScheduler (timer wake-ups) is running."""
        return self._scheduler is not None and bool(self._scheduler.running)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            if not self._active:
                continue
            try:
                with self.db.tx() as conn:
                    conn.execute(
                        update(RUNS)
                        .where(RUNS.c.id.in_(list(self._active)), RUNS.c.lease_owner == self.owner)
                        .values(lease_expires_at=plus(utcnow(), self.settings.lease_seconds))
                    )
            except Exception as exc:  # the next attempt may succeed; leases are generous
                log.warning("lease renewal failed", error=str(exc))

    def _load_timers(self) -> None:
        with self.db.read() as conn:
            rows = conn.execute(select(TIMERS.c.fire_at).where(TIMERS.c.fired_at.is_(None))).all()
        for r in rows:
            self._schedule_wake(r.fire_at)

    def _schedule_wake(self, at: datetime) -> None:
        sched, loop = self._scheduler, self._loop
        if sched is None or loop is None:
            return

        def add() -> None:
            sched.add_job(self._timer_fired, "date", run_date=at, misfire_grace_time=None, coalesce=True)

        if threading.current_thread() is threading.main_thread() or asyncio._get_running_loop() is loop:
            try:
                add()
                return
            except RuntimeError:
                pass
        loop.call_soon_threadsafe(add)

    async def _timer_fired(self) -> None:
        if self._wake_event is not None:
            self._wake_event.set()

    def _release_all(self) -> None:
        if not self._active:
            return
        try:
            with self.db.tx() as conn:
                conn.execute(
                    update(RUNS)
                    .where(RUNS.c.id.in_(list(self._active)), RUNS.c.lease_owner == self.owner)
                    .values(lease_owner=None, lease_expires_at=None)
                )
        except Exception as exc:
            log.warning("could not release leases on stop; they expire by themselves", error=str(exc))
        self._active.clear()

    # ---- claiming --------------------------------------------------------------------------------------------

    def _claim_due(self, limit: int) -> list[tuple[str, int]]:
        now = utcnow()
        due = and_(
            RUNS.c.status.in_([s.value for s in LIVE_RUN]),
            RUNS.c.wake_at.is_not(None),
            RUNS.c.wake_at <= now,
            or_(RUNS.c.lease_expires_at.is_(None), RUNS.c.lease_expires_at < now),
        )
        with self.db.read() as conn:
            ids = [r.id for r in conn.execute(select(RUNS.c.id).where(due).order_by(RUNS.c.wake_at).limit(limit))]
        claimed = []
        for run_id in ids:
            if run_id in self._active:
                continue
            fence = self.claim(run_id)
            if fence is not None:
                claimed.append((run_id, fence))
        return claimed

    def claim(self, run_id: str) -> int | None:
        """Take the run's lease if it is free or expired; the new fence number guards every later write."""
        now = utcnow()
        with self.db.tx() as conn:
            row = conn.execute(
                update(RUNS)
                .where(
                    RUNS.c.id == run_id,
                    RUNS.c.status.in_([s.value for s in LIVE_RUN]),
                    or_(RUNS.c.lease_expires_at.is_(None), RUNS.c.lease_expires_at < now),
                )
                .values(
                    lease_owner=self.owner,
                    lease_expires_at=plus(now, self.settings.lease_seconds),
                    fence=RUNS.c.fence + 1,
                )
                .returning(RUNS.c.fence)
            ).first()
        if row is None:
            return None
        self._active[run_id] = row.fence
        return int(row.fence)

    async def drive(self, run_id: str) -> RunStatus:
        """Advance one run in this process until it finishes or parks (used by `runbot run`)."""
        fence = self.claim(run_id)
        if fence is not None:
            await self._advance_safely(run_id, fence)
        with self.db.read() as conn:
            return RunStatus(conn.execute(select(RUNS.c.status).where(RUNS.c.id == run_id)).scalar_one())

    async def _advance_safely(self, run_id: str, fence: int) -> None:
        try:
            await self._advance(run_id, fence)
        except LeaseLost:
            log.warning("lease lost; another worker owns the run now", run_id=run_id)
        except asyncio.CancelledError:  # shutdown: hand the run over now; a step cut short is recovered there
            with contextlib.suppress(Exception):
                self._release(run_id, fence, wake_in=0)
            raise
        except Exception as exc:
            # An engine bug must not wedge the run: record it, release, and let a human look.
            log.error("engine error while advancing run", run_id=run_id, error=repr(exc),
                      trace=traceback.format_exc(limit=5))  # fmt: skip
            with contextlib.suppress(Exception):
                self._release(run_id, fence, wake_in=self.settings.lease_seconds)
        finally:
            self._active.pop(run_id, None)

    # ---- the advance loop -----------------------------------------------------------------------------------

    def book_for(self, version_id: int) -> LoadedRunbook:
        with self._books_lock:
            book = self._books.get(version_id)
        if book is None:
            from runbot.engine.control import load_version

            book = load_version(self.db, version_id)
            with self._books_lock:
                self._books[version_id] = book
        return book

    def _load(self, run_id: str, fence: int) -> RunState:
        with self.db.read() as conn:
            row = dict(conn.execute(select(RUNS).where(RUNS.c.id == run_id)).mappings().one())
            journal: dict[str, list[dict[str, Any]]] = {}
            for r in conn.execute(select(STEPS).where(STEPS.c.run_id == run_id).order_by(STEPS.c.id)).mappings():
                journal.setdefault(r["step_id"], []).append(dict(r))
            approvals = {
                r["step_id"]: dict(r)
                for r in conn.execute(select(APPROVALS).where(APPROVALS.c.run_id == run_id)).mappings()
            }
            incident: dict[str, Any] = {}
            if row["incident_id"]:
                inc = conn.execute(select(INCIDENTS).where(INCIDENTS.c.id == row["incident_id"])).mappings().first()
                if inc:
                    incident = json.loads(json.dumps(dict(inc), default=str))
        book = self.book_for(row["runbook_version_id"])
        scope = {
            "alert": row["alert"] or EMPTY_ALERT,
            "incident": incident,
            "params": row["params"] or {},
            "steps": {},
            "run": {
                "id": run_id,
                "runbook": book.name,
                "requester": row["requester"],
                "manual": row["manual"],
                "created_at": row["created_at"].isoformat(),
            },
        }
        return RunState(run_id, fence, row, book, row["runbook_version_id"], journal, approvals, scope,
                        REGISTRY.for_run(run_id), bool(row["cancel_requested"]))  # fmt: skip

    async def _advance(self, run_id: str, fence: int) -> None:
        R = self._load(run_id, fence)
        status = RunStatus(R.row["status"])
        if status.terminal:
            self._release(run_id, fence)
            return
        if R.cancel_requested:
            self._finish(R, RunStatus.CANCELLED, "cancelled on request")
            return
        if status is RunStatus.PENDING and not self._admit(R):
            return
        if status is RunStatus.WAITING:
            self._fire_timers(R)
            self._commit(R, run={"status": RunStatus.RUNNING.value}, events=[R.event("run.resumed")])
        for step in R.book.spec.steps:
            if self._stopping:  # draining: between two steps, hand the run to another replica right away
                self._release(run_id, fence, wake_in=0)
                return
            outcome = await self._drive(R, step)
            if isinstance(outcome, Done):
                R.scope["steps"][step.sid] = {**outcome.output, "outcome": "succeeded"}
            elif isinstance(outcome, Skipped):
                R.scope["steps"][step.sid] = {"outcome": "skipped", "reason": outcome.reason}
            elif isinstance(outcome, Failed):
                self._finish(R, RunStatus.FAILED, f"step {step.sid} failed: {outcome.error}")
                return
            elif isinstance(outcome, Parked):
                self._park(R, outcome)
                return
            elif isinstance(outcome, Stopped):
                self._finish(R, outcome.status, outcome.reason)
                return
            if R.cancel_requested:
                self._finish(R, RunStatus.CANCELLED, "cancelled on request")
                return
        self._finish(R, RunStatus.SUCCEEDED, "all steps done")

    async def _drive(self, R: RunState, step: StepSpec) -> Outcome:
        """Drive one step (and its verification and compensation) as far as it can go now."""
        outcome = await self._drive_main(R, step)
        if isinstance(outcome, Done):  # its verify and on_failure steps may use its output (lint allows it)
            R.scope["steps"][step.sid] = {**outcome.output, "outcome": "succeeded"}
        if isinstance(outcome, Done) and step.verify is not None:
            verify_step = verify_spec(step)
            v = await self._drive_main(R, verify_step, verify_of=step)
            if isinstance(v, Failed):
                outcome = Failed(f"verification failed: {v.error}")
            elif not isinstance(v, Done):
                return v
        if isinstance(outcome, Failed):
            for comp in step.on_failure:
                c = await self._drive(R, comp)
                if isinstance(c, Parked | Stopped):
                    return c
                if isinstance(c, Done):
                    R.scope["steps"][comp.sid] = {**c.output, "outcome": "succeeded"}
            if step.continue_on_failure:
                return Skipped(f"failed, continuing: {outcome.error}")
        return outcome

    async def _drive_main(self, R: RunState, step: StepSpec, verify_of: StepSpec | None = None) -> Outcome:
        rec = R.latest(step.sid)
        now = utcnow()
        if rec is not None:
            st = StepStatus(rec["status"])
            if st is StepStatus.SUCCEEDED:
                return Done(rec["output"] or {})
            if st is StepStatus.SKIPPED:
                return Skipped(rec["error"] or "skipped")
            if st is StepStatus.CANCELLED:
                return Stopped(RunStatus.ABORTED, rec["error"] or f"step {step.sid} aborted")
            if st is StepStatus.IN_DOUBT:
                return Parked(None, f"step {step.sid} is in doubt: decide retry, skip or abort")
            if st is StepStatus.RUNNING:
                return self._recover_running(R, step, rec)
            if st is StepStatus.WAITING:
                if rec["wake_at"] is not None and rec["wake_at"] > now:
                    return Parked(rec["wake_at"], rec["summary"] or "waiting")
                return await self._attempt(R, step, rec["attempt"], resume=rec, verify_of=verify_of)
            if st is StepStatus.FAILED:
                if rec["retry_at"] is None:
                    return Failed(rec["error"] or "failed")
                if rec["retry_at"] > now:
                    return Parked(rec["retry_at"], f"step {step.sid} retries at {rec['retry_at']:%H:%M:%S}")
                return await self._attempt(R, step, rec["attempt"] + 1, verify_of=verify_of)
        # first time here
        if step.when is not None and verify_of is None:
            try:
                go = truthy(await render_async(step.when, R.scope)) if isinstance(step.when, str) else bool(step.when)
            except TemplateFailure as exc:
                return self._fail_before_start(R, step, f"`when` could not be evaluated: {exc}")
            if not go:
                self._record_skip(R, step, "`when` was false")
                return Skipped("`when` was false")
        if step.approval is not None and verify_of is None:
            rendered: Any = None
            if R.approvals.get(step.sid) is None:  # a new request shows the rendered parameters: render off-loop
                try:
                    rendered = await render_async(step.with_, R.scope)
                except TemplateFailure as exc:
                    return self._fail_before_start(R, step, f"template error in `with`: {exc}")
            gate = self._approval_gate(R, step, rendered)
            if gate is not None:
                return gate
        return await self._attempt(R, step, 1, verify_of=verify_of)

    def _recover_running(self, R: RunState, step: StepSpec, rec: dict[str, Any]) -> Outcome:
        """A `running` record under our fresh lease means its worker died mid-step."""
        now = utcnow()
        if rec["idempotent"]:
            self._commit(R, step_update=(step.sid, rec["attempt"], {
                "status": StepStatus.FAILED.value, "interrupted": True, "finished_at": now, "retry_at": now,
                "error": "interrupted: the worker stopped mid-step; the step is idempotent and runs again"}),
                events=[R.event("step.interrupted", step_id=step.sid, outcome="retry", attempt=rec["attempt"])])  # fmt: skip
            rec.update(status=StepStatus.FAILED.value, retry_at=now, interrupted=True)
            return Parked(now, "retrying an interrupted idempotent step")
        msg = (f"step {step.sid} is in doubt: it was running when its worker stopped and is not idempotent, so it "
               f"may or may not have taken effect. Decide: runbot runs decide {R.id} {step.sid} retry|skip|abort")  # fmt: skip
        self._commit(R, step_update=(step.sid, rec["attempt"], {
            "status": StepStatus.IN_DOUBT.value, "finished_at": now, "error": msg}),
            events=[R.event("step.in_doubt", step_id=step.sid, outcome="in_doubt", attempt=rec["attempt"])],
            outbox=[("step.in_doubt", {"run_id": R.id, "step_id": step.sid, "message": msg})])  # fmt: skip
        rec.update(status=StepStatus.IN_DOUBT.value, error=msg)
        observe_step(R.book.name, step.type, "in_doubt")
        return Parked(None, msg)

    # ---- one attempt ------------------------------------------------------------------------------------------

    async def _attempt(self, R: RunState, step: StepSpec, attempt: int, *, resume: dict[str, Any] | None = None,
                       verify_of: StepSpec | None = None) -> Outcome:  # fmt: skip
        started = utcnow() if resume is None else resume["started_at"]
        try:
            plugin: Step[Any] = self.registry.get(step.type)
        except UnknownStepType:
            return self._fail_before_start(R, step, f"unknown step type {step.type!r}", attempt)
        try:
            rendered = await render_async(step.with_, R.scope)
        except TemplateFailure as exc:
            return self._fail_before_start(R, step, f"template error in `with`: {exc}", attempt)
        refs = secret_refs(rendered) if rendered else []
        display = mask_placeholders(rendered) if refs else rendered
        idempotent = self._idempotent(plugin, step, rendered)
        remediation = step.approval is not None or step.risk == "high" or plugin.changes_things(step.with_)
        if remediation and verify_of is None and resume is None:
            hold = await asyncio.to_thread(self._hold, R, step)  # checks may ask Alertmanager over HTTP
            if hold is not None:
                return self._record_hold(R, step, attempt, hold)
        key = f"{R.id}:{step.sid}:{attempt}"
        inputs = {"params": display, "secrets": refs} if display or refs else {}
        if resume is None and not idempotent:
            self._commit(R, step_insert=self._step_row(R, step, attempt, StepStatus.RUNNING, key, inputs,
                                                      idempotent, started),
                         events=[R.event("step.started", step_id=step.sid, attempt=attempt, ts=started,
                                         type=step.type, params=display)],
                         outbox=[("step.started", {"run_id": R.id, "step_id": step.sid})])  # fmt: skip
            R.journal.setdefault(step.sid, []).append({"status": StepStatus.RUNNING.value, "attempt": attempt})
        elif resume is not None and not idempotent:
            # a parked non-idempotent step is claimed again before it resumes, so a crash leaves evidence
            self._commit(R, step_update=(step.sid, attempt, {"status": StepStatus.RUNNING.value}))
            resume["status"] = StepStatus.RUNNING.value
        timeout = step.timeout or plugin.default_timeout
        loop = asyncio.get_running_loop()
        logger = StepLogger(log, R.redactor, run_id=R.id, step_id=step.sid, attempt=attempt)
        ctx = StepContext(
            run_id=R.id, step_id=step.sid, attempt=attempt, idempotency_key=key, settings=self.settings,
            log=logger, redactor=R.redactor, scope=R.scope, deadline=loop.time() + timeout,
            resume_state=(resume or {}).get("resume_state") if resume else None,
            rehearsal=self.rehearsal.for_step(step.sid) if self.rehearsal is not None else None,
            raw_params=step.with_,
        )  # fmt: skip
        error: str | None = None
        retryable = False
        result: StepResult | Suspend | None = None
        span = tracing.TRACER.start_step(R.id, R.book.name, step.sid, step.type, attempt, started)
        err_output: dict[str, Any] = {}
        try:
            real = await asyncio.to_thread(resolve_secrets, rendered, self.secrets.fetch, R.redactor) \
                if refs else rendered  # fmt: skip
            params = plugin.Params.model_validate(real)
            async with asyncio.timeout(timeout):  # no extra task per step, unlike wait_for on 3.11
                with tracing.TRACER.current(span):  # http.request sends this span's traceparent
                    result = await plugin.run(params, ctx)
        except StepError as exc:
            error, retryable, err_output = exc.message, exc.retryable, exc.output
        except SecretError as exc:
            error, retryable = str(exc), exc.retryable
        except ValidationError as exc:
            error = "invalid parameters: " + "; ".join(
                f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False))
        except TimeoutError:
            error, retryable = f"timed out after {timeout:g}s", True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error, retryable = f"internal error in step type {step.type}: {type(exc).__name__}: {exc}", True
        finished = utcnow()
        self.stats["steps"] += 1
        artifacts = [(a.name, a.content_type, a.data) for a in ctx.artifacts]
        if isinstance(result, Suspend):
            observe_step(R.book.name, step.type, "waiting")
            tracing.TRACER.end_step(span, "waiting", finished)
            return self._record_suspend(R, step, attempt, key, inputs, idempotent, started, result, resume)
        if result is not None:
            output = _jsonable(R.redactor.redact_obj(result.output))
            summary = R.redactor.redact(result.summary)[:500]
            values = {"status": StepStatus.SUCCEEDED.value, "output": output, "summary": summary,
                      "finished_at": finished, "resume_state": None, "wake_at": None}  # fmt: skip
            events = [] if not idempotent or resume is not None else [
                R.event("step.started", step_id=step.sid, attempt=attempt, ts=started, type=step.type, params=display)]
            events.append(R.event("step.succeeded", step_id=step.sid, outcome="succeeded", attempt=attempt,
                                  ts=finished, summary=summary, duration_ms=_ms(started, finished)))  # fmt: skip
            self._write_result(R, step, attempt, key, inputs, idempotent, started, values, events, artifacts,
                               fresh=resume is None and idempotent, topic="step.succeeded")  # fmt: skip
            observe_step(R.book.name, step.type, "succeeded", (finished - started).total_seconds())
            tracing.TRACER.end_step(span, "succeeded", finished)
            return Done(output)
        # failure
        assert error is not None
        error = R.redactor.redact(error)
        retry_at = self._retry_at(R, step, retryable, verify_of)
        values = {"status": StepStatus.FAILED.value, "error": error, "finished_at": finished,
                  "output": _jsonable(R.redactor.redact_obj(err_output)) or None,
                  "retry_at": retry_at, "resume_state": None, "wake_at": None}  # fmt: skip
        events = [] if not idempotent or resume is not None else [
            R.event("step.started", step_id=step.sid, attempt=attempt, ts=started, type=step.type, params=display)]
        events.append(R.event("step.failed", step_id=step.sid, outcome="failed", attempt=attempt, ts=finished,
                              error=error, retry_at=retry_at.isoformat() if retry_at else None))  # fmt: skip
        self._write_result(R, step, attempt, key, inputs, idempotent, started, values, events, artifacts,
                           fresh=resume is None and idempotent, topic="step.failed", timer=retry_at)  # fmt: skip
        observe_step(R.book.name, step.type, "retrying" if retry_at else "failed", (finished - started).total_seconds())
        tracing.TRACER.end_step(span, "retrying" if retry_at else "failed", finished)
        if retry_at is not None:
            return Parked(retry_at, f"step {step.sid} failed ({error}); retry at {retry_at:%H:%M:%S}")
        return Failed(error)

    def _idempotent(self, plugin: Step[Any], step: StepSpec, rendered: dict[str, Any]) -> bool:
        if step.idempotent is not None:
            return step.idempotent
        try:
            return plugin.idempotent(plugin.Params.model_validate(rendered))
        except (ValidationError, TypeError, ValueError):
            return plugin.kind is not StepKind.REMEDIATION

    def _retry_at(self, R: RunState, step: StepSpec, retryable: bool, verify_of: StepSpec | None) -> datetime | None:
        now = utcnow()
        if verify_of is not None and verify_of.verify is not None:
            first = R.attempts(step.sid)[0]["started_at"] if R.attempts(step.sid) else now
            nxt = plus(now, verify_of.verify.interval)
            return nxt if nxt <= plus(first, verify_of.verify.within) else None
        if not retryable:
            return None
        policy = step.retry or RetryPolicy()
        used = 1 + sum(1 for r in R.attempts(step.sid) if r["status"] == StepStatus.FAILED.value
                       and not r.get("interrupted"))  # fmt: skip
        if used >= policy.attempts:
            return None
        return plus(now, backoff_delay(policy, used))

    # ---- recording ----------------------------------------------------------------------------------------------

    def _step_row(self, R: RunState, step: StepSpec, attempt: int, status: StepStatus, key: str,
                  inputs: dict[str, Any], idempotent: bool, started: datetime) -> dict[str, Any]:  # fmt: skip
        return {"run_id": R.id, "step_id": step.sid, "step_type": step.type, "attempt": attempt,
                "status": status.value, "idempotent": idempotent, "interrupted": False, "idempotency_key": key,
                "inputs": inputs or None, "started_at": started}  # fmt: skip

    def _write_result(self, R: RunState, step: StepSpec, attempt: int, key: str, inputs: dict[str, Any],
                      idempotent: bool, started: datetime, values: dict[str, Any], events: list[audit.Event],
                      artifacts: list[tuple[str, str, bytes]], *, fresh: bool, topic: str,
                      timer: datetime | None = None) -> None:  # fmt: skip
        row = {**self._step_row(R, step, attempt, StepStatus(values["status"]), key, inputs, idempotent, started),
               **values}  # fmt: skip
        timers = [(step.sid, "retry", timer)] if timer is not None else []
        self._commit(R, step_insert=row if fresh else None,
                     step_update=None if fresh else (step.sid, attempt, values), events=events,
                     artifacts=[(step.sid, *a) for a in artifacts], timers=timers,
                     outbox=[(topic, {"run_id": R.id, "step_id": step.sid})], relaxed=idempotent)  # fmt: skip
        rows = R.journal.setdefault(step.sid, [])
        if fresh or not rows:
            rows.append(row)
        else:
            rows[-1].update(values)

    def _record_skip(self, R: RunState, step: StepSpec, reason: str) -> None:
        now = utcnow()
        row = {**self._step_row(R, step, 1, StepStatus.SKIPPED, f"{R.id}:{step.sid}:1", {}, True, now),
               "error": reason, "finished_at": now}  # fmt: skip
        self._commit(R, step_insert=row, events=[R.event("step.skipped", step_id=step.sid, outcome="skipped",
                                                         reason=reason)])  # fmt: skip
        R.journal.setdefault(step.sid, []).append(row)

    def _fail_before_start(self, R: RunState, step: StepSpec, error: str, attempt: int = 1) -> Outcome:
        now = utcnow()
        error = R.redactor.redact(error)
        row = {**self._step_row(R, step, attempt, StepStatus.FAILED, f"{R.id}:{step.sid}:{attempt}", {}, True, now),
               "error": error, "finished_at": now}  # fmt: skip
        existing = R.latest(step.sid)
        if existing is not None and existing.get("attempt") == attempt:
            self._commit(R, step_update=(step.sid, attempt, {"status": StepStatus.FAILED.value, "error": error,
                                                             "finished_at": now, "retry_at": None}),
                         events=[R.event("step.failed", step_id=step.sid, outcome="failed", error=error)])  # fmt: skip
            existing.update(status=StepStatus.FAILED.value, error=error, retry_at=None)
        else:
            self._commit(R, step_insert=row, events=[R.event("step.failed", step_id=step.sid, outcome="failed",
                                                             error=error)])  # fmt: skip
            R.journal.setdefault(step.sid, []).append(row)
        return Failed(error)

    def _record_suspend(self, R: RunState, step: StepSpec, attempt: int, key: str, inputs: dict[str, Any],
                        idempotent: bool, started: datetime, s: Suspend, resume: dict[str, Any] | None) -> Outcome:  # fmt: skip
        values = {"status": StepStatus.WAITING.value, "resume_state": _jsonable(s.state), "wake_at": s.until,
                  "summary": R.redactor.redact(s.reason)[:500]}  # fmt: skip
        fresh = resume is None and idempotent
        events = []
        if resume is None:
            events.append(R.event("step.waiting", step_id=step.sid, outcome="waiting", reason=s.reason,
                                  until=s.until.isoformat() if s.until else None))  # fmt: skip
        self._write_result(R, step, attempt, key, inputs, idempotent, started, values, events, [], fresh=fresh,
                           topic="step.waiting", timer=None)  # fmt: skip
        if s.until is not None:
            self._commit(R, timers=[(step.sid, "wake", s.until)])
        return Parked(s.until, s.reason or f"step {step.sid} waiting")

    def _record_hold(self, R: RunState, step: StepSpec, attempt: int, hold: Hold) -> Outcome:
        first = not R.row.get("reason") or R.row.get("reason") != hold.reason
        events = [R.event("step.held", step_id=step.sid, outcome="held", reason=hold.reason)] if first else []
        self._commit(R, run={"reason": hold.reason}, events=events, timers=[(step.sid, "hold", hold.recheck_at)],
                     outbox=[("step.held", {"run_id": R.id, "step_id": step.sid, "reason": hold.reason})] if first else [])  # fmt: skip
        R.row["reason"] = hold.reason
        return Parked(hold.recheck_at, hold.reason)

    def _hold(self, R: RunState, step: StepSpec) -> Hold | None:
        hold = remediation_hold(self.db)
        if hold is not None:
            return hold
        for check in self.hold_checks:
            try:
                h = check(R, step)
            except Exception as exc:  # a broken check holds the step (with why), never wedges the run
                log.error("hold check failed", run_id=R.id, step_id=step.sid, error=repr(exc))
                h = Hold(f"held: the hold check {type(check).__name__} failed ({type(exc).__name__}); "
                         "the step waits and is re-checked", plus(utcnow(), HOLD_RECHECK_SECONDS))  # fmt: skip
            if h is not None:
                return h
        return None

    def _fire_timers(self, R: RunState) -> None:
        with self.db.tx() as conn:
            conn.execute(update(TIMERS).where(TIMERS.c.run_id == R.id, TIMERS.c.fired_at.is_(None),
                                              TIMERS.c.fire_at <= utcnow()).values(fired_at=utcnow()))  # fmt: skip

    def _commit(self, R: RunState, *, run: dict[str, Any] | None = None, step_insert: dict[str, Any] | None = None,
                step_update: tuple[str, int, dict[str, Any]] | None = None, events: list[audit.Event] | None = None,
                artifacts: list[tuple[str, str, str, bytes]] | None = None,
                timers: Sequence[tuple[str | None, str, datetime]] | None = None,
                outbox: list[tuple[str, dict[str, Any]]] | None = None,
                extra: Any = None, relaxed: bool = False) -> None:  # fmt: skip
        """One transaction: fenced run update (refused if we lost the lease) plus journal, audit, timers."""
        now = utcnow()
        values: dict[str, Any] = {"updated_at": now, "lease_expires_at": plus(now, self.settings.lease_seconds)}
        if run:
            values.update(run)
        # Only records of idempotent steps may commit asynchronously on PostgreSQL (a *database server* crash
        # then just re-runs the step, which is safe by definition); everything else is durable at commit.
        durable = not relaxed
        side = self._side_rows(R, artifacts or [], timers or [], outbox or [], now)

        def write(raw: Raw, conn: Connection | None) -> None:
            sets = ", ".join(f"{k} = :v_{k}" for k in values)
            fenced = raw.send(
                f"UPDATE runs SET {sets} WHERE id = :id AND fence = :fence AND lease_owner = :owner "
                "RETURNING cancel_requested",
                {**{f"v_{k}": v for k, v in values.items()}, "id": R.id, "fence": R.fence, "owner": self.owner},
            )  # fmt: skip
            head = raw.send(audit.HEAD_SQL + audit.lock_clause(raw), {}) if events and extra is None else None
            row = fenced.fetchone()  # one round trip for both on PostgreSQL (pipeline mode)
            if row is None:
                raise LeaseLost(R.id)
            if head is not None:
                h = head.fetchone()
                raw.audit_head = (int(h[0]), str(h[1])) if h else None
            R.cancel_requested = bool(row[0])
            if step_insert is not None:
                raw.insert("step_executions", step_insert)
            if step_update is not None:
                sid, attempt, vals = step_update
                raw.update("step_executions", vals, "run_id = :r AND step_id = :s AND attempt = :a",
                           {"r": R.id, "s": sid, "a": attempt})  # fmt: skip
            for table, rows in side:
                raw.insert_many(table, rows)
            if extra is not None:
                extra(conn)
            if events:
                raw.audit_rows = audit.append(raw, events)

        if not (extra is None and not self.db.is_sqlite and self._commit_one_trip(
                R, values, step_insert=step_insert, step_update=step_update, events=events or [], side=side,
                durable=durable)):  # fmt: skip
            cache = self.db.audit_cache
            # PostgreSQL: this process's cached-head commits wait meanwhile instead of failing on a head we move
            with cache.lock if events and not self.db.is_sqlite else contextlib.nullcontext():
                if extra is None:  # the hot path: this thread's own DBAPI connection, no pool round trip
                    with self.db.raw_tx(durable=durable) as raw:
                        write(raw, None)
                else:
                    with self.db.tx() as conn:
                        raw = Raw(conn)
                        write(raw, conn)
                if raw.audit_rows:
                    cache.advance(raw.audit_rows[-1]["seq"], raw.audit_rows[-1]["hash"])
        for _, _, at in timers or []:
            self._schedule_wake(at)
        if outbox and self.outbox_enabled and self.on_outbox is not None:
            self.on_outbox()  # delivery starts now, not at its next poll

    def _side_rows(self, R: RunState, artifacts: list[tuple[str, str, str, bytes]],
                   timers: Sequence[tuple[str | None, str, datetime]], outbox: list[tuple[str, dict[str, Any]]],
                   now: datetime) -> list[tuple[str, list[dict[str, Any]]]]:  # fmt: skip
        """The rows a commit adds beside the journal and the audit trail, per table, in insertion order."""
        side: list[tuple[str, list[dict[str, Any]]]] = []
        if artifacts:
            side.append(("artifacts", [{"run_id": R.id, "step_id": sid, "name": n, "content_type": ct, "data": d,
                                        "created_at": now} for sid, n, ct, d in artifacts]))  # fmt: skip
        if timers:
            side.append(("timers", [{"run_id": R.id, "step_id": sid, "purpose": p, "fire_at": at}
                                    for sid, p, at in timers]))  # fmt: skip
        if outbox and self.outbox_enabled:
            side.append(("outbox", [{"topic": t, "run_id": R.id, "payload": p, "created_at": now,
                                     "next_attempt_at": now, "attempts": 0} for t, p in outbox]))  # fmt: skip
        return side

    def _commit_one_trip(self, R: RunState, values: dict[str, Any], *, step_insert: dict[str, Any] | None,
                         step_update: tuple[str, int, dict[str, Any]] | None, events: list[audit.Event],
                         side: list[tuple[str, list[dict[str, Any]]]], durable: bool) -> bool:  # fmt: skip
        """PostgreSQL: the whole commit as one statement (see pgcommit). False: the cached audit head was stale
        (or unknown) and nothing was written; the caller takes the general path."""
        cache = self.db.audit_cache
        with cache.lock if events else contextlib.nullcontext():
            head = cache.head
            if events and head is None:
                return False
            rows = audit.chain_rows(events, *head) if events and head else []
            sql, params = pgcommit.step_commit(run_id=R.id, fence=R.fence, owner=self.owner, run_values=values,
                                               head=head, audit_rows=rows, step_insert=step_insert,
                                               step_update=step_update, inserts=side)  # fmt: skip
            with self.db.raw_tx(durable=durable) as raw:
                cur = raw.send(sql, params)
            fenced, cancel, head_ok = cur.fetchone()  # read after the commit: one round trip for everything
            if not head_ok:
                cache.head = None
                return False
            if not fenced:
                raise LeaseLost(R.id)
            if rows:
                cache.head = (rows[-1]["seq"], rows[-1]["hash"])
        R.cancel_requested = bool(cancel)
        return True

    def _release(self, run_id: str, fence: int, wake_in: float | None = None) -> None:
        with self.db.tx() as conn:
            conn.execute(update(RUNS).where(RUNS.c.id == run_id, RUNS.c.fence == fence).values(
                lease_owner=None, lease_expires_at=None,
                **({"wake_at": plus(utcnow(), wake_in)} if wake_in is not None else {})))  # fmt: skip

    def _park(self, R: RunState, p: Parked) -> None:
        self._commit(R, run={"status": RunStatus.WAITING.value, "wake_at": p.wake_at, "lease_owner": None,
                             "lease_expires_at": None, "reason": R.redactor.redact(p.reason)[:1000]},
                     events=[R.event("run.waiting", outcome="waiting", reason=p.reason,
                                     until=p.wake_at.isoformat() if p.wake_at else None)],
                     outbox=[("run.waiting", {"run_id": R.id, "reason": p.reason})])  # fmt: skip
        if p.wake_at is not None:
            self._schedule_wake(p.wake_at)

    def _finish(self, R: RunState, status: RunStatus, reason: str) -> None:
        now = utcnow()
        key = R.row.get("concurrency_key")
        reason = R.redactor.redact(reason)

        def extra(conn: Connection) -> None:
            conn.execute(update(APPROVALS).where(APPROVALS.c.run_id == R.id, APPROVALS.c.status == "pending")
                         .values(status="cancelled", decided_at=now, reason=f"run {status.value}"))  # fmt: skip
            conn.execute(update(TIMERS).where(TIMERS.c.run_id == R.id, TIMERS.c.fired_at.is_(None))
                         .values(fired_at=now))  # fmt: skip
            if key is not None:  # wake runs queued behind this one
                conn.execute(update(RUNS).where(RUNS.c.runbook_name == R.book.name, RUNS.c.concurrency_key == key,
                                                RUNS.c.status == RunStatus.PENDING.value, RUNS.c.id != R.id)
                             .values(wake_at=now))  # fmt: skip

        self._commit(R, run={"status": status.value, "finished_at": now, "wake_at": None, "lease_owner": None,
                             "lease_expires_at": None, "reason": reason[:1000]},
                     events=[R.event("run.finished", outcome=status.value, reason=reason)],
                     outbox=[("run.finished", {"run_id": R.id, "status": status.value, "reason": reason})],
                     extra=extra)  # fmt: skip
        self.stats["runs_finished"] += 1
        with contextlib.suppress(Exception):  # the run's root span, started when the run was created
            tracing.TRACER.run_ended(R.id, R.book.name, status.value, R.row["created_at"], now)
        REGISTRY.drop(R.id)
        for cb in self.on_run_end:
            try:
                cb(R.id, status)
            except Exception as exc:
                log.error("run-end hook failed", run_id=R.id, error=str(exc))
        if key is not None:
            self.wake()

    # ---- admission: concurrency and cooldown --------------------------------------------------------------------

    def _admit(self, R: RunState) -> bool:
        """Concurrency and cooldown are checked and the run started in one transaction (serialised per key)."""
        spec = R.book.spec
        key = R.row.get("concurrency_key")
        now = utcnow()
        verdict: dict[str, Any] = {}

        def check(conn: Connection) -> None:
            if conn.dialect.name == "postgresql" and key is not None:
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"{R.book.name}\x1f{key}"})
            if spec.concurrency is not None and key is not None:
                live = conn.execute(select(func.count()).select_from(RUNS).where(
                    RUNS.c.runbook_name == R.book.name, RUNS.c.concurrency_key == key, RUNS.c.id != R.id,
                    RUNS.c.status.in_([RunStatus.RUNNING.value, RunStatus.WAITING.value]))).scalar_one()  # fmt: skip
                if live >= spec.concurrency.limit:
                    verdict["limit"] = (live, spec.concurrency.on_limit)
            if "limit" not in verdict and spec.cooldown and not R.row["manual"]:
                last = conn.execute(select(func.max(RUNS.c.finished_at)).where(
                    RUNS.c.runbook_name == R.book.name, RUNS.c.id != R.id, RUNS.c.started_at.is_not(None),
                    (RUNS.c.concurrency_key == key) if key is not None else RUNS.c.concurrency_key.is_(None),
                )).scalar_one()  # fmt: skip
                if last is not None and plus(last, spec.cooldown) > now:
                    verdict["cooldown"] = plus(last, spec.cooldown)
            if not verdict:  # admitted: start in this same transaction
                conn.execute(update(RUNS).where(RUNS.c.id == R.id).values(
                    status=RunStatus.RUNNING.value, started_at=now))  # fmt: skip
                audit.append(conn, [R.event("run.started", outcome="running")])

        needs_check = spec.concurrency is not None or bool(spec.cooldown)
        if not needs_check:
            self._commit(R, run={"status": RunStatus.RUNNING.value, "started_at": now},
                         events=[R.event("run.started", outcome="running")],
                         outbox=[("run.started", {"run_id": R.id})])  # fmt: skip
            R.row["status"] = RunStatus.RUNNING.value
            return True
        self._commit(R, extra=check)
        if "limit" in verdict:
            live, policy = verdict["limit"]
            limit = spec.concurrency.limit if spec.concurrency else 0
            reason = f"concurrency limit {limit} reached for key {key!r} ({live} live)"
            if policy == "queue":
                self._commit(R, run={"wake_at": None, "lease_owner": None, "lease_expires_at": None,
                                     "reason": f"queued: {reason}"},
                             events=[R.event("run.queued", outcome="queued", reason=reason)])  # fmt: skip
                return False
            self._finish(R, RunStatus.SKIPPED, f"skipped: {reason}")
            return False
        if "cooldown" in verdict:
            self._finish(R, RunStatus.SKIPPED, f"skipped: cooldown for key {key!r} until {verdict['cooldown']:%Y-%m-%d %H:%M:%S}Z")
            return False
        R.row["status"] = RunStatus.RUNNING.value
        if self.outbox_enabled:
            self._commit(R, outbox=[("run.started", {"run_id": R.id})])
        return True

    # ---- approvals ----------------------------------------------------------------------------------------------

    def _approval_gate(self, R: RunState, step: StepSpec, rendered: Any = None) -> Outcome | None:
        """`rendered`: the step's `with`, rendered by the caller (off the loop) when no request exists yet."""
        spec = step.approval
        assert spec is not None
        appr = R.approvals.get(step.sid)
        now = utcnow()
        if appr is None:
            # label values are kept apart and only ever looked up in approval_label_groups (engine/approvals.py)
            req = ApprovalRequest.from_spec(spec, (R.scope.get("alert") or {}).get("labels"), R.row["requester"])
            policy = {**req.policy_fields(),
                      "on_timeout": spec.on_timeout, "on_deny": spec.on_deny, "escalate_to": spec.escalate_to,
                      "step_type": step.type, "step_name": step.name or step.sid,
                      "params": mask_placeholders(rendered), "secrets": secret_refs(rendered),
                      "timeout": spec.timeout}  # fmt: skip
            appr = {"id": new_id("ap_"), "run_id": R.id, "step_id": step.sid, "status": "pending",
                    "runbook_version_id": R.version_id, "min_approvals": spec.min_approvals,
                    "policy": _jsonable(policy), "requester": R.row["requester"], "requested_at": now,
                    "expires_at": plus(now, spec.timeout), "escalated": False, "version": 0}  # fmt: skip

            def add(conn: Connection) -> None:
                conn.execute(insert(APPROVALS), [appr])

            self._commit(R, extra=add, timers=[(step.sid, "approval_timeout", appr["expires_at"])],
                         events=[R.event("approval.requested", step_id=step.sid, outcome="pending",
                                         approval_id=appr["id"], min_approvals=spec.min_approvals,
                                         approvers=req.describe(PolicyConfig.from_settings(self.settings)),
                                         params=policy["params"], secrets=policy["secrets"],
                                         expires_at=appr["expires_at"].isoformat())],
                         outbox=[("approval.requested", {"run_id": R.id, "step_id": step.sid,
                                                         "approval_id": appr["id"]})])  # fmt: skip
            R.approvals[step.sid] = appr
            return Parked(appr["expires_at"], f"waiting for approval of {step.sid}")
        status = appr["status"]
        if status in ("approved", "denied") and appr.get("decided_at") is not None:
            self._observe_wait(R, appr, status)
        if status == "approved":
            return None
        if status == "denied":
            reason = f"denied by {appr['decided_by']}" + (f": {appr['reason']}" if appr.get("reason") else "")
            if spec.on_deny == "skip":
                self._record_skip(R, step, reason)
                return Skipped(reason)
            return Stopped(RunStatus.ABORTED, f"step {step.sid} {reason}")
        if status in ("cancelled", "expired"):
            return Stopped(RunStatus.ABORTED, f"approval for {step.sid} {status}")
        if appr["expires_at"] > now:
            return Parked(appr["expires_at"], f"waiting for approval of {step.sid}")
        return self._approval_timeout(R, step, appr)

    def _approval_timeout(self, R: RunState, step: StepSpec, appr: dict[str, Any]) -> Outcome:
        spec = step.approval
        assert spec is not None
        now = utcnow()
        if spec.on_timeout == "escalate" and not appr["escalated"]:
            new_exp = plus(now, spec.timeout)

            def esc(conn: Connection) -> None:
                res = conn.execute(update(APPROVALS).where(APPROVALS.c.id == appr["id"], APPROVALS.c.escalated.is_(False),
                                                           APPROVALS.c.status == "pending")
                                   .values(escalated=True, expires_at=new_exp, version=APPROVALS.c.version + 1))  # fmt: skip
                if res.rowcount != 1:
                    raise LeaseLost(R.id)

            self._commit(R, extra=esc, timers=[(step.sid, "approval_timeout", new_exp)],
                         events=[R.event("approval.escalated", step_id=step.sid, outcome="escalated",
                                         approval_id=appr["id"], escalate_to=spec.escalate_to,
                                         expires_at=new_exp.isoformat())],
                         outbox=[("approval.escalated", {"run_id": R.id, "step_id": step.sid,
                                                         "approval_id": appr["id"]})])  # fmt: skip
            appr.update(escalated=True, expires_at=new_exp)
            return Parked(new_exp, f"approval of {step.sid} escalated")

        def expire(conn: Connection) -> None:
            conn.execute(update(APPROVALS).where(APPROVALS.c.id == appr["id"], APPROVALS.c.status == "pending")
                         .values(status="expired", decided_at=now, version=APPROVALS.c.version + 1))  # fmt: skip

        self._commit(R, extra=expire, events=[R.event("approval.expired", step_id=step.sid, outcome="expired",
                                                      approval_id=appr["id"], on_timeout=spec.on_timeout)])  # fmt: skip
        appr["status"] = "expired"
        self._observe_wait(R, {**appr, "decided_at": now}, "expired")
        if spec.on_timeout == "skip":
            self._record_skip(R, step, "approval timed out")
            return Skipped("approval timed out")
        return Stopped(RunStatus.ABORTED, f"approval for {step.sid} timed out")


    _waits_seen: set[str] = set()  # approval ids whose wait this process has observed (a retry sees it again)

    def _observe_wait(self, R: RunState, appr: dict[str, Any], decision: str) -> None:
        seen = Engine._waits_seen
        if appr["id"] in seen:
            return
        if len(seen) > 10_000:
            seen.clear()
        seen.add(appr["id"])
        with contextlib.suppress(Exception):  # a metric never fails a run
            observe_approval(R.book.name, decision, (appr["decided_at"] - appr["requested_at"]).total_seconds())
            tracing.TRACER.approval_wait(R.id, R.book.name, appr["step_id"], decision, appr["requested_at"],
                                         appr["decided_at"])  # fmt: skip


def verify_spec(step: StepSpec) -> StepSpec:
    assert step.verify is not None
    return StepSpec.model_construct(
        id=f"{step.sid}__verify", type=step.verify.type, with_=step.verify.with_, name=f"verify {step.sid}",
        when=None, timeout=None, retry=None, risk=None, idempotent=True, approval=None, verify=None,
        on_failure=[], continue_on_failure=False,
    )  # fmt: skip


def _jsonable(obj: Any) -> Any:
    if obj is None:
        return None
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.loads(json.dumps(obj, default=str))


def _ms(a: datetime, b: datetime) -> int:
    return int((b - a).total_seconds() * 1000)
