"""Who may approve, tried as an attacker: hostile alert labels, a look-alike user, one person on two accounts.

Each attack is refused in Slack (and, where it crosses over, in the `runbot runs approve` CLI) with the
policy's reason, audited as `approval.refused`, and the remediation does not run.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from runbot.adapters.slack.blocks import APPROVE_ACTION
from runbot.audit.log import EVENTS
from runbot.engine.state import VOTES

from .harness import ALICE, BOB, CAROL, Bot, Bots, User, diagnostic, remediation, runbook

pytestmark = pytest.mark.integration

RUNBOT = str(Path(sys.executable).with_name("runbot"))
ME = pwd.getpwuid(os.getuid()).pw_name  # the host user the CLI runs as, whatever $USER says


def start(bots: Bots, overrides: dict[str, Any] | None = None, **approval: Any) -> Bot:
    steps = [diagnostic(bots.target), remediation(bots.target, **approval)]
    return bots.start({"api-errors": runbook("api-errors", steps)}, **(overrides or {}))


def rollbacks(bot: Bot) -> int:
    return bot.target.calls("/rollback", "POST")


def refusals(bot: Bot) -> list[tuple[str, str]]:
    with bot.rt.db.read() as conn:
        rows = conn.execute(select(EVENTS.c.actor, EVENTS.c.details).where(EVENTS.c.action == "approval.refused")
                            .order_by(EVENTS.c.seq)).all()  # fmt: skip
    return [(r.actor, r.details["reason"]) for r in rows]


def refused_click(bot: Bot, run_id: str, user: User) -> str:
    """Click approve as `user`; return the ephemeral answer, after checking nothing ran and nothing counted."""
    _, rurl = bot.click(APPROVE_ACTION, bot.approval_id(bot.approval_message(run_id)), user)
    answer = bot.answer(rurl)
    assert answer.startswith(":no_entry: Refused:"), answer
    assert bot.run_status(run_id) == "waiting" and bot.approval(run_id)["status"] == "pending"
    assert rollbacks(bot) == 0
    return answer


def cli(bot: Bot, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI on the host, against the bot's own database, configured like the bot."""
    e = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}, "RUNBOT_CONFIG": "none"}
    s = bot.settings()
    e.update(RUNBOT_DATA_DIR=str(s.data_dir), RUNBOT_RUNBOOKS_DIR=str(s.runbooks_dir),
             RUNBOT_IDENTITY_MAP=json.dumps(s.identity_map), USER="root-or-anyone", LOGNAME="ignored", **(env or {}))  # fmt: skip
    if s.database_url:
        e["RUNBOT_DATABASE_URL"] = s.database_url
    out = subprocess.run([RUNBOT, *args], env=e, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    return out


@pytest.mark.parametrize("value", ["*", CAROL.id, f"slack:{CAROL.id}", CAROL.name, "sre-leads"])
def test_an_alert_label_cannot_pick_its_own_approver(bots: Bots, value: str) -> None:
    """`owner: "*"`, a user id, a user name, even a real group handle: not in the table, so nobody."""
    bot = start(bots, {"approval_label_groups": {"team-api": ["sre-oncall"]}}, approvers={"from_labels": ["owner"]})
    run_id = bot.alert_run("api-errors", labels={"owner": value})
    answer = refused_click(bot, run_id, CAROL)
    assert f"label owner={value!r}" in answer and "RUNBOT_APPROVAL_LABEL_GROUPS" in answer
    assert refusals(bot)[-1] == (f"slack:{CAROL.team}/{CAROL.id}", answer.removeprefix(":no_entry: Refused: ")[:-1])
    assert "label:owner=" + value + "->(nobody)" in json.dumps(_requested(bot))


def test_a_mapped_label_value_lets_only_that_group_approve(bots: Bots) -> None:
    bot = start(bots, {"approval_label_groups": {"team-api": ["sre-oncall"]}}, approvers={"from_labels": ["owner"]})
    run_id = bot.alert_run("api-errors", labels={"owner": "team-api"})
    assert "not one of the approvers for this step (sre-oncall)" in refused_click(bot, run_id, CAROL)
    _, rurl = bot.click(APPROVE_ACTION, bot.approval_id(bot.approval_message(run_id)), BOB)
    assert "Approved" in bot.answer(rurl)
    bot.wait_run(run_id, "succeeded")
    assert rollbacks(bot) == 1


def test_a_user_named_like_the_approver_group_is_refused(bots: Bots) -> None:
    impostor = User("U0IMPOSTOR", "sre-oncall")
    bots.fake.add_user(impostor.id, impostor.name, team_id=impostor.team)
    bot = start(bots)
    run_id = bot.alert_run("api-errors")
    assert "not one of the approvers for this step (sre-oncall)" in refused_click(bot, run_id, impostor)
    assert refusals(bot)[-1][0] == f"slack:{impostor.team}/{impostor.id}"


def test_self_approval_is_recognised_from_the_cli_to_slack(bots: Bots) -> None:
    """The host user started the run; their Slack account (mapped to them) may not approve it."""
    bot = start(bots, {"identity_map": {f"slack:{ALICE.id}": ME}})
    run_id = bot.alert_run("api-errors", requester=f"cli:{ME}")
    answer = refused_click(bot, run_id, ALICE)
    assert "does not allow self-approval" in answer and "RUNBOT_IDENTITY_MAP" in answer
    _, rurl = bot.click(APPROVE_ACTION, bot.approval_id(bot.approval_message(run_id)), BOB)
    assert "Approved" in bot.answer(rurl)
    bot.wait_run(run_id, "succeeded")


def test_self_approval_is_recognised_from_slack_to_the_cli(bots: Bots) -> None:
    bot = start(bots, {"identity_map": {f"slack:{ALICE.id}": ME}}, approvers={"cli_users": [ME]})
    run_id = bot.alert_run("api-errors", requester=f"slack:{ALICE.team}/{ALICE.id}")
    bot.approval_message(run_id)
    out = cli(bot, "runs", "approve", run_id, "--as", "someone-else")
    assert out.returncode != 0
    assert "refused: you requested this run and the runbook does not allow self-approval" in out.stderr
    assert "RUNBOT_IDENTITY_MAP" in out.stderr and out.stderr.count("\n") <= 2  # one line plus a hint
    assert bot.run_status(run_id) == "waiting" and rollbacks(bot) == 0
    assert refusals(bot)[-1][0].startswith(f"cli:{ME} for someone-else")


def test_one_person_on_slack_and_the_cli_counts_once(bots: Bots, on_db: dict[str, str]) -> None:
    bot = start(bots, {**on_db, "identity_map": {f"slack:{ALICE.id}": ME}}, approvers={
        "slack_usergroups": ["sre-oncall"], "cli_users": [ME]}, min_approvals=2)  # fmt: skip
    run_id = bot.alert_run("api-errors")
    _, rurl = bot.click(APPROVE_ACTION, bot.approval_id(bot.approval_message(run_id)), ALICE)
    assert "recorded (1/2 approvals so far)" in bot.answer(rurl)
    out = cli(bot, "runs", "approve", run_id)
    assert out.returncode != 0 and "you have already decided on this approval" in out.stderr
    assert "one person counts once" in out.stderr
    assert bot.run_status(run_id) == "waiting" and rollbacks(bot) == 0
    _, rurl = bot.click(APPROVE_ACTION, bot.approval_id(bot.approval_message(run_id)), BOB)
    assert "approved (2/2)" in bot.answer(rurl)
    bot.wait_run(run_id, "succeeded")
    assert rollbacks(bot) == 1


def test_a_cli_vote_first_then_the_same_persons_click_is_refused_in_slack(bots: Bots) -> None:
    bot = start(bots, {"identity_map": {f"slack:{ALICE.id}": ME}}, approvers={
        "slack_usergroups": ["sre-oncall"], "cli_users": [ME]}, min_approvals=2)  # fmt: skip
    run_id = bot.alert_run("api-errors")
    bot.approval_message(run_id)
    out = cli(bot, "runs", "approve", run_id, "--as", "alice-on-the-phone")
    assert out.returncode == 0 and "recorded (1/2" in out.stdout, out.stderr
    answer = refused_click(bot, run_id, ALICE)
    assert "already decided" in answer and f"cli:{ME}" in answer
    with bot.rt.db.read() as conn:
        (vote,) = conn.execute(select(VOTES)).mappings().all()
    assert (vote["user_id"], vote["person"], vote["on_behalf_of"]) == (f"cli:{ME}", f"host:{ME}", "alice-on-the-phone")


def _requested(bot: Bot) -> list[Any]:
    with bot.rt.db.read() as conn:
        return [r.details for r in conn.execute(select(EVENTS.c.details).where(EVENTS.c.action == "approval.requested"))]


def test_the_slash_command_meets_the_same_policy_and_words(bots: Bots) -> None:
    bot = start(bots, approvers={"from_labels": ["owner"]})
    run_id = bot.alert_run("api-errors", labels={"owner": "*"})
    bot.approval_message(run_id)
    _, rurl = bot.command(f"approve {run_id}", CAROL)
    answer = bot.answer(rurl)
    assert "label owner='*' is not in RUNBOT_APPROVAL_LABEL_GROUPS" in answer, answer
    assert bot.run_status(run_id) == "waiting" and rollbacks(bot) == 0
    assert "label owner='*'" in refusals(bot)[-1][1]
