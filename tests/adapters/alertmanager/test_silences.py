"""Silences as maintenance windows: a remediation waits while a real Alertmanager silence matches its alert."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, ClassVar

import httpx
import pytest

from runbot.adapters.alertmanager.silences import SilenceCheck, parse_silences
from runbot.domain import RunStatus
from runbot.engine.state import STEPS
from runbot.runbooks.model import StepSpec
from runbot.settings import Settings
from tests.engine.helpers import drive, run_row, start, steps
from tests.support.alertmanager import AlertmanagerProcess, alertmanager_available
from tests.support.ports import free_port
from tests.support.waiting import wait_until

from .conftest import write_runbook
from .samples import alert, payload
from .test_intake import audit_events

UNATTENDED = """\
version: 1
name: restart-service
match:
  - alertname = "ServiceDown"
unattended:
  reason: "restarting a crashed worker is safe and reversible"
steps:
  - id: look
    type: log
    with: {message: "diagnosing {{ alert.labels.instance }}"}
  - id: restart
    type: log
    risk: high
    with: {message: "restarting {{ alert.labels.instance }}"}
"""


def test_only_active_silences_count_and_matchers_follow_alertmanager():
    silences = parse_silences([
        {"id": "a", "status": {"state": "active"}, "matchers": [
            {"name": "alertname", "value": "ServiceDown", "isRegex": False, "isEqual": True},
            {"name": "instance", "value": "web-.*", "isRegex": True},  # isEqual missing: older Alertmanager
            {"name": "env", "value": "dev", "isRegex": False, "isEqual": False}],
         "endsAt": "2030-01-01T00:00:00.000Z", "createdBy": "ops", "comment": "patching"},
        {"id": "b", "status": {"state": "expired"}, "matchers": [{"name": "alertname", "value": "ServiceDown"}]},
        {"id": "c", "status": {"state": "pending"}, "matchers": [{"name": "alertname", "value": "ServiceDown"}]},
    ])  # fmt: skip
    assert [s.id for s in silences] == ["a"]
    s = silences[0]
    assert s.matches({"alertname": "ServiceDown", "instance": "web-1", "env": "prod"})
    assert not s.matches({"alertname": "ServiceDown", "instance": "db-1", "env": "prod"})
    assert not s.matches({"alertname": "ServiceDown", "instance": "web-1", "env": "dev"})


@pytest.mark.integration
@pytest.mark.skipif(not alertmanager_available(), reason="prometheus-alertmanager is not installed")
def test_a_remediation_waits_for_a_matching_silence_to_end(make_bot, runbooks_dir, tmp_path):
    write_runbook(runbooks_dir, "restart", UNATTENDED)
    with AlertmanagerProcess(tmp_path / "am") as am:
        sid = am.create_silence({"alertname": "ServiceDown", "instance": "web-1"}, comment="kernel patching",
                                created_by="alice")  # fmt: skip
        bot = make_bot(alertmanager_url=am.url, alertmanager_silence_recheck_seconds=0.5)
        bot.post(payload(alert("ServiceDown", instance="web-1"), alert("ServiceDown", instance="web-2")))
        runs = wait_until(lambda: {r["alert"]["labels"]["instance"]: r for r in bot.runs()} if len(bot.runs()) == 2 else None, timeout=15)
        held = bot.wait_run(runs["web-1"]["id"], "waiting")
        assert held["reason"].startswith(f"held: the alert is silenced in Alertmanager (silence {sid} by alice")
        assert "kernel patching" in held["reason"]
        bot.wait_run(runs["web-2"]["id"], "succeeded")  # another host: no silence, no wait
        [ev] = audit_events(bot, "step.held")
        assert ev["run_id"] == held["id"] and ev["step_id"] == "restart"
        assert [s["step_id"] for s in bot.rows(STEPS, STEPS.c.run_id == held["id"])] == ["look"]  # not the restart
        am.expire_silence(sid)
        bot.wait_run(held["id"], "succeeded", timeout=15)
        assert [s["step_id"] for s in bot.rows(STEPS, STEPS.c.run_id == held["id"])] == ["look", "restart"]


def test_when_alertmanager_cannot_be_asked_the_step_is_held_with_the_reason_unless_told_to_proceed(
        make_bot, runbooks_dir, tmp_path):  # fmt: skip
    write_runbook(runbooks_dir, "restart", UNATTENDED)
    nowhere = f"http://127.0.0.1:{free_port()}"
    bot = make_bot(alertmanager_url=nowhere, alertmanager_silence_timeout=0.5)
    bot.post(payload(alert("ServiceDown", instance="web-9")))
    [run] = wait_until(lambda: bot.runs(), timeout=15)
    held = bot.wait_run(run["id"], "waiting")  # default: hold, and say why
    assert held["reason"].startswith("held: cannot check Alertmanager silences: Alertmanager cannot be reached "
                                     "(ConnectError)")  # fmt: skip
    [ev] = audit_events(bot, "step.held")
    assert ev["details"]["reason"] == held["reason"]
    bot.stop()
    hasty = make_bot(alertmanager_url=nowhere, alertmanager_silence_timeout=0.5,
                     alertmanager_silence_on_error="proceed", data_dir=tmp_path / "hasty")  # fmt: skip
    hasty.post(payload(alert("ServiceDown", instance="web-1")))
    [run] = wait_until(lambda: hasty.runs(), timeout=15)
    assert hasty.wait_run(run["id"], "succeeded")["status"] == "succeeded"  # opted in: proceed (and log it)


# ---- Alertmanager's own verdict, and runbot's evaluation of the same silences ------------------------------------

def _m(name: str, value: str, *, regex: bool = False, equal: bool = True) -> dict[str, Any]:
    return {"name": name, "value": value, "isRegex": regex, "isEqual": equal}


SILENCES = {  # name -> matchers, as an operator would create them in Alertmanager's UI or amtool
    "case-insensitive": [_m("alertname", "Disk"), _m("severity", "(?i)critical", regex=True)],
    "unicode-letters": [_m("alertname", "Team"), _m("team", "\\p{L}+", regex=True)],
    "not-regex": [_m("alertname", "Env"), _m("env", "prod|staging", regex=True, equal=False)],
    "empty-regex": [_m("alertname", "Owner"), _m("owner", "", regex=True)],
    "mixed": [_m("alertname", "Disk.*", regex=True), _m("instance", "db-1", equal=False),
              _m("region", "eu-.*", regex=True, equal=False), _m("page", "yes")],
}  # fmt: skip
ALERT_LABELS = [
    {"alertname": "Disk", "severity": "CRITICAL"}, {"alertname": "Disk", "severity": "Critical"},
    {"alertname": "Disk", "severity": "critical-ish"}, {"alertname": "Disk", "severity": "warning"},
    {"alertname": "Team", "team": "Ärger"}, {"alertname": "Team", "team": "ops1"}, {"alertname": "Team", "team": "δ"},
    {"alertname": "Env", "env": "dev"}, {"alertname": "Env", "env": "prod"}, {"alertname": "Env"},
    {"alertname": "Owner"}, {"alertname": "Owner", "owner": "ana"},
    {"alertname": "DiskFull", "instance": "db-2", "region": "us-1", "page": "yes"},
    {"alertname": "DiskFull", "instance": "db-1", "region": "us-1", "page": "yes"},
    {"alertname": "DiskFull", "instance": "db-2", "region": "eu-1", "page": "yes"},
    {"alertname": "DiskFull", "instance": "db-2", "page": "yes"},
    {"alertname": "Diskfull", "instance": "db-2", "page": "no"},
]  # fmt: skip


@pytest.mark.integration
@pytest.mark.skipif(not alertmanager_available(), reason="prometheus-alertmanager is not installed")
def test_held_or_not_is_alertmanagers_own_verdict_for_each_silence(tmp_path):
    with AlertmanagerProcess(tmp_path / "am") as am:
        ids = {am.create_silence({}, matchers=ms, comment=name): name for name, ms in SILENCES.items()}
        am.post_alerts([{"labels": labels} for labels in ALERT_LABELS])
        held_by_am = {json.dumps(a["labels"], sort_keys=True): {ids[i] for i in a["status"]["silencedBy"]}
                      for a in wait_until(lambda: am.alerts() if len(am.alerts()) == len(ALERT_LABELS) else None,
                                           timeout=15)}
        assert any(held_by_am.values()) and not all(held_by_am.values())  # the table exercises both verdicts
        check = SilenceCheck(Settings(alertmanager_url=am.url))
        evaluated = parse_silences(am.request("GET", "/api/v2/silences")[1])
        for labels in ALERT_LABELS:
            expected = held_by_am[json.dumps(labels, sort_keys=True)]
            asked = {ids[s.id] for s in check.verdict(labels).silenced_by}
            assert check.verdict(labels).source == "alertmanager"
            assert asked == expected, labels
            here = {ids[s.id] for s in evaluated if s.matches(labels)}
            assert here == expected, f"runbot's own evaluation of the silences disagrees on {labels}"
        # An alert Alertmanager does not hold is decided by evaluating its silences the same way.
        gone = {"alertname": "Disk", "severity": "CRITICAL", "host": "not-sent"}
        assert check.verdict(gone).source == "evaluated"
        assert {ids[s.id] for s in check.verdict(gone).silenced_by} == {"case-insensitive"}


@pytest.mark.integration
@pytest.mark.skipif(not alertmanager_available(), reason="prometheus-alertmanager is not installed")
def test_alertmanager_stopped_mid_run_holds_the_step_with_a_reason_then_it_proceeds(make_runtime, runbooks_dir,
                                                                                   tmp_path):  # fmt: skip
    write_runbook(runbooks_dir, "restart", UNATTENDED)
    labels = {"alertname": "ServiceDown", "instance": "web-1"}
    with AlertmanagerProcess(tmp_path / "am") as am:
        am.post_alerts([{"labels": labels}])
        sid = am.create_silence({}, matchers=[
            _m("alertname", "ServiceDown"), _m("instance", "(?i)WEB-.*", regex=True)], comment="patching")
        rt = make_runtime(alertmanager_url=am.url)
        check = SilenceCheck(rt.settings)
        rt.engine.hold_checks.append(check)
        run_id = start(rt, "restart-service", alert={"labels": labels})
        assert drive(rt, run_id, max_wait=0.2) is RunStatus.WAITING
        assert f"silenced in Alertmanager (silence {sid}" in run_row(rt, run_id)["reason"]

        am.expire_silence(sid)
        am.stop()
        check.forget()
        assert drive(rt, run_id, max_wait=0.2) is RunStatus.WAITING
        reason = run_row(rt, run_id)["reason"]
        assert reason.startswith("held: cannot check Alertmanager silences: Alertmanager cannot be reached")
        held = audit_events(SimpleNamespace(rt=rt), "step.held")
        assert held[-1]["details"]["reason"] == reason  # the audit trail says why
        assert [s["step_id"] for s in steps(rt, run_id)] == ["look"]  # the remediation has not started

        am.restart()
        check.forget()
        assert drive(rt, run_id) is RunStatus.SUCCEEDED
        assert [s["step_id"] for s in steps(rt, run_id)] == ["look", "restart"]


def test_a_silence_runbot_cannot_evaluate_holds_with_the_reason_instead_of_failing():
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v2/alerts":
            return httpx.Response(200, json=[])
        return httpx.Response(200, json=[{"id": "s1", "status": {"state": "active"},
                                          "matchers": [_m("instance", "(?=web)", regex=True)]}])  # fmt: skip

    check = SilenceCheck(Settings(alertmanager_url="http://127.0.0.1:9"), transport=httpx.MockTransport(answer))
    hold = check(_state({"instance": "web-1"}), StepSpec.model_validate({"id": "restart", "type": "log"}))
    assert hold is not None
    assert hold.reason.startswith("held: cannot check Alertmanager silences: silence s1 has a matcher runbot "
                                  "cannot evaluate")  # fmt: skip
    assert "lookahead" in hold.reason


def _state(labels: dict[str, str]) -> Any:
    class _R:  # the two attributes a hold check reads
        id = "r-test"
        scope: ClassVar[dict[str, Any]] = {"alert": {"labels": labels}}

    return _R()


def test_a_hold_check_that_raises_holds_the_step_instead_of_an_engine_error_loop(make_runtime, runbooks_dir):
    write_runbook(runbooks_dir, "restart", UNATTENDED)
    rt = make_runtime()

    def broken(R: Any, step: Any) -> None:
        raise ValueError("boom")

    rt.engine.hold_checks.append(broken)
    run_id = start(rt, "restart-service", alert={"labels": {"alertname": "ServiceDown", "instance": "web-1"}})
    assert drive(rt, run_id, max_wait=0.2) is RunStatus.WAITING
    assert run_row(rt, run_id)["reason"].startswith("held: the hold check function failed (ValueError)")
    rt.engine.hold_checks.remove(broken)
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
