"""The inspection API and the admin reload: token-protected, JSON, and reloads never disturb running runs."""

from __future__ import annotations

from runbot.engine.state import APPROVALS, STEPS

from .conftest import API_AUTH, AUTH, write_runbook
from .samples import alert, approval_runbook, payload, resolved, runbook


def test_the_api_needs_the_token(make_bot):
    bot = make_bot()
    for path in ("/api/v1/incidents", "/api/v1/runs", "/api/v1/alerts", "/api/v1/incidents/x", "/api/v1/runs/x",
                 "/api/v1/deliveries/1"):
        assert bot.client.get(path).status_code == 401
        assert bot.client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert bot.client.get(path, headers=AUTH).status_code == 401  # the webhook token is not an API token
    assert bot.client.post("/admin/reload").status_code == 401
    assert bot.client.get("/api/v1/incidents", headers=API_AUTH).status_code == 200


def test_without_an_api_token_the_api_is_closed(make_bot):
    bot = make_bot(api_token=None)
    r = bot.client.get("/api/v1/runs", headers={"Authorization": "Bearer "})
    assert r.status_code == 401 and "RUNBOT_API_TOKEN" in r.json()["detail"]


def test_a_delivery_shows_what_intake_made_of_it(make_bot, runbooks_dir):
    bot = make_bot()
    p = payload(alert(instance="web-1"), alert(instance="web-2"))
    first = bot.post(p).json()["delivery"]
    again = bot.post(p).json()["delivery"]  # Alertmanager re-sending the group
    bot.settle()
    get = lambda path: bot.client.get(path, headers=API_AUTH)  # noqa: E731
    d1, d2 = get(f"/api/v1/deliveries/{first}").json(), get(f"/api/v1/deliveries/{again}").json()
    assert (d1["state"], d1["alerts"], d1["new"], d1["duplicates"]) == ("unpacked", 2, 2, 0)
    assert (d2["state"], d2["new"], d2["duplicates"]) == ("unpacked", 0, 2)
    assert d1["receiver"] == "runbot" and d1["processed_at"] >= d1["received_at"]
    missing = get("/api/v1/deliveries/999")
    assert missing.status_code == 404 and "RUNBOT_ALERTMANAGER_DELIVERIES_KEEP" in missing.json()["detail"]


def test_incidents_and_runs_as_json(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = make_bot()
    a, b = alert(instance="web-1"), alert(instance="web-2")
    bot.post(payload(a, b))
    bot.post(payload(alert("Unknown", instance="z")))
    bot.settle()
    bot.post(payload(resolved(a), resolved(b)))
    bot.settle()
    get = lambda path: bot.client.get(path, headers=API_AUTH).json()  # noqa: E731
    incidents = get("/api/v1/incidents")["incidents"]
    assert len(incidents) == 2
    disk = next(i for i in incidents if i["title"].startswith("HighDiskUsage"))
    assert disk | {"alerts_resolved": 2, "alerts_firing": 0, "runs": 2, "status": "resolved"} == disk
    assert [i["id"] for i in get("/api/v1/incidents?status=open")["incidents"]] != [disk["id"]]
    detail = get(f"/api/v1/incidents/{disk['id'][:6]}")  # a unique prefix is enough
    assert {x["labels"]["instance"] for x in detail["alerts"]} == {"web-1", "web-2"}
    assert {r["status"] for r in detail["runs"]} == {"succeeded"}
    assert bot.client.get("/api/v1/incidents/nope", headers=API_AUTH).status_code == 404
    runs = get(f"/api/v1/runs?incident={disk['id']}")["runs"]
    assert len(runs) == 2 and all(r["runbook_name"] == "disk-usage" for r in runs)
    assert get("/api/v1/runs?status=failed")["runs"] == []
    one = get(f"/api/v1/runs/{runs[0]['id']}")
    assert one["steps"][0]["status"] == "succeeded"
    unhandled = get("/api/v1/alerts?unhandled=true")["alerts"]
    assert [x["alertname"] for x in unhandled] == ["Unknown"]
    assert get("/api/v1/alerts/throttled") == {"throttled": []}


def test_admin_reload_keeps_runs_on_the_version_they_started_with(make_bot, runbooks_dir):
    path = write_runbook(runbooks_dir, "fix", approval_runbook("fix-disk", "HighDiskUsage"))
    bot = make_bot()
    bot.post(payload(alert(instance="web-1")))
    bot.settle()
    [old_run] = bot.runs()
    assert old_run["status"] == "waiting"
    path.write_text(approval_runbook("fix-disk", "HighDiskUsage").replace('"fixing"', '"fixing, v2"'))
    write_runbook(runbooks_dir, "broken", "name: Not Valid\n")
    r = bot.client.post("/admin/reload", headers=API_AUTH)
    assert r.status_code == 200
    assert r.json()["runbooks"] == ["fix-disk"] and len(r.json()["problems"]) >= 1  # the good one stays live
    bot.post(payload(alert(instance="web-2")))
    bot.settle()
    for appr in bot.rows(APPROVALS):
        bot.rt.engine.vote(appr["id"], "U1", True)
    runs = {r["alert"]["labels"]["instance"]: r for r in bot.runs()}
    for inst, r in runs.items():
        bot.wait_run(r["id"], "succeeded")
    said = {inst: next(s["summary"] for s in bot.rows(STEPS, STEPS.c.run_id == r["id"]) if s["step_id"] == "fix")
            for inst, r in runs.items()}  # fmt: skip
    assert said == {"web-1": "fixing", "web-2": "fixing, v2"}
    assert runs["web-1"]["runbook_version_id"] != runs["web-2"]["runbook_version_id"]
