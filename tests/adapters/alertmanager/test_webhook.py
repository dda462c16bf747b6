"""The webhook's contract: what each kind of request gets back, and that nothing is lost or stored twice."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from sqlalchemy import text

from runbot.store import tables

from .conftest import AUTH, HOOK_TOKEN, write_runbook
from .samples import alert, payload, resolved, runbook

REJECTS = tables.WebhookReject.__table__
DELIVERIES = tables.WebhookDelivery.__table__


def metric(bot, name: str, labels: str = "") -> float:
    for line in bot.client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.split()[-1])
    return 0.0


def test_an_accepted_payload_is_committed_before_the_answer(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = make_bot(alertmanager_process=False)  # an accept-only replica: what the answer promises is in the table
    r = bot.post(payload(alert(instance="a"), alert(instance="b")))
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "alerts": 2, "delivery": 1}
    [stored] = bot.rows(DELIVERIES)  # one row per notification, committed before the answer
    assert stored["alerts"] == 2 and stored["processed_at"] is None and stored["receiver"] == "runbot"
    assert json.loads(stored["body"])["alerts"][0]["labels"]["instance"] == "a"
    assert bot.alerts() == []  # split into alerts after the answer
    done = bot.delivered(r)
    assert (done["new"], done["duplicates"], done["body"]) == (2, 0, b"")  # the alerts are the record now
    rows = bot.alerts()
    assert {a["labels"]["instance"] for a in rows} == {"a", "b"}
    assert all(a["pending_since"] is not None and a["matched"] is None for a in rows)
    assert {a["group_key"] for a in rows} == {'{}:{alertname="HighDiskUsage"}'}
    assert metric(bot, "runbot_alerts_received_total", '{receiver="default"}') == 2
    assert metric(bot, "runbot_webhook_seconds_count") >= 1


def test_repeated_deliveries_store_one_alert_and_start_one_run(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = make_bot()
    p = payload(alert(instance="web-1"))
    answers = [bot.delivered(bot.post(p)) for _ in range(4)]  # group_interval re-sends and retries
    assert [a["new"] for a in answers] == [1, 0, 0, 0]
    assert [a["duplicates"] for a in answers] == [0, 1, 1, 1]
    bot.settle()
    assert len(bot.alerts()) == 1
    runs = bot.runs()
    assert len(runs) == 1 and runs[0]["status"] == "succeeded"
    assert metric(bot, "runbot_alerts_deduplicated_total") == 3


def test_concurrent_duplicate_deliveries_still_store_one_alert(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = make_bot()
    p = payload(alert(instance="web-1"), alert(instance="web-2"))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: bot.post(p), range(16)))
    assert all(a.status_code == 200 for a in answers)
    outcomes = [bot.delivered(a) for a in answers]
    assert sum(a["new"] for a in outcomes) == 2
    assert sum(a["duplicates"] for a in outcomes) == 30
    bot.settle()
    assert len(bot.alerts()) == 2
    assert sorted(r["alert"]["labels"]["instance"] for r in bot.runs()) == ["web-1", "web-2"]


def test_resolved_before_firing_is_kept_and_starts_nothing(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = make_bot()
    a = alert(instance="web-1")
    r1 = bot.post(payload(resolved(a)))  # out of order: the resolution arrives first
    assert bot.delivered(r1)["new"] == 1
    r2 = bot.post(payload(a))  # the late firing notification of the same alert
    assert bot.delivered(r2)["duplicates"] == 1
    bot.settle()
    [row] = bot.alerts()
    assert row["status"] == "resolved" and row["matched"] is False
    assert "resolved before runbot matched it" in row["note"]
    assert bot.runs() == []
    [inc] = bot.incidents()  # on record all the same, and already over
    assert inc["status"] == "resolved" and row["incident_id"] == inc["id"]


def test_a_resolution_updates_the_alert_once(make_bot, runbooks_dir):
    bot = make_bot(alertmanager_process=False)
    a = alert(instance="web-1")
    bot.delivered(bot.post(payload(a)))
    answers = [bot.delivered(bot.post(payload(resolved(a)))) for _ in range(3)]
    assert [x["new"] for x in answers] == [1, 0, 0]
    [row] = bot.alerts()
    assert row["status"] == "resolved"
    assert row["ends_at"] is not None


def refused(bot, status: int, content: bytes, headers: dict[str, str] | None = None) -> dict:
    r = bot.client.post("/webhooks/alertmanager", content=content,
                        headers={**AUTH, "Content-Type": "application/json", **(headers or {})})  # fmt: skip
    assert r.status_code == status, r.text
    assert bot.alerts() == []
    return r.json()


def test_malformed_json_gets_400_and_the_body_is_kept(make_bot):
    bot = make_bot()
    body = refused(bot, 400, b'{"version": "4", "alerts": [')
    assert body["error"].startswith("malformed JSON")
    [kept] = bot.rows(REJECTS)
    assert kept["status_code"] == 400 and kept["body"] == b'{"version": "4", "alerts": ['
    assert kept["receiver"] == "*" and not kept["truncated"]


def test_a_wrong_version_gets_422_naming_the_field(make_bot):
    bot = make_bot()
    body = refused(bot, 422, json.dumps({**payload(alert()), "version": "5"}).encode())
    assert body["problems"] == [{"field": "version", "message": "must be '4' (or '1' from Grafana)"}]
    assert len(bot.rows(REJECTS)) == 1


def test_missing_fields_get_422_naming_each_field(make_bot):
    bot = make_bot()
    p = payload(alert(), alert())
    del p["alerts"][1]["startsAt"]
    del p["groupKey"]
    body = refused(bot, 422, json.dumps(p).encode())
    assert {x["field"] for x in body["problems"]} == {"groupKey", "alerts[1].startsAt"}
    assert len(bot.rows(REJECTS)) == 1  # nothing of a refused payload is half-stored


def test_an_oversized_body_gets_413_and_only_its_head_is_kept(make_bot):
    bot = make_bot(alertmanager_max_body_bytes=4096, alertmanager_reject_keep_bytes=1024)
    big = json.dumps(payload(*[alert(instance=f"i{i}") for i in range(40)])).encode()
    assert len(big) > 4096
    body = refused(bot, 413, big)
    assert "limit is 4096" in body["error"]

    def chunks():  # no Content-Length: the cap applies while reading
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    r = bot.client.post("/webhooks/alertmanager", content=chunks(), headers=AUTH)
    assert r.status_code == 413
    kept = bot.rows(REJECTS)
    assert len(kept) == 2
    assert all(k["truncated"] and len(k["body"]) <= 5000 and k["body_size"] > 4096 for k in kept)
    assert bot.alerts() == []


def test_rejected_bodies_are_capped_in_number(make_bot):
    bot = make_bot(alertmanager_rejects_keep=3)
    for i in range(6):
        refused(bot, 400, f"not json {i}".encode())
    kept = bot.rows(REJECTS)
    assert [k["body"] for k in sorted(kept, key=lambda k: k["id"])] == [b"not json 3", b"not json 4", b"not json 5"]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_missing_or_wrong_credentials_get_401_and_store_nothing(make_bot):
    bot = make_bot(alertmanager_webhook_username="am", alertmanager_webhook_password="pw")
    p = payload(alert())
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {HOOK_TOKEN}x"},
                    basic("am", "wrong"), basic("other", "pw"), {"Authorization": "Basic !!!"},
                    {"Authorization": f"Token {HOOK_TOKEN}"}):  # fmt: skip
        r = bot.post(p, headers=headers)
        assert r.status_code == 401, headers
        assert r.json() == {"error": "missing or wrong credentials"}
        assert "Bearer" in r.headers["www-authenticate"] and "Basic" in r.headers["www-authenticate"]
    assert bot.alerts() == [] and bot.rows(REJECTS) == []  # strangers' bodies are not even read
    assert metric(bot, "runbot_webhook_rejected_total", '{reason="auth"}') == 7
    assert bot.post(p, headers=basic("am", "pw")).status_code == 200
    assert bot.post(p, headers={"Authorization": f"bearer {HOOK_TOKEN}"}).status_code == 200


def test_named_receivers_have_their_own_credentials(make_bot):
    bot = make_bot(alertmanager_webhook_token=None, alertmanager_webhook_receivers={
        "prod": {"token": "prod-token"}, "staging": {"username": "stg", "password": "stg-pw"}})  # fmt: skip
    prod = {"Authorization": "Bearer prod-token"}
    assert bot.post(payload(alert(), receiver="prod"), headers=prod).status_code == 200
    assert bot.post(payload(alert(), receiver="staging"), headers=basic("stg", "stg-pw")).status_code == 200
    r = bot.post(payload(alert(), receiver="staging"), headers=prod)
    assert r.status_code == 403
    assert r.json()["problems"][0]["field"] == "receiver"
    assert bot.post(payload(alert(), receiver="prod"), headers=AUTH).status_code == 401
    assert metric(bot, "runbot_alerts_received_total", '{receiver="prod"}') == 1


def test_without_configured_credentials_the_webhook_says_how_to_configure_them(make_bot):
    bot = make_bot(alertmanager_webhook_token=None)
    r = bot.post(payload(alert()), headers={})
    assert r.status_code == 401
    assert "RUNBOT_ALERTMANAGER_WEBHOOK_TOKEN" in r.json()["error"]
    open_bot = make_bot(alertmanager_webhook_token=None, alertmanager_allow_unauthenticated=True,
                        data_dir=bot.rt.settings.data_dir.parent / "open")  # fmt: skip
    assert open_bot.post(payload(alert()), headers={}).status_code == 200


def test_a_failed_commit_is_a_503_so_alertmanager_retries_and_nothing_is_lost(make_bot):
    bot = make_bot(alertmanager_process=False)
    with bot.rt.db.tx() as conn:
        conn.execute(text("ALTER TABLE webhook_deliveries RENAME TO deliveries_away"))
    p = payload(alert(instance="web-1"))
    r = bot.post(p)
    assert r.status_code == 503
    with bot.rt.db.tx() as conn:
        conn.execute(text("ALTER TABLE deliveries_away RENAME TO webhook_deliveries"))
    assert bot.delivered(bot.post(p))["new"] == 1  # Alertmanager's retry
    assert len(bot.alerts()) == 1


def test_a_truncated_notification_is_accepted(make_bot):
    bot = make_bot(alertmanager_process=False)
    p = payload(alert())
    p["truncatedAlerts"] = 7
    assert bot.post(p).status_code == 200


def test_timestamps_keep_their_instant(make_bot):
    bot = make_bot(alertmanager_process=False)
    a = alert(instance="tz")
    a["startsAt"] = "2024-05-01T12:00:00.5+02:00"
    bot.delivered(bot.post(payload(a)))
    assert bot.alerts()[0]["starts_at"] == datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)


def test_a_full_backlog_is_a_503_with_retry_after_and_the_retry_gets_in_once_it_drains(make_bot):
    bot = make_bot(alertmanager_process=False, alertmanager_backlog_max_alerts=3)  # accept-only: nothing drains here
    first = bot.post(payload(alert(instance="a"), alert(instance="b")))
    assert first.status_code == 200
    p = payload(alert(instance="c"), alert(instance="d"))
    r = bot.post(p)
    assert r.status_code == 503 and r.headers["Retry-After"] == "10"
    assert "intake backlog full" in r.json()["error"] and "RUNBOT_ALERTMANAGER_BACKLOG_MAX_ALERTS" in r.json()["error"]
    assert len(bot.rows(DELIVERIES)) == 1  # refused means not stored: Alertmanager keeps it and retries
    assert metric(bot, "runbot_webhook_rejected_total", '{reason="backlog"}') == 1
    bot.unpack()  # another replica works the backlog off; this one re-reads the real figure
    bot.rt.settings.alertmanager_backlog_max_alerts = 3
    bot.intake.writer.backlog.checked = 0.0
    assert bot.delivered(bot.post(p))["new"] == 2
    assert sorted(a["labels"]["instance"] for a in bot.alerts()) == ["a", "b", "c", "d"]


def test_a_delivery_that_no_longer_reads_is_set_aside_and_the_rest_go_on(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = make_bot(alertmanager_process=False)
    with bot.rt.db.tx() as conn:  # accepted by an older version whose checks were looser
        conn.execute(DELIVERIES.insert().values(received_at=datetime.now(UTC), receiver="runbot", alerts=1,
                                                body=b'{"version": "4", "alerts": "no"}'))  # fmt: skip
    good = bot.post(payload(alert(instance="web-1")))
    bot.unpack()
    broken, ok = sorted(bot.rows(DELIVERIES), key=lambda d: d["id"])
    assert broken["processed_at"] is not None and "alerts" in broken["error"]
    assert broken["body"] == b'{"version": "4", "alerts": "no"}'  # kept for inspection
    assert ok["id"] == good.json()["delivery"] and ok["new"] == 1 and ok["error"] is None
    assert [a["labels"]["instance"] for a in bot.alerts()] == ["web-1"]


def test_processed_deliveries_beyond_the_keep_limit_are_forgotten_but_their_alerts_stay(make_bot, runbooks_dir):
    bot = make_bot(alertmanager_deliveries_keep=2)
    for i in range(6):
        assert bot.post(payload(alert(instance=f"web-{i}"))).status_code == 200
        bot.settle()  # one batch each
    bot.post(payload(alert(instance="last")))
    bot.settle()
    kept = [d["id"] for d in bot.rows(DELIVERIES)]
    assert 2 <= len(kept) <= 3 and max(kept) == 7  # the newest outcomes stay inspectable
    assert len(bot.alerts()) == 7


def test_the_intake_backlog_and_its_lag_are_metrics_to_alert_on(make_bot):
    bot = make_bot(alertmanager_process=False)  # an accept-only replica: its peers would do the rest
    assert metric(bot, "runbot_intake_lag_seconds") == 0.0
    bot.post(payload(alert(instance="a"), alert(instance="b"), alert(instance="c")))
    assert metric(bot, "runbot_intake_backlog_alerts", '{stage="unpack"}') == 3
    assert metric(bot, "runbot_intake_lag_seconds") > 0.0
    bot.unpack()
    assert metric(bot, "runbot_intake_backlog_alerts", '{stage="unpack"}') == 0
    assert metric(bot, "runbot_intake_backlog_alerts", '{stage="match"}') == 3  # stored, not matched yet
    assert metric(bot, "runbot_intake_lag_seconds") == 0.0
