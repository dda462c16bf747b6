"""Table handles, ids, backoff and the in-memory view of one run while a worker owns its lease."""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from runbot.audit.log import Event
from runbot.redaction import Redactor
from runbot.runbooks.loader import LoadedRunbook
from runbot.runbooks.model import RetryPolicy
from runbot.store import tables

RUNS = tables.Run.__table__  # type: ignore[attr-defined]
STEPS = tables.StepExecution.__table__  # type: ignore[attr-defined]
APPROVALS = tables.Approval.__table__  # type: ignore[attr-defined]
VOTES = tables.ApprovalVote.__table__  # type: ignore[attr-defined]
TIMERS = tables.Timer.__table__  # type: ignore[attr-defined]
ARTIFACTS = tables.Artifact.__table__  # type: ignore[attr-defined]
VERSIONS = tables.RunbookVersion.__table__  # type: ignore[attr-defined]
INCIDENTS = tables.Incident.__table__  # type: ignore[attr-defined]
OUTBOX = tables.Outbox.__table__  # type: ignore[attr-defined]
CONTROLS = tables.Control.__table__  # type: ignore[attr-defined]


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(5)}"


def backoff_delay(policy: RetryPolicy, failures: int) -> float:
    """Exponential backoff with full jitter, capped: uniform(0, min(max, initial * multiplier^(n-1)))."""
    ceiling = min(policy.max, policy.initial * policy.multiplier ** max(0, failures - 1))
    return random.uniform(0, ceiling)


class LeaseLost(Exception):
    """Another worker took the run (our lease expired) or it was cancelled under us: stop writing."""


@dataclass
class RunState:
    id: str
    fence: int
    row: dict[str, Any]
    book: LoadedRunbook
    version_id: int
    journal: dict[str, list[dict[str, Any]]]
    approvals: dict[str, dict[str, Any]]
    scope: dict[str, Any]
    redactor: Redactor
    cancel_requested: bool = False
    events: list[Event] = field(default_factory=list)

    def latest(self, step_id: str) -> dict[str, Any] | None:
        rows = self.journal.get(step_id)
        return rows[-1] if rows else None

    def attempts(self, step_id: str) -> list[dict[str, Any]]:
        return self.journal.get(step_id, [])

    def event(self, action: str, *, step_id: str | None = None, outcome: str | None = None,
              actor: str = "system", ts: datetime | None = None, **details: Any) -> Event:  # fmt: skip
        return Event(
            action=action, actor=actor, run_id=self.id, step_id=step_id,
            incident_id=self.row.get("incident_id"), runbook=self.book.name,
            runbook_version=self.book.short_version, outcome=outcome,
            details=self.redactor.redact_obj(details) if details else {}, ts=ts,
        )  # fmt: skip


def plus(ts: datetime, seconds: float) -> datetime:
    return ts + timedelta(seconds=seconds)
