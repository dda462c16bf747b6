"""What intake does with stored alerts: incidents, matching, one run per alert, resolution, flapping, storms."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from runbot.adapters.alertmanager import queries
from runbot.audit import log as audit
from runbot.engine.state import APPROVALS, RUNS
from runbot.store import tables

from .conftest import write_runbook
from .samples import alert, approval_runbook, payload, resolved, runbook

THROTTLES = tables.AlertThrottle.__table__


def audit_actions(bot) -> list[str]:
    with bot.rt.db.read() as conn:
        return [r.action for r in conn.execute(select(audit.EVENTS.c.action).order_by(audit.EVENTS.c.seq))]


def audit_events(bot, action: str) -> list[dict]:
    with bot.rt.db.read() as conn:
        return [dict(r) for r in conn.execute(select(audit.EVENTS).where(audit.EVENTS.c.action == action)
                                              .order_by(audit.EVENTS.c.seq)).mappings()]  # fmt: skip


def test_alerts_of_one_group_form_one_incident_and_newcomers_join_it(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = make_bot()
    a, b = alert(instance="web-1"), alert(instance="web-2")
    bot.post(payload(a))
    bot.settle()
    bot.post(payload(a, b))  # the group grows: Alertmanager re-sends a with b
    other = alert("HighLoad", instance="web-1")
    bot.post(payload(other))  # another group: another incident
    bot.settle()
    incidents = {i["group_key"]: i for i in bot.incidents()}
    assert len(incidents) == 2
    disk = incidents['{}:{alertname="HighDiskUsage"}']
    assert disk["status"] == "open" and disk["title"] == "HighDiskUsage: HighDiskUsage on web-1"
    assert {x["incident_id"] for x in bot.alerts() if x["alertname"] == "HighDiskUsage"} == {disk["id"]}
    runs = bot.runs()
    assert sorted(r["alert"]["labels"]["instance"] for r in runs) == ["web-1", "web-2"]
    assert {r["incident_id"] for r in runs} == {disk["id"]}
    assert all(r["requester"] == "alertmanager" and r["status"] == "succeeded" for r in runs)
    assert audit_actions(bot).count("incident.opened") == 2


def test_the_run_sees_the_alert_as_alertmanager_sent_it(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = make_bot()
    a = alert(instance="web-1")
    bot.post(payload(a))
    bot.settle()
    [run] = bot.runs()
    assert run["alert"] == {**a, "endsAt": None}  # Go's zero endsAt means "not set"
    with bot.rt.db.read() as conn:
        steps = queries.run_detail(conn, run["id"])["steps"]
    assert steps[0]["summary"] == "looking at web-1"


def test_the_incident_resolves_when_its_last_alert_does(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = make_bot()
    a, b = alert(instance="web-1"), alert(instance="web-2")
    bot.post(payload(a, b))
    bot.settle()
    bot.post(payload(resolved(a), b))
    bot.settle()
    [inc] = bot.incidents()
    assert inc["status"] == "open"
    bot.post(payload(resolved(a), resolved(b)))
    bot.settle()
    [inc] = bot.incidents()
    assert inc["status"] == "resolved" and inc["resolved_at"] is not None
    [ev] = audit_events(bot, "incident.resolved")
    assert ev["incident_id"] == inc["id"]
    with bot.rt.db.read() as conn:
        assert audit.verify_db(conn).ok


def test_a_resolved_incident_cancels_runs_waiting_for_approval(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "fix", approval_runbook("fix-disk", "HighDiskUsage", on_resolve="cancel"))
    bot = make_bot()
    a = alert(instance="web-1")
    bot.post(payload(a))
    bot.settle()
    [run] = bot.runs()
    assert run["status"] == "waiting"
    bot.post(payload(resolved(a)))
    bot.settle()
    [run] = bot.runs()
    assert run["status"] == "cancelled"
    assert "incident resolved" in run["reason"]
    [appr] = bot.rows(APPROVALS)
    assert appr["status"] == "cancelled"
    [ev] = audit_events(bot, "incident.resolved")
    assert ev["details"] == {"runs_cancelled": [run["id"]], "runs_continuing": []}
    assert [e["run_id"] for e in audit_events(bot, "run.finished")] == [run["id"]]


def test_on_resolve_continue_keeps_the_approval_open_and_says_so(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "fix", approval_runbook("fix-disk", "HighDiskUsage", on_resolve="continue"))
    bot = make_bot()
    a = alert(instance="web-1")
    bot.post(payload(a))
    bot.settle()
    bot.post(payload(resolved(a)))
    bot.settle()
    [run] = bot.runs()
    assert run["status"] == "waiting"
    [ev] = audit_events(bot, "run.incident_resolved")
    assert ev["run_id"] == run["id"] and ev["outcome"] == "continue"
    [appr] = bot.rows(APPROVALS)
    bot.rt.engine.vote(appr["id"], "U1", True)
    bot.wait_run(run["id"], "succeeded")


def test_a_flapping_alert_reopens_its_incident(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = make_bot(alertmanager_flap_seconds=600)
    first = alert(instance="web-1")
    bot.post(payload(first))
    bot.settle()  # matched while firing (else it would count as resolved before matching: no run)
    bot.post(payload(resolved(first)))
    bot.settle()
    [inc] = bot.incidents()
    assert inc["status"] == "resolved"
    start2 = queries.datetime.fromisoformat(first["startsAt"].replace("Z", "+00:00")) + timedelta(minutes=6)
    again = alert(instance="web-1", starts_at=start2)  # same fingerprint, a new firing
    assert again["fingerprint"] == first["fingerprint"]
    bot.post(payload(again))
    bot.settle()
    [inc] = bot.incidents()
    assert inc["status"] == "open" and inc["reopened"] == 1 and inc["resolved_at"] is None
    assert len(bot.alerts()) == 2 and {x["incident_id"] for x in bot.alerts()} == {inc["id"]}
    assert len(audit_events(bot, "incident.reopened")) == 1
    assert len(bot.runs()) == 2  # a new firing is a new alert; the runbook's cooldown is what limits re-runs


def test_outside_the_flap_window_a_new_incident_opens(make_bot, runbooks_dir):
    bot = make_bot(alertmanager_flap_seconds=0)
    first = alert(instance="web-1")
    bot.post(payload(first))
    bot.post(payload(resolved(first)))
    bot.settle()
    bot.post(payload(alert(instance="web-1")))
    bot.settle()
    assert sorted(i["status"] for i in bot.incidents()) == ["open", "resolved"]


def test_alerts_no_runbook_matches_are_recorded_as_unhandled(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = make_bot()
    bot.post(payload(alert("SomethingElse", instance="x")))
    bot.settle()
    [row] = bot.alerts()
    assert row["matched"] is False and row["note"] == "unhandled: no runbook matches"
    assert row["incident_id"] is not None  # still an incident: someone may look at it
    assert bot.runs() == []
    from .test_webhook import metric

    assert metric(bot, "runbot_alerts_unhandled_total") == 1


def test_every_matching_runbook_gets_one_run_per_alert(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "a", runbook("disk-a"))
    write_runbook(runbooks_dir, "b", runbook("disk-b"))
    write_runbook(runbooks_dir, "c", runbook("load", alertname="HighLoad"))
    bot = make_bot()
    a = alert(instance="web-1")
    for _ in range(3):
        bot.post(payload(a))
    bot.settle()
    assert sorted(r["runbook_name"] for r in bot.runs()) == ["disk-a", "disk-b"]
    note = bot.alerts()[0]["note"]
    assert "disk-a: run r" in note and "disk-b: run r" in note


def test_cooldown_applies_to_alert_runs(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook(extra="cooldown: 1h\n"))
    bot = make_bot()
    bot.post(payload(alert(instance="web-1")))
    bot.settle()
    bot.post(payload(alert(instance="web-2")))
    bot.settle()
    runs = sorted(bot.runs(), key=lambda r: r["created_at"])
    assert [r["status"] for r in runs] == ["succeeded", "skipped"]
    assert "cooldown" in runs[1]["reason"]


def test_an_alert_storm_starts_a_bounded_number_of_runs_and_records_the_rest(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    write_runbook(runbooks_dir, "load", runbook("load", alertname="HighLoad"))
    bot = make_bot(alertmanager_runbook_runs_burst=5, alertmanager_runbook_runs_per_minute=0.001,
                   alertmanager_runs_burst=8, alertmanager_runs_per_minute=0.001,
                   alertmanager_runbook_limits={"load": {"per_minute": 0.001, "burst": 100}})  # fmt: skip
    for batch in range(6):
        bot.post(payload(*[alert(instance=f"disk-{batch}-{i}") for i in range(50)]))
    bot.post(payload(*[alert("HighLoad", instance=f"load-{i}") for i in range(20)]))
    bot.settle(timeout=30)
    runs = bot.runs()
    per_book = {b: sum(1 for r in runs if r["runbook_name"] == b) for b in ("disk-usage", "load")}
    assert per_book == {"disk-usage": 5, "load": 3}  # runbook burst 5; then the global burst of 8 is spent
    throttled = bot.rows(THROTTLES)
    assert len(throttled) + len(runs) == 320  # every alert accounted for: a run or a throttle record
    assert {t["scope"] for t in throttled if t["runbook_name"] == "load"} == {"global"}
    with bot.rt.db.read() as conn:
        summary = queries.throttle_summary(conn)
    assert [(s["runbook"], s["alerts"]) for s in summary] == [("disk-usage", 295), ("load", 17)]
    events = audit_events(bot, "intake.throttled")
    assert sum(e["details"]["alerts"] for e in events if e["runbook"] == "disk-usage") == 295
    assert all(not a["pending_since"] for a in bot.alerts())
    from .test_webhook import metric

    assert metric(bot, "runbot_alerts_throttled_total", '{runbook="disk-usage"}') == 295


def test_rate_limits_refill_with_time(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = make_bot(alertmanager_runbook_runs_burst=1, alertmanager_runbook_runs_per_minute=600)  # 1 per 0.1s
    bot.post(payload(alert(instance="a"), alert(instance="b")))
    bot.settle()
    assert len(bot.runs()) == 1
    import time

    time.sleep(0.25)
    bot.post(payload(alert(instance="c")))
    bot.settle()
    assert len(bot.runs()) == 2


def test_alerts_left_pending_are_matched_by_the_next_process_exactly_once(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    receiver_only = make_bot(alertmanager_process=False)  # e.g. a replica that only accepts
    receiver_only.post(payload(*[alert(instance=f"web-{i}") for i in range(30)]))
    receiver_only.stop()
    worker = make_bot(alertmanager_runbook_runs_burst=100, alertmanager_runs_burst=100)
    worker.settle()
    runs = worker.runs()
    assert len(runs) == 30 and len({r["alert_id"] for r in runs}) == 30
    worker.intake.processor.drain()  # nothing left: a second pass changes nothing
    assert len(worker.runs()) == 30
    with worker.rt.db.read() as conn:
        assert conn.execute(select(RUNS.c.id).where(RUNS.c.status != "succeeded")).first() is None
