"""Who may act: workspace and org checks, group membership through usergroups.users.list (cached briefly)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from runbot.adapters.slack.authz import Actor, Authorizer, Directory
from runbot.adapters.slack.slackapi import web_client
from runbot.settings import Settings
from tests.support.fake_slack import BOT_TOKEN, FakeSlack

from .harness import standard_fake


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with standard_fake() as f:
        yield f


def authorizer(fake: FakeSlack, **settings: object) -> Authorizer:
    s = Settings(slack_api_url=fake.api_url, **settings)  # type: ignore[arg-type]
    return Authorizer(s, Directory(web_client(BOT_TOKEN, fake.api_url), s))


def test_group_members_are_cached_briefly_then_looked_up_again(fake: FakeSlack) -> None:
    az = authorizer(fake, slack_usergroup_cache_seconds=0.3)
    alice = Actor("U0ALICE", "alice", "T0TEAM")
    assert az.member_of_any(alice, ["sre-oncall"]) and az.member_of_any(alice, ["S0SRE"])
    assert len(fake.calls_to("usergroups.users.list")) == 1
    fake.usergroups["S0SRE"]["users"].remove("U0ALICE")  # taken off the on-call rota
    assert az.member_of_any(alice, ["sre-oncall"])  # still cached
    time.sleep(0.35)
    assert not az.member_of_any(alice, ["sre-oncall"])


def test_ids_aliases_and_anyone_match_but_user_names_never_do(fake: FakeSlack) -> None:
    az = authorizer(fake, slack_usergroup_map={"team-api": "sre-oncall"})
    bob, carol = Actor("U0BOB", "bob", "T0TEAM"), Actor("U0CAROL", "carol", "T0TEAM")
    assert az.member_of_any(bob, ["team-api"]) and not az.member_of_any(carol, ["team-api"])
    assert az.member_of_any(carol, ["U0CAROL"]) and az.member_of_any(carol, ["slack:T0TEAM/U0CAROL"])
    assert az.member_of_any(carol, ["*"])  # only where an admin wrote it in a setting (run RBAC, freeze)
    assert not az.member_of_any(carol, ["carol"]) and not az.member_of_any(carol, ["@carol"])
    assert not az.member_of_any(carol, ["no-such-group"])


def test_a_user_named_like_the_approver_group_is_not_in_it(fake: FakeSlack) -> None:
    fake.add_user("U0IMPOSTOR", "sre-oncall", team_id="T0TEAM")
    az = authorizer(fake)
    impostor = Actor("U0IMPOSTOR", "sre-oncall", "T0TEAM")
    assert not az.member_of_any(impostor, ["sre-oncall"]) and not az.member_of_any(impostor, ["@sre-oncall"])
    appr = {"policy": {"slack_usergroups": ["sre-oncall"]}}
    assert "not one of the approvers for this step (sre-oncall)" in str(az.approval_problem(impostor, appr))


def test_workspace_and_org_are_checked(fake: FakeSlack) -> None:
    az = authorizer(fake)
    assert az.workspace_problem(Actor("U0ALICE", "alice", "T0TEAM")) is None  # the team auth.test reports
    assert "not in the workspace" in str(az.workspace_problem(Actor("U0MALLORY", "m", "T0OTHER")))
    org = authorizer(fake, slack_enterprise_id="E0ORG")
    assert "organisation" in str(org.workspace_problem(Actor("U0ALICE", "alice", "T0TEAM", None)))
    assert org.workspace_problem(Actor("U0ALICE", "alice", "T0ELSE", "E0ORG")) is None


def test_run_permissions_follow_the_runbook_patterns(fake: FakeSlack) -> None:
    az = authorizer(fake, slack_run_allow={"api-*": ["sre-oncall"], "db-failover": ["U0CAROL"]})
    alice, carol = Actor("U0ALICE", "alice", "T0TEAM"), Actor("U0CAROL", "carol", "T0TEAM")
    assert az.may_run(alice, "api-errors") and not az.may_run(alice, "db-failover")
    assert az.may_run(carol, "db-failover") and not az.may_run(carol, "api-errors")
    assert not authorizer(fake).may_run(alice, "api-errors")  # nothing configured: nobody


def test_slack_down_means_refused_not_allowed(fake: FakeSlack) -> None:
    az = authorizer(fake)
    fake.fail("usergroups.list", status=503, times=5)
    appr = {"policy": {"slack_usergroups": ["sre-oncall"]}}
    assert "could not check" in str(az.approval_problem(Actor("U0ALICE", "alice", "T0TEAM"), appr))
