"""The same intake guarantees on PostgreSQL (upserts, row locks, advisory lock), on a throwaway database."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from runbot.engine.state import APPROVALS
from runbot.store import tables

from .conftest import write_runbook
from .samples import alert, approval_runbook, payload, resolved, runbook

THROTTLES = tables.AlertThrottle.__table__


@pytest.mark.integration
def test_intake_on_postgresql(make_bot, runbooks_dir, pg_url):
    write_runbook(runbooks_dir, "disk", runbook())
    write_runbook(runbooks_dir, "fix", approval_runbook("fix-load", "HighLoad"))
    bot = make_bot(database_url=pg_url, alertmanager_runbook_runs_burst=3)
    # concurrent duplicate deliveries: one row per alert
    p = payload(*[alert(instance=f"web-{i}") for i in range(6)])
    with ThreadPoolExecutor(6) as pool:
        answers = [bot.delivered(r) for r in pool.map(lambda _: bot.post(p), range(12))]
    assert sum(a["new"] for a in answers) == 6 and sum(a["duplicates"] for a in answers) == 66
    # out of order: resolved first, then the late firing, stays resolved and starts nothing
    late = alert("HighDiskUsage", instance="late")
    assert bot.delivered(bot.post(payload(resolved(late))))["new"] == 1
    assert bot.delivered(bot.post(payload(late)))["duplicates"] == 1
    # a run waiting for approval is cancelled when its incident resolves
    load = alert("HighLoad", instance="db-1")
    bot.post(payload(load))
    bot.settle()
    runs = bot.runs()
    assert sorted(r["runbook_name"] for r in runs) == ["disk-usage"] * 3 + ["fix-load"]  # burst 3, rest throttled
    assert len(bot.rows(THROTTLES)) == 3
    bot.post(payload(resolved(load)))
    bot.settle()
    [fix] = bot.runs(tables.Run.__table__.c.runbook_name == "fix-load")
    assert fix["status"] == "cancelled"
    assert [a["status"] for a in bot.rows(APPROVALS)] == ["cancelled"]
    incidents = {i["group_key"]: i["status"] for i in bot.incidents()}
    assert incidents == {'{}:{alertname="HighDiskUsage"}': "open", '{}:{alertname="HighLoad"}': "resolved"}
    assert not [a for a in bot.alerts() if a["pending_since"] is not None]
    bot.stop()
