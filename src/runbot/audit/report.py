"""The HTML audit report: one self-contained file (inline CSS and JS, no external references).

The timeline streams out as events are read; the per-incident summary and the approvals table are
gathered on the way and written after it, and CSS `order` shows them first, so memory stays bounded by
the number of incidents and decisions rather than events.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select

from runbot.audit.records import ExportFilter, iso
from runbot.engine.state import INCIDENTS
from runbot.store.db import Database
from runbot.store.types import utcnow

if TYPE_CHECKING:
    from runbot.audit.export import Tally

TEMPLATES = Path(__file__).parent / "templates"
MAX_APPROVALS = 10_000
CHUNK = 64 * 1024


@dataclass
class IncidentSummary:
    incident_id: str
    first: str = ""
    last: str = ""
    events: int = 0
    runs: set[str] = field(default_factory=set)
    runbooks: set[str] = field(default_factory=set)
    approved: int = 0
    denied: int = 0
    failures: int = 0
    title: str = ""
    severity: str = ""
    status: str = ""


@dataclass
class ReportState:
    """Collected while the timeline streams; read by the template after the timeline loop."""

    db: Database
    by_incident: dict[str, IncidentSummary] = field(default_factory=dict)
    approvals: list[dict[str, Any]] = field(default_factory=list)
    approvals_dropped: int = 0
    total: int = 0
    failures: int = 0

    def add(self, v: dict[str, Any]) -> None:
        self.total += 1
        key = v["incident_id"]
        s = self.by_incident.get(key)
        if s is None:
            s = self.by_incident[key] = IncidentSummary(key, first=v["time"])
        s.last = v["time"]
        s.events += 1
        if v["run_id"]:
            s.runs.add(v["run_id"])
        if v["runbook"]:
            s.runbooks.add(v["runbook"])
        if v["action"] == "approval.approved":
            s.approved += 1
        elif v["action"] == "approval.denied":
            s.denied += 1
        if v["failure"]:
            s.failures += 1
            self.failures += 1
        if v["action"].startswith("approval.") or v["action"] == "step.decided":
            if len(self.approvals) < MAX_APPROVALS:
                self.approvals.append(v)
            else:
                self.approvals_dropped += 1

    def incidents(self) -> list[IncidentSummary]:
        ids = [k for k in self.by_incident if k]
        if ids:
            with self.db.read() as conn:
                for i in range(0, len(ids), 500):
                    q = select(INCIDENTS.c.id, INCIDENTS.c.title, INCIDENTS.c.severity, INCIDENTS.c.status)
                    for row in conn.execute(q.where(INCIDENTS.c.id.in_(ids[i:i + 500]))):
                        s = self.by_incident[row.id]
                        s.title, s.severity, s.status = row.title or "", row.severity or "", row.status or ""
        return sorted(self.by_incident.values(), key=lambda s: (s.first, s.incident_id))


def _group(action: str) -> str:
    head = action.split(".", 1)[0]
    return head if head in ("run", "step", "approval", "incident", "alert") else "other"


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)  # fmt: skip
    env.filters["group"] = _group
    return env


def render_report(db: Database, flt: ExportFilter, head: tuple[int, str], tally: Tally,
                  batches: Iterator[list[dict[str, Any]]]) -> Iterator[str]:  # fmt: skip
    state = ReportState(db)

    def rows() -> Iterator[dict[str, Any]]:
        for views in batches:
            for v in views:
                state.add(v)
                yield v

    given = {k: v for k, v in flt.as_dict().items() if v is not None}
    template = environment().get_template("report.html.j2")
    pieces: list[str] = []
    size = 0
    for piece in template.generate(rows=rows(), state=state, tally=tally, head=head, filters=given,
                                   exported_at=iso(utcnow())):  # fmt: skip
        pieces.append(piece)
        size += len(piece)
        if size >= CHUNK:
            yield "".join(pieces)
            pieces, size = [], 0
    if pieces:
        yield "".join(pieces)
