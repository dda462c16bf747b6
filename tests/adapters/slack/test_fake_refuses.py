"""The fake Slack refuses what Slack refuses, so the other tests prove runbot stays within Slack's limits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from slack_sdk.errors import SlackApiError

from runbot.adapters.slack.slackapi import classify, web_client
from tests.support.fake_slack import BOT_TOKEN, FakeSlack, RateLimits


@pytest.fixture
def strict() -> Iterator[FakeSlack]:
    with FakeSlack(rate_limits=RateLimits(speed=1.0, post_channel_burst=2, burst_seconds=2)) as f:
        f.add_channel("C0OPS", "ops").add_channel("C0API", "api")
        yield f


def refused(fake: FakeSlack, method: str, **kw: object) -> str:
    client = web_client(BOT_TOKEN, fake.api_url)
    with pytest.raises(SlackApiError) as info:
        client.api_call(method, json=kw)
    return str(info.value.response["error"])


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


@pytest.mark.parametrize(("kw", "error"), [
    ({"text": "x" * 40_001}, "msg_too_long"),
    ({"blocks": [section("x")] * 51}, "invalid_blocks"),
    ({"blocks": [section("x" * 3001)]}, "invalid_blocks"),
    ({"blocks": [section("x" * 2900)] * 5}, "msg_blocks_too_long"),
    ({"blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]}, "invalid_blocks"),
    ({"blocks": [{"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * 11}]}, "invalid_blocks"),
    ({"blocks": [{"type": "actions", "block_id": "b" * 256, "elements": [
        {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "ok"}}]}]}, "invalid_blocks"),
    ({"blocks": [{"type": "actions", "elements": [
        {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "b" * 76}}]}]}, "invalid_blocks"),
    ({"blocks": [{"type": "actions", "elements": [{"type": "button", "action_id": "a", "text": {
        "type": "plain_text", "text": "ok"}, "confirm": {"title": {"type": "plain_text", "text": "t"},
        "text": {"type": "mrkdwn", "text": "&amp;" * 61}, "confirm": {"type": "plain_text", "text": "y"},
        "deny": {"type": "plain_text", "text": "n"}}}]}]}, "invalid_blocks"),
])  # fmt: skip
def test_messages_over_slacks_limits_are_refused(strict: FakeSlack, kw: dict, error: str) -> None:
    assert refused(strict, "chat.postMessage", channel="C0OPS", **({"text": "t"} | kw)) == error
    assert strict.refusals and strict.refusals[-1][1] == error


def test_views_over_slacks_limits_are_refused_with_invalid_arguments(strict: FakeSlack) -> None:
    modal = {"type": "modal", "title": {"type": "plain_text", "text": "t" * 25}, "blocks": [section("x")]}
    assert refused(strict, "views.open", trigger_id="t", view=modal) == "invalid_arguments"
    home = {"type": "home", "blocks": [section("x")] * 101}
    assert refused(strict, "views.publish", user_id="U1", view=home) == "invalid_arguments"
    meta = {"type": "home", "private_metadata": "m" * 3001, "blocks": [section("x")]}
    assert refused(strict, "views.publish", user_id="U1", view=meta) == "invalid_arguments"
    select = {"type": "input", "block_id": "p", "label": {"type": "plain_text", "text": "l"}, "element": {
        "type": "static_select", "action_id": "v", "options": [
            {"text": {"type": "plain_text", "text": "o"}, "value": "v" * 151}]}}  # fmt: skip
    form = {"type": "modal", "title": {"type": "plain_text", "text": "t"}, "blocks": [select]}
    assert refused(strict, "views.open", trigger_id="t", view=form) == "invalid_arguments"


def test_posting_is_limited_per_channel_with_retry_after(strict: FakeSlack) -> None:
    client = web_client(BOT_TOKEN, strict.api_url)
    for _ in range(2):  # the burst
        client.chat_postMessage(channel="C0OPS", text="hi")
    with pytest.raises(SlackApiError) as info:
        client.chat_postMessage(channel="C0OPS", text="hi")
    trouble = classify(info.value)
    assert info.value.response.status_code == 429 and trouble.retry_after is not None and trouble.retry_after >= 1
    client.chat_postMessage(channel="C0API", text="another channel has its own allowance")
    assert strict.ratelimited == 1
