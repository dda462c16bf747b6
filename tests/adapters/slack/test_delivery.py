"""Delivery through the outbox: Slack trouble delays messages but loses none; updates find their message."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select, update

from runbot.adapters.slack.blocks import APPROVE_ACTION
from runbot.audit.log import EVENTS
from runbot.engine.state import OUTBOX
from runbot.store.types import utcnow

from .harness import ALICE, CAROL, Bot, Bots, diagnostic, remediation, runbook

pytestmark = pytest.mark.integration


def outbox(bot: Bot) -> list[dict]:
    with bot.rt.db.read() as conn:
        return [dict(r) for r in conn.execute(select(OUTBOX).order_by(OUTBOX.c.id)).mappings()]


def drained(bot: Bot) -> bool:
    rows = outbox(bot)
    return bool(rows) and all(r["delivered_at"] is not None for r in rows)


def diagnostics_only(bots: Bots, n: int = 3) -> dict[str, str]:
    return {"diag": runbook("diag", [diagnostic(bots.target, f"check_{i}") for i in range(n)])}


def test_rate_limits_and_server_errors_delay_messages_but_lose_none(bots: Bots, on_db: dict[str, str]) -> None:
    fake = bots.fake
    fake.fail("chat.postMessage", status=429, retry_after=1, times=1)
    fake.fail("chat.postMessage", status=500, times=1)
    fake.fail("chat.update", status=502, times=2, html=True)
    bot = bots.start(diagnostics_only(bots), **on_db)
    run_id = bot.alert_run("diag")
    bot.wait_run(run_id, "succeeded")
    bot.wait_for(lambda: drained(bot), timeout=20, what="every outbox row delivered")

    posts = fake.calls_to("chat.postMessage")
    limited = next(c for c in posts if c.status == 429)
    after = [c for c in posts if c.at > limited.at]
    assert after and after[0].at - limited.at >= 1.0  # Retry-After: 1 was honoured
    roots = fake.roots("C0OPS")
    assert len(roots) == 1 and run_id in roots[0].all_text()
    replies = [m.all_text() for m in fake.thread("C0OPS", roots[0].ts)]
    assert [any(f"check_{i}" in r for r in replies) for i in range(3)] == [True] * 3
    assert any("finished: *succeeded*" in r for r in replies)
    # three results (merged into one reply when they are due together) and the end: nothing twice
    assert [sum(f"*check_{i}*" in r for r in replies) for i in range(3)] == [1, 1, 1]
    assert sum("finished: *succeeded*" in r for r in replies) == 1
    bot.wait_for(lambda: "[succeeded]" in fake.message("C0OPS", roots[0].ts).text, what="root shows the end")
    retried = [r for r in outbox(bot) if r["attempts"] > 1]
    assert retried and all(r["last_error"] is None for r in outbox(bot) if r["delivered_at"] and r["attempts"] == 1)


def test_updates_land_on_the_stored_message_after_a_restart(bots: Bots) -> None:
    bot = bots.start({"api-errors": runbook("api-errors", [diagnostic(bots.target), remediation(bots.target)])})
    run_id = bot.alert_run("api-errors")
    root = bot.root(run_id)
    aid = bot.approval_id(bot.approval_message(run_id))
    bot.restart()
    _, rurl = bot.click(APPROVE_ACTION, aid, ALICE)
    assert "Approved" in bot.answer(rurl)
    bot.wait_run(run_id, "succeeded")
    bot.wait_for(lambda: "[succeeded]" in bots.fake.message(root.channel, root.ts).text, what="root updated")
    assert len(bots.fake.roots("C0OPS")) == 1  # no second thread after the restart


def escalating(bots: Bots, timeout: str) -> Bot:
    step = remediation(bots.target, timeout=timeout, on_timeout="escalate",
                       escalate_to={"channel": "#sre-escalations", "usergroup": "sre-leads"})  # fmt: skip
    return bots.start({"api-errors": runbook("api-errors", [step])})


def test_escalation_on_timeout_fires_once_even_across_a_restart(bots: Bots) -> None:
    bot = escalating(bots, "1s")
    run_id = bot.alert_run("api-errors")
    esc = bot.wait_for(lambda: bots.fake.roots("C0ESC"), what="escalation posted")[0]
    assert "<!subteam^S0LEADS>" in esc.all_text() and "Escalated" in esc.all_text()
    bot.wait_run(run_id, "aborted")  # escalation extends once; the second timeout ends it
    bot.wait_for(lambda: drained(bot), what="outbox drained")
    # a crash between posting and marking delivered: the row comes back (once its claim lapsed) after the restart
    with bot.rt.db.tx() as conn:
        conn.execute(update(OUTBOX).where(OUTBOX.c.topic == "approval.escalated")
                     .values(delivered_at=None, next_attempt_at=utcnow()))  # fmt: skip
    bot.restart()
    bot.wait_for(lambda: drained(bot), what="outbox drained again")
    time.sleep(0.3)
    assert len(bots.fake.roots("C0ESC")) == 1
    with bot.rt.db.read() as conn:
        n = conn.execute(select(func.count()).select_from(EVENTS).where(EVENTS.c.action == "approval.escalated")).scalar_one()
    assert n == 1
    bot.wait_for(lambda: "Expired" in bots.fake.message(esc.channel, esc.ts).all_text(), what="escalation updated")


def test_the_escalation_group_may_approve_once_escalated(bots: Bots) -> None:
    bot = escalating(bots, "3s")
    run_id = bot.alert_run("api-errors")
    esc = bot.wait_for(lambda: bots.fake.roots("C0ESC"), what="escalation posted")[0]
    _, rurl = bot.click(APPROVE_ACTION, bot.approval_id(esc), CAROL)
    assert "Approved" in bot.answer(rurl)
    bot.wait_run(run_id, "succeeded")
    assert bot.target.calls("/rollback", "POST") == 1


def test_label_routing_picks_the_team_channel(bots: Bots) -> None:
    bot = bots.start(diagnostics_only(bots, 1), slack_label_channels={"team": {"api": "#team-api"}})
    run_id = bot.alert_run("diag", labels={"team": "api"})
    other = bot.alert_run("diag", labels={"team": "db"})
    bot.wait_for(lambda: any(run_id in m.all_text() for m in bots.fake.roots("C0API")), what="team channel")
    bot.wait_for(lambda: any(other in m.all_text() for m in bots.fake.roots("C0OPS")), what="default channel")


def test_a_channel_slack_refuses_is_given_up_after_max_attempts(bots: Bots) -> None:
    books = {"lost": runbook("lost", [diagnostic(bots.target)], slack={"channel": "#nowhere"})}
    bot = bots.start(books, slack_max_attempts=2)
    bot.wait_run(bot.alert_run("lost"), "succeeded")
    bot.wait_for(lambda: drained(bot), timeout=15, what="rows given up")
    assert all("channel_not_found" in (r["last_error"] or "") for r in outbox(bot))


def test_an_incident_channel_is_created_and_owners_invited(bots: Bots) -> None:
    bot = bots.start({"api-errors": runbook("api-errors", [remediation(bots.target)])},
                     slack_incident_channels=True, slack_incident_channel_invite=[CAROL.id])  # fmt: skip
    run_id = bot.alert_run("api-errors")
    created = bots.fake.wait_for("conversations.create")[0]
    name = created.args["name"]
    assert name.startswith("inc-") and "higherrorrate" in name
    cid = next(c for c, n in bots.fake.channels.items() if n == name)
    owners = {ALICE.id, "U0BOB", CAROL.id}  # @sre-oncall members and the configured user
    bot.wait_for(lambda: bots.fake.invited.get(cid) == owners, what="owners invited")  # invited after creating
    bot.wait_for(lambda: any(run_id in m.all_text() for m in bots.fake.roots(cid)), what="summary in the channel")


def test_a_message_deleted_in_slack_does_not_block_the_rest(bots: Bots) -> None:
    bot = bots.start({"api-errors": runbook("api-errors", [remediation(bots.target)])})
    run_id = bot.alert_run("api-errors")
    root = bot.root(run_id)
    msg = bot.approval_message(run_id)
    bots.fake.delete_message(msg.channel, msg.ts)
    _, rurl = bot.click(APPROVE_ACTION, bot.approval_id(msg), ALICE)
    assert "Approved" in bot.answer(rurl)
    bot.wait_run(run_id, "succeeded")
    bot.wait_for(lambda: "[succeeded]" in bots.fake.message(root.channel, root.ts).text, what="root still updated")
    bot.wait_for(lambda: drained(bot), what="outbox drained")
    assert all(r["last_error"] is None for r in outbox(bot))


def test_a_slack_message_step_posts_its_text_in_the_thread_escaped(bots: Bots) -> None:
    steps = [{"id": "tell", "type": "slack.message",
              "with": {"text": "<!channel> {{ alert.labels.service }} is degraded", "channel": "C0OPS"}}]
    bot = bots.start({"tell": runbook("tell", steps)})
    run_id = bot.alert_run("tell", labels={"service": "api"})
    bot.wait_run(run_id, "succeeded")
    root = bot.root(run_id)

    def posted() -> list:
        return [m for m in bots.fake.thread(root.channel, root.ts) if "is degraded" in m.all_text()]

    (reply,) = bot.wait_for(posted, what="the message in the thread")
    assert "&lt;!channel&gt; api is degraded" in reply.all_text()
    assert "<!channel>" not in reply.all_text()


def test_the_postmortem_draft_is_posted_in_the_incident_thread_when_it_resolves(bots: Bots) -> None:
    from runbot.engine.state import INCIDENTS
    from runbot.postmortem.auto import incident_resolved

    bot = bots.start({"diag": diagnostics_only(bots, 1)["diag"]})
    now = utcnow()
    with bot.rt.db.tx() as conn:
        conn.execute(INCIDENTS.insert().values(id="inc-42", group_key="{}:{alertname=\"HighErrorRate\"}",
                                               status="open", title="HighErrorRate checkout", severity="critical",
                                               labels={"service": "checkout"}, opened_at=now, updated_at=now))
    run_id = bot.alert_run("diag", incident_id="inc-42")
    bot.wait_run(run_id, "succeeded")
    root = bot.root(run_id)
    with bot.rt.db.tx() as conn:
        conn.execute(update(INCIDENTS).where(INCIDENTS.c.id == "inc-42").values(status="resolved", resolved_at=utcnow()))
    assert incident_resolved(bot.rt, "inc-42") is not None

    def posted() -> list:
        return [m for m in bots.fake.thread(root.channel, root.ts) if "postmortem draft is attached" in m.all_text()]

    bot.wait_for(posted, what="the postmortem note in the thread")
    uploads = [m for m in bots.fake.thread(root.channel, root.ts) if m.files]
    assert any(f.get("title") == "Postmortem draft: inc-42" for m in uploads for f in m.files)
    assert incident_resolved(bot.rt, "inc-42") is None, "one draft per incident"


def test_a_storm_of_runs_in_one_incident_gets_one_summary_not_a_thread_per_run(bots: Bots) -> None:
    from runbot.engine.state import INCIDENTS

    bot = bots.start({"api-errors": runbook("api-errors", [diagnostic(bots.target), remediation(bots.target)])},
                     slack_storm_threads=2)  # fmt: skip
    now = utcnow()
    with bot.rt.db.tx() as conn:
        conn.execute(INCIDENTS.insert().values(id="inc-storm", group_key="g", status="open", title="HighErrorRate",
                                               opened_at=now, updated_at=now))  # fmt: skip
    runs = [bot.alert_run("api-errors", incident_id="inc-storm") for _ in range(6)]
    fake = bots.fake
    fake.wait_until(lambda: len([m for m in fake.messages() if APPROVE_ACTION in str(m.blocks)]) == 6, timeout=20,
                    what="every run's approval request posted")  # fmt: skip
    roots = fake.roots("C0OPS")
    summary = [m for m in roots if m.text.startswith("Incident inc-storm")]
    assert len(roots) == 3 and len(summary) == 1  # two threads of their own, then one summary for the rest
    in_summary = [m for m in fake.thread("C0OPS", summary[0].ts) if APPROVE_ACTION in str(m.blocks)]
    assert len(in_summary) == 4
    for m in [m for m in fake.messages() if APPROVE_ACTION in str(m.blocks)]:  # every request is actionable
        _, rurl = bot.click(APPROVE_ACTION, bot.approval_id(m), ALICE, message_ts=m.ts)
        assert "Approved" in bot.answer(rurl)
    for r in runs:
        bot.wait_run(r, "succeeded")
    fake.wait_until(lambda: all("Approved* by" in fake.message("C0OPS", m.ts).all_text() for m in in_summary),
                    what="decisions shown on the approval messages")  # fmt: skip
    fake.wait_until(lambda: "6 runs, 6 finished" in fake.message("C0OPS", summary[0].ts).text,
                    what="the summary keeps itself up to date")  # fmt: skip
