"""`make demo` is the real loop: scripts/demo.sh started as the README says (on free ports, with a disk that
fills in seconds), then, with the README's commands from a second shell: the exporter's alert fires through
the real Prometheus and Alertmanager, a run starts and records its diagnostics and graph, a CLI approval runs
the cleanup against the exporter, the alert resolves and the incident gets a postmortem draft."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.alertmanager import alertmanager_available
from tests.support.ports import free_port
from tests.support.prometheus import prometheus_available
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
RUNBOT = str(Path(sys.executable).parent / "runbot")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not (prometheus_available() and alertmanager_available()), reason="needs prometheus and alertmanager"),
]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _rows(db: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    if not db.is_file():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # no schema yet, or locked for a moment
            return []


def test_the_demo_closes_the_loop_from_alert_to_postmortem(tmp_path: Path) -> None:
    ports = {"RUNBOT_PORT": free_port(), "DEMO_PROMETHEUS_PORT": free_port(), "DEMO_ALERTMANAGER_PORT": free_port(),
             "DEMO_EXPORTER_PORT": free_port()}  # fmt: skip
    demo_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    env |= {k: str(v) for k, v in ports.items()}
    env |= {"DEMO_DIR": str(demo_dir), "DEMO_SKIP_SETUP": "1", "DEMO_FILL_SECONDS": "15", "DEMO_ERROR_SECONDS": "3600",
            "DEMO_PYTHON": sys.executable, "DEMO_RUNBOT": RUNBOT, "RUNBOT_LOG_LEVEL": "WARNING"}  # fmt: skip
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen(["scripts/demo.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    exporter = f"http://127.0.0.1:{ports['DEMO_EXPORTER_PORT']}"
    db = demo_dir / "runbot.db"

    # the second shell: the demo's settings (runbot.yaml, the ports the script chose), nothing else by hand
    shell = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    shell.pop("RUNBOT_CONFIG", None)  # the second shell finds runbot.yaml itself, as a person's does
    shell |= {"RUNBOT_DATA_DIR": str(demo_dir)}

    def runbot(*args: str) -> str:
        out = subprocess.run([RUNBOT, *args], cwd=ROOT, env=shell, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def log_tail() -> str:
        texts = [(tmp_path / "demo.log").read_text(errors="replace")[-3000:]]
        texts += [f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in demo_dir.glob("*.log")]
        return "\n".join(texts)

    try:
        try:
            run = wait_until(lambda: demo.poll() is None and _rows(db, "SELECT * FROM runs WHERE runbook_name = ?",
                                                                    "demo-disk-filling-up"),
                             timeout=120, what="a demo-disk-filling-up run started by Prometheus' alert", interval=1)[0]  # fmt: skip
            alert = _rows(db, "SELECT * FROM alerts WHERE id = ?", run["alert_id"])[0]
            assert alert["alertname"] == "DemoDiskFillingUp"
            assert json.loads(alert["labels"])["instance"] == f"127.0.0.1:{ports['DEMO_EXPORTER_PORT']}"

            # diagnostics and the graph, then the approval the run waits for
            wait_until(lambda: _rows(db, "SELECT * FROM approvals WHERE run_id = ? AND status = 'pending'", run["id"]),
                       timeout=60, what="the cleanup's approval request", interval=0.5)  # fmt: skip
            shown = runbot("runs", "show", run["id"])
            assert "used_ratio" in shown and "usage_graph" in shown and "artifact" in shown, shown
            assert _get_json(f"{exporter}/state")["cleanups"] == 0

            assert "approved" in runbot("runs", "approve", run["id"])
            wait_until(lambda: _get_json(f"{exporter}/state")["cleanups"] == 1, timeout=60,
                       what="the exporter's disk cleaned up", interval=0.5)  # fmt: skip
            assert _get_json(f"{exporter}/state")["disk_used_ratio"] < 0.8
            wait_until(lambda: _rows(db, "SELECT * FROM runs WHERE id = ? AND status = 'succeeded'", run["id"]),
                       timeout=60, what="the run verified and succeeded", interval=0.5)  # fmt: skip

            # the alert resolves through Prometheus and Alertmanager; the incident does, with its postmortem
            wait_until(lambda: _rows(db, "SELECT * FROM incidents WHERE id = ? AND status = 'resolved'",
                                     run["incident_id"]),
                       timeout=90, what="the incident resolved by Alertmanager", interval=1)  # fmt: skip
            draft = wait_until(lambda: next(iter((demo_dir / "postmortems").glob(f"{run['incident_id']}.*")), None),
                               timeout=30, what="the postmortem draft", interval=0.5)  # fmt: skip
            text = draft.read_text()
            assert "used_ratio" in text and "cleanup" in text, text
            assert "944d" not in text
            assert "used_ratio" in runbot("postmortem", run["incident_id"], "--no-images")  # the README's command

            # the second shell's everyday commands pass with the project's configuration
            assert "runbook(s) OK" in runbot("lint")
            assert "demo-disk-filling-up" in runbot("match", "runbooks/examples/demo-disk-filling-up.json")
            assert "0 failed" in runbot("test", "runbooks/rehearsals/")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_tail()}") from None
    finally:
        if demo.poll() is None:
            os.kill(demo.pid, signal.SIGTERM)  # the script's trap stops what it started
            try:
                demo.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait(timeout=10)
        log.close()
    left = subprocess.run(["pgrep", "-s", str(demo.pid)], capture_output=True, text=True)
    assert not left.stdout.strip(), f"the demo left processes behind: {left.stdout}"
