"""A real `runbot serve`: it rides out a database failover, and /healthz names a worker that died.

Bounds stated here are what the README promises: runs in progress finish within 30 s of every database
connection being dropped (lease 3 s, claiming back-off at most a few seconds), and /healthz fails within
10 s of a worker dying.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text

from tests.adapters.alertmanager.samples import alert, payload
from tests.adapters.alertmanager.server import RunbotServer
from tests.conftest import write_runbook
from tests.support.fake_slack import BOT_TOKEN, FakeSlack
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECOVERY_BOUND = 30.0
HEALTH_BOUND = 10.0

SLOW_RUNBOOK = """\
version: 1
name: slow-diag
match:
  - alertname = "SlowDiag"
steps:
  - {id: first, type: wait, with: {duration: 1s}}
  - {id: second, type: wait, with: {duration: 1s}}
  - {id: third, type: wait, with: {duration: 1s}}
  - {id: done, type: log, with: {message: "done"}}
"""


def up(srv: RunbotServer, worker: str) -> float | None:
    for line in httpx.get(srv.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(f'runbot_worker_up{{worker="{worker}"}}'):
            return float(line.split()[-1])
    return None


def statuses(srv: RunbotServer) -> list[str]:
    """Run statuses; [] while the API's own pooled connection meets the dropped backend (one request fails)."""
    try:
        return [r["status"] for r in srv.api("/api/v1/runs")["runs"]]
    except httpx.HTTPStatusError:
        return []


def test_runs_in_progress_finish_after_every_database_backend_is_terminated(
    tmp_path, runbooks_dir, pg_url, pg_admin
):
    write_runbook(runbooks_dir, "slow", SLOW_RUNBOOK)
    with RunbotServer(tmp_path / "srv", runbooks_dir, database_url=pg_url, lease_seconds=3) as srv:
        for i in range(4):
            assert srv.post(payload(alert("SlowDiag", instance=f"host-{i}"))).status_code == 200
        wait_until(lambda: len(srv.api("/api/v1/runs")["runs"]) == 4, timeout=20, what="four runs")
        dbname = pg_url.rsplit("/", 1)[1]
        with pg_admin.connect() as c:
            killed = c.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                    "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": dbname}).scalar_one()  # fmt: skip
        assert killed >= 1
        wait_until(lambda: statuses(srv) == ["succeeded"] * 4,
                   timeout=RECOVERY_BOUND, what="every run to finish after the failover")  # fmt: skip
        assert httpx.get(srv.url + "/healthz", timeout=5).status_code == 200
        assert httpx.get(srv.url + "/readyz", timeout=5).status_code == 200
        assert up(srv, "engine-0") == 1.0 and up(srv, "intake") == 1.0


@pytest.mark.parametrize("worker", ["engine-0", "intake", "slack-outbox"])
def test_a_dead_worker_fails_healthz_and_its_up_gauge_reads_zero(tmp_path, runbooks_dir, worker):
    with FakeSlack() as fake, RunbotServer(tmp_path / "srv", runbooks_dir, debug_worker_hooks="true",
                                           slack_bot_token=BOT_TOKEN, slack_api_url=fake.api_url,
                                           slack_default_channel="#ops", slack_signing_secret="signing-secret-for-tests") as srv:  # fmt: skip
        assert httpx.get(srv.url + "/healthz", timeout=5).status_code == 200
        assert up(srv, worker) == 1.0
        assert httpx.post(f"{srv.url}/debug/workers/{worker}/kill", timeout=5).status_code == 200

        def failing() -> httpx.Response | None:
            r = httpx.get(srv.url + "/healthz", timeout=5)
            return r if r.status_code == 503 else None

        body = wait_until(failing, timeout=HEALTH_BOUND, what="/healthz to fail").json()
        assert any(p.startswith(f"worker {worker} died") for p in body["problems"]), body
        assert up(srv, worker) == 0.0
        others = [w for w, state in body["workers"].items() if w != worker]
        assert all(body["workers"][w] == "ok" for w in others)
