"""Receivers are tenants: one receiver's credential never touches another receiver's alerts, incidents or runbooks."""

from __future__ import annotations

from runbot.adapters.alertmanager import queries
from runbot.adapters.alertmanager.tenants import RunbookScope
from runbot.engine.state import APPROVALS, RUNS

from .conftest import write_runbook
from .samples import alert, approval_runbook, payload, resolved, runbook
from .test_intake import audit_events

PROD, DEV = "prod-token-for-tests", "dev-token-for-tests"
RECEIVERS = {"prod": {"token": PROD}, "dev": {"token": DEV}}
GROUP = '{}/{}:{alertname="HighLoad"}'


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def tenant_bot(make_bot, **settings):
    return make_bot(alertmanager_webhook_token=None, alertmanager_webhook_receivers=RECEIVERS, **settings)


def test_a_dev_sender_cannot_resolve_prods_incident_or_cancel_its_pending_remediation(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "fix", approval_runbook("fix-load", "HighLoad"))
    bot = tenant_bot(make_bot)
    load = alert("HighLoad", instance="db-1")
    assert bot.post(payload(load, receiver="prod", group=GROUP), as_(PROD)).status_code == 200
    bot.settle()
    [run] = bot.runs()
    [prod_incident] = bot.incidents()
    assert prod_incident["receiver"] == "prod"
    assert [a["status"] for a in bot.rows(APPROVALS)] == ["pending"]

    # the attack: dev's credential, dev's receiver name, prod's fingerprint, startsAt and even its groupKey
    forged = payload(resolved(load), receiver="dev", group=GROUP)
    assert bot.delivered(bot.post(forged, as_(DEV)))["new"] == 1  # stored, as dev's own alert
    bot.settle()

    [still] = bot.incidents(queries.INCIDENTS.c.id == prod_incident["id"])
    assert still["status"] == "open"
    assert bot.wait_run(run["id"], "waiting")["status"] == "waiting"
    assert [a["status"] for a in bot.rows(APPROVALS)] == ["pending"]
    prod_alert, dev_alert = sorted(bot.alerts(), key=lambda a: a["receiver"] != "prod")
    assert (prod_alert["receiver"], prod_alert["status"]) == ("prod", "firing")
    assert (dev_alert["receiver"], dev_alert["status"]) == ("dev", "resolved")
    assert dev_alert["incident_id"] != prod_incident["id"]
    # the record of why: on dev's alert, and in the audit trail against prod's incident
    assert "an alert is resolved only by the receiver that sent it" in dev_alert["note"]
    assert "'prod'" in dev_alert["note"]
    [ignored] = audit_events(bot, "intake.foreign_resolution_ignored")
    assert ignored["incident_id"] == prod_incident["id"] and ignored["outcome"] == "ignored"
    assert ignored["actor"] == "alertmanager:dev"
    assert ignored["details"]["receiver"] == "dev" and ignored["details"]["owner"] == "prod"
    assert ignored["details"]["fingerprint"] == load["fingerprint"]

    # dev's credential cannot simply claim to be prod either
    assert bot.post(payload(resolved(load), receiver="prod", group=GROUP), as_(DEV)).status_code == 403

    # prod itself resolves it: now the incident resolves and the pending remediation is cancelled
    bot.delivered(bot.post(payload(resolved(load), receiver="prod", group=GROUP), as_(PROD)))
    bot.settle()
    assert bot.incidents(queries.INCIDENTS.c.id == prod_incident["id"])[0]["status"] == "resolved"
    assert bot.runs(RUNS.c.id == run["id"])[0]["status"] == "cancelled"


def test_the_same_alert_routed_to_two_receivers_is_one_alert_and_one_incident_each(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "disk", runbook())
    bot = tenant_bot(make_bot)
    a = alert(instance="web-1")
    bot.delivered(bot.post(payload(a, receiver="prod"), as_(PROD)))
    bot.delivered(bot.post(payload(a, receiver="dev"), as_(DEV)))
    assert bot.delivered(bot.post(payload(a, receiver="dev"), as_(DEV)))["duplicates"] == 1
    bot.settle()
    assert sorted(x["receiver"] for x in bot.alerts()) == ["dev", "prod"]
    assert sorted(i["receiver"] for i in bot.incidents()) == ["dev", "prod"]
    assert len(bot.runs()) == 2
    bot.delivered(bot.post(payload(resolved(a), receiver="dev"), as_(DEV)))
    bot.settle()
    assert {i["receiver"]: i["status"] for i in bot.incidents()} == {"dev": "resolved", "prod": "open"}


def test_a_receiver_starts_only_the_runbooks_allowed_for_it(make_bot, runbooks_dir):
    write_runbook(runbooks_dir, "api", runbook("api-restart", "ApiDown"))
    bot = tenant_bot(make_bot, alertmanager_receiver_runbooks={"prod": ["api-*", "disk-*"], "dev": ["dev-*"]})
    bot.post(payload(alert("ApiDown", instance="dev-1"), receiver="dev"), as_(DEV))
    bot.settle()
    assert bot.runs() == []
    [refused] = bot.alerts()
    assert refused["matched"] is False
    assert refused["note"] == ("unhandled: api-restart: not started: receiver 'dev' may not start runbook 'api-restart' "
                               "(allowed for it: dev-*; RUNBOT_ALERTMANAGER_RECEIVER_RUNBOOKS)")
    [event] = audit_events(bot, "intake.receiver_refused")
    assert event["runbook"] == "api-restart" and event["details"]["receiver"] == "dev"
    assert event["details"]["alerts"] == 1

    bot.post(payload(alert("ApiDown", instance="prod-1"), receiver="prod"), as_(PROD))
    bot.settle()
    [run] = bot.runs()
    assert run["runbook_name"] == "api-restart" and run["alert"]["labels"]["instance"] == "prod-1"


def test_runbook_scope_globs_and_defaults():
    scope = RunbookScope({"prod": ["api-*", "disk-*"], "locked": []})
    assert scope.may_start("prod", "api-restart") and scope.may_start("prod", "disk-usage")
    assert not scope.may_start("prod", "db-failover")
    assert not scope.may_start("locked", "api-restart")
    assert scope.may_start("anyone-else", "db-failover")  # not listed: every runbook (the default)
    default_deny = RunbookScope({"prod": ["*"], "*": []})
    assert default_deny.may_start("prod", "db-failover") and not default_deny.may_start("other", "db-failover")
