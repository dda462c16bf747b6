"""Drive one run to its end in this process, answering approvals and skipping the waits.

Waiting is what runs mostly do (retry backoff, approval timeouts, verification intervals). A rehearsal does
not sleep through them: when the run parks until a time, the driver moves that run's clock forward by
shifting every timestamp the engine keeps for it (run, steps, approvals, votes, timers) into the past.
To the engine the wait is simply over, and windows measured from earlier timestamps (`verify.within`, an
approval's timeout) shrink exactly as if the time had passed.

Approvals are decided the way people decide them, through `engine.vote` with synthetic users
(`rehearsal-approver-N`); `timeout` lets the approval expire (escalation included).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from runbot.domain import RunStatus
from runbot.engine.state import APPROVALS, RUNS, STEPS, TIMERS, VOTES
from runbot.store.types import UTCDateTime, utcnow

APPROVER = "rehearsal-approver"
MAX_WAKEUPS = 1000


@dataclass
class DriveResult:
    status: RunStatus
    skipped_seconds: float  # virtual time the driver skipped
    stuck: str | None = None  # why the run is not finished, when it is not


def advance_clock(engine: Any, run_id: str, seconds: float) -> None:
    """Make `seconds` pass for one run: every stored timestamp of it moves that far into the past."""
    delta = timedelta(seconds=seconds)
    with engine.db.tx() as conn:
        approval_ids = [r.id for r in conn.execute(select(APPROVALS.c.id).where(APPROVALS.c.run_id == run_id))]
        targets = [(RUNS, RUNS.c.id == run_id), (STEPS, STEPS.c.run_id == run_id),
                   (APPROVALS, APPROVALS.c.run_id == run_id), (TIMERS, TIMERS.c.run_id == run_id),
                   (VOTES, VOTES.c.approval_id.in_(approval_ids))]  # fmt: skip
        for table, where in targets:
            cols = [c for c in table.c if isinstance(c.type, UTCDateTime)]
            pk = list(table.primary_key.columns)
            for row in conn.execute(select(*pk, *cols).where(where)).mappings().all():
                moved = {c.name: row[c.name] - delta for c in cols if row[c.name] is not None}
                if moved:
                    conn.execute(update(table).where(*[k == row[k.name] for k in pk]).values(**moved))


def _decide(engine: Any, approval: dict[str, Any], decision: str) -> None:
    approve = decision == "approve"
    for n in range(1, approval["min_approvals"] + 1):
        res = engine.vote(approval["id"], f"{APPROVER}-{n}", approve, user_name=f"{APPROVER}-{n}",
                          reason=None if approve else "denied in the rehearsal", actor=f"{APPROVER}-{n}")  # fmt: skip
        if res.status != "pending":
            return


def drive_run(engine: Any, run_id: str, approvals: Mapping[str, str], *, pause: float = 0.0,
              max_wakeups: int = MAX_WAKEUPS) -> DriveResult:  # fmt: skip
    """Advance until the run ends, or report why it cannot (an approval nobody decides, a human decision).

    `pause` (seconds, live tests only) is real time allowed to pass at each wake-up, so a real system
    (Prometheus scraping a changed value) can catch up before a verification looks again.
    """
    skipped = 0.0
    decided: set[str] = set()
    status = RunStatus.PENDING
    for _ in range(max_wakeups):
        status = asyncio.run(engine.drive(run_id))
        if status.terminal:
            return DriveResult(status, skipped)
        acted = False
        for appr in engine.pending_approvals(run_id):
            decision = approvals.get(appr["step_id"])
            if decision is None:
                sid = appr["step_id"]
                return DriveResult(status, skipped, f"step {sid} waits for approval and the rehearsal has no decision "
                                                    f"for it (add `approvals: {{{sid}: approve}}`, deny or timeout)")  # fmt: skip
            if decision in ("approve", "deny") and appr["id"] not in decided:
                decided.add(appr["id"])
                _decide(engine, appr, decision)
                acted = True
        if acted:
            continue
        with engine.db.read() as conn:
            run = conn.execute(select(RUNS.c.wake_at, RUNS.c.reason).where(RUNS.c.id == run_id)).one()
        if run.wake_at is None:
            return DriveResult(status, skipped, run.reason or "waiting for an outside event")
        delay = (run.wake_at - utcnow()).total_seconds()
        if pause > 0:
            time.sleep(min(pause, max(delay, 0.0)))
            delay = (run.wake_at - utcnow()).total_seconds()
        if delay > 0:
            advance_clock(engine, run_id, delay + 0.001)
            skipped += delay
    return DriveResult(status, skipped, f"still {status.value} after {max_wakeups} wake-ups (a loop?)")
