"""The whole front door with real servers: Prometheus fires a rule, Alertmanager delivers, runbot runs and resolves."""

from __future__ import annotations

import httpx
import pytest

from runbot.adapters.alertmanager.payload import fingerprint
from tests.support.alertmanager import AlertmanagerProcess, alertmanager_available
from tests.support.http_target import HttpTarget, Reply
from tests.support.prometheus import prometheus_available
from tests.support.prometheus_min import AlertingPrometheus
from tests.support.waiting import wait_until

from .conftest import HOOK_TOKEN, write_runbook
from .server import RunbotServer

RULES = """\
groups:
  - name: demo
    rules:
      - alert: DemoDiskFull
        expr: demo_disk_usage_ratio > 0.9
        labels: {severity: warning}
        annotations: {summary: "disk on {{ $labels.instance }} is {{ $value }} full"}
"""

RUNBOOK = """\
version: 1
name: demo-disk-full
match:
  - alertname = "DemoDiskFull"
steps:
  - id: look
    type: log
    with: {message: "{{ alert.annotations.summary }} ({{ alert.labels.severity }})"}
"""


def metric(srv: RunbotServer, name: str) -> float:
    total = 0.0
    for line in httpx.get(srv.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.split()[-1])
    return total


@pytest.mark.integration
@pytest.mark.skipif(not (alertmanager_available() and prometheus_available()), reason="needs prometheus and alertmanager")
def test_prometheus_alertmanager_runbot_fire_run_resolve(tmp_path, runbooks_dir):
    write_runbook(runbooks_dir, "disk", RUNBOOK)
    usage = {"value": 0.95}
    target = HttpTarget().start()
    target.route("/metrics", lambda req: Reply(body=f'demo_disk_usage_ratio{{mount="/var"}} {usage["value"]}\n'))
    srv = RunbotServer(tmp_path / "runbot", runbooks_dir)
    am = AlertmanagerProcess(tmp_path / "am", bearer_token=HOOK_TOKEN, group_wait="1s", group_interval="1s",
                             repeat_interval="1s")  # fmt: skip
    prom = None
    try:
        srv.start()
        am.webhook_url = srv.url + "/webhooks/alertmanager"
        am.start()
        prom = AlertingPrometheus(tmp_path / "prom", rules=RULES, targets=[target.netloc],
                                  alertmanager=f"127.0.0.1:{am.port}", resend_delay="1s").start()  # fmt: skip

        # the rule fires; Alertmanager delivers (with the bearer token) again and again; one run, to completion
        run = wait_until(lambda: [r for r in srv.api("/api/v1/runs")["runs"] if r["status"] == "succeeded"], timeout=40, what="a finished run")
        wait_until(lambda: metric(srv, "runbot_alerts_received_total") >= 3, timeout=40, what="three deliveries")
        assert metric(srv, "runbot_alerts_deduplicated_total") >= 2
        assert len(srv.api("/api/v1/runs")["runs"]) == 1
        detail = srv.api(f"/api/v1/runs/{run[0]['id']}")
        assert detail["steps"][0]["summary"] == f"disk on {target.netloc} is 0.95 full (warning)"
        [inc] = srv.api("/api/v1/incidents")["incidents"]
        assert inc["status"] == "open"
        [am_alert] = am.alerts()
        [ours] = srv.api("/api/v1/alerts")["alerts"]
        assert ours["fingerprint"] == am_alert["fingerprint"] == fingerprint(am_alert["labels"])

        # the rule stops firing: Prometheus resolves, Alertmanager sends the resolved notification
        usage["value"] = 0.10
        wait_until(lambda: srv.api("/api/v1/incidents")["incidents"][0]["status"] == "resolved", timeout=40, what="the incident to resolve")
        [ours] = srv.api("/api/v1/alerts")["alerts"]
        assert ours["status"] == "resolved" and ours["ends_at"]
        assert len(srv.api("/api/v1/runs")["runs"]) == 1  # still exactly one run for the whole episode
        assert httpx.get(srv.url + "/metrics").text.count('runbot_incidents_open 0.0') == 1
    finally:
        if prom is not None:
            prom.stop()
        am.stop()
        srv.stop()
        target.stop()
