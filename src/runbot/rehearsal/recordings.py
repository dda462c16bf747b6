"""Recorded answers that stand in for Prometheus, HTTP endpoints and programs while rehearsing.

The plugins' own code still runs: the engine hands each step its `StepRecording` as `ctx.rehearsal`, and
the plugin asks it for an httpx transport (prometheus.*, http.request) or a process runner (command)
instead of using the network or spawning. Status checks, `expect` conditions, JSON extraction and output
shaping are therefore rehearsed too. Nothing here opens a socket: a step without a recording fails with
"no recorded response for step X".

Each step's answers are consumed one per call (a request, a command); when the list runs out the last
answer repeats, so a single mapping serves every retry.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import httpx

from runbot.redaction import Redactor
from runbot.steps.base import StepError

PROMETHEUS_KEYS = frozenset({"status", "data", "warnings", "value", "labels", "series", "scalar", "error",
                             "errorType", "status_code"})  # fmt: skip
HTTP_KEYS = frozenset({"status", "headers", "json", "body", "error"})
COMMAND_KEYS = frozenset({"exit_code", "stdout", "stderr", "timed_out"})
STUB_KEYS = frozenset({"output", "summary", "error", "retryable"})
MAX_RANGE_POINTS = 11_000


def keys_for(step_type: str) -> frozenset[str]:
    if step_type.startswith("prometheus."):
        return PROMETHEUS_KEYS
    if step_type == "http.request":
        return HTTP_KEYS
    if step_type == "command":
        return COMMAND_KEYS
    return STUB_KEYS


class StepRecording:
    """One step's recorded answers (None: nothing recorded) and the calls the step made."""

    def __init__(self, step_id: str, entries: list[dict[str, Any]] | None, redactor: Redactor) -> None:
        self.step_id = step_id
        self.entries = entries
        self.redactor = redactor
        self.used = 0
        self.attempt = 0  # the engine asks once per attempt; calls are tagged with it
        self.calls: list[dict[str, Any]] = []

    def next_entry(self) -> dict[str, Any]:
        if not self.entries:
            raise StepError(f"no recorded response for step {self.step_id} (a rehearsal never calls out): "
                            f"add `responses: {{{self.step_id}: ...}}` to the rehearsal file", retryable=False)  # fmt: skip
        entry = self.entries[min(self.used, len(self.entries) - 1)]
        self.used += 1
        return entry

    def log_call(self, call: dict[str, Any]) -> None:
        self.calls.append({**self.redactor.redact_obj(call), "attempt": self.attempt})

    # ---- the hooks plugins call ----------------------------------------------------------------------

    def transport(self, kind: str) -> httpx.AsyncBaseTransport:
        """An httpx transport answering from the recording; fails at once if nothing is recorded."""
        if not self.entries:
            self.next_entry()  # raises the "no recorded response" StepError
        answer = prometheus_answer if kind == "prometheus" else http_answer

        def handle(request: httpx.Request) -> httpx.Response:
            self.log_call(describe_request(kind, request))
            return answer(self.next_entry(), request)

        return httpx.MockTransport(handle)

    async def run_process(self, argv: list[str], *, stdin: bytes | None = None, cap: int = 1_048_576,
                          **_: Any) -> Any:  # fmt: skip
        """Stands in for runbot.steps.command.run_process: the recorded exit code and output, no process."""
        from runbot.steps.command import ProcessOutcome, _Capture

        call: dict[str, Any] = {"kind": "command", "argv": list(argv)}
        if stdin is not None:
            call["stdin"] = stdin.decode("utf-8", "replace")
        self.log_call(call)
        entry = self.next_entry()
        streams = []
        for name in ("stdout", "stderr"):
            data = str(entry.get(name, "")).encode()
            cap_ = _Capture(cap)
            cap_.total = len(data)
            cap_.buf = bytearray(data[:cap])
            streams.append(cap_)
        code = entry.get("exit_code", 0)
        if isinstance(code, bool) or not isinstance(code, int):
            raise StepError(f"rehearsal: responses.{self.step_id}.exit_code must be an integer", retryable=False)
        return ProcessOutcome(code, streams[0], streams[1], bool(entry.get("timed_out", False)), 0.0, False)


class Recordings:
    """Every step's recording for one rehearsal; the engine asks `for_step` before each attempt."""

    def __init__(self, responses: Mapping[str, dict[str, Any] | list[dict[str, Any]]], redactor: Redactor) -> None:
        self.redactor = redactor
        self._entries = {sid: (v if isinstance(v, list) else [v]) for sid, v in responses.items()}
        self._steps: dict[str, StepRecording] = {}

    def for_step(self, step_id: str) -> StepRecording:
        rec = self._steps.get(step_id)
        if rec is None:
            rec = self._steps[step_id] = StepRecording(step_id, self._entries.get(step_id), self.redactor)
        rec.attempt += 1
        return rec

    def calls(self, step_id: str) -> list[dict[str, Any]]:
        rec = self._steps.get(step_id)
        return list(rec.calls) if rec else []

    def unused(self) -> list[str]:
        """Recorded steps that never asked for their answer (a typo, or a step that did not run)."""
        return sorted(sid for sid in self._entries if sid not in self._steps or not self._steps[sid].used)


# ---- what was sent --------------------------------------------------------------------------------------

_QUIET_HEADERS = frozenset({"host", "user-agent", "accept", "accept-encoding", "content-length", "connection",
                            "idempotency-key"})  # fmt: skip


def describe_request(kind: str, request: httpx.Request) -> dict[str, Any]:
    form = dict(request.url.params)
    if request.method == "POST" and request.headers.get("content-type", "").startswith("application/x-www-form"):
        form.update(parse_qsl(request.content.decode("utf-8", "replace")))
    if kind == "prometheus":
        endpoint = request.url.path.rsplit("/", 1)[-1]
        return {"kind": "prometheus", "endpoint": endpoint, "query": form.get("query", "")}
    host = request.headers.get("host") or request.url.netloc.decode("ascii")  # the name, not the pinned address
    url = f"{request.url.scheme}://{host}{request.url.raw_path.decode('ascii')}"
    call: dict[str, Any] = {"kind": "http", "method": request.method, "url": url,
                            "headers": {k: v for k, v in request.headers.items() if k.lower() not in _QUIET_HEADERS}}  # fmt: skip
    body = request.content
    if body:
        text = body.decode("utf-8", "replace")
        try:
            call["json"] = json.loads(text) if "json" in request.headers.get("content-type", "") else None
        except ValueError:
            call["json"] = None
        if call["json"] is None:
            call.pop("json")
            call["body"] = text
    return call


# ---- recorded answers -> wire responses ----------------------------------------------------------------


def http_answer(entry: dict[str, Any], request: httpx.Request) -> httpx.Response:
    """{status, headers, json | body} as an HTTP response; {error: "..."} as a connection failure."""
    if "error" in entry:
        raise httpx.ConnectError(f"recorded connection error: {entry['error']}", request=request)
    headers = {str(k): str(v) for k, v in (entry.get("headers") or {}).items()}
    names = {k.lower() for k in headers}
    content = b""
    if "json" in entry:
        content = json.dumps(entry["json"]).encode()
        if "content-type" not in names:
            headers["Content-Type"] = "application/json"
    elif "body" in entry:
        content = str(entry["body"]).encode()
        if "content-type" not in names:
            headers["Content-Type"] = "text/plain; charset=utf-8"
    return httpx.Response(int(entry.get("status", 200)), headers=headers, content=content, request=request)


def prometheus_answer(entry: dict[str, Any], request: httpx.Request) -> httpx.Response:
    """The Prometheus API answer for a recording: raw API JSON, or the short forms below.

    {value: 0.12, labels: {...}}                       one series (or a constant line for range queries)
    {series: [{labels: {...}, value: 3}, ...]}          several series
    {series: [{labels: {...}, values: [1, 2, 5]}]}      range: values spread over the window (instant: last)
    {scalar: 4}                                         a scalar result
    {error: "...", errorType: bad_data, status_code: 400}
    """
    if "error" in entry or "status_code" in entry:
        code = int(entry.get("status_code", 400 if "error" in entry else 503))
        body = {"status": "error", "errorType": entry.get("errorType", "bad_data" if code in (400, 422) else "server"),
                "error": str(entry.get("error", f"HTTP {code}"))}  # fmt: skip
        return httpx.Response(code, json=body, request=request)
    if "data" in entry:
        body = {"status": entry.get("status", "success"), "data": entry["data"]}
    else:
        form = dict(request.url.params)
        if request.method == "POST":
            form.update(parse_qsl(request.content.decode("utf-8", "replace")))
        ranged = request.url.path.endswith("/query_range")
        body = {"status": "success", "data": _short_form(entry, form, ranged)}
    if entry.get("warnings"):
        body["warnings"] = [str(w) for w in entry["warnings"]]
    return httpx.Response(200, json=body, request=request)


def _sample(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise StepError(f"rehearsal: a recorded Prometheus value must be a number, got {v!r}", retryable=False)
    if isinstance(v, str):
        return v  # "NaN", "+Inf" as Prometheus writes them
    return "NaN" if math.isnan(v) else ("+Inf" if v == math.inf else ("-Inf" if v == -math.inf else repr(float(v))))


def _series(entry: dict[str, Any]) -> list[dict[str, Any]]:
    if "series" in entry:
        items = entry["series"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise StepError("rehearsal: `series` must be a list of {labels, value} or {labels, values}",
                            retryable=False)  # fmt: skip
        return items
    if "value" in entry:
        return [{"labels": entry.get("labels") or {}, "value": entry["value"]}]
    raise StepError("rehearsal: a recorded Prometheus answer needs value, series, scalar, data or error",
                    retryable=False)  # fmt: skip


def _values(item: dict[str, Any]) -> list[Any]:
    if "values" in item:
        vals = item["values"]
        if not isinstance(vals, list) or not vals:
            raise StepError("rehearsal: `values` must be a non-empty list of numbers", retryable=False)
        return vals
    if "value" in item:
        return [item["value"]]
    raise StepError("rehearsal: each recorded series needs `value` or `values`", retryable=False)


def _short_form(entry: dict[str, Any], form: dict[str, str], ranged: bool) -> dict[str, Any]:
    now = time.time()
    if "scalar" in entry:
        return {"resultType": "scalar", "result": [now, _sample(entry["scalar"])]}
    series = _series(entry)
    if not ranged:
        result = [{"metric": dict(s.get("labels") or {}), "value": [now, _sample(_values(s)[-1])]} for s in series]
        return {"resultType": "vector", "result": result}
    start, end = float(form.get("start", now - 3600)), float(form.get("end", now))
    step = max(float(form.get("step", 60)), 0.001)
    n = min(int((end - start) // step) + 1, MAX_RANGE_POINTS)
    matrix = []
    for s in series:
        vals = _values(s)
        points = [[start + i * step, _sample(vals[min(len(vals) - 1, i * len(vals) // n)])] for i in range(n)]
        matrix.append({"metric": dict(s.get("labels") or {}), "values": points})
    return {"resultType": "matrix", "result": matrix}
