"""`/runbot`: every sub-command answers ephemerally; permissions are enforced; bad input gets the usage."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import insert, select

from runbot.adapters.slack.views import RUN_VIEW
from runbot.audit.log import EVENTS
from runbot.engine.guards import freeze_state
from runbot.engine.state import INCIDENTS, RUNS
from runbot.store.types import utcnow
from tests.support.fake_slack import interactive_body, view_submission_payload

from .harness import ALICE, BOB, CAROL, Bot, Bots, diagnostic, remediation, runbook

pytestmark = pytest.mark.integration


def books(bots: Bots) -> dict[str, str]:
    t = bots.target
    return {
        "api-errors": runbook("api-errors", [diagnostic(t), remediation(t)]),
        "restricted": runbook("restricted", [diagnostic(t)]),
        "with-params": runbook("with-params", [diagnostic(t)], params={
            "count": {"type": "integer", "required": True, "description": "how many"},
            "mode": {"type": "string", "default": "soft", "choices": ["soft", "hard"]}}),
        "unattended": runbook("unattended", [diagnostic(t), {
            "id": "restart", "type": "http.request", "risk": "high",
            "with": {"method": "POST", "url": t.url("/rollback")}}],
            unattended={"reason": "restarts are safe and reviewed"}),
    }  # fmt: skip


@pytest.fixture
def bot(bots: Bots) -> Bot:
    return bots.start(books(bots), slack_run_allow={"api-*": ["sre-oncall"], "with-params": ["sre-oncall"],
                                                    "unattended": ["*"]})  # fmt: skip


def say(bot: Bot, text: str, user: object = ALICE) -> dict:
    resp, rurl = bot.command(text, user)  # type: ignore[arg-type]
    assert resp.status_code == 200
    bot.answer(rurl)
    body = bot.answers(rurl)[-1]
    assert body.get("response_type") == "ephemeral"
    assert "Traceback" not in body["text"]
    return body


def runs_of(bot: Bot, name: str) -> list[dict]:
    with bot.rt.db.read() as conn:
        return [dict(r) for r in conn.execute(select(RUNS).where(RUNS.c.runbook_name == name)).mappings()]


@pytest.mark.parametrize("text, expect", [
    ("", "incident runbooks from Slack"),
    ("help", "incident runbooks from Slack"),
    ("frobnicate", "Unknown command `frobnicate`"),
    ("run", "Which runbook?"),
    ("run nope", "No runbook named `nope`"),
    ("run <b&d>", "No runbook named `&lt;b&amp;d&gt;`"),  # escaped once, not twice (`&amp;lt;`)
    ("run api-errors oops", "Parameters are key=value"),
    ("approve", "Usage: `approve RUN [STEP]`"),
    ("status r-does-not-exist", "no run 'r-does-not-exist'"),
    ('deny "unbalanced', "Could not read that"),
    ("postmortem", "Usage: `postmortem INCIDENT`"),
])  # fmt: skip
def test_help_unknown_commands_and_bad_arguments_get_an_ephemeral_usage(bot: Bot, text: str, expect: str) -> None:
    assert expect in say(bot, text)["text"]


def test_list_shows_runbooks_and_which_ones_you_may_start(bot: Bot) -> None:
    text = say(bot, "list", CAROL)["text"]
    assert ":lock: `api-errors`" in text and ":arrow_forward: `unattended`" in text
    assert "count*" in text  # required parameters are marked


def test_run_starts_a_manual_run_only_for_people_allowed_to(bot: Bot) -> None:
    assert "You may not start `api-errors`" in say(bot, "run api-errors", CAROL)["text"]
    assert "You may not start `restricted`" in say(bot, "run restricted", ALICE)["text"]
    assert runs_of(bot, "api-errors") == []
    text = say(bot, "run api-errors", ALICE)["text"]
    assert "Started `api-errors` as run" in text
    run = runs_of(bot, "api-errors")[0]
    assert run["requester"] == f"slack:{ALICE.team}/{ALICE.id}" and run["manual"]  # user id and team


def test_run_without_parameters_opens_a_form_and_its_submission_starts_the_run(bot: Bot) -> None:
    assert "Opening a form" in say(bot, "run with-params", BOB)["text"]
    view = bot.fake.wait_for("views.open")[-1].args["view"]
    assert view["callback_id"] == RUN_VIEW
    blocks = view["blocks"]
    values = {"param:count": {"value": {"type": "plain_text_input", "value": "abc"}}}
    payload = view_submission_payload(RUN_VIEW, values, view["private_metadata"], user_id=BOB.id, user_name=BOB.name,
                                      blocks=blocks)  # fmt: skip
    resp = bot.post(interactive_body(payload))
    assert resp.json()["response_action"] == "errors"  # the form stays open with the problem shown
    assert runs_of(bot, "with-params") == []
    values["param:count"]["value"]["value"] = "3"
    values["param:mode"] = {"value": {"type": "static_select", "selected_option": {"value": json.dumps("hard")}}}
    payload = view_submission_payload(RUN_VIEW, values, view["private_metadata"], user_id=BOB.id, user_name=BOB.name,
                                      blocks=blocks)  # fmt: skip
    assert bot.post(interactive_body(payload)).status_code == 200
    run = bot.wait_for(lambda: runs_of(bot, "with-params"), what="run created")[0]
    assert run["params"] == {"count": 3, "mode": "hard"} and run["requester"] == f"slack:{BOB.team}/{BOB.id}"


def test_run_with_parameters_on_the_command_line(bot: Bot) -> None:
    assert "Started" in say(bot, "run with-params count=2", ALICE)["text"]
    assert runs_of(bot, "with-params")[0]["params"] == {"count": 2, "mode": "soft"}
    assert "must be one of" in say(bot, "run with-params count=2 mode=medium", ALICE)["text"]


def test_status_runs_approve_and_deny_from_the_keyboard(bot: Bot) -> None:
    first = bot.alert_run("api-errors")
    second = bot.alert_run("api-errors")
    bot.wait_run(first, "waiting")
    bot.wait_run(second, "waiting")
    assert first in say(bot, "status")["text"] and "Remediations are allowed" in say(bot, "status")["text"]
    detail = say(bot, f"status {first}")["text"]
    assert "`health` succeeded" in detail and "approval for `rollback`: 0/1" in detail
    assert second in say(bot, "runs")["text"]
    assert "not one of the approvers" in say(bot, f"approve {first}", CAROL)["text"]
    assert "Approved rollback" in say(bot, f"approve {first}", ALICE)["text"]
    assert "Denied rollback" in say(bot, f"deny {second} not during the sale", BOB)["text"]
    bot.wait_run(first, "succeeded")
    bot.wait_run(second, "aborted")
    assert bot.approval(second)["reason"] == "not during the sale"


def test_cancel_needs_an_operator_or_someone_allowed_to_run_it(bot: Bot) -> None:
    run_id = bot.alert_run("api-errors")
    bot.wait_run(run_id, "waiting")
    assert "You may not cancel" in say(bot, f"cancel {run_id}", CAROL)["text"]
    msg = bot.approval_message(run_id)
    assert "cancelled" in say(bot, f"cancel {run_id} false alarm", ALICE)["text"]
    bot.wait_run(run_id, "cancelled")
    root = bot.root(run_id)  # the thread shows it, and the buttons are gone
    bot.wait_for(lambda: "[cancelled]" in bot.fake.message(root.channel, root.ts).text, what="root shows cancelled")
    bot.wait_for(lambda: "Cancelled" in bot.fake.message(msg.channel, msg.ts).all_text(), what="buttons removed")


def test_freeze_holds_remediations_but_not_diagnostics_and_is_announced_and_audited(bot: Bot) -> None:
    assert "You may not freeze" in say(bot, "freeze because I can", CAROL)["text"]  # not anyone by default
    assert freeze_state(bot.rt.db) is None
    assert "Remediations are frozen" in say(bot, "freeze db failover in progress", ALICE)["text"]  # an operator
    assert freeze_state(bot.rt.db)["by"] == f"slack:{ALICE.team}/{ALICE.id}"
    bot.wait_for(lambda: any("frozen* by <@U0ALICE>" in m.all_text() for m in bot.fake.roots("C0OPS")),
                 what="freeze announced")  # fmt: skip
    run_id = bot.alert_run("unattended")
    root = bot.root(run_id)
    bot.wait_for(lambda: any("is held" in m.all_text() for m in bot.fake.thread(root.channel, root.ts)),
                 what="held step reported in the thread")  # fmt: skip
    assert bot.target.calls("/health") == 1 and bot.target.calls("/rollback") == 0
    assert bot.run_status(run_id) == "waiting"
    assert "Only operators may unfreeze" in say(bot, "unfreeze", CAROL)["text"]
    time.sleep(0.3)
    assert bot.target.calls("/rollback") == 0
    assert "allowed again" in say(bot, "unfreeze", ALICE)["text"]
    bot.wait_run(run_id, "succeeded", timeout=45)  # the held step re-checks on unfreeze
    assert bot.target.calls("/rollback") == 1
    with bot.rt.db.read() as conn:
        acts = conn.execute(select(EVENTS.c.action, EVENTS.c.actor).where(EVENTS.c.action.like("freeze.%"))).all()
    alice = f"slack:{ALICE.team}/{ALICE.id}"
    assert [tuple(a) for a in acts] == [("freeze.on", alice), ("freeze.off", alice)]
    bot.wait_for(lambda: any("unfrozen* by <@U0ALICE>" in m.all_text() for m in bot.fake.roots("C0OPS")),
                 what="unfreeze announced")  # fmt: skip


def test_audit_summarises_the_trail(bot: Bot) -> None:
    run_id = bot.alert_run("restricted")
    bot.wait_run(run_id, "succeeded")
    text = say(bot, f"audit {run_id}")["text"]
    assert "Audit chain intact" in text and "```" in text


def test_postmortem_drafts_for_a_known_incident_and_refuses_an_unknown_one(bot: Bot) -> None:
    now = utcnow()
    with bot.rt.db.tx() as conn:
        conn.execute(insert(INCIDENTS).values(id="inc7", group_key="g", status="resolved", title="HighErrorRate",
                                              opened_at=now, resolved_at=now, updated_at=now))  # fmt: skip
    bot.wait_run(bot.alert_run("restricted", incident_id="inc7"), "succeeded")
    assert "Postmortem draft for `inc7`" in say(bot, "postmortem inc7")["text"]
    unknown = say(bot, "postmortem inc-404")["text"]
    assert "inc-404" in unknown and "Postmortem draft" not in unknown
