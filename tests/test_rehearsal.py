"""Rehearsals (`runbot test`): the real engine and plugins against recorded answers, never the network."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbot.rehearsal import (
    Rehearsal,
    RehearsalFileError,
    Result,
    load_rehearsal,
    parse_rehearsal,
    rehearse,
    render,
)
from runbot.settings import Settings
from tests.support.http_target import HttpTarget, Reply

RUNBOT = str(Path(sys.executable).parent / "runbot")

ALERT = {"labels": {"alertname": "Demo", "service": "checkout", "instance": "web-1.example:9100"},
         "annotations": {}, "startsAt": "2024-05-14T09:12:30Z"}  # fmt: skip


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def runbook(tmp_path: Path, steps: str, *, params: str = "", match: str = '["alertname = \\"Demo\\""]') -> Path:
    body = f"version: 1\nname: demo\nmatch: {match}\n"
    if params:
        body += "params:\n" + textwrap.indent(textwrap.dedent(params).strip(), "  ") + "\n"
    body += "steps:\n" + textwrap.indent(textwrap.dedent(steps).strip(), "  ") + "\n"
    return write(tmp_path / "runbooks" / "demo.yaml", body)


def run(tmp_path: Path, spec: dict[str, Any], **kw: Any) -> Result:
    spec = {"runbook": "runbooks/demo.yaml", "alert": ALERT, **spec}
    path = write(tmp_path / "demo.rehearsal.yaml", yaml.safe_dump(spec, sort_keys=False))
    return rehearse(load_rehearsal(path), Settings(runbooks_dir=tmp_path / "runbooks"), **kw)


def seq(result: Result) -> list[tuple[str, str]]:
    return result.sequence


def line(result: Result, step_id: str) -> Any:
    found = result.last(step_id)
    assert found is not None, f"{step_id} did not run: {result.sequence} {result.problems}"
    return found


# ---- recorded answers go through the plugins' own logic ------------------------------------------------


def test_prometheus_short_forms_feed_the_real_query_range_and_expect_logic(tmp_path: Path) -> None:
    runbook(tmp_path, """
        - {id: ratio, type: prometheus.query, with: {query: 'sum(rate(x[5m]))', expect: "value < 0.5"}}
        - {id: by_code, type: prometheus.query, with: {query: 'sum by (code) (x)'}}
        - {id: count, type: prometheus.query, with: {query: 'scalar(x)'}}
        - {id: trend, type: prometheus.range, with: {query: x, range: 10m, step: 1m}}
        - {id: too_high, type: prometheus.query, continue_on_failure: true, with: {query: x, expect: "value < 1"}}
        - {id: typo, type: prometheus.query, continue_on_failure: true, with: {query: 'sum(x'}}
    """)
    result = run(tmp_path, {"responses": {
        "ratio": {"value": 0.2},
        "by_code": {"series": [{"labels": {"code": "500"}, "value": 3}, {"labels": {"code": "503"}, "value": "NaN"}]},
        "count": {"scalar": 4},
        "trend": {"series": [{"labels": {"pod": "a"}, "values": [1, 2, 3]}]},
        "too_high": {"value": 7},
        "typo": {"error": "1:6: parse error: unclosed left parenthesis", "errorType": "bad_data"},
    }})
    assert result.status == "succeeded", result.problems
    assert line(result, "ratio").output["expect"] == {"expression": "value < 0.5", "passed": True}
    assert [s["value"] for s in line(result, "by_code").output["series"]] == [3.0, "NaN"]
    assert line(result, "count").output["result_type"] == "scalar"
    trend = line(result, "trend").output["series"][0]
    assert (trend["min"], trend["max"], trend["samples"]) == (1.0, 3.0, 11)  # 11 points over 10m at 1m
    assert line(result, "too_high").status == "failed"
    assert "expect failed: value < 1" in line(result, "too_high").text
    assert "PromQL error: 1:6: parse error" in line(result, "typo").text


def test_http_and_command_recordings_are_checked_like_real_answers(tmp_path: Path) -> None:
    runbook(tmp_path, """
        - id: health
          type: http.request
          continue_on_failure: true
          with: {url: "https://api.example/healthz", expect_json: {status: ok}}
        - id: flaky
          type: http.request
          retry: {attempts: 3, initial: 10s, max: 10s}
          with: {url: "https://api.example/flaky"}
        - id: report
          type: command
          with: {argv: [df, --output=pcent, /], read_only: true, parse_json: true}
        - id: broken
          type: command
          continue_on_failure: true
          with: {argv: ["false"], read_only: true}
    """)
    result = run(tmp_path, {"responses": {
        "health": {"status": 200, "json": {"status": "degraded"}},
        "flaky": [{"error": "connection refused"}, {"status": 503}, {"status": 200, "body": "ok"}],
        "report": {"exit_code": 0, "stdout": '{"used": 0.42}'},
        "broken": {"exit_code": 2, "stderr": "it broke"},
    }})
    assert "expect_json: status is \"degraded\", expected \"ok\"" in line(result, "health").text
    assert [s for s in seq(result) if s[0] == "flaky"] == [("flaky", "failed")] * 2 + [("flaky", "succeeded")]
    assert "connection refused" in result.lines[1].text
    assert result.skipped_seconds > 0  # the retry backoff was skipped, not slept
    assert line(result, "report").output["json"] == {"used": 0.42}
    assert line(result, "broken").status == "failed"
    assert "exited with 2 (expected [0]): it broke" in line(result, "broken").text
    assert result.status == "succeeded"


def test_a_step_without_a_recording_fails_and_nothing_is_called_or_spawned(tmp_path: Path) -> None:
    marker = tmp_path / "spawned"
    with HttpTarget() as target:
        target.route("/*", Reply(json={"ok": True}))
        runbook(tmp_path, f"""
            - {{id: live_http, type: http.request, continue_on_failure: true, with: {{url: "{target.url('/x')}"}}}}
            - {{id: live_command, type: command, continue_on_failure: true, with: {{argv: [touch, "{marker}"], read_only: true}}}}
            - {{id: live_query, type: prometheus.query, continue_on_failure: true, with: {{query: up}}}}
            - {{id: secret_store, type: vault.credentials, continue_on_failure: true, with: {{path: database/creds/ro}}}}
        """)
        result = run(tmp_path, {})
        assert target.calls() == 0
    assert not marker.exists()
    for sid in ("live_http", "live_command", "live_query", "secret_store"):
        assert line(result, sid).status == "failed"
        assert f"no recorded response for step {sid}" in line(result, sid).text
    assert len(seq(result)) == 4  # not retried: a missing recording will not appear on a second try


def test_other_step_types_return_their_recorded_output_and_waits_are_skipped(tmp_path: Path) -> None:
    runbook(tmp_path, """
        - {id: db, type: vault.credentials, with: {path: database/creds/readonly}}
        - {id: pause, type: wait, with: {duration: 2h}}
        - {id: use, type: log, with: {message: "lease {{ steps.db.lease_id }}"}}
    """)
    started = time.monotonic()
    result = run(tmp_path, {"responses": {"db": {"output": {"lease_id": "database/creds/readonly/abc"}}}})
    assert time.monotonic() - started < 30
    assert result.status == "succeeded", result.problems
    assert line(result, "pause").text == "wait of 7200s skipped"
    assert line(result, "use").text == "lease database/creds/readonly/abc"


# ---- secrets, approvals and the clock ------------------------------------------------------------------


def test_fake_secrets_reach_the_request_but_never_the_report(tmp_path: Path) -> None:
    runbook(tmp_path, """
        - id: call
          type: http.request
          with:
            url: https://api.example/whoami
            headers: {Authorization: "Bearer {{ secret('kv/api#token') }}", X-Other: "{{ secret('kv/other#key') }}"}
    """)
    result = run(tmp_path, {
        "secrets": {"kv/api#token": "s3cr3t-fake-token"},
        "responses": {"call": {"json": {"echo": "Bearer s3cr3t-fake-token"}}},
        "expect": {"requests": {"call": {"headers": {"Authorization": "Bearer s3cr3t-fake-token"}}}},
    })
    assert result.passed, result.problems
    printed = "\n".join(render(result, verbose=True))
    assert "s3cr3t-fake-token" not in printed
    assert "Bearer ****" in printed  # the echo in the response body is masked too
    assert "kv/api#token" in printed and "kv/other#key" in printed  # references are fine to show


@pytest.mark.parametrize(("decision", "status", "last"), [
    ("approve", "succeeded", ("act", "succeeded")),
    ("deny", "aborted", ("look", "succeeded")),
    ("timeout", "aborted", ("look", "succeeded")),
])  # fmt: skip
def test_approval_decisions_are_applied_through_votes(tmp_path: Path, decision: str, status: str,
                                                      last: tuple[str, str]) -> None:  # fmt: skip
    runbook(tmp_path, """
        - {id: look, type: log, with: {message: looked}}
        - id: act
          type: log
          risk: high
          approval: {approvers: {slack_usergroups: [sre-oncall]}, min_approvals: 2, timeout: 15m, on_timeout: escalate}
          with: {message: acted}
    """)
    result = run(tmp_path, {"approvals": {"act": decision}})
    assert result.status == status, result.reason
    assert result.sequence[-1] == last
    approvals = [(ln.status, ln.text) for ln in result.lines if ln.kind == "approval"]
    assert approvals[0] == ("requested", "from group:sre-oncall (2 needed)")
    if decision == "approve":
        assert approvals[-1] == ("approved", "by rehearsal-approver-2")  # two distinct synthetic people
    if decision == "timeout":
        assert [a[0] for a in approvals] == ["requested", "escalated", "expired"]
        assert result.skipped_seconds >= 29 * 60  # 15m, escalated, 15m more: skipped, not slept


def test_an_approval_without_a_decision_stops_the_rehearsal_with_a_hint(tmp_path: Path) -> None:
    runbook(tmp_path, """
        - {id: act, type: log, risk: high, approval: {approvers: {slack_usergroups: [ops]}}, with: {message: x}}
    """)
    result = run(tmp_path, {})
    assert not result.passed
    assert any("step act waits for approval" in p and "approvals: {act: approve}" in p for p in result.problems)


def test_verification_windows_expire_in_virtual_time(tmp_path: Path) -> None:
    runbook(tmp_path, """
        - id: fix
          type: http.request
          approval: {approvers: {slack_usergroups: [ops]}}
          with: {method: POST, url: "https://api.example/fix"}
          verify:
            type: prometheus.query
            with: {query: errors, expect: "value == 0"}
            within: 5m
            interval: 1m
          on_failure:
            - {id: tell, type: log, with: {message: "fix did not help"}}
    """)
    started = time.monotonic()
    result = run(tmp_path, {"responses": {"fix": {"status": 202}, "fix__verify": {"value": 3}},
                            "approvals": {"fix": "approve"}})  # fmt: skip
    assert time.monotonic() - started < 30
    checks = [s for s in seq(result) if s[0] == "fix__verify"]
    assert len(checks) in (5, 6) and all(s == "failed" for _, s in checks)  # every minute for five minutes
    assert line(result, "tell").status == "succeeded"
    assert result.status == "failed" and "verification failed" in result.reason
    assert 230 <= result.skipped_seconds <= 330
    assert line(result, "fix__verify").offset >= 240  # printed times are virtual


# ---- expectations --------------------------------------------------------------------------------------


def test_expectations_name_the_first_difference(tmp_path: Path) -> None:
    runbook(tmp_path, """
        - {id: q, type: prometheus.query, with: {query: up}}
        - {id: call, type: http.request, with: {url: "https://api.example/x?a=1"}}
    """)
    result = run(tmp_path, {
        "responses": {"q": {"value": 1}, "call": {"json": {"n": 1}}},
        "expect": {
            "status": "failed",
            "steps": [["q", "succeeded"], ["call", "failed"]],
            "outputs": {"q": {"value": 2, "missing.path": 1}, "call": {"json.n": 1}},
            "requests": {"call": {"method": "POST", "url": "https://api.example/x?a=1", "argv": ["x"]}},
        },
    })
    assert result.problems == [
        "expected the run to end failed, it ended succeeded: all steps done",
        "steps: #2 expected call failed, got call succeeded; whole sequence: q succeeded, call succeeded",
        "outputs.q.value: is 1.0, expected 2",
        "outputs.q.missing.path: not in the output",
        'requests.call.method: sent "GET", expected "POST"',
        "requests.call.argv: the call had no argv (attempt, headers, kind, method, url was recorded)",
    ]
    text = "\n".join(render(result))
    assert "FAIL: steps: #2 expected call failed" in text


def test_a_sequence_entry_without_status_matches_any_status(tmp_path: Path) -> None:
    runbook(tmp_path, "- {id: a, type: noop}\n- {id: b, type: fail, continue_on_failure: true, with: {retryable: false}}")
    assert run(tmp_path, {"expect": {"steps": ["a", "b"]}}).passed
    short = run(tmp_path, {"expect": {"steps": ["a"]}})
    assert short.problems == ["steps: more happened than expected, from #2: b failed"]


# ---- the rehearsal file --------------------------------------------------------------------------------


def test_mistakes_in_the_rehearsal_file_are_reported_before_anything_runs(tmp_path: Path) -> None:
    runbook(tmp_path, """
        - {id: q, type: prometheus.query, with: {query: up}}
        - {id: act, type: log, with: {message: x}}
    """)
    result = run(tmp_path, {"responses": {"qq": {"value": 1}, "q": [{"value": 1, "stdout": "x"}]},
                            "approvals": {"act": "approve"}})  # fmt: skip
    assert result.status is None  # nothing ran
    assert result.problems == [
        "responses.qq: demo has no step 'qq' (steps: q, act)",
        "responses.q[0]: unknown key(s) stdout for a prometheus.query step (use data, error, errorType, labels, "
        "scalar, series, status, status_code, value, warnings)",
        "approvals.act: demo has no step 'act' with an approval (steps with one: none)",
    ]
    with pytest.raises(RehearsalFileError, match=r"approvals\.x: Input should be 'approve', 'deny' or 'timeout'"):
        parse_rehearsal({"approvals": {"x": "yes"}}, tmp_path / "r.rehearsal.yaml")
    with pytest.raises(RehearsalFileError, match="responsess: unknown key"):
        parse_rehearsal({"responsess": {}})


def test_the_alert_must_match_the_runbook_unless_the_rehearsal_says_otherwise(tmp_path: Path) -> None:
    runbook(tmp_path, "- {id: a, type: noop}", match='["alertname = \\"Other\\""]')
    result = run(tmp_path, {})
    assert result.problems == ['the alert does not match the runbook: alertname="Other" does not hold: alertname is "Demo"']
    assert run(tmp_path, {"expect": {"match": False}}).passed


def test_runbook_lint_problems_fail_the_rehearsal(tmp_path: Path) -> None:
    runbook(tmp_path, "- {id: a, type: prometheus.query, with: {query: up, expect: 'value <'}}")
    result = run(tmp_path, {})
    assert len(result.problems) == 1 and result.problems[0].startswith("lint: ")
    assert "expect" in result.problems[0]


def test_params_and_an_explicit_runbook_and_alert_override_the_file(tmp_path: Path) -> None:
    runbook(tmp_path, "- {id: say, type: log, with: {message: '{{ params.who }} {{ alert.labels.service }}'}}",
            params="who: {type: string, default: nobody}")
    alert = write(tmp_path / "other-alert.json", '{"alerts": [{"labels": {"alertname": "Demo", "service": "cart"}}]}')
    spec = Rehearsal(params={"who": "file"})
    result = rehearse(spec, Settings(runbooks_dir=tmp_path / "runbooks"), runbook="demo", alert=alert,
                      params={"who": "cli"})  # fmt: skip
    assert result.passed, result.problems
    assert line(result, "say").text == "cli cart"


# ---- the command line ----------------------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNBOT, "test", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})  # fmt: skip


def test_runbot_test_exit_status_and_output(tmp_path: Path) -> None:
    runbook(tmp_path, """
        - {id: q, type: prometheus.query, with: {query: up}}
        - {id: g, type: prometheus.graph, with: {query: up, range: 1h}}
    """)
    write(tmp_path / "alert.json", '{"labels": {"alertname": "Demo"}}')
    good = write(tmp_path / "rehearsals" / "good.rehearsal.yaml", """
        runbook: ../runbooks/demo.yaml
        alert: ../alert.json
        responses: {q: {value: 1}, g: {value: 2}}
        expect: {status: succeeded, steps: [[q, succeeded], [g, succeeded]]}
    """)
    bad = write(tmp_path / "rehearsals" / "bad.rehearsal.yaml", good.read_text().replace("[g, succeeded]", "[g, failed]"))

    ok = cli(str(good), "--artifacts", "out", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert [ln.split()[1:4] for ln in ok.stdout.splitlines() if ln.startswith("  +")] == [
        ["q", "prometheus.query", "succeeded"], ["g", "prometheus.graph", "succeeded"]]
    assert "PASS: 2 step result(s) as expected" in ok.stdout
    assert (tmp_path / "out" / "good.rehearsal" / "g-g.png").read_bytes()[:4] == b"\x89PNG"

    both = cli("rehearsals", cwd=tmp_path)  # a directory: every *.rehearsal.yaml below it
    assert both.returncode == 1
    assert "FAIL: steps: #2 expected g failed, got g succeeded" in both.stdout
    assert both.stdout.rstrip().endswith(f"2 rehearsal(s): 1 passed, 1 failed\n  failed: {bad.relative_to(tmp_path)}")

    # a runbook by name (in the runbooks dir, here ./runbooks) or by path, with the recordings of a rehearsal file
    for ref in ("demo", "runbooks/demo.yaml"):
        named = cli(ref, "--responses", str(good), "--alert", "alert.json", cwd=tmp_path)
        assert named.returncode == 0, named.stdout + named.stderr

    misuse = cli(str(good), "--responses", str(good), cwd=tmp_path)
    assert misuse.returncode == 2 and "already a rehearsal file" in misuse.stderr
