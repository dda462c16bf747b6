"""Receiver names as Alertmanager sends them: `regexp.QuoteMeta(name)` (template.Data), unquoted before auth."""

from __future__ import annotations

import re

import httpx
import pytest

from runbot.adapters.alertmanager.payload import unquote_meta
from tests.support.alertmanager import AlertmanagerProcess, alertmanager_available
from tests.support.waiting import wait_until

from .conftest import write_runbook
from .samples import alert, payload, runbook
from .server import RunbotServer

GO_SPECIAL = r"\.+*?()|[]{}^$"  # regexp.QuoteMeta's specialBytes


def quote_meta(name: str) -> str:
    """Go's regexp.QuoteMeta: a backslash before each special byte (the other side of the wire)."""
    return "".join("\\" + c if c in GO_SPECIAL else c for c in name)


@pytest.mark.parametrize("name", ["runbot", "runbot.prod", "team+ops", "a*b?c", "svc(eu)|x", "[k8s]{1}^$",
                                  "back\\slash", "ünïcode.名前", ""])  # fmt: skip
def test_unquoting_reverses_go_quote_meta(name):
    assert unquote_meta(quote_meta(name)) == name
    assert re.fullmatch(quote_meta(name), name)  # what Alertmanager sends is a regex matching only the name


def test_a_backslash_before_an_ordinary_character_is_kept():
    assert unquote_meta(r"a\b") == r"a\b" and unquote_meta("trailing\\") == "trailing\\"


@pytest.mark.parametrize("name", ["runbot.prod", "team+ops", "svc(eu)*"])
def test_per_receiver_credentials_work_for_names_alertmanager_quotes(make_bot, name):
    bot = make_bot(alertmanager_webhook_token=None, alertmanager_webhook_receivers={name: {"token": "t-" + name}})
    r = bot.post(payload(alert(), receiver=quote_meta(name)), headers={"Authorization": f"Bearer t-{name}"})
    assert r.status_code == 200, r.text
    assert bot.delivered(r)["receiver"] == name
    [row] = bot.alerts()
    assert row["receiver"] == name
    # the quoted spelling of another receiver is still another receiver
    other = bot.post(payload(alert(), receiver=quote_meta(name + "x")), headers={"Authorization": f"Bearer t-{name}"})
    assert other.status_code == 403


@pytest.mark.integration
@pytest.mark.skipif(not alertmanager_available(), reason="needs prometheus-alertmanager")
def test_a_real_alertmanager_delivers_to_a_receiver_named_runbot_prod(tmp_path, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    token = "prod-receiver-token"
    srv = RunbotServer(tmp_path / "runbot", runbooks_dir, ALERTMANAGER_WEBHOOK_TOKEN="",
                       ALERTMANAGER_WEBHOOK_RECEIVERS=f'{{"runbot.prod": {{"token": "{token}"}}}}')  # fmt: skip
    am = AlertmanagerProcess(tmp_path / "am", bearer_token=token, receiver="runbot.prod", group_wait="1s",
                             group_interval="1s", repeat_interval="1s")  # fmt: skip
    try:
        srv.start()
        am.webhook_url = srv.url + "/webhooks/alertmanager"
        am.start()
        am.post_alerts([{"labels": {"alertname": "HighDiskUsage", "instance": "web-1"},
                         "annotations": {"summary": "disk full"}}])  # fmt: skip
        runs = wait_until(lambda: srv.api("/api/v1/runs")["runs"] or None, timeout=30, what="a run")
        # Alertmanager repeats the group every second: still one run, and no refusal on the way
        wait_until(lambda: _received(srv) >= 2, timeout=30, what="a repeated delivery")
        assert len(srv.api("/api/v1/runs")["runs"]) == len(runs) == 1
        [ours] = srv.api("/api/v1/alerts")["alerts"]
        assert ours["receiver"] == "runbot.prod"
        assert srv.api("/api/v1/webhook/rejects")["rejects"] == []
        assert 'reason="receiver"' not in httpx.get(srv.url + "/metrics", timeout=5).text
    finally:
        am.stop()
        srv.stop()


def _received(srv: RunbotServer) -> float:
    total = 0.0
    for line in httpx.get(srv.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("runbot_alerts_received_total{"):
            total += float(line.split()[-1])
    return total
