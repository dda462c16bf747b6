"""Commands from the outside (intake, Slack, CLI) that change run state: create, cancel, decide, vote, freeze.

Each is one transaction with its audit events; the worker picks the change up through `wake_at`.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from runbot.audit import log as audit
from runbot.domain import Decision, RunStatus, StepStatus
from runbot.engine.approvals import ApprovalRequest, Identity, PolicyConfig, PriorVote, count_people, decide
from runbot.engine.state import APPROVALS, CONTROLS, OUTBOX, RUNS, STEPS, TIMERS, VERSIONS, VOTES, new_id
from runbot.runbooks.loader import LoadedRunbook, RunbookError, parse_source
from runbot.runbooks.templating import KEY_LIMITS, TemplateFailure, render
from runbot.store.types import utcnow

log = structlog.get_logger("runbot.engine.control")

if TYPE_CHECKING:
    from runbot.settings import Settings
    from runbot.steps.registry import StepRegistry
    from runbot.store.db import Database


class CommandError(ValueError):
    """A refused command; the message is meant for the person who gave it."""


class ApprovalRefused(CommandError):
    """The approval policy refused a vote; it is already in the audit trail as `approval.refused`."""


def load_version(db: Database, version_id: int) -> LoadedRunbook:
    with db.read() as conn:
        row = conn.execute(select(VERSIONS).where(VERSIONS.c.id == version_id)).mappings().one()
    book, problems = parse_source(row["source"], row["source_path"], None)
    if book is None:
        raise RunbookError(problems)
    return book


def version_of(conn: Connection, run: Any) -> str | None:
    """The short version hash of the runbook a run started with (audit events name it, like the engine's own)."""
    h = conn.execute(select(VERSIONS.c.version_hash).where(VERSIONS.c.id == run["runbook_version_id"])).scalar()
    return str(h)[:12] if h else None


def register_version(conn: Connection, book: LoadedRunbook) -> int:
    row = conn.execute(select(VERSIONS.c.id).where(VERSIONS.c.name == book.name,
                                                   VERSIONS.c.version_hash == book.version_hash)).first()  # fmt: skip
    if row is not None:
        return int(row.id)
    res = conn.execute(insert(VERSIONS).values(name=book.name, version_hash=book.version_hash,
                                               source_path=book.path, source=book.source, loaded_at=utcnow()))  # fmt: skip
    return int(res.inserted_primary_key[0])  # type: ignore[index]


@dataclass
class VoteResult:
    status: str  # the approval's status after this vote
    approvals: int
    needed: int
    message: str


class ControlMixin:
    db: Database
    settings: Settings
    registry: StepRegistry

    def wake(self) -> None:  # provided by Engine
        raise NotImplementedError

    # ---- runs -------------------------------------------------------------------------------------------------

    def create_run(self, book: LoadedRunbook, *, alert: dict[str, Any] | None = None, alert_id: str | None = None,
                   incident_id: str | None = None, params: dict[str, Any] | None = None, requester: str = "system",
                   manual: bool = False, conn: Connection | None = None) -> str:  # fmt: skip
        """Record a new run (pending). With `conn`, joins the caller's transaction (intake commits alert+run)."""
        try:
            resolved = book.spec.resolve_params(params or {})
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        run_id = new_id("r")
        key = None
        if book.spec.concurrency is not None:
            scope = {"alert": alert or {}, "params": resolved, "incident": {}, "steps": {},
                     "run": {"id": run_id, "runbook": book.name, "requester": requester}}  # fmt: skip
            try:
                key = str(render(book.spec.concurrency.key, scope, KEY_LIMITS))
            except TemplateFailure as exc:
                raise CommandError(f"concurrency.key: {exc}") from None
        now = utcnow()

        def write(c: Connection) -> None:
            vid = register_version(c, book)
            c.execute(insert(RUNS).values(
                id=run_id, runbook_name=book.name, runbook_version_id=vid, status=RunStatus.PENDING.value,
                incident_id=incident_id, alert_id=alert_id, alert=alert, requester=requester, params=resolved,
                concurrency_key=key, manual=manual, created_at=now, updated_at=now, wake_at=now, fence=0,
                cancel_requested=False))  # fmt: skip
            audit.append(c, [audit.Event("run.created", actor=requester, run_id=run_id, incident_id=incident_id,
                                         runbook=book.name, runbook_version=book.short_version, outcome="pending",
                                         details={"params": resolved, "manual": manual, "alert_id": alert_id})])  # fmt: skip

        if conn is not None:
            write(conn)
        else:
            with self.db.tx() as c:
                write(c)
            self.wake()
        return run_id

    def resolve_run_id(self, ref: str) -> str:
        with self.db.read() as conn:
            ids = [r.id for r in conn.execute(select(RUNS.c.id).where(RUNS.c.id.like(f"{ref}%")).limit(3))]
        if not ids:
            raise CommandError(f"no run {ref!r}")
        if len(ids) > 1:
            raise CommandError(f"run id prefix {ref!r} is ambiguous ({', '.join(ids[:2])}, ...)")
        return ids[0]

    def cancel(self, run_id: str, actor: str, reason: str = "", *, conn: Connection | None = None) -> str:
        """With `conn`, joins the caller's transaction (intake cancels the runs of a resolved incident)."""
        now = utcnow()
        with self.db.tx() if conn is None else nullcontext(conn) as conn:
            run = conn.execute(select(RUNS).where(RUNS.c.id == run_id)).mappings().first()
            if run is None:
                raise CommandError(f"no run {run_id!r}")
            if RunStatus(run["status"]).terminal:
                raise CommandError(f"run {run_id} is already {run['status']}")
            leased = run["lease_owner"] is not None and run["lease_expires_at"] and run["lease_expires_at"] > now
            ev = audit.Event("run.cancel_requested" if leased else "run.finished", actor=actor, run_id=run_id,
                             incident_id=run["incident_id"], runbook=run["runbook_name"],
                             runbook_version=version_of(conn, run),
                             outcome=None if leased else RunStatus.CANCELLED.value,
                             details={"reason": reason or "cancelled"})  # fmt: skip
            if leased:
                conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(cancel_requested=True, updated_at=now))
            else:
                conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(
                    status=RunStatus.CANCELLED.value, finished_at=now, wake_at=None, fence=RUNS.c.fence + 1,
                    reason=f"cancelled by {actor}" + (f": {reason}" if reason else ""), updated_at=now))  # fmt: skip
                conn.execute(update(APPROVALS).where(APPROVALS.c.run_id == run_id, APPROVALS.c.status == "pending")
                             .values(status="cancelled", decided_at=now, reason="run cancelled"))  # fmt: skip
                conn.execute(update(TIMERS).where(TIMERS.c.run_id == run_id, TIMERS.c.fired_at.is_(None))
                             .values(fired_at=now))  # fmt: skip
                if run["concurrency_key"] is not None:
                    conn.execute(update(RUNS).where(RUNS.c.runbook_name == run["runbook_name"],
                                                    RUNS.c.concurrency_key == run["concurrency_key"],
                                                    RUNS.c.status == RunStatus.PENDING.value).values(wake_at=now))  # fmt: skip
                if getattr(self, "outbox_enabled", False):  # as _finish does: Slack learns the run ended
                    conn.execute(insert(OUTBOX).values(topic="run.finished", run_id=run_id, created_at=now,
                                                       next_attempt_at=now, attempts=0, payload={
                                                           "run_id": run_id, "status": RunStatus.CANCELLED.value,
                                                           "reason": reason or "cancelled"}))  # fmt: skip
            audit.append(conn, [ev])
        self.wake()
        return "cancel requested; the run stops after its current step" if leased else "cancelled"

    def decide(self, run_id: str, step_id: str, decision: Decision, actor: str) -> str:
        """A human's answer for an in-doubt step: retry it, skip it, or abort the run."""
        now = utcnow()
        with self.db.tx() as conn:
            run = conn.execute(select(RUNS).where(RUNS.c.id == run_id)).mappings().first()
            if run is None:
                raise CommandError(f"no run {run_id!r}")
            rec = conn.execute(select(STEPS).where(STEPS.c.run_id == run_id, STEPS.c.step_id == step_id)
                               .order_by(STEPS.c.attempt.desc()).limit(1)).mappings().first()  # fmt: skip
            if rec is None:
                raise CommandError(f"run {run_id} has no step {step_id!r} yet")
            if rec["status"] != StepStatus.IN_DOUBT.value:
                raise CommandError(f"step {step_id} is {rec['status']}, not in doubt: nothing to decide")
            where = (STEPS.c.id == rec["id"], STEPS.c.status == StepStatus.IN_DOUBT.value)
            note = f"decided {decision.value} by {actor}"
            if decision is Decision.RETRY:
                vals = {"status": StepStatus.FAILED.value, "interrupted": True, "retry_at": now,
                        "error": f"{rec['error']} -- {note}"}  # fmt: skip
            elif decision is Decision.SKIP:
                vals = {"status": StepStatus.SKIPPED.value, "error": note}
            else:
                vals = {"status": StepStatus.CANCELLED.value, "error": note}
            if conn.execute(update(STEPS).where(*where).values(**vals)).rowcount != 1:
                raise CommandError("the step changed meanwhile; look again")
            conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(wake_at=now, updated_at=now))
            audit.append(conn, [audit.Event("step.decided", actor=actor, run_id=run_id, step_id=step_id,
                                            incident_id=run["incident_id"], runbook=run["runbook_name"],
                                            runbook_version=version_of(conn, run),
                                            outcome=decision.value, details={"previous": "in_doubt"})])  # fmt: skip
        self.wake()
        return note

    # ---- approvals -------------------------------------------------------------------------------------------

    def pending_approvals(self, run_id: str | None = None) -> list[dict[str, Any]]:
        q = select(APPROVALS).where(APPROVALS.c.status == "pending")
        if run_id:
            q = q.where(APPROVALS.c.run_id == run_id)
        with self.db.read() as conn:
            return [dict(r) for r in conn.execute(q.order_by(APPROVALS.c.requested_at)).mappings()]

    def vote(self, approval_id: str, user_id: str | Identity, approve: bool, *, user_name: str | None = None,
             reason: str | None = None, actor: str | None = None, break_glass: bool = False,
             member_of: Mapping[str, bool] | None = None, on_behalf_of: str | None = None) -> VoteResult:  # fmt: skip
        """Record one person's decision with compare-and-set; a double or concurrent click acts once.

        Who may vote is decided here, by the one approval policy (engine/approvals.py), inside this
        transaction: `user_id` is the voter's Identity (a stored ref such as `slack:T1/U1` or `cli:alice` is
        parsed into one; a bare name is trusted in-process code, e.g. the rehearsal driver). `member_of` are
        the approver groups the adapter found the Slack voter in. A refusal is audited and raises
        `ApprovalRefused` with the reason meant for the voter; nothing is recorded as a vote.
        """
        voter = user_id if isinstance(user_id, Identity) else Identity.parse(user_id) or Identity.internal(user_id)
        cfg = PolicyConfig.from_settings(self.settings)
        now = utcnow()
        actor = actor or voter.ref
        refused: tuple[dict[str, Any], dict[str, Any], str] | None = None
        with self.db.tx() as conn:
            q = select(APPROVALS).where(APPROVALS.c.id == approval_id)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()
            appr = conn.execute(q).mappings().first()
            if appr is None:
                raise CommandError("unknown approval (it may belong to another runbot installation)")
            run = conn.execute(select(RUNS).where(RUNS.c.id == appr["run_id"])).mappings().one()
            if appr["status"] != "pending":
                raise CommandError(f"this approval is already {appr['status']}"
                                   + (f" by {appr['decided_by']}" if appr["decided_by"] else ""))  # fmt: skip
            if RunStatus(run["status"]).terminal:
                raise CommandError(f"run {run['id']} is {run['status']}; nothing to approve")
            if appr["expires_at"] <= now:
                raise CommandError("this approval request has expired")
            prior = [PriorVote(v.user_id, v.decision) for v in conn.execute(
                select(VOTES.c.user_id, VOTES.c.decision).where(VOTES.c.approval_id == approval_id))]  # fmt: skip
            verdict = decide(ApprovalRequest.from_row(dict(appr), cfg), voter, approve, prior, cfg, member_of)
            if not verdict.allowed:
                refused = (dict(appr), dict(run), verdict.reason)
            else:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(VOTES).values(approval_id=approval_id, user_id=voter.ref,
                                                          user_name=user_name, person=verdict.person,
                                                          on_behalf_of=on_behalf_of,
                                                          decision="approve" if approve else "deny", reason=reason,
                                                          at=now))  # fmt: skip
                except IntegrityError:
                    raise CommandError("you have already decided on this approval") from None
                prior.append(PriorVote(voter.ref, "approve" if approve else "deny"))
                approvals = count_people(prior, cfg)
                needed = appr["min_approvals"]
                new_status = "denied" if not approve else ("approved" if approvals >= needed else "pending")
                vals: dict[str, Any] = {"version": appr["version"] + 1}
                if new_status != "pending":
                    vals.update(status=new_status, decided_at=now, decided_by=user_name or voter.ref, reason=reason)
                res = conn.execute(update(APPROVALS).where(APPROVALS.c.id == approval_id,
                                                           APPROVALS.c.version == appr["version"],
                                                           APPROVALS.c.status == "pending").values(**vals))  # fmt: skip
                if res.rowcount != 1:
                    raise CommandError("someone else decided at the same moment; look again")
                if new_status != "pending":
                    conn.execute(update(RUNS).where(RUNS.c.id == appr["run_id"]).values(wake_at=now, updated_at=now))
                if getattr(self, "outbox_enabled", False):  # the approval message shows the vote, wherever it was cast
                    conn.execute(insert(OUTBOX).values(topic="approval.voted", run_id=appr["run_id"], created_at=now,
                                                       next_attempt_at=now, attempts=0,
                                                       payload={"run_id": appr["run_id"], "approval_id": approval_id}))  # fmt: skip
                action = {"approved": "approval.approved", "denied": "approval.denied"}.get(new_status, "approval.vote")
                audit.append(conn, [audit.Event(action, actor=actor, run_id=appr["run_id"], step_id=appr["step_id"],
                                                incident_id=run["incident_id"], runbook=run["runbook_name"],
                                                runbook_version=version_of(conn, run),
                                                outcome=new_status,
                                                details={"approval_id": approval_id, "user_id": voter.ref,
                                                         "user_name": user_name, "person": verdict.person,
                                                         "on_behalf_of": on_behalf_of,
                                                         "decision": "approve" if approve else "deny",
                                                         "reason": reason, "approvals": approvals, "needed": needed,
                                                         "break_glass": break_glass})])  # fmt: skip
        if refused is not None:
            appr_row, run_row, why = refused
            self.audit_refusal(appr_row, run_row, voter, why, approve, actor=actor, user_name=user_name,
                               on_behalf_of=on_behalf_of)  # fmt: skip
            raise ApprovalRefused(why)
        self.wake()
        msg = {"approved": f"approved ({approvals}/{needed}); the step runs now",
               "denied": "denied; the step will not run",
               "pending": f"recorded ({approvals}/{needed} approvals so far)"}[new_status]  # fmt: skip
        return VoteResult(new_status, approvals, needed, msg)

    def vote_problem(self, approval_id: str, voter: Identity, approve: bool,
                     member_of: Mapping[str, bool] | None = None) -> str | None:  # fmt: skip
        """The policy's answer before a vote is cast (deny form, App Home), without recording anything."""
        cfg = PolicyConfig.from_settings(self.settings)
        with self.db.read() as conn:
            appr = conn.execute(select(APPROVALS).where(APPROVALS.c.id == approval_id)).mappings().first()
            if appr is None:
                return "unknown approval"
            prior = [PriorVote(v.user_id, v.decision) for v in conn.execute(
                select(VOTES.c.user_id, VOTES.c.decision).where(VOTES.c.approval_id == approval_id))]  # fmt: skip
        verdict = decide(ApprovalRequest.from_row(dict(appr), cfg), voter, approve, prior, cfg, member_of)
        return None if verdict.allowed else verdict.reason

    def audit_refusal(self, appr: Mapping[str, Any], run: Mapping[str, Any], voter: Identity, why: str,
                      approve: bool, *, actor: str | None = None, user_name: str | None = None,
                      on_behalf_of: str | None = None, **extra: Any) -> None:  # fmt: skip
        """A refused vote, in the audit trail (its own transaction: the refusal stands even if this fails)."""
        try:
            with self.db.tx() as conn:
                audit.append(conn, [audit.Event("approval.refused", actor=actor or voter.ref, run_id=run["id"],
                                                step_id=appr["step_id"], incident_id=run.get("incident_id"),
                                                runbook=run["runbook_name"], outcome="refused",
                                                details={"approval_id": appr["id"], "reason": why,
                                                         "decision": "approve" if approve else "deny",
                                                         "user_id": voter.ref, "user_name": user_name,
                                                         "on_behalf_of": on_behalf_of, **extra})])  # fmt: skip
        except Exception as exc:
            log.warning("could not audit a refused approval", run_id=run["id"], error=type(exc).__name__)

    # ---- freeze ------------------------------------------------------------------------------------------------

    def set_freeze(self, frozen: bool, actor: str, reason: str = "") -> None:
        now = utcnow()
        value = {"frozen": frozen, "by": actor, "reason": reason, "at": now.isoformat()}
        with self.db.tx() as conn:
            if conn.execute(update(CONTROLS).where(CONTROLS.c.key == "freeze").values(value=value, updated_at=now)).rowcount == 0:
                conn.execute(insert(CONTROLS).values(key="freeze", value=value, updated_at=now))
            topic = "freeze.on" if frozen else "freeze.off"
            audit.append(conn, [audit.Event(topic, actor=actor, outcome="frozen" if frozen else "unfrozen",
                                            details={"reason": reason})])  # fmt: skip
            if getattr(self, "outbox_enabled", False):  # announced in the same transaction that freezes
                conn.execute(insert(OUTBOX).values(topic=topic, run_id=None, created_at=now, next_attempt_at=now,
                                                   attempts=0, payload={"actor": actor, "reason": reason}))  # fmt: skip
            if not frozen:  # held runs re-check now
                conn.execute(update(RUNS).where(RUNS.c.status == RunStatus.WAITING.value,
                                                RUNS.c.reason.like("remediations are frozen%")).values(wake_at=now))  # fmt: skip
        self.wake()
