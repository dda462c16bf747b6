"""App Home: the approvals waiting for the person looking, and recent runs; approving from there works."""

from __future__ import annotations

import json

import pytest

from runbot.adapters.slack.blocks import APPROVE_ACTION
from tests.support.fake_slack import JSON, block_action_payload, event_callback, interactive_body

from .harness import ALICE, CAROL, Bot, Bots, User, diagnostic, remediation, runbook

pytestmark = pytest.mark.integration


def open_home(bot: Bot, user: User) -> dict:
    before = len(bot.fake.calls_to("views.publish"))
    body = json.dumps(event_callback({"type": "app_home_opened", "user": user.id, "tab": "home"})).encode()
    assert bot.post(body, JSON).status_code == 200
    call = bot.fake.wait_for("views.publish", before + 1)[-1]
    assert call.args["user_id"] == user.id
    return call.args["view"]


def text_of(view: dict) -> str:
    return json.dumps(view["blocks"])


def test_home_lists_the_approvals_this_person_may_give_and_recent_runs(bots: Bots) -> None:
    bot = bots.start({"api-errors": runbook("api-errors", [diagnostic(bots.target), remediation(bots.target)])})
    run_id = bot.alert_run("api-errors")
    bot.approval_message(run_id)
    alice = open_home(bot, ALICE)
    assert "Waiting for your approval* (1)" in text_of(alice) and APPROVE_ACTION in text_of(alice)
    carol = open_home(bot, CAROL)
    assert "Waiting for your approval* (0)" in text_of(carol) and run_id in text_of(carol)  # recent runs


def test_approving_from_the_home_tab_answers_there(bots: Bots) -> None:
    bot = bots.start({"api-errors": runbook("api-errors", [remediation(bots.target)])})
    run_id = bot.alert_run("api-errors")
    aid = bot.approval_id(bot.approval_message(run_id))
    payload = block_action_payload(APPROVE_ACTION, aid, user_id=ALICE.id, user_name=ALICE.name)
    del payload["channel"], payload["message"], payload["response_url"]
    payload["container"] = {"type": "view", "view_id": "V0HOME"}
    payload["view"] = {"id": "V0HOME", "type": "home"}
    assert bot.post(interactive_body(payload)).status_code == 200
    bot.wait_run(run_id, "succeeded")
    note = bot.fake.wait_for("views.publish")[-1].args["view"]
    assert "Approved rollback" in text_of(note)
