"""The demo's Prometheus rules, Alertmanager route and runbot.yaml are valid, and agree with each other."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from runbot.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy" / "demo"
PROJECT = yaml.safe_load((ROOT / "runbot.yaml").read_text())


def test_runbot_yaml_holds_only_real_settings_and_the_demo_token() -> None:
    assert set(PROJECT) <= set(Settings.model_fields), set(PROJECT) - set(Settings.model_fields)
    am = yaml.safe_load((DEMO / "alertmanager.yml").read_text())
    auth = am["receivers"][0]["webhook_configs"][0]["http_config"]["authorization"]
    assert auth["credentials"] == PROJECT["alertmanager_webhook_token"]
    prom = yaml.safe_load((DEMO / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == PROJECT["http_allow_hosts"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_demo_rules_and_prometheus_config_pass_promtool() -> None:
    for args in (["check", "config", str(DEMO / "prometheus.yml")],
                 ["test", "rules", str(DEMO / "tests" / "rules.test.yml")]):  # fmt: skip
        out = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed")
def test_demo_alertmanager_routes_the_demo_alerts_to_runbot() -> None:
    config = DEMO / "alertmanager.yml"
    out = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("demo-disk-filling-up", "demo-high-error-rate"):
        labels = json.loads((ROOT / "runbooks" / "examples" / f"{name}.json").read_text())["alerts"][0]["labels"]
        routed = subprocess.run(["amtool", "config", "routes", "test", f"--config.file={config}",
                                 *[f"{k}={v}" for k, v in labels.items()]], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert routed.stdout.strip() == "runbot", routed.stdout + routed.stderr
