"""Socket Mode: no public endpoint; Slack's envelopes arrive over a WebSocket and are acknowledged at once."""

from __future__ import annotations

import time

import pytest

from runbot.adapters.slack.blocks import APPROVE_ACTION
from tests.support.fake_slack import APP_TOKEN, block_action_payload, event_callback, slash_command_fields

from .harness import ALICE, Bot, Bots, diagnostic, remediation, runbook

pytestmark = pytest.mark.integration


@pytest.fixture
def bot(bots: Bots) -> Bot:
    steps = [diagnostic(bots.target), remediation(bots.target)]
    b = bots.start({"api-errors": runbook("api-errors", steps)}, slack_app_token=APP_TOKEN, slack_signing_secret=None)
    assert bots.fake.socket_connected.wait(10), "the bot did not dial in"
    return b


def test_commands_and_clicks_arrive_over_the_socket_and_are_acked_fast(bot: Bot) -> None:
    fake = bot.fake
    assert fake.calls_to("apps.connections.open")[0].headers["Authorization"] == f"Bearer {APP_TOKEN}"
    assert bot.post(b"payload=%7B%7D").status_code in (404, 405)  # HTTP endpoint not mounted

    rurl = fake.response_url()
    started = time.monotonic()
    ack = fake.socket_send("slash_commands", slash_command_fields("status", user_id=ALICE.id, user_name=ALICE.name,
                                                                  response_url=rurl))  # fmt: skip
    assert time.monotonic() - started < 3.0 and "envelope_id" in ack
    assert "Remediations are allowed" in bot.answer(rurl)

    run_id = bot.alert_run("api-errors")
    aid = bot.approval_id(bot.approval_message(run_id))
    rurl = fake.response_url()
    fake.socket_send("interactive", block_action_payload(APPROVE_ACTION, aid, user_id=ALICE.id, user_name=ALICE.name,
                                                         response_url=rurl))  # fmt: skip
    assert "Approved" in bot.answer(rurl)
    bot.wait_run(run_id, "succeeded")
    assert bot.target.calls("/rollback", "POST") == 1


def test_a_redelivered_event_envelope_acts_once(bot: Bot) -> None:
    body = event_callback({"type": "app_home_opened", "user": ALICE.id, "tab": "home"}, event_id="Ev0SOCKET")
    bot.fake.socket_send("events_api", body)
    bot.fake.wait_for("views.publish")
    bot.fake.socket_send("events_api", body, retry_attempt=1)
    time.sleep(0.4)
    assert len(bot.fake.calls_to("views.publish")) == 1


def test_socket_mode_keeps_trying_when_slack_is_down_at_start(bots: Bots) -> None:
    bots.fake.fail("apps.connections.open", status=503, times=2)
    bots.start({"api-errors": runbook("api-errors", [diagnostic(bots.target)])}, slack_app_token=APP_TOKEN,
               slack_signing_secret=None, slack_socket_ping_interval=0.5)  # fmt: skip
    assert bots.fake.socket_connected.wait(15)
    assert [c.status for c in bots.fake.calls_to("apps.connections.open")][:3] == [503, 503, 200]
