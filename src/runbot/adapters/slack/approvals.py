"""Approve / deny from Slack (buttons, modal, `/runbot approve`): one policy, checked in one place.

Slack-only checks happen here (workspace, approver membership, runbook changed since the request,
incident resolved, cancel requested); the engine's `vote` then does the rest with compare-and-set
(expiry, finished run, self-approval, distinct approvers, concurrent clicks). Refusals are audited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select

from runbot.adapters.slack.authz import Actor, Authorizer
from runbot.adapters.slack.store import SlackStore
from runbot.audit import log as audit
from runbot.engine.control import CommandError
from runbot.engine.state import APPROVALS, INCIDENTS, RUNS, VERSIONS

if TYPE_CHECKING:
    from runbot.app import Runtime

log = structlog.get_logger("runbot.slack.approvals")


@dataclass
class Decision:
    ok: bool
    message: str  # for the person who clicked (ephemeral)
    run_id: str | None = None


class ApprovalService:
    def __init__(self, rt: Runtime, authorizer: Authorizer, store: SlackStore,
                 on_change: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self.rt = rt
        self.authorizer = authorizer
        self.store = store
        self.on_change = on_change

    def load(self, approval_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        with self.rt.db.read() as conn:
            appr = conn.execute(select(APPROVALS).where(APPROVALS.c.id == approval_id)).mappings().first()
            if appr is None:
                return None
            run = conn.execute(select(RUNS).where(RUNS.c.id == appr["run_id"])).mappings().one()
            return dict(appr), dict(run)

    def decide(self, actor: Actor, approval_id: str, approve: bool, reason: str | None = None) -> Decision:
        found = self.load(approval_id)
        if found is None:
            return Decision(False, "Unknown approval (it may belong to another runbot installation).")
        appr, run = found
        problem = self.authorizer.approval_problem(actor, appr) or self.stale_problem(appr, run)
        if problem:
            self._audit_refusal(actor, appr, run, problem, approve)
            return Decision(False, f"Refused: {problem}.", run["id"])
        try:
            res = self.rt.engine.vote(approval_id, actor.ref, approve, user_name=actor.user_name or actor.user_id,
                                      reason=reason or None)  # fmt: skip
        except CommandError as exc:
            self._audit_refusal(actor, appr, run, str(exc), approve)
            return Decision(False, f"Refused: {exc}.", run["id"])
        self.on_change()
        return Decision(True, f"{'Approved' if approve else 'Denied'} {appr['step_id']} in run {run['id']}: "
                        f"{res.message}.", run["id"])  # fmt: skip

    def may_open_deny(self, actor: Actor, approval_id: str) -> str | None:
        """Before showing the deny modal: the same checks as a decision, so nobody types a reason in vain."""
        found = self.load(approval_id)
        if found is None:
            return "Unknown approval."
        appr, run = found
        if appr["status"] != "pending":
            return f"This approval is already {appr['status']}."
        return self.authorizer.approval_problem(actor, appr) or self.stale_problem(appr, run)

    def stale_problem(self, appr: dict[str, Any], run: dict[str, Any]) -> str | None:
        """A click that no longer fits the world: run stopping, incident resolved, runbook changed."""
        if run.get("cancel_requested"):
            return f"run {run['id']} is being cancelled"
        if run.get("incident_id"):
            with self.rt.db.read() as conn:
                inc = conn.execute(select(INCIDENTS.c.status, INCIDENTS.c.resolved_at)
                                   .where(INCIDENTS.c.id == run["incident_id"])).first()  # fmt: skip
            if inc is not None and inc.status == "resolved":
                return f"incident {run['incident_id']} is resolved; nothing should change now"
        with self.rt.db.read() as conn:
            ver = conn.execute(select(VERSIONS.c.name, VERSIONS.c.version_hash)
                               .where(VERSIONS.c.id == appr["runbook_version_id"])).first()  # fmt: skip
        if ver is None:
            return "the runbook version of this request is unknown"
        current = self.rt.catalog.get(ver.name)
        if current is None:
            return f"runbook {ver.name} is no longer loaded"
        if current.version_hash != ver.version_hash:
            return (f"runbook {ver.name} changed since this approval was requested "
                    f"({ver.version_hash[:8]} -> {current.version_hash[:8]}); start a new run to use the new version")  # fmt: skip
        return None

    def pending_for(self, run_ref: str, step: str | None = None) -> tuple[str | None, str]:
        """(approval_id, '') for a run's single pending approval, or (None, why not)."""
        try:
            run_id = self.rt.engine.resolve_run_id(run_ref)
        except CommandError as exc:
            return None, str(exc)
        pending = [a for a in self.rt.engine.pending_approvals(run_id) if step is None or a["step_id"] == step]
        if not pending:
            return None, f"run {run_id} has no pending approval" + (f" for step {step}" if step else "")
        if len(pending) > 1:
            return None, "several approvals are pending; name the step: " + ", ".join(a["step_id"] for a in pending)
        return pending[0]["id"], ""

    def _audit_refusal(self, actor: Actor, appr: dict[str, Any], run: dict[str, Any], why: str,
                       approve: bool) -> None:  # fmt: skip
        try:
            with self.rt.db.tx() as conn:
                audit.append(conn, [audit.Event("approval.refused", actor=actor.ref, run_id=run["id"],
                                                step_id=appr["step_id"], incident_id=run.get("incident_id"),
                                                runbook=run["runbook_name"], outcome="refused",
                                                details={"approval_id": appr["id"], "reason": why,
                                                         "decision": "approve" if approve else "deny",
                                                         "user_name": actor.user_name, "team_id": actor.team_id})])  # fmt: skip
        except Exception as exc:  # the refusal stands even if its audit record could not be written
            log.warning("could not audit a refused approval", run_id=run["id"], error=type(exc).__name__)
