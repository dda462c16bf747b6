"""Helpers to drive runs to completion in-process, the way `runbot run` follows them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import func, select

from runbot.domain import RunStatus
from runbot.engine.state import RUNS, STEPS
from runbot.store.types import utcnow


def run_row(rt: Any, run_id: str) -> dict[str, Any]:
    with rt.db.read() as conn:
        return dict(conn.execute(select(RUNS).where(RUNS.c.id == run_id)).mappings().one())


def steps(rt: Any, run_id: str) -> list[dict[str, Any]]:
    with rt.db.read() as conn:
        return [dict(r) for r in conn.execute(select(STEPS).where(STEPS.c.run_id == run_id).order_by(STEPS.c.id)).mappings()]


def drive(rt: Any, run_id: str, *, max_wait: float = 10.0) -> RunStatus:
    """Advance until terminal, or until the run waits on an outside event or longer than max_wait."""
    deadline = time.monotonic() + max_wait
    while True:
        status = asyncio.run(rt.engine.drive(run_id))
        if status.terminal:
            return status
        row = run_row(rt, run_id)
        if row["wake_at"] is None:
            return status
        delay = max(0.0, (row["wake_at"] - utcnow()).total_seconds()) + 0.01
        if time.monotonic() + delay > deadline:
            return status
        time.sleep(delay)


def start(rt: Any, name: str, **kw: Any) -> str:
    book = rt.catalog.get(name)
    assert book is not None, f"runbook {name} not loaded: {rt.catalog.problems}"
    return rt.engine.create_run(book, **kw)


def count(rt: Any, table: Any, *where: Any) -> int:
    with rt.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())
