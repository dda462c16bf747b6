"""Silences as maintenance windows: a remediation waits while Alertmanager says a silence mutes its alert.

Plugged into the engine as a hold check (called before a remediation step starts). The verdict is
Alertmanager's own wherever possible:

1. `GET /api/v2/alerts?filter=...` for the alert's labels: Alertmanager recomputes each returned alert's
   `status.silencedBy` at request time, so when it holds this very alert its answer is the verdict.
2. When it does not hold the alert (resolved and dropped, or a run started by hand with labels), the
   active silences from `GET /api/v2/silences` are evaluated here with the matcher code runbooks use
   (runbooks/match.py: RE2, anchored as Alertmanager anchors).

When the check cannot be made (Alertmanager down or slow, an answer that is not what the API documents,
a silence regex RE2 cannot evaluate) the step is **held with that reason** and re-checked later: the
reason reaches Slack, `runbot runs show` and the audit trail through the engine's hold. This check never
raises, so no hold check can turn into an engine error loop. `alertmanager_silence_on_error=proceed`
opts out (proceed, logged).

Requests are short (timeout) and answers cached briefly, since the engine calls this on its own loop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog

from runbot.engine.guards import Hold
from runbot.engine.state import RunState
from runbot.runbooks.match import Matcher, MatcherError
from runbot.runbooks.model import StepSpec
from runbot.settings import Settings
from runbot.store.types import utcnow

log = structlog.get_logger("runbot.silences")

_CLASSIC_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
_CLASSIC_NAME = _CLASSIC_NAME_START | frozenset("0123456789")


class Unavailable(Exception):
    """The silence check could not be made; the message is the held reason's detail."""


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    ends_at: datetime | None
    created_by: str
    comment: str

    def matches(self, labels: dict[str, str]) -> bool:
        """Raises MatcherError when a regex of this silence cannot be evaluated."""
        return bool(self.matchers) and all(m.matches(labels) for m in self.matchers)


def _silence(s: dict[str, Any]) -> Silence:
    matchers = []
    for m in s.get("matchers") or []:
        regex, equal = bool(m.get("isRegex")), m.get("isEqual", True) is not False
        op = ("=~" if equal else "!~") if regex else ("=" if equal else "!=")
        matchers.append(Matcher(str(m.get("name", "")), op, str(m.get("value", ""))))  # type: ignore[arg-type]
    ends = None
    if s.get("endsAt"):
        try:
            ends = datetime.fromisoformat(str(s["endsAt"]).replace("Z", "+00:00"))
        except ValueError:
            ends = None
    return Silence(str(s.get("id", "")), tuple(matchers), ends, str(s.get("createdBy", "")), str(s.get("comment", "")))


def parse_silences(data: Any, *, active_only: bool = True) -> list[Silence]:
    """Silences from GET /api/v2/silences (only the active ones unless told otherwise)."""
    out = []
    for s in data if isinstance(data, list) else []:
        if not isinstance(s, dict):
            continue
        if active_only and (s.get("status") or {}).get("state") != "active":
            continue
        out.append(_silence(s))
    return out


def alert_filter(labels: dict[str, str]) -> list[tuple[str, str]]:
    """Query parameters selecting this label set in GET /api/v2/alerts (classic matcher syntax, which
    every Alertmanager version parses; labels the classic syntax cannot name are compared afterwards)."""
    params = []
    for name, value in sorted(labels.items()):
        if name and name[0] in _CLASSIC_NAME_START and all(c in _CLASSIC_NAME for c in name):
            escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
            params.append(("filter", f'{name}="{escaped}"'))
    return params


@dataclass(frozen=True)
class Verdict:
    silenced_by: list[Silence]  # empty: not silenced
    source: str  # "alertmanager" (its own status.silencedBy) or "evaluated" (active silences, matched here)


class SilenceCheck:
    """Engine hold check: (RunState, StepSpec) -> Hold | None; never raises."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        assert settings.alertmanager_url
        self.base = settings.alertmanager_url.rstrip("/")
        self.timeout = settings.alertmanager_silence_timeout
        self.recheck = settings.alertmanager_silence_recheck_seconds
        self.on_error = settings.alertmanager_silence_on_error
        self.cache_ttl = min(5.0, self.recheck / 2)
        token = settings.alertmanager_api_token
        self.headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self.transport = transport
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Any]] = {}

    def forget(self) -> None:
        """Drop the cached answers: the next check asks Alertmanager again."""
        with self._lock:
            self._cache.clear()

    def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        key = path + "?" + "&".join(f"{k}={v}" for k, v in params or [])
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < self.cache_ttl:
                return hit[1]
        try:
            with httpx.Client(transport=self.transport, timeout=self.timeout) as client:
                query: Any = params or None  # httpx types its query parameters invariantly
                resp = client.get(self.base + path, params=query, headers=self.headers)
        except httpx.TimeoutException:
            raise Unavailable(f"Alertmanager did not answer within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"Alertmanager cannot be reached ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise Unavailable(f"Alertmanager answered HTTP {resp.status_code} to GET {path}")
        try:
            data = resp.json()
        except ValueError:
            raise Unavailable(f"Alertmanager's answer to GET {path} is not JSON") from None
        with self._lock:
            self._cache[key] = (time.monotonic(), data)
        return data

    def silences(self, *, active_only: bool = True) -> list[Silence]:
        data = self._get("/api/v2/silences")
        if not isinstance(data, list):
            raise Unavailable("Alertmanager's silence list is not a list")
        return parse_silences(data, active_only=active_only)

    def verdict(self, labels: dict[str, str]) -> Verdict:
        """Which silences mute this label set, by Alertmanager's own account where it holds the alert."""
        alerts = self._get("/api/v2/alerts", alert_filter(labels))
        if not isinstance(alerts, list):
            raise Unavailable("Alertmanager's alert list is not a list")
        for a in alerts:
            if isinstance(a, dict) and {str(k): str(v) for k, v in (a.get("labels") or {}).items()} == labels:
                ids = [str(i) for i in ((a.get("status") or {}).get("silencedBy") or [])]
                if not ids:
                    return Verdict([], "alertmanager")
                known = {s.id: s for s in self.silences(active_only=False)}
                return Verdict([known.get(i) or Silence(i, (), None, "", "") for i in ids], "alertmanager")
        muting = []
        for s in self.silences():
            try:
                if s.matches(labels):
                    muting.append(s)
            except MatcherError as exc:
                raise Unavailable(f"silence {s.id} has a matcher runbot cannot evaluate: {exc}") from None
        return Verdict(muting, "evaluated")

    def __call__(self, R: RunState, step: StepSpec) -> Hold | None:
        labels = {str(k): str(v) for k, v in ((R.scope.get("alert") or {}).get("labels") or {}).items()}
        if not labels:
            return None  # a manual run without an alert: no silence can apply
        now = utcnow()
        recheck_at = now + timedelta(seconds=self.recheck)
        try:
            verdict = self.verdict(labels)
        except Exception as exc:
            problem = str(exc) if isinstance(exc, Unavailable) else f"the silence check failed ({type(exc).__name__})"
            if self.on_error == "proceed":
                log.warning("cannot check silences; proceeding (alertmanager_silence_on_error=proceed)",
                            problem=problem, run_id=R.id, step_id=step.sid)  # fmt: skip
                return None
            if not isinstance(exc, Unavailable):
                log.error("silence check failed", run_id=R.id, step_id=step.sid, error=repr(exc))
            return Hold(f"held: cannot check Alertmanager silences: {problem}; the step waits and is re-checked "
                        f"every {self.recheck:g}s", recheck_at)  # fmt: skip
        if not verdict.silenced_by:
            return None
        s = verdict.silenced_by[0]
        until = f" until {s.ends_at:%Y-%m-%d %H:%M:%S}Z" if s.ends_at else ""
        by = f" by {s.created_by}" if s.created_by else ""
        why = f": {s.comment}" if s.comment else ""
        at = min(recheck_at, s.ends_at) if s.ends_at and s.ends_at > now else recheck_at
        return Hold(f"held: the alert is silenced in Alertmanager (silence {s.id}{by}{until}{why}); "
                    "the step waits for the maintenance window to end", at)  # fmt: skip
