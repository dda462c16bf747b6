"""`runbot serve` as a real process: SIGKILL after acknowledging, and SIGHUP to reload runbooks."""

from __future__ import annotations

import signal
import time
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from runbot.adapters.alertmanager.ingest import pending_alerts_query
from runbot.engine.state import RUNS
from runbot.store import tables
from runbot.store.db import Database

from .conftest import write_runbook
from .samples import alert, payload, runbook
from .server import RunbotServer

ALERTS = tables.Alert.__table__
DELIVERIES = tables.WebhookDelivery.__table__
NO_LIMITS = {"alertmanager_runs_burst": 100_000, "alertmanager_runbook_runs_burst": 100_000,
             "lease_seconds": 2}  # fmt: skip


def post_batches(srv: RunbotServer, prefix: str, batches: int, size: int) -> list[tuple[str, str]]:
    acked = []
    with httpx.Client() as c:
        for b in range(batches):
            p = payload(*[alert(instance=f"{prefix}-{b}-{i}") for i in range(size)])
            r = srv.post(p, c)
            assert r.status_code == 200, r.text
            acked += [(a["fingerprint"], a["startsAt"]) for a in p["alerts"]]
    return acked


def counts(db_url: str) -> tuple[int, int, int]:
    """(alerts accepted: unpacked rows plus those still in unpacked deliveries, alerts not matched yet, runs)"""
    db = Database(db_url)
    try:
        with db.read() as conn:
            alerts = conn.execute(select(func.count()).select_from(ALERTS)).scalar_one()
            waiting = conn.execute(pending_alerts_query()).scalar_one()  # less the slices unpacked so far
            pending = conn.execute(select(func.count()).select_from(ALERTS).where(ALERTS.c.pending_since.is_not(None))).scalar_one()
            runs = conn.execute(select(func.count()).select_from(RUNS)).scalar_one()
        return alerts + waiting, pending + waiting, runs
    finally:
        db.dispose()


@pytest.mark.integration
def test_every_acknowledged_alert_gets_its_run_exactly_once_after_a_sigkill(tmp_path, runbooks_dir, db_url):
    write_runbook(runbooks_dir, "disk", runbook())
    work = tmp_path / "srv"
    env = {**NO_LIMITS, "database_url": db_url}
    # 1. a live server matching as it goes, killed right after the last acknowledgement
    srv = RunbotServer(work, runbooks_dir, alertmanager_batch_size=5, **env).start()
    try:
        acked = post_batches(srv, "live", batches=16, size=25)
    finally:
        srv.kill()
    # 2. an accept-only server (matching off), killed too: its alerts are certainly unmatched
    srv = RunbotServer(work, runbooks_dir, alertmanager_process="false", **env).start()
    try:
        acked += post_batches(srv, "idle", batches=4, size=25)
    finally:
        srv.kill()
    alerts, pending, _ = counts(db_url)
    assert alerts == 500 and pending >= 100  # acknowledged means stored, even when nothing else happened
    # 3. restart: everything left pending is matched, nothing twice, and every run finishes
    srv = RunbotServer(work, runbooks_dir, **env).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = srv.api("/api/v1/runs?limit=1000")["runs"]
            if len(runs) >= 500 and all(r["status"] == "succeeded" for r in runs):
                break
            time.sleep(0.2)
        alerts = srv.api("/api/v1/alerts?limit=1000")["alerts"]
    finally:
        srv.stop()
    assert sorted((a["fingerprint"], a["starts_at"]) for a in alerts) == sorted(
        (fp, s.replace("Z", "+00:00")) for fp, s in acked)  # fmt: skip
    assert not [a for a in alerts if a["pending_since"]]
    per_alert = Counter(r["alert_id"] for r in runs)
    assert len(runs) == 500 and set(per_alert.values()) == {1}
    assert {a["id"] for a in alerts} == set(per_alert)
    assert Counter(r["status"] for r in runs) == {"succeeded": 500}, srv.log_tail()


@pytest.mark.integration
def test_sighup_reloads_runbooks_and_running_runs_keep_their_version(tmp_path, runbooks_dir):
    rb = write_runbook(runbooks_dir, "disk", runbook(extra="tags: [v1]\n"))
    srv = RunbotServer(tmp_path / "srv", runbooks_dir, **NO_LIMITS).start()
    try:
        assert srv.post(payload(alert(instance="before"))).status_code == 200
        deadline = time.monotonic() + 10
        while not srv.api("/api/v1/runs")["runs"] and time.monotonic() < deadline:
            time.sleep(0.05)  # matched (and so pinned to v1) before the file changes
        rb.write_text(runbook(extra="tags: [v2]\n"))
        write_runbook(runbooks_dir, "load", runbook("load", alertname="HighLoad"))
        srv.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while srv.api("/readyz")["runbooks"] != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.api("/readyz")["runbooks"] == 2
        srv.post(payload(alert(instance="after"), alert("HighLoad", instance="after")))
        deadline = time.monotonic() + 10
        while len(srv.api("/api/v1/runs")["runs"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.proc is not None and srv.proc.poll() is None  # SIGHUP did not stop the server
    finally:
        srv.stop()
    db = Database(srv.db_url)
    try:
        with db.read() as conn:
            versions = {r.alert["labels"]["instance"] + ":" + r.runbook_name: r.runbook_version_id
                        for r in conn.execute(select(RUNS.c.alert, RUNS.c.runbook_name, RUNS.c.runbook_version_id))}  # fmt: skip
    finally:
        db.dispose()
    assert set(versions) == {"before:disk-usage", "after:disk-usage", "after:load"}
    assert versions["before:disk-usage"] != versions["after:disk-usage"]
