"""Approve / deny from Slack (buttons, modal, `/runbot approve`): one policy, checked in one place.

Slack-only checks happen here (workspace, runbook changed since the request, incident resolved, cancel
requested) and the Slack facts are looked up (which approver groups the clicker is in); the engine's `vote`
then applies the one approval policy (engine/approvals.py: approvers, label table, self-approval, distinct
people) and the rest with compare-and-set (expiry, finished run, concurrent clicks). Refusals are audited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select

from runbot.adapters.slack.authz import Actor, Authorizer, DirectoryError
from runbot.adapters.slack.store import SlackStore
from runbot.engine.control import ApprovalRefused, CommandError
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
        problem = self.authorizer.workspace_problem(actor) or self.stale_problem(appr, run)
        member_of: dict[str, bool] = {}
        if not problem:
            try:
                member_of = self.authorizer.membership(actor, appr)
            except DirectoryError as exc:
                problem = f"could not check the approver groups ({exc}); try again in a moment"
        if problem:
            self._audit_refusal(actor, appr, run, problem, approve)
            return Decision(False, f"Refused: {problem}.", run["id"])
        try:  # the engine's approval policy decides who this is and whether they may vote
            res = self.rt.engine.vote(approval_id, actor.identity, approve, user_name=actor.user_name or actor.user_id,
                                      reason=reason or None, member_of=member_of)  # fmt: skip
        except ApprovalRefused as exc:  # audited by the engine
            return Decision(False, f"Refused: {exc}.", run["id"])
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
        problem = self.authorizer.workspace_problem(actor) or self.stale_problem(appr, run)
        if problem:
            return problem
        try:
            member_of = self.authorizer.membership(actor, appr)
        except DirectoryError as exc:
            return f"could not check the approver groups ({exc}); try again in a moment"
        return self.rt.engine.vote_problem(approval_id, actor.identity, False, member_of)

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
        self.rt.engine.audit_refusal(appr, run, actor.identity, why, approve, user_name=actor.user_name,
                                     team_id=actor.team_id)  # fmt: skip
