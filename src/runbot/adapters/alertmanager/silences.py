"""Silences as maintenance windows: a remediation waits while an active Alertmanager silence matches its alert.

Plugged into the engine as a hold check (called before a remediation step starts). The engine calls it on
its own loop, so the request is short (timeout) and the answer is cached briefly; when Alertmanager cannot
be asked, `alertmanager_silence_on_error` decides between proceeding (logged) and holding.
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
from runbot.runbooks.match import Matcher
from runbot.runbooks.model import StepSpec
from runbot.settings import Settings
from runbot.store.types import utcnow

log = structlog.get_logger("runbot.silences")


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    ends_at: datetime | None
    created_by: str
    comment: str

    def matches(self, labels: dict[str, str]) -> bool:
        return bool(self.matchers) and all(m.matches(labels) for m in self.matchers)


def parse_silences(data: Any) -> list[Silence]:
    """Active silences from GET /api/v2/silences (others are ignored)."""
    out = []
    for s in data if isinstance(data, list) else []:
        if not isinstance(s, dict) or (s.get("status") or {}).get("state") != "active":
            continue
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
        out.append(Silence(str(s.get("id", "")), tuple(matchers), ends, str(s.get("createdBy", "")),
                           str(s.get("comment", ""))))  # fmt: skip
    return out


class SilenceCheck:
    """Engine hold check: (RunState, StepSpec) -> Hold | None."""

    def __init__(self, settings: Settings) -> None:
        assert settings.alertmanager_url
        self.url = settings.alertmanager_url.rstrip("/") + "/api/v2/silences"
        self.timeout = settings.alertmanager_silence_timeout
        self.recheck = settings.alertmanager_silence_recheck_seconds
        self.on_error = settings.alertmanager_silence_on_error
        self.cache_ttl = min(5.0, self.recheck / 2)
        token = settings.alertmanager_api_token
        self.headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Silence]] | None = None

    def silences(self) -> list[Silence]:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.cache_ttl:
                return self._cached[1]
        resp = httpx.get(self.url, headers=self.headers, timeout=self.timeout)
        resp.raise_for_status()
        found = parse_silences(resp.json())
        with self._lock:
            self._cached = (time.monotonic(), found)
        return found

    def __call__(self, R: RunState, step: StepSpec) -> Hold | None:
        labels = {str(k): str(v) for k, v in ((R.scope.get("alert") or {}).get("labels") or {}).items()}
        if not labels:
            return None  # a manual run without an alert: no silence can apply
        now = utcnow()
        recheck_at = now + timedelta(seconds=self.recheck)
        try:
            active = self.silences()
        except (httpx.HTTPError, ValueError) as exc:
            problem = f"could not ask Alertmanager about silences ({type(exc).__name__})"
            if self.on_error == "hold":
                return Hold(f"held: {problem}; the step waits until Alertmanager answers", recheck_at)
            log.warning(problem + "; proceeding (alertmanager_silence_on_error=proceed)", run_id=R.id, step_id=step.sid)
            return None
        for s in active:
            if s.matches(labels):
                until = f" until {s.ends_at:%Y-%m-%d %H:%M:%S}Z" if s.ends_at else ""
                by = f" by {s.created_by}" if s.created_by else ""
                why = f": {s.comment}" if s.comment else ""
                at = min(recheck_at, s.ends_at) if s.ends_at and s.ends_at > now else recheck_at
                return Hold(f"held: the alert is silenced in Alertmanager (silence {s.id}{by}{until}{why}); "
                            "the step waits for the maintenance window to end", at)  # fmt: skip
        return None
