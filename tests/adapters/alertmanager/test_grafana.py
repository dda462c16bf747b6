"""Grafana Alerting's webhook contact point: its documented payload starts the matching runbook, links kept."""  # `alert['values']`: in a template `alert.values` is the dict's own method

from __future__ import annotations

import copy
import json
from pathlib import Path

from runbot.adapters.alertmanager.payload import PayloadError, check, parse

from .conftest import API_AUTH, AUTH, write_runbook

# Grafana's documented example body, as published with the webhook notifier (docs/sources/alerting/
# configure-notifications/manage-contact-points/integrations/webhook-notifier.md)
EXAMPLE = json.loads((Path(__file__).parent / "grafana_webhook_example.json").read_text())

RUNBOOK = """\
version: 1
name: memory-pressure
match:
  - alertname = "High memory usage"
steps:
  - id: look
    type: log
    with:
      message: "zone {{ alert.labels.zone }}: B={{ alert['values'].B }}; silence at {{ alert.silenceURL }}"
"""


def test_grafanas_documented_example_starts_the_matching_runbook(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "memory", RUNBOOK)
    bot = make_bot()
    r = bot.post(EXAMPLE)
    assert r.status_code == 200 and r.json()["alerts"] == 2
    bot.settle()
    [run] = bot.runs()
    assert run["runbook_name"] == "memory-pressure" and run["status"] == "succeeded"
    silence = EXAMPLE["alerts"][0]["silenceURL"]
    assert run["alert"]["silenceURL"] == silence and run["alert"]["values"] == {"B": 44.23943737541908, "C": 1}
    assert run["alert"]["startsAt"] == "2021-10-12T07:51:03.157076Z"  # +02:00 in the body
    detail = bot.client.get(f"/api/v1/runs/{run['id']}", headers=API_AUTH).json()
    assert detail["steps"][0]["summary"] == f"zone us-1: B=44.23943737541908; silence at {silence}"
    alerts = {a["alertname"]: a for a in bot.client.get("/api/v1/alerts", headers=API_AUTH).json()["alerts"]}
    assert set(alerts) == {"High memory usage", "High CPU usage"}
    memory = alerts["High memory usage"]
    assert memory["receiver"] == "My Super Webhook" and memory["fingerprint"] == "c6eadffa33fcdf37"
    assert memory["links"] == {"source": "https://play.grafana.org/alerting/1afz29v7z/edit", "silence": silence}
    assert memory["extras"]["orgId"] == 1
    assert alerts["High CPU usage"]["note"] == "unhandled: no runbook matches"


def test_grafana_links_are_kept_and_the_grafana_path_is_the_same_endpoint(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "memory", RUNBOOK)
    bot = make_bot()
    body = copy.deepcopy(EXAMPLE)
    body["alerts"] = body["alerts"][:1]
    body["alerts"][0].update(dashboardURL="https://grafana.example/d/abc", panelURL="https://grafana.example/d/abc?viewPanel=2",
                             imageURL="https://grafana.example/render/abc.png",
                             valueString="[ var='B' labels={zone=us-1} value=44.2 ]")  # fmt: skip
    r = bot.client.post("/webhooks/grafana", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    bot.settle()
    [a] = bot.client.get("/api/v1/alerts", headers=API_AUTH).json()["alerts"]
    assert a["links"] == {"source": "https://play.grafana.org/alerting/1afz29v7z/edit",
                          "dashboard": "https://grafana.example/d/abc",
                          "panel": "https://grafana.example/d/abc?viewPanel=2",
                          "silence": body["alerts"][0]["silenceURL"],
                          "image": "https://grafana.example/render/abc.png"}  # fmt: skip
    [run] = bot.runs()
    assert run["alert"]["dashboardURL"] == "https://grafana.example/d/abc"
    assert run["alert"]["valueString"] == "[ var='B' labels={zone=us-1} value=44.2 ]"


def test_grafana_and_alertmanager_shapes_are_told_apart_by_version():
    body = json.dumps(EXAMPLE).encode()
    assert check(body).alerts == 2
    grafana = parse(body)
    assert grafana.alerts[0].extras == {"silenceURL": EXAMPLE["alerts"][0]["silenceURL"],
                                        "values": {"B": 44.23943737541908, "C": 1}, "orgId": 1}  # fmt: skip
    as_alertmanager = parse(json.dumps({**EXAMPLE, "version": "4"}).encode())
    assert as_alertmanager.alerts[0].extras is None  # Grafana's fields are only read from Grafana
    bad = copy.deepcopy(EXAMPLE)
    bad["alerts"][0]["values"] = {"B": "high"}
    try:
        parse(json.dumps(bad).encode())
    except PayloadError as exc:
        assert exc.status == 422 and exc.problems[0]["field"].startswith("alerts[0].values.B")
    else:
        raise AssertionError("a non-numeric value was accepted")
