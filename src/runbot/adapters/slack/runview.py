"""Everything a Slack message shows about a run, read from the database (never from memory).

Messages are rendered from this view, so a restarted process re-renders the same text, and an update that
arrives late simply shows the newest truth.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from runbot.engine.guards import freeze_state
from runbot.engine.state import APPROVALS, ARTIFACTS, INCIDENTS, RUNS, STEPS, VOTES
from runbot.runbooks.model import StepSpec

if TYPE_CHECKING:
    from runbot.app import Runtime
    from runbot.runbooks.loader import LoadedRunbook

HOLD_PREFIX = "remediations are frozen"


@dataclass
class StepLine:
    step_id: str
    title: str
    type: str
    status: str  # pending | running | succeeded | failed | skipped | waiting | in_doubt | cancelled | approval | held
    depth: int = 0
    attempt: int = 0
    summary: str | None = None
    error: str | None = None
    retry_at: datetime | None = None
    changes_things: bool = False


@dataclass
class RunView:
    run: dict[str, Any]
    book: LoadedRunbook | None
    steps: list[StepLine]
    journal: dict[str, list[dict[str, Any]]]
    approvals: list[dict[str, Any]]  # each with "votes": [...]
    incident: dict[str, Any] | None
    frozen: dict[str, Any] | None
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # id, step_id, name, content_type (no data)

    @property
    def id(self) -> str:
        return str(self.run["id"])

    @property
    def alert(self) -> dict[str, Any]:
        return self.run.get("alert") or {}

    @property
    def labels(self) -> dict[str, Any]:
        return self.alert.get("labels") or {}

    @property
    def annotations(self) -> dict[str, Any]:
        return self.alert.get("annotations") or {}

    def approval(self, approval_id: str) -> dict[str, Any] | None:
        return next((a for a in self.approvals if a["id"] == approval_id), None)

    def latest(self, step_id: str) -> dict[str, Any] | None:
        rows = self.journal.get(step_id)
        return rows[-1] if rows else None

    def attempt_row(self, step_id: str, attempt: int) -> dict[str, Any] | None:
        return next((r for r in self.journal.get(step_id, []) if r["attempt"] == attempt), None)


def load_run_view(rt: Runtime, run_id: str) -> RunView | None:
    with rt.db.read() as conn:
        found = conn.execute(select(RUNS).where(RUNS.c.id == run_id)).mappings().first()
        if found is None:
            return None
        run = dict(found)
        journal: dict[str, list[dict[str, Any]]] = {}
        for r in conn.execute(select(STEPS).where(STEPS.c.run_id == run_id).order_by(STEPS.c.id)).mappings():
            journal.setdefault(r["step_id"], []).append(dict(r))
        approvals = [dict(a) for a in conn.execute(
            select(APPROVALS).where(APPROVALS.c.run_id == run_id).order_by(APPROVALS.c.requested_at)).mappings()]  # fmt: skip
        ids = [a["id"] for a in approvals]
        votes: dict[str, list[dict[str, Any]]] = {}
        if ids:
            for v in conn.execute(select(VOTES).where(VOTES.c.approval_id.in_(ids)).order_by(VOTES.c.at)).mappings():
                votes.setdefault(v["approval_id"], []).append(dict(v))
        for a in approvals:
            a["votes"] = votes.get(a["id"], [])
        incident = None
        if run["incident_id"]:
            inc = conn.execute(select(INCIDENTS).where(INCIDENTS.c.id == run["incident_id"])).mappings().first()
            incident = dict(inc) if inc else None
        artifacts = [dict(a) for a in conn.execute(
            select(ARTIFACTS.c.id, ARTIFACTS.c.step_id, ARTIFACTS.c.name, ARTIFACTS.c.content_type)
            .where(ARTIFACTS.c.run_id == run_id).order_by(ARTIFACTS.c.id)).mappings()]  # fmt: skip
    try:
        book: LoadedRunbook | None = rt.engine.book_for(run["runbook_version_id"])
    except Exception:
        book = None
    view = RunView(run, book, [], journal, approvals, incident, freeze_state(rt.db), artifacts)
    view.steps = step_lines(rt, view)
    return view


def step_lines(rt: Runtime, view: RunView) -> list[StepLine]:
    """One line per top-level step in runbook order; compensations and verifications once they ran."""
    if view.book is None:
        return [_line(rt, view, None, sid, 0) for sid in view.journal]
    out: list[StepLine] = []
    held_marked = False
    pending_by_step = {a["step_id"]: a for a in view.approvals}

    def add(step: StepSpec, depth: int) -> None:
        nonlocal held_marked
        line = _line(rt, view, step, step.sid, depth)
        appr = pending_by_step.get(step.sid)
        if line.status == "pending" and appr is not None and appr["status"] == "pending":
            line.status = "approval"
        elif (line.status == "pending" and not held_marked and view.run["status"] == "waiting"
              and (view.run.get("reason") or "").startswith(HOLD_PREFIX) and line.changes_things):  # fmt: skip
            line.status = "held"
            line.summary = view.run.get("reason")
            held_marked = True
        out.append(line)
        if f"{step.sid}__verify" in view.journal:
            out.append(_line(rt, view, None, f"{step.sid}__verify", depth + 1, title=f"verify {step.sid}"))
        for comp in step.on_failure:
            if comp.sid in view.journal:
                add(comp, depth + 1)

    for step in view.book.spec.steps:
        add(step, 0)
    return out


def _line(rt: Runtime, view: RunView, step: StepSpec | None, sid: str, depth: int,
          title: str | None = None) -> StepLine:  # fmt: skip
    rec = view.latest(sid)
    stype = step.type if step is not None else (rec["step_type"] if rec else "?")
    changes = False
    if step is not None:
        changes = step.approval is not None or step.risk == "high"
        with contextlib.suppress(Exception):  # an unknown step type is simply shown as is
            changes = changes or rt.registry.get(step.type).changes_things(step.with_)
    line = StepLine(sid, title or (step.name if step is not None and step.name else sid), stype, "pending", depth,
                    changes_things=changes)  # fmt: skip
    if rec is not None:
        line.status = rec["status"]
        line.attempt = rec["attempt"]
        line.summary = rec.get("summary")
        line.error = rec.get("error")
        line.retry_at = rec.get("retry_at")
    return line
