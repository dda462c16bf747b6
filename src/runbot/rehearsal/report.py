"""What happened in a rehearsal, in order, and whether it is what the rehearsal file expects.

The order comes from the run's audit trail (the engine's own record of what it did); outputs come from
the step journal; times are virtual (seconds since the run started, waits included). Everything shown
passes through the rehearsal's redactor, so fake secret values never appear either.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from runbot.audit.log import EVENTS
from runbot.engine.state import APPROVALS, RUNS, STEPS
from runbot.redaction import Redactor
from runbot.rehearsal.spec import Expectations
from runbot.steps.http import json_equal, lookup, parse_path

STEP_EVENTS = {"step.succeeded": "succeeded", "step.failed": "failed", "step.skipped": "skipped"}
APPROVAL_EVENTS = {"approval.requested": "requested", "approval.approved": "approved", "approval.denied": "denied",
                   "approval.expired": "expired", "approval.escalated": "escalated"}  # fmt: skip


@dataclass
class Line:
    """One thing that happened: a step attempt finished, or an approval moved."""

    offset: float  # virtual seconds since the run started
    step_id: str
    kind: str  # the step type, or "approval"
    status: str
    text: str
    attempt: int | None = None
    output: dict[str, Any] | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_step(self) -> bool:
        return self.kind != "approval"


@dataclass
class Result:
    label: str
    runbook: str = ""
    version: str = ""
    runbook_path: str = ""
    alert: str = ""
    status: str | None = None
    reason: str = ""
    lines: list[Line] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # setup errors and failed expectations
    notes: list[str] = field(default_factory=list)  # worth knowing, not failures
    skipped_seconds: float = 0.0
    artifacts: list[tuple[str, str, bytes]] = field(default_factory=list)  # (step_id, name, data)
    checked: bool = False  # the rehearsal had expectations

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def sequence(self) -> list[tuple[str, str]]:
        return [(ln.step_id, ln.status) for ln in self.lines if ln.is_step]

    def last(self, step_id: str) -> Line | None:
        found = [ln for ln in self.lines if ln.is_step and ln.step_id == step_id]
        return found[-1] if found else None


def _since(ts: Any, start: Any) -> float:
    return max(0.0, (ts - start).total_seconds()) if ts is not None and start is not None else 0.0


def timeline(db: Any, run_id: str, calls_for: Any, redactor: Redactor) -> tuple[list[Line], dict[str, Any]]:
    """The run's lines in the order the engine recorded them, and the run row."""
    with db.read() as conn:
        run = dict(conn.execute(select(RUNS).where(RUNS.c.id == run_id)).mappings().one())
        rows: dict[str, list[dict[str, Any]]] = {}
        for r in conn.execute(select(STEPS).where(STEPS.c.run_id == run_id).order_by(STEPS.c.id)).mappings():
            rows.setdefault(r["step_id"], []).append(dict(r))
        approvals = {r["step_id"]: dict(r) for r in conn.execute(select(APPROVALS).where(APPROVALS.c.run_id == run_id)).mappings()}
        events = [dict(e) for e in conn.execute(select(EVENTS).where(EVENTS.c.run_id == run_id).order_by(EVENTS.c.seq)).mappings()]
    start = run["started_at"] or run["created_at"]
    lines: list[Line] = []
    seen: dict[str, int] = {}
    for ev in events:
        sid, action, details = ev["step_id"], ev["action"], ev["details"] or {}
        if sid is None:
            continue
        if action in STEP_EVENTS:
            attempts = rows.get(sid, [])
            idx = seen.get(sid, 0)
            seen[sid] = idx + 1
            row = attempts[min(idx, len(attempts) - 1)] if attempts else {}
            attempt = row.get("attempt")
            text = row.get("error") or row.get("summary") or details.get("reason") or ""
            step_calls = [c for c in calls_for(sid) if c.get("attempt") in (attempt, None)]
            lines.append(Line(_since(row.get("finished_at"), start), sid, row.get("step_type", "?"),
                              STEP_EVENTS[action], redactor.redact(str(text)), attempt,
                              redactor.redact_obj(row.get("output")), step_calls))  # fmt: skip
        elif action in APPROVAL_EVENTS:
            appr = approvals.get(sid, {})
            status = APPROVAL_EVENTS[action]
            if status == "requested":
                who = ", ".join(details.get("approvers") or []) or "anyone allowed"
                text = f"from {who} ({appr.get('min_approvals', 1)} needed)"
                at = appr.get("requested_at")
            elif status == "escalated":
                text, at = "nobody decided in time: escalated", None
            elif status == "expired":
                text, at = "nobody decided in time", appr.get("decided_at")
            else:
                text = f"by {details.get('user_name') or ev['actor']}" + (f": {details['reason']}" if details.get("reason") else "")
                at = appr.get("decided_at")
            offset = _since(at, start) if at is not None else (lines[-1].offset if lines else 0.0)
            lines.append(Line(offset, sid, "approval", status, redactor.redact(text)))
    return lines, run


# ---- expectations ---------------------------------------------------------------------------------------


def check(expect: Expectations, result: Result, redactor: Redactor) -> list[str]:
    """Every way the rehearsal differs from what the file expects, one readable line each.

    Recorded calls hold redacted text, so expected values are redacted the same way before comparing:
    `Authorization: Bearer <fake secret>` checks that the secret went where it should, without keeping it.
    """
    problems: list[str] = []
    if expect.status is not None and expect.status != result.status:
        problems.append(f"expected the run to end {expect.status}, it ended {result.status}: {result.reason}")
    if expect.steps is not None:
        problems += _check_sequence(expect.steps, result.sequence)
    for sid, wanted in expect.outputs.items():
        line = result.last(sid)
        if line is None:
            problems.append(f"outputs.{sid}: step {sid} did not run")
            continue
        for path, value in wanted.items():
            found, actual = lookup(line.output or {}, parse_path(path))
            if not found:
                problems.append(f"outputs.{sid}.{path}: not in the output")
            elif not json_equal(actual, value):
                problems.append(f"outputs.{sid}.{path}: is {_j(actual)}, expected {_j(value)}")
    for sid, wanted in expect.requests.items():
        calls = [ln.calls for ln in result.lines if ln.step_id == sid and ln.calls]
        if not calls:
            problems.append(f"requests.{sid}: step {sid} sent nothing")
            continue
        problems += [f"requests.{sid}.{p}" for p in _check_call(redactor.redact_obj(wanted), calls[-1][-1])]
    return problems


def _check_sequence(expected: list[str | list[str]], actual: list[tuple[str, str]]) -> list[str]:
    def fits(e: str | list[str], a: tuple[str, str]) -> bool:
        return e == a[0] if isinstance(e, str) else (e[0], e[1]) == a

    for i in range(max(len(expected), len(actual))):
        if i >= len(expected):
            return [f"steps: more happened than expected, from #{i + 1}: {_pairs(actual[i:])}"]
        if i >= len(actual):
            return [f"steps: expected more, from #{i + 1}: {_pairs(expected[i:])}"]
        if not fits(expected[i], actual[i]):
            return [f"steps: #{i + 1} expected {_pair(expected[i])}, got {_pair(actual[i])}; "
                    f"whole sequence: {_pairs(actual)}"]  # fmt: skip
    return []


def _check_call(wanted: dict[str, Any], call: dict[str, Any]) -> list[str]:
    out = []
    for key, value in wanted.items():
        if key == "headers" and isinstance(value, dict):
            sent = {k.lower(): v for k, v in (call.get("headers") or {}).items()}
            for name, v in value.items():
                if sent.get(name.lower()) != str(v):
                    out.append(f"headers.{name}: sent {_j(sent.get(name.lower()))}, expected {_j(v)}")
        elif key not in call:
            out.append(f"{key}: the call had no {key} ({', '.join(sorted(call)) or 'nothing'} was recorded)")
        elif not json_equal(call[key], value):
            out.append(f"{key}: sent {_j(call[key])}, expected {_j(value)}")
    return out


def _j(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 200 else text[:199] + "…"


def _pair(e: str | list[str] | tuple[str, str]) -> str:
    return e if isinstance(e, str) else f"{e[0]} {e[1]}"


def _pairs(items: list[Any]) -> str:
    return ", ".join(_pair(e) for e in items)


# ---- printing -------------------------------------------------------------------------------------------


def _call_text(call: dict[str, Any]) -> str:
    if call.get("kind") == "http":
        body = call.get("json") if "json" in call else call.get("body")
        shown = "" if body is None else " " + _cut(body if isinstance(body, str) else json.dumps(body, sort_keys=True))
        return f"sent {call['method']} {call['url']}{shown}"
    if call.get("kind") == "command":
        return "ran " + _cut(shlex.join(call.get("argv") or []), 300)
    if call.get("kind") == "prometheus":
        return f"asked {call.get('endpoint')}: " + " ".join(str(call.get("query", "")).split())
    return ""


def render(result: Result, *, verbose: bool = False, width: int = 220) -> list[str]:
    """Human-readable report: header, one line per event (with what was sent), verdict."""
    out = [f"rehearsal {result.label}"]
    if result.runbook:
        out.append(f"runbook {result.runbook} {result.version} ({result.runbook_path})")
    if result.alert:
        out.append(f"alert {result.alert}")
    sid_w = max([len(ln.step_id) for ln in result.lines] + [12])
    kind_w = max([len(ln.kind) for ln in result.lines] + [8])
    for ln in result.lines:
        head = f"  {'+' + _dur(ln.offset):<7} {ln.step_id:<{sid_w}}  {ln.kind:<{kind_w}}  {ln.status:<9}  "
        out.append((head + " ".join(ln.text.split()))[:width])
        pad = " " * (len(head) - 2) + "  "
        for call in ln.calls:  # the summary names the call; show what was sent when there is more to see
            if not verbose and not (call.get("kind") == "http" and ("json" in call or "body" in call)):
                continue
            text = _call_text(call)
            if text:
                out.append(pad + text)
        if verbose and ln.output:
            out += ["      " + row for row in json.dumps(ln.output, indent=2, sort_keys=True, default=str).splitlines()]
    if result.status is not None:
        skipped = f" ({_dur(result.skipped_seconds)} of waiting skipped)" if result.skipped_seconds >= 1 else ""
        out.append(f"run {result.status}: {result.reason}{skipped}")
    out += [f"note: {n}" for n in result.notes]
    if result.problems:
        out += [f"FAIL: {p}" for p in result.problems]
    elif result.checked:
        out.append(f"PASS: {len(result.sequence)} step result(s) as expected")
    else:
        out.append("PASS: the run succeeded (add `expect:` to the rehearsal to assert more)")
    return out


def _cut(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _dur(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
