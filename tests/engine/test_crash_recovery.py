"""SIGKILL a real `runbot serve` mid-run and restart it: completed steps ran once, the in-flight
non-idempotent step is in doubt (not repeated), and after a human decision the run completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import write_runbook
from tests.support.http_target import HttpTarget, Reply
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUNBOT = str(Path(sys.executable).with_name("runbot"))


def _env(db_url: str, tmp_path: Path, runbooks: Path, port: int, target_port: int) -> dict[str, str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}, "RUNBOT_CONFIG": "none"}
    env.update({
        "RUNBOT_DATABASE_URL": db_url, "RUNBOT_DATA_DIR": str(tmp_path / "data"),
        "RUNBOT_RUNBOOKS_DIR": str(runbooks), "RUNBOT_PORT": str(port), "RUNBOT_LEASE_SECONDS": "3",
        "RUNBOT_POLL_INTERVAL": "0.2",
        "RUNBOT_HTTP_ALLOW_HOSTS": json.dumps([f"127.0.0.1:{target_port}"]),
        "RUNBOT_HTTP_ALLOW_CIDRS": json.dumps(["127.0.0.1/32"]),
    })
    return env


def _serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([RUNBOT, "serve"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{env['RUNBOT_PORT']}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"runbot serve exited early:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"runbot serve did not become ready:\n{log.read_text()[-3000:]}")


def test_sigkill_mid_run_resumes_without_repeating_completed_or_in_flight_steps(db_url, tmp_path, runbooks_dir):
    with HttpTarget() as target:
        target.route("/diag1", Reply(json={"ok": 1}))
        target.route("/diag2", Reply(json={"ok": 2}))
        target.route("/remediate", Reply(200, json={"done": True}, delay=60), method="POST")
        target.route("/after", Reply(json={"ok": 3}))
        base = f"http://127.0.0.1:{target.port}"
        write_runbook(runbooks_dir, "crashy", f"""
            name: crashy
            unattended: {{reason: "crash-recovery test: remediation runs without a human"}}
            steps:
              - id: diag1
                type: http.request
                with: {{url: "{base}/diag1"}}
              - id: diag2
                type: http.request
                with: {{url: "{base}/diag2"}}
              - id: remediate
                type: http.request
                timeout: 120s
                with: {{method: POST, url: "{base}/remediate", json: {{service: api}}}}
              - id: after
                type: http.request
                with: {{url: "{base}/after"}}
        """)
        port = free_port()
        env = _env(db_url, tmp_path, runbooks_dir, port, target.port)
        log = tmp_path / "serve.log"
        server = _serve(env, log)
        try:
            created = subprocess.run([RUNBOT, "run", "crashy", "--detach"], env=env, capture_output=True, text=True,
                                     timeout=60)
            assert created.returncode == 0, created.stderr
            run_id = created.stdout.split()[1]
            wait_until(lambda: target.calls("/remediate") == 1, timeout=30, what="the remediation to be in flight")
            server.send_signal(signal.SIGKILL)
            server.wait(10)
        finally:
            if server.poll() is None:
                server.kill()

        eng = create_engine(db_url)
        try:
            def step_states():
                with eng.connect() as c:
                    return [tuple(r) for r in c.execute(text(
                        "SELECT step_id, attempt, status FROM step_executions WHERE run_id = :r ORDER BY id"),
                        {"r": run_id})]

            assert step_states() == [("diag1", 1, "succeeded"), ("diag2", 1, "succeeded"), ("remediate", 1, "running")]

            server = _serve(env, log)
            try:
                wait_until(lambda: ("remediate", 1, "in_doubt") in step_states(), timeout=30, what="in-doubt marking")

                def parked():
                    with eng.connect() as c:
                        return c.execute(text("SELECT status, reason FROM runs WHERE id = :r"), {"r": run_id}).one()
                _, reason = wait_until(lambda: (row := parked())[0] == "waiting" and row, timeout=30, what="parking")
                assert "in doubt" in reason
                assert (target.calls("/diag1"), target.calls("/diag2"), target.calls("/remediate")) == (1, 1, 1)

                decided = subprocess.run([RUNBOT, "runs", "decide", run_id, "remediate", "skip"], env=env,
                                         capture_output=True, text=True, timeout=60)
                assert decided.returncode == 0, decided.stderr

                def finished():
                    with eng.connect() as c:
                        return c.execute(text("SELECT status FROM runs WHERE id = :r"), {"r": run_id}).scalar_one() \
                            in ("succeeded", "failed")
                wait_until(finished, timeout=30, what="the run to finish")
                assert step_states()[-1] == ("after", 1, "succeeded")
                assert [target.calls(p) for p in ("/diag1", "/diag2", "/remediate", "/after")] == [1, 1, 1, 1]
                verify = subprocess.run([RUNBOT, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60)
                assert verify.returncode == 0, verify.stderr
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(15)
                except subprocess.TimeoutExpired:
                    server.kill()
        finally:
            eng.dispose()
