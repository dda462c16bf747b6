"""Per-run redaction of secret values and their common encodings.

Every secret value a run fetches is registered here before a plugin sees it; everything that leaves the
engine (outputs, errors, logs, audit, messages, exports) passes through `redact`.
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
import urllib.parse
from collections.abc import Iterable
from typing import Any

MASK = "****"
MIN_SECRET_LEN = 3  # shorter values would mask ordinary text everywhere; refuse to treat them as secrets


def encodings(value: str) -> set[str]:
    """The forms a secret commonly takes on its way out: raw, URL, base64 (std/url-safe), JSON- and HTML-escaped."""
    raw = value.encode()
    json_forms = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    forms = {
        value,
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote(value),  # safe="/": the default of urllib and most clients
        urllib.parse.quote_plus(value),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        *json_forms,
        *(json.dumps(f, ensure_ascii=a)[1:-1] for f in json_forms for a in (True, False)),  # JSON in a JSON string
        html.escape(value),  # HTML exports and Slack mrkdwn escape &, < and >
        html.escape(value, quote=False),
    }
    return {f for f in forms if len(f) >= MIN_SECRET_LEN}


class Redactor:
    """Thread-safe set of secret values; `redact` replaces every registered form with ****."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for v in values:
            self.register(v)

    def register(self, value: str) -> None:
        if not isinstance(value, str) or len(value) < MIN_SECRET_LEN:
            return
        with self._lock:
            new = encodings(value) - self._forms
            if not new:
                return
            self._forms |= new
            ordered = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(f) for f in ordered))

    def __bool__(self) -> bool:
        return bool(self._forms)

    def redact(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def redact_obj(self, obj: Any) -> Any:
        if self._pattern is None:
            return obj
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {self.redact(str(k)) if isinstance(k, str) else k: self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.redact_obj(v) for v in obj]
        if isinstance(obj, bytes):
            return self.redact(obj.decode("utf-8", "replace")).encode()
        return obj

    def contains_secret(self, text: str) -> bool:
        pattern = self._pattern
        return bool(pattern and pattern.search(text))


class RedactorRegistry:
    """Process-wide view over live runs' redactors, so log processors can mask without knowing the run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_run: dict[str, Redactor] = {}
        self.global_redactor = Redactor()

    def for_run(self, run_id: str) -> Redactor:
        with self._lock:
            r = self._by_run.get(run_id)
            if r is None:
                r = self._by_run[run_id] = Redactor()
            return r

    def drop(self, run_id: str) -> None:
        with self._lock:
            self._by_run.pop(run_id, None)

    def redact(self, text: str) -> str:
        text = self.global_redactor.redact(text)
        with self._lock:
            redactors = list(self._by_run.values())
        for r in redactors:
            text = r.redact(text)
        return text


REGISTRY = RedactorRegistry()
