"""The Grafana dashboard's PromQL is valid (promtool), and against a real Prometheus scraping a real runbot
every panel query returns data after one incident cycle."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.prometheus import prometheus_available

from .conftest import DASHBOARD, dashboard_queries

SELF_ALERTS = DASHBOARD.parents[1] / "prometheus" / "self" / "runbot.yaml"


def test_the_dashboard_covers_what_on_call_needs():
    titles = " | ".join(t for t, _ in dashboard_queries()).lower()
    for needed in ("alerts received", "intake backlog", "intake lag", "runs by status", "p50 by type",
                   "p99 by type", "approvals waiting", "oldest waiting approval", "in doubt", "slack api errors",
                   "vault failures"):  # fmt: skip
        assert needed in titles, needed
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "runbot-overview" and doc["templating"]["list"][0]["type"] == "datasource"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_every_dashboard_expression_and_self_alert_passes_promtool(tmp_path: Path):
    rules = [{"record": f"dashboard:expr_{i}", "expr": expr.replace("$__rate_interval", "5m")}
             for i, (_, expr) in enumerate(dashboard_queries())]  # fmt: skip
    wrapped = tmp_path / "dashboard-rules.yaml"
    wrapped.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(wrapped), str(SELF_ALERTS)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    tests = SELF_ALERTS.parents[1] / "tests" / "runbot-self.test.yaml"
    out = subprocess.run(
        ["promtool", "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not prometheus_available(), reason="needs prometheus")
def test_every_dashboard_query_returns_data_after_a_cycle(observed):
    empty = [expr for _, expr in dashboard_queries() if not observed.answers.get(expr)]
    assert not empty, empty
    by_status = observed.answers["max by (status) (runbot_runs)"]
    assert {s["metric"]["status"] for s in by_status} == {"succeeded"}
