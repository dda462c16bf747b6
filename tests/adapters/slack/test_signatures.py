"""HTTP mode: only requests signed with the signing secret, inside Slack's 5-minute window, are acted on."""

from __future__ import annotations

import time

import pytest

from tests.support.fake_slack import JSON, event_callback, form_body, slash_command_fields

from .harness import ALICE, Bot, Bots, diagnostic, runbook


@pytest.fixture
def bot(bots: Bots) -> Bot:
    return bots.start({"api-errors": runbook("api-errors", [diagnostic(bots.target)])})


def status_command(bot: Bot) -> bytes:
    return form_body(slash_command_fields("status", user_id=ALICE.id, user_name=ALICE.name,
                                          response_url=bot.fake.response_url()))  # fmt: skip


@pytest.mark.integration
def test_a_correctly_signed_command_is_acknowledged_at_once(bot: Bot) -> None:
    started = time.monotonic()
    resp = bot.post(status_command(bot))
    assert resp.status_code == 200
    assert time.monotonic() - started < 3.0  # Slack's deadline for the ack
    bot.fake.wait_for("response_url")


@pytest.mark.integration
@pytest.mark.parametrize("case", ["missing", "wrong secret", "tampered body", "too old", "from the future",
                                  "not a number"])
def test_unsigned_forged_or_stale_requests_are_rejected_and_do_nothing(bot: Bot, case: str) -> None:
    body = status_command(bot)
    if case == "missing":
        resp = bot.post(body, signed=False)
    elif case == "wrong secret":
        resp = bot.post(body, secret="not-the-signing-secret")
    elif case == "tampered body":
        from tests.support.fake_slack import sign

        headers = sign(body)
        resp = bot.post(body.replace(b"status", b"freeze"), signed=False, headers=headers)
    elif case == "not a number":  # was an HTTP 500 (Bolt's int() of the header), is a 401
        from tests.support.fake_slack import sign

        headers = {**sign(body), "X-Slack-Request-Timestamp": "soon"}
        resp = bot.post(body, signed=False, headers=headers)
    elif case == "too old":
        resp = bot.post(body, timestamp=int(time.time()) - 6 * 60)
    else:
        resp = bot.post(body, timestamp=int(time.time()) + 6 * 60)
    assert resp.status_code == 401
    time.sleep(0.3)
    assert bot.fake.calls_to("response_url") == []


@pytest.mark.integration
def test_url_verification_challenge_is_answered(bot: Bot) -> None:
    import json

    body = json.dumps({"type": "url_verification", "challenge": "c-123", "token": "x"}).encode()
    resp = bot.post(body, JSON)
    assert resp.status_code == 200
    assert resp.json() == {"challenge": "c-123"}


@pytest.mark.integration
def test_a_retried_event_delivery_acts_once(bot: Bot) -> None:
    import json

    body = json.dumps(event_callback({"type": "app_home_opened", "user": ALICE.id, "tab": "home"},
                                     event_id="Ev0RETRY")).encode()  # fmt: skip
    assert bot.post(body, JSON).status_code == 200
    bot.fake.wait_for("views.publish")
    for n in (1, 2):  # Slack's retries carry the same event id
        assert bot.post(body, JSON, headers={"X-Slack-Retry-Num": str(n), "X-Slack-Retry-Reason": "http_timeout"}).status_code == 200
    time.sleep(0.4)
    assert len(bot.fake.calls_to("views.publish")) == 1
