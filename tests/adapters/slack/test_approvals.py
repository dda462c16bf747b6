"""Approval buttons: who may approve, which clicks are refused, and that a step runs exactly once."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from runbot.adapters.slack.blocks import APPROVE_ACTION, DENY_ACTION
from runbot.adapters.slack.views import DENY_VIEW, REASON_BLOCK, REASON_INPUT
from runbot.audit.log import EVENTS
from runbot.engine.state import INCIDENTS, OUTBOX, VOTES
from runbot.store.types import utcnow
from tests.support.fake_slack import block_action_payload, interactive_body, view_submission_payload

from .harness import ALICE, BOB, CAROL, DEPLOY_TOKEN, MALLORY, Bot, Bots, diagnostic, remediation, runbook

pytestmark = pytest.mark.integration


def start(bots: Bots, db: dict[str, str] | None = None, **approval: Any) -> Bot:
    steps = [diagnostic(bots.target), remediation(bots.target, **approval)]
    return bots.start({"api-errors": runbook("api-errors", steps)}, **(db or {}))


def rollbacks(bot: Bot) -> int:
    return bot.target.calls("/rollback", "POST")


def settle(bot: Bot, run_id: str) -> None:
    """Let the engine and the outbox catch up, so 'nothing ran' is a real observation."""
    bot.wait_run(run_id, "waiting")
    bot.wait_for(lambda: not _pending_outbox(bot), what="outbox drained")


def _pending_outbox(bot: Bot) -> int:
    with bot.rt.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(OUTBOX).where(OUTBOX.c.delivered_at.is_(None))).scalar_one())


def test_an_approver_click_runs_the_step_once_and_the_message_shows_who_decided(bots: Bots) -> None:
    bot = start(bots)
    run_id = bot.alert_run("api-errors")
    msg = bot.approval_message(run_id)
    assert bot.target.calls("/health") == 1 and rollbacks(bot) == 0  # diagnostics ran, remediation waits
    text = msg.all_text()
    assert "Roll back the last deploy" in text and "/rollback" in text  # exactly what will run
    assert "****(kv/deployer#token)" in text and "kv/deployer#token" in text  # secret masked, path shown
    assert "<!subteam^S0SRE>" in text  # who may approve

    resp, rurl = bot.click(APPROVE_ACTION, bot.approval_id(msg), ALICE)
    assert resp.status_code == 200
    assert bot.answer(rurl).startswith(":white_check_mark: Approved rollback")
    bot.wait_run(run_id, "succeeded")
    assert rollbacks(bot) == 1
    assert bot.target.last("/rollback").header("Authorization") == f"Bearer {DEPLOY_TOKEN}"

    def decided() -> bool:
        m = bot.fake.message(msg.channel, msg.ts)
        return "Approved* by alice" in m.all_text() and APPROVE_ACTION not in str(m.blocks)

    bot.wait_for(decided, what="approval message updated in place")
    assert all(DEPLOY_TOKEN not in json.dumps(c.args) for c in bot.fake.calls)


def test_a_non_member_is_refused_and_nothing_runs(bots: Bots) -> None:
    bot = start(bots)
    run_id = bot.alert_run("api-errors")
    aid = bot.approval_id(bot.approval_message(run_id))
    _, rurl = bot.click(APPROVE_ACTION, aid, CAROL)
    assert "not one of the approvers" in bot.answer(rurl)
    settle(bot, run_id)
    assert rollbacks(bot) == 0 and bot.approval(run_id)["status"] == "pending"
    with bot.rt.db.read() as conn:
        refused = conn.execute(select(EVENTS.c.actor).where(EVENTS.c.action == "approval.refused")).scalars().all()
    assert refused == [f"slack:{CAROL.team}/{CAROL.id}"]  # a stable id: team and user, never the name


def test_a_user_of_another_workspace_is_refused(bots: Bots) -> None:
    bot = start(bots, approvers={"slack_users": [MALLORY.id]})
    run_id = bot.alert_run("api-errors")
    _, rurl = bot.click(APPROVE_ACTION, bot.approval_id(bot.approval_message(run_id)), MALLORY)
    assert "not in the workspace" in bot.answer(rurl)
    settle(bot, run_id)
    assert rollbacks(bot) == 0


def test_the_requester_may_not_approve_their_own_run(bots: Bots) -> None:
    bot = start(bots)
    run_id = bot.alert_run("api-errors", requester=f"slack:{ALICE.id}")
    aid = bot.approval_id(bot.approval_message(run_id))
    _, rurl = bot.click(APPROVE_ACTION, aid, ALICE)
    assert "does not allow self-approval" in bot.answer(rurl)
    settle(bot, run_id)
    assert rollbacks(bot) == 0
    _, rurl = bot.click(APPROVE_ACTION, aid, BOB)
    assert "Approved" in bot.answer(rurl)
    bot.wait_run(run_id, "succeeded")
    assert rollbacks(bot) == 1


def test_an_expired_request_is_refused(bots: Bots) -> None:
    bot = start(bots, timeout="2s")
    run_id = bot.alert_run("api-errors")
    msg = bot.approval_message(run_id)
    aid = bot.approval_id(msg)
    bot.wait_run(run_id, "aborted")
    _, rurl = bot.click(APPROVE_ACTION, aid, ALICE)
    assert "expired" in bot.answer(rurl)
    assert rollbacks(bot) == 0
    bot.wait_for(lambda: "Expired" in bot.fake.message(msg.channel, msg.ts).all_text(), what="expiry shown")


def test_a_click_after_the_incident_resolved_is_refused(bots: Bots) -> None:
    bot = start(bots)
    now = utcnow()
    with bot.rt.db.tx() as conn:
        conn.execute(insert(INCIDENTS).values(id="inc1", group_key="g", status="open", title="t", opened_at=now,
                                              updated_at=now))  # fmt: skip
    run_id = bot.alert_run("api-errors", incident_id="inc1")
    aid = bot.approval_id(bot.approval_message(run_id))
    with bot.rt.db.tx() as conn:
        conn.execute(update(INCIDENTS).where(INCIDENTS.c.id == "inc1").values(status="resolved", resolved_at=now))
    _, rurl = bot.click(APPROVE_ACTION, aid, ALICE)
    assert "incident inc1 is resolved" in bot.answer(rurl)
    settle(bot, run_id)
    assert rollbacks(bot) == 0


def test_a_click_after_the_runbook_changed_is_refused(bots: Bots) -> None:
    bot = start(bots)
    run_id = bot.alert_run("api-errors")
    aid = bot.approval_id(bot.approval_message(run_id))
    path = bot.books_dir / "api-errors.yaml"
    path.write_text(path.read_text().replace("Roll back the last deploy", "Roll back two deploys"))
    bot.rt.catalog.reload()
    _, rurl = bot.click(APPROVE_ACTION, aid, ALICE)
    assert "changed since this approval was requested" in bot.answer(rurl)
    settle(bot, run_id)
    assert rollbacks(bot) == 0


def test_a_replayed_click_is_refused_and_counts_once(bots: Bots) -> None:
    bot = start(bots, min_approvals=2)
    run_id = bot.alert_run("api-errors")
    aid = bot.approval_id(bot.approval_message(run_id))
    rurl = bot.fake.response_url()
    body = interactive_body(block_action_payload(APPROVE_ACTION, aid, user_id=ALICE.id, user_name=ALICE.name,
                                                 response_url=rurl))  # fmt: skip
    assert bot.post(body).status_code == 200
    assert "1/2" in bot.answer(rurl)
    assert bot.post(body).status_code == 200  # the same signed request again, inside the 5-minute window
    bot.wait_for(lambda: len(bot.answers(rurl)) == 2, what="second answer")
    assert "already handled" in str(bot.answers(rurl)[-1]["text"])
    with bot.rt.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(VOTES)).scalar_one() == 1
    settle(bot, run_id)
    assert rollbacks(bot) == 0


def test_two_concurrent_clicks_run_the_step_once(bots: Bots, on_db: dict[str, str]) -> None:
    bot = start(bots, on_db)
    run_id = bot.alert_run("api-errors")
    aid = bot.approval_id(bot.approval_message(run_id))
    gate = threading.Barrier(2)
    rurls: dict[str, str] = {}

    def click(user: Any) -> None:
        gate.wait()
        rurls[user.name] = bot.click(APPROVE_ACTION, aid, user)[1]

    threads = [threading.Thread(target=click, args=(u,)) for u in (ALICE, BOB)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    texts = sorted(bot.answer(r) for r in rurls.values())
    assert sum(t.startswith(":white_check_mark: Approved") for t in texts) == 1, texts
    assert sum("already approved" in t or "decided at the same moment" in t for t in texts) == 1, texts
    bot.wait_run(run_id, "succeeded")
    assert rollbacks(bot) == 1


def test_two_approvals_need_two_distinct_people(bots: Bots) -> None:
    bot = start(bots, min_approvals=2)
    run_id = bot.alert_run("api-errors")
    msg = bot.approval_message(run_id)
    aid = bot.approval_id(msg)
    _, r1 = bot.click(APPROVE_ACTION, aid, ALICE)
    assert "recorded (1/2 approvals so far)" in bot.answer(r1)
    _, r2 = bot.click(APPROVE_ACTION, aid, ALICE)
    assert "already decided" in bot.answer(r2)
    settle(bot, run_id)
    assert rollbacks(bot) == 0
    _, r3 = bot.click(APPROVE_ACTION, aid, BOB)
    assert "approved (2/2)" in bot.answer(r3)
    bot.wait_run(run_id, "succeeded")
    assert rollbacks(bot) == 1
    shown = lambda: bot.fake.message(msg.channel, msg.ts).all_text()  # noqa: E731
    bot.wait_for(lambda: "<@U0ALICE>" in shown() and "<@U0BOB>" in shown() and "Approved* by bob" in shown(),
                 what="both votes shown")  # fmt: skip


def test_deny_asks_for_a_reason_and_stops_the_step(bots: Bots) -> None:
    bot = start(bots)
    run_id = bot.alert_run("api-errors")
    msg = bot.approval_message(run_id)
    aid = bot.approval_id(msg)
    _, rurl = bot.click(DENY_ACTION, aid, BOB)
    opened = bot.fake.wait_for("views.open")[-1].args["view"]
    assert opened["callback_id"] == DENY_VIEW
    values = {REASON_BLOCK: {REASON_INPUT: {"type": "plain_text_input", "value": "error rate <!channel> is dropping"}}}
    payload = view_submission_payload(DENY_VIEW, values, opened["private_metadata"], user_id=BOB.id,
                                      user_name=BOB.name)  # fmt: skip
    assert bot.post(interactive_body(payload)).status_code == 200
    assert "Denied rollback" in bot.answer(rurl)
    bot.wait_run(run_id, "aborted")
    assert rollbacks(bot) == 0
    shown = lambda: bot.fake.message(msg.channel, msg.ts).all_text()  # noqa: E731
    bot.wait_for(lambda: "Denied* by bob" in shown(), what="denial shown")
    assert "&lt;!channel&gt; is dropping" in shown() and "<!channel>" not in shown()


def test_a_non_member_gets_no_deny_form(bots: Bots) -> None:
    bot = start(bots)
    run_id = bot.alert_run("api-errors")
    _, rurl = bot.click(DENY_ACTION, bot.approval_id(bot.approval_message(run_id)), CAROL)
    assert "not one of the approvers" in bot.answer(rurl)
    assert bot.fake.calls_to("views.open") == []


def test_approvers_can_come_from_an_alert_label(bots: Bots) -> None:
    table = {"approval_label_groups": {"team-leads": ["sre-leads"]}}  # the label value only picks a row here
    bot = start(bots, table, approvers={"from_labels": ["owner"]})
    run_id = bot.alert_run("api-errors", labels={"owner": "team-leads"})
    aid = bot.approval_id(bot.approval_message(run_id))
    _, rurl = bot.click(APPROVE_ACTION, aid, ALICE)
    assert "not one of the approvers" in bot.answer(rurl)
    _, rurl = bot.click(APPROVE_ACTION, aid, CAROL)
    assert "Approved" in bot.answer(rurl)
    bot.wait_run(run_id, "succeeded")


def test_timeout_skip_skips_the_step_and_the_run_goes_on(bots: Bots) -> None:
    bot = start(bots, timeout="2s", on_timeout="skip")
    run_id = bot.alert_run("api-errors")
    bot.approval_message(run_id)
    bot.wait_run(run_id, "succeeded")
    assert rollbacks(bot) == 0
