"""Oversized and hostile inputs against a fake Slack that refuses what Slack refuses: every call is
accepted (the `fake` fixture asserts nothing was refused), every approval request is visible, every root
shows its run's end."""

from __future__ import annotations

import json

import pytest

from runbot.adapters.slack.blocks import APPROVE_ACTION
from runbot.adapters.slack.views import HOME_PAGE_ACTION, RUN_VIEW
from tests.support.fake_slack import (
    JSON,
    FakeSlack,
    block_action_payload,
    event_callback,
    interactive_body,
    view_submission_payload,
)
from tests.support.http_target import HttpTarget, Reply

from .harness import ALICE, Bot, Bots, remediation, runbook

pytestmark = pytest.mark.integration
NASTY = "&<>" * 40  # 120 characters that escape to 480
MEGABYTE = {"items": ["x" * 1000] * 1000}  # a 1 MB JSON body, captured as the step's output


def nasty_steps(target: HttpTarget, n: int) -> list[dict]:
    steps = [{"id": f"s{i:03d}", "name": f"check {i} {NASTY}", "type": "http.request",
              "with": {"method": "GET", "url": target.url("/big" if i % 20 == 0 else "/health")}}
             for i in range(n)]  # fmt: skip
    steps.insert(n // 2, {"id": "say", "type": "slack.message", "with": {"text": "&<@U0ALICE>" * 3000}})
    fix = remediation(target)
    fix["name"] = "&" * 200 + " roll back"  # its confirm dialog text escapes to 1000+ characters
    return [*steps, fix]


def hostile_alert(bot: Bot, name: str) -> str:
    labels = {f"label_{i:03d}_{NASTY[:30]}": ("v" * 5000 if i % 50 == 0 else f"<!channel> {i}") for i in range(200)}
    return bot.alert_run(name, labels={"alertname": "HighErrorRate", "team": "&" * 10_000, **labels},
                         annotations={"summary": "<!here> " + "&" * 10_000, "description": "d" * 10_000})  # fmt: skip


@pytest.mark.parametrize("n", [60, pytest.param(200, marks=pytest.mark.slow)])
def test_long_runbooks_with_hostile_labels_and_huge_outputs_stay_within_slacks_limits(bots: Bots, n: int) -> None:
    bots.target.route("/big", Reply(json=MEGABYTE))
    bot = bots.start({"long": runbook("long", nasty_steps(bots.target, n))}, http_max_response_bytes=2_000_000,
                     engine_workers=2)  # fmt: skip
    run_id = hostile_alert(bot, "long")
    approval = bot.wait_for(lambda: next((m for m in bots.fake.messages() if APPROVE_ACTION in str(m.blocks)), None),
                            timeout=60, what="the approval request")  # fmt: skip
    _, rurl = bot.click(APPROVE_ACTION, bot.approval_id(approval), ALICE, message_ts=approval.ts)
    assert "Approved" in bot.answer(rurl)
    bot.wait_run(run_id, "succeeded", timeout=60)
    root = bots.fake.roots("C0OPS")[0]
    bot.wait_for(lambda: "[succeeded]" in bots.fake.message("C0OPS", root.ts).text, timeout=30,
                 what="the root shows the run's end")  # fmt: skip
    shown = bots.fake.message("C0OPS", root.ts).all_text()
    assert f"of {n + 2} steps shown" in shown and f"runbot runs show {run_id}" in shown  # collapsed, with a pointer
    assert "more label(s)" in shown
    assert bots.fake.uploads, "the 1 MB output went to the thread as a file"
    for m in bots.fake.messages():
        assert "<!channel>" not in m.all_text() and "<!here>" not in m.all_text() and "<@U0ALICE>&" not in m.all_text()
    assert bots.fake.refusals == []


def test_a_form_with_300_character_parameter_names_and_choices_opens_and_submits(bots: Bots) -> None:
    long_name = "p" * 300
    choices = ["c" * 300 + str(i) for i in range(3)]
    book = runbook("form", [{"id": "say", "type": "slack.message", "with": {"text": "{{ params." + long_name + " }}"}}],
                   params={long_name: {"type": "string", "required": True, "choices": choices,
                                       "description": "&" * 3000}})  # fmt: skip
    bot = bots.start({"form": book}, slack_run_allow={"*": ["*"]})
    bot.command("run form")
    view = bots.fake.wait_for("views.open")[-1].args["view"]
    view = json.loads(view) if isinstance(view, str) else view
    block = next(b for b in view["blocks"] if b["type"] == "input")
    assert len(block["block_id"]) <= 255
    option = block["element"]["options"][2]
    values = {block["block_id"]: {"value": {"type": "static_select", "selected_option": option}}}
    payload = view_submission_payload(RUN_VIEW, values, view["private_metadata"], user_id=ALICE.id,
                                      user_name=ALICE.name, blocks=view["blocks"])  # fmt: skip
    resp = bot.post(interactive_body(payload))
    assert resp.status_code == 200 and "errors" not in resp.text
    run_id = bot.wait_for(lambda: _latest_run(bot), what="the started run")
    bot.wait_run(str(run_id), "succeeded")
    with bot.rt.db.read() as conn:
        from sqlalchemy import select

        from runbot.engine.state import RUNS

        assert conn.execute(select(RUNS.c.params).where(RUNS.c.id == str(run_id))).scalar_one() == {long_name: choices[2]}


def _latest_run(bot: Bot) -> str | None:
    from sqlalchemy import select

    from runbot.engine.state import RUNS

    with bot.rt.db.read() as conn:
        return conn.execute(select(RUNS.c.id).order_by(RUNS.c.created_at.desc())).scalars().first()


def test_every_one_of_32_pending_approvals_is_reachable_from_the_app_home(bots: Bots) -> None:
    fake: FakeSlack = bots.fake
    bot = bots.start({"fix": runbook("fix", [remediation(bots.target)])})
    runs = [bot.alert_run("fix") for _ in range(32)]
    bot.wait_for(lambda: len([m for m in fake.messages() if APPROVE_ACTION in str(m.blocks)]) == 32, timeout=60,
                 what="32 approval requests in Slack")  # fmt: skip
    wanted = {str(bot.approval(r)["id"]) for r in runs}
    body = json.dumps(event_callback({"type": "app_home_opened", "user": ALICE.id, "tab": "home"})).encode()
    assert bot.post(body, JSON).status_code == 200
    seen: set[str] = set()
    for page in range(5):
        view = fake.wait_for("views.publish", page + 1)[-1].args["view"]
        view = json.loads(view) if isinstance(view, str) else view
        assert len(view["blocks"]) <= 100
        els = [e for b in view["blocks"] if b["type"] == "actions" for e in b["elements"]]
        seen |= {e["value"] for e in els if e["action_id"] == APPROVE_ACTION}
        nxt = next((e for e in els if e["action_id"].startswith(HOME_PAGE_ACTION + ":next")), None)
        if nxt is None:
            break
        assert "(32)" in json.dumps(view["blocks"])
        click = block_action_payload(nxt["action_id"], nxt["value"], user_id=ALICE.id, user_name=ALICE.name)
        del click["channel"], click["message"], click["response_url"]
        click["container"] = {"type": "view", "view_id": "V0HOME"}
        click["view"] = {"id": "V0HOME", "type": "home"}
        assert bot.post(interactive_body(click)).status_code == 200
    assert seen == wanted


def test_an_approval_request_slack_refuses_is_recorded_and_posted_as_plain_text(bots: Bots) -> None:
    fake: FakeSlack = bots.fake
    fake.fail("chat.postMessage", status=200, error="invalid_blocks", times=1,
              when=lambda args: APPROVE_ACTION in json.dumps(args))  # fmt: skip
    bot = bots.start({"fix": runbook("fix", [remediation(bots.target)])})
    run_id = bot.alert_run("fix")
    fallback = bot.wait_for(lambda: next((m for m in fake.messages() if m.thread_ts and "Approval needed" in m.text
                                          and f"approve {run_id} rollback" in m.text), None),
                            what="the plain-text approval request")  # fmt: skip
    assert fallback.blocks == []
    from runbot.adapters.slack.refusals import refusal_lines

    lines = refusal_lines(bot.rt.db, run_id)
    assert len(lines) == 1 and "invalid_blocks" in lines[0] and "approval request" in lines[0]
    metrics = bot.rt.metrics.registry.get_sample_value("runbot_slack_refused_total", {"kind": "approval"})
    assert metrics == 1.0
    _, rurl = bot.command(f"approve {run_id}")
    assert "Approved" in bot.answer(rurl)
    bot.wait_run(run_id, "succeeded")
