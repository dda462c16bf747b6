"""`runbot serve` in JSON mode: every line of its output is one JSON object, through a whole alert ->
approval -> resolve cycle and a deliberate server error; the events an operator follows are there, with
run, incident and trace ids; the canary secret is nowhere."""

from __future__ import annotations

import json

import pytest

from runbot.tracing_ids import trace_hex

from .cycle import CANARY

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def parse(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    return out


def test_serve_in_json_mode_logs_every_line_as_json_with_ids_and_no_secret(observed):
    text, run = observed.log, observed.run
    assert CANARY not in text
    records = parse([line for line in text.splitlines() if line.strip()])
    events = {r["event"] for r in records if r.get("logger") != "uvicorn.access"}
    run_id, incident_id = run["id"], run["incident_id"]
    for expected in ("alerts received", "run.created", "step.started", "step.succeeded", "approval.requested",
                     "approval.approved", "run.finished", "incident.resolved"):  # fmt: skip
        assert expected in events, (expected, "\n".join(sorted(events)))
    mine = [r for r in records if r.get("run_id") == run_id]
    assert mine and all(r["trace_id"] == trace_hex(run_id) for r in mine)
    assert any(r.get("incident_id") == incident_id for r in mine)
    finished = [r for r in mine if r["event"] == "step.succeeded" and r.get("step_id") == "fix"]
    assert finished and isinstance(finished[0]["duration_ms"], int)
    access = [r for r in records if r.get("logger") == "uvicorn.access"]
    assert any("/webhooks/alertmanager" in r["event"] for r in access)
    crash = [r for r in records if "deliberate server error" in json.dumps(r)]
    assert any("Traceback" in r.get("exception", "") for r in crash), crash
