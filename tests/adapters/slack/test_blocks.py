"""Block Kit builders and escaping: untrusted text pings nobody, links nowhere, and secrets never show."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runbot.adapters.slack import escape as E
from runbot.adapters.slack.blocks import (
    APPROVE_ACTION,
    approval_message,
    incident_message,
    step_sections,
    targets_of,
)
from runbot.adapters.slack.runview import RunView, StepLine
from runbot.redaction import REGISTRY

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
HOSTILE = "<!channel> <!here|x> <https://evil.example|click me> <@U0BOSS> <!subteam^S0ALL> & done"


def view(**run: Any) -> RunView:
    row = {"id": "r0123456789", "runbook_name": "api-errors", "status": "running", "requester": "system",
           "created_at": NOW, "reason": None, "incident_id": None, "runbook_version_id": 1,
           "alert": {"labels": {"alertname": "HighErrorRate", "severity": "critical", "note": HOSTILE},
                     "annotations": {"summary": f"summary {HOSTILE}", "runbook_url": "javascript:alert(1)"},
                     "generatorURL": "https://prom.example/graph?a=1&b=<2>"}, **run}  # fmt: skip
    steps = [StepLine("check", "check", "http.request", "succeeded", summary=f"got {HOSTILE}"),
             StepLine("fix", "fix", "http.request", "failed", error="boom\nsecond line", changes_things=True)]
    return RunView(row, None, steps, {}, [], None, None)


def rendered(msg: Any) -> str:
    return json.dumps({"text": msg.text, "blocks": msg.blocks}, ensure_ascii=False)


@pytest.mark.parametrize("raw, shown", [
    ("<!channel>", "&lt;!channel&gt;"),
    ("<https://x|y>", "&lt;https://x|y&gt;"),
    ("a & b", "a &amp; b"),
    ("&lt;", "&amp;lt;"),  # already-escaped text stays literal
    ("plain", "plain"),
])  # fmt: skip
def test_esc_follows_slacks_three_rules(raw: str, shown: str) -> None:
    assert E.esc(raw) == shown


def test_links_only_for_http_urls_and_labels_stay_text() -> None:
    assert E.link("https://ok.example/a|b>c", "<!here>") == "<https://ok.example/a%7Cb%3Ec|&lt;!here&gt;>"
    assert E.link("javascript:alert(1)", "doc") == "doc (javascript:alert(1))"
    assert E.link("https://x y", "doc").startswith("doc")


def test_mentions_only_for_well_formed_ids() -> None:
    assert E.user("slack:U0ALICE") == "<@U0ALICE>"
    assert E.user("U0A|x> <!channel") == "U0A|x&gt; &lt;!channel"
    assert E.usergroup("S0SRE") == "<!subteam^S0SRE>"
    assert E.usergroup("sre> <!channel") == "@sre&gt; &lt;!channel"


def test_code_blocks_cannot_be_closed_from_inside() -> None:
    out = E.code_block("before ``` <!channel> after")
    assert out.startswith("```") and out.endswith("```") and out.count("```") == 2
    assert "&lt;!channel&gt;" in out


def test_incident_message_escapes_every_untrusted_field() -> None:
    out = rendered(incident_message(view()))
    for bad in ("<!channel>", "<!here", "<https://evil.example", "<@U0BOSS>", "<!subteam^S0ALL>", "<javascript:"):
        assert bad not in out
    assert "&lt;!channel&gt;" in out
    assert "<https://prom.example/graph?a=1&amp;b=%3C2%3E|Alert source>" in out  # our own link, made safe


def test_incident_message_lists_steps_with_one_line_results() -> None:
    out = rendered(incident_message(view()))
    assert ":white_check_mark: *check*" in out and ":x: *fix*" in out and "boom …" in out
    assert "second line" not in out


def test_secret_values_of_a_live_run_are_masked_in_messages() -> None:
    REGISTRY.for_run("r0123456789").register("hunter2-secret-value")
    try:
        v = view()
        v.steps[0].summary = "token hunter2-secret-value leaked"
        assert "hunter2-secret-value" not in rendered(incident_message(v))
        assert "****" in rendered(incident_message(v))
    finally:
        REGISTRY.drop("r0123456789")


def approval(**kw: Any) -> dict[str, Any]:
    return {"id": "ap_0123", "run_id": "r0123456789", "step_id": "fix", "status": "pending", "min_approvals": 2,
            "requester": "slack:U0CAROL", "expires_at": NOW + timedelta(minutes=15), "escalated": False,
            "votes": [{"user_id": "slack:U0ALICE", "user_name": "alice", "decision": "approve", "at": NOW}],
            "policy": {"step_name": "Roll back", "step_type": "http.request", "allow_self_approval": False,
                       "params": {"method": "POST", "url": "https://deployer.example/rollback",
                                  "headers": {"Authorization": "Bearer ****(kv/deployer#token)"},
                                  "json": {"service": HOSTILE}},
                       "secrets": ["kv/deployer#token"]}, **kw}  # fmt: skip


def test_approval_message_shows_what_will_run_and_carries_only_the_opaque_id() -> None:
    msg = approval_message(view(status="waiting"), approval(), "<!subteam^S0SRE>")
    out = rendered(msg)
    assert "https://deployer.example/rollback" in out and "****(kv/deployer#token)" in out
    assert "needs 2 approvals from distinct people" in out and "(who may not approve it)" in out
    assert "<@U0CAROL>" in out and "<@U0ALICE>" in out  # requester and the vote so far
    assert "<!channel>" not in out
    buttons = [el for b in msg.blocks if b["type"] == "actions" for el in b["elements"]]
    assert [b["value"] for b in buttons] == ["ap_0123", "ap_0123"]
    assert buttons[0]["action_id"] == APPROVE_ACTION


def test_a_decided_approval_has_no_buttons_and_says_who_and_when() -> None:
    msg = approval_message(view(), approval(status="denied", decided_by="bob", decided_at=NOW, reason="<!here> no"),
                           "x")  # fmt: skip
    out = rendered(msg)
    assert "actions" not in [b["type"] for b in msg.blocks]
    assert "*Denied* by bob" in out and "&lt;!here&gt; no" in out and "<!date^" in out


def test_long_step_lists_stay_within_slack_limits() -> None:
    steps = [StepLine(f"s{i}", "x" * 70, "noop", "succeeded", summary="y" * 150) for i in range(400)]
    sections = step_sections(steps)
    assert len(sections) <= 12 and all(len(s["text"]["text"]) <= 3000 for s in sections)


def test_targets_are_pulled_from_the_parameters() -> None:
    assert targets_of({"url": "https://a", "service": "checkout", "hosts": ["h1", "h2"]}) == [
        "https://a", "h1", "h2", "service=checkout"]
