"""Silences as maintenance windows: a remediation waits while a real Alertmanager silence matches its alert."""

from __future__ import annotations

import pytest

from runbot.adapters.alertmanager.silences import parse_silences
from runbot.engine.state import STEPS
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


def test_when_alertmanager_cannot_be_asked_the_policy_decides(make_bot, runbooks_dir, tmp_path):
    write_runbook(runbooks_dir, "restart", UNATTENDED)
    nowhere = f"http://127.0.0.1:{free_port()}"
    bot = make_bot(alertmanager_url=nowhere, alertmanager_silence_timeout=0.5)
    bot.post(payload(alert("ServiceDown", instance="web-1")))
    [run] = wait_until(lambda: bot.runs(), timeout=15)
    assert bot.wait_run(run["id"], "succeeded")["status"] == "succeeded"  # default: proceed (and log it)
    bot.stop()
    careful = make_bot(alertmanager_url=nowhere, alertmanager_silence_timeout=0.5,
                       alertmanager_silence_on_error="hold", data_dir=tmp_path / "careful")  # fmt: skip
    careful.post(payload(alert("ServiceDown", instance="web-9")))
    [run] = wait_until(lambda: careful.runs(), timeout=15)
    held = careful.wait_run(run["id"], "waiting")
    assert held["reason"].startswith("held: could not ask Alertmanager about silences (ConnectError)")
