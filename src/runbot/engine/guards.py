"""Holds that keep a remediation from starting: the global freeze here; silences plug in as hold checks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from runbot.engine.state import CONTROLS, plus
from runbot.store.db import Database
from runbot.store.types import utcnow

FREEZE_KEY = "freeze"
HOLD_RECHECK_SECONDS = 30.0


@dataclass
class Hold:
    reason: str
    recheck_at: datetime


def freeze_state(db: Database) -> dict[str, Any] | None:
    with db.read() as conn:
        row = conn.execute(select(CONTROLS.c.value).where(CONTROLS.c.key == FREEZE_KEY)).first()
    value = row.value if row else None
    return value if value and value.get("frozen") else None


def remediation_hold(db: Database) -> Hold | None:
    frozen = freeze_state(db)
    if frozen is None:
        return None
    who = frozen.get("by", "someone")
    why = frozen.get("reason") or "no reason given"
    return Hold(f"remediations are frozen by {who}: {why}", plus(utcnow(), HOLD_RECHECK_SECONDS))
