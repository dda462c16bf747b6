"""Token buckets for new alert-triggered runs: one global, one per runbook, kept in the database.

The buckets live in the `controls` table and are read and written inside the intake transaction, so they
survive restarts and are shared by every replica (intake batches are serialized).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from runbot.engine.state import CONTROLS
from runbot.settings import Settings

CONTROL_KEY = "alertmanager.rate"
GLOBAL = "*"


@dataclass
class Bucket:
    tokens: float
    at: datetime


@dataclass(frozen=True)
class Limit:
    per_minute: float
    burst: int


class RunRateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.global_limit = Limit(settings.alertmanager_runs_per_minute, settings.alertmanager_runs_burst)

    def limit_for(self, key: str) -> Limit:
        if key == GLOBAL:
            return self.global_limit
        custom = self.settings.alertmanager_runbook_limits.get(key)
        if custom is not None:
            return Limit(custom.per_minute, custom.burst)
        return Limit(self.settings.alertmanager_runbook_runs_per_minute, self.settings.alertmanager_runbook_runs_burst)

    # ---- persistence -----------------------------------------------------------------------------------

    def load(self, conn: Connection) -> dict[str, Bucket]:
        row = conn.execute(select(CONTROLS.c.value).where(CONTROLS.c.key == CONTROL_KEY)).first()
        raw: dict[str, Any] = (row.value or {}).get("buckets", {}) if row else {}
        out = {}
        for k, v in raw.items():
            try:
                out[k] = Bucket(float(v["tokens"]), datetime.fromisoformat(v["at"]))
            except (KeyError, TypeError, ValueError):
                continue  # a damaged entry starts over full
        return out

    def save(self, conn: Connection, buckets: dict[str, Bucket], now: datetime) -> None:
        # a bucket that has refilled completely is the same as no bucket: keep the row small
        kept = {k: {"tokens": round(b.tokens, 6), "at": b.at.isoformat()} for k, b in buckets.items()
                if self._refilled(k, b, now) < self.limit_for(k).burst}  # fmt: skip
        value = {"buckets": kept}
        if conn.execute(update(CONTROLS).where(CONTROLS.c.key == CONTROL_KEY)
                        .values(value=value, updated_at=now)).rowcount == 0:  # fmt: skip
            conn.execute(insert(CONTROLS).values(key=CONTROL_KEY, value=value, updated_at=now))

    # ---- decisions ---------------------------------------------------------------------------------------

    def _refilled(self, key: str, b: Bucket, now: datetime) -> float:
        lim = self.limit_for(key)
        elapsed = max(0.0, (now - b.at).total_seconds())
        return min(float(lim.burst), b.tokens + elapsed * lim.per_minute / 60.0)

    def _current(self, buckets: dict[str, Bucket], key: str, now: datetime) -> Bucket:
        b = buckets.get(key)
        if b is None:
            b = buckets[key] = Bucket(float(self.limit_for(key).burst), now)
        else:
            b.tokens, b.at = self._refilled(key, b, now), now
        return b

    def take(self, buckets: dict[str, Bucket], runbook: str, now: datetime) -> str | None:
        """Spend one token from both buckets, or name the one that is empty ("global" / "runbook")."""
        g = self._current(buckets, GLOBAL, now)
        r = self._current(buckets, runbook, now)
        if g.tokens < 1.0:
            return "global"
        if r.tokens < 1.0:
            return "runbook"
        g.tokens -= 1.0
        r.tokens -= 1.0
        return None
