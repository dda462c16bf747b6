"""Pacing of Slack calls: stay inside Slack's rate limits, and when Slack says "wait", wait only there.

Slack limits calls per method per workspace (tiers: Tier 2 about 20/min, Tier 3 about 50/min, Tier 4 about
100/min) and chat.postMessage per channel (about one a second, short bursts allowed). A token bucket per
method and per (postMessage, channel) keeps runbot under those rates before Slack has to refuse; a 429's
Retry-After blocks only the method (and channel) that got it, so one chatty channel never stalls the
others. Low-priority calls (progress) may not take a bucket's last tokens: those are kept for approval
requests, escalations and decisions, which therefore never wait behind a chatty run.

`scale` multiplies every rate (tests run against a fake Slack with faster limits of the same shape).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

TIER_PER_MINUTE = {2: 20.0, 3: 50.0, 4: 100.0}
METHOD_TIER = {
    "chat.update": 3, "chat.postEphemeral": 4, "views.open": 4, "views.publish": 4, "views.update": 4,
    "files.getUploadURLExternal": 4, "files.completeUploadExternal": 4, "conversations.create": 2,
    "conversations.invite": 3, "usergroups.list": 2, "usergroups.users.list": 2, "users.info": 4,
}  # fmt: skip
URGENT = 0  # approval requests, escalations, decisions, a run's first message
NORMAL = 1  # step results, run ends
PROGRESS = 2  # in-place updates of a live run's step list


@dataclass
class PaceConfig:
    scale: float = 1.0
    channel_per_second: float = 1.0
    channel_burst: float = 3.0
    burst_seconds: float = 5.0  # a method bucket holds this many seconds of its rate
    reserve: float = 1.0  # tokens low-priority calls leave for urgent ones
    update_interval: float = 3.0  # seconds between two in-place updates of one live message


class _Bucket:
    def __init__(self, per_second: float, capacity: float) -> None:
        self.rate = per_second
        self.capacity = max(1.0, capacity)
        self.tokens = self.capacity
        self.at = time.monotonic()

    def wait(self, now: float, need: float) -> float:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return 0.0 if self.tokens >= need else (need - self.tokens) / self.rate


class Pacer:
    """Thread-safe. `acquire` answers 0 (go; a token is taken) or the seconds to wait before trying again."""

    def __init__(self, config: PaceConfig | None = None) -> None:
        self.config = config or PaceConfig()
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._blocked: dict[tuple[str, str], float] = {}  # (method, channel or "") -> monotonic until
        self._updated: dict[str, float] = {}  # message key -> monotonic time of its last in-place update
        self.limited = 0  # 429s seen

    def _bucket(self, method: str, channel: str) -> list[_Bucket]:
        c = self.config
        out = []
        if method == "chat.postMessage" and channel:
            key = (method, channel)
            b = self._buckets.get(key)
            if b is None:
                b = self._buckets[key] = _Bucket(c.channel_per_second * c.scale, c.channel_burst)
            out.append(b)
        tier = METHOD_TIER.get(method)
        if tier is not None:
            key = (method, "")
            b = self._buckets.get(key)
            if b is None:
                per_s = TIER_PER_MINUTE[tier] / 60 * c.scale
                b = self._buckets[key] = _Bucket(per_s, per_s * c.burst_seconds)
            out.append(b)
        return out

    def acquire(self, method: str, channel: str | None = None, priority: int = NORMAL) -> float:
        now = time.monotonic()
        ch = channel or ""
        with self._lock:
            blocked = max(self._blocked.get((method, ""), 0.0), self._blocked.get((method, ch), 0.0)) - now
            if blocked > 0:
                return blocked
            need = 1.0 if priority == URGENT else 1.0 + self.config.reserve
            buckets = self._bucket(method, ch)
            wait = max((b.wait(now, min(need, b.capacity)) for b in buckets), default=0.0)
            if wait > 0:
                return wait
            for b in buckets:
                b.tokens -= 1.0
            return 0.0

    def limited_by_slack(self, method: str, channel: str | None, retry_after: float | None) -> float:
        """A 429: block this method (postMessage: this channel) for Retry-After; returns the wait."""
        wait = retry_after if retry_after is not None else 1.0 / self.config.scale
        key = (method, channel or "") if method == "chat.postMessage" else (method, "")
        with self._lock:
            self.limited += 1
            self._blocked[key] = max(self._blocked.get(key, 0.0), time.monotonic() + wait)
        return wait

    def update_due(self, key: str) -> float:
        """Seconds until message `key` may be updated in place again (0: now)."""
        last = self._updated.get(key)
        if last is None:
            return 0.0
        return max(0.0, last + self.config.update_interval / self.config.scale - time.monotonic())

    def updated(self, key: str) -> None:
        self._updated[key] = time.monotonic()
        if len(self._updated) > 50_000:  # forget the oldest half (finished runs)
            for k in sorted(self._updated, key=self._updated.__getitem__)[:25_000]:
                del self._updated[k]
