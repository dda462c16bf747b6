"""The one approval policy, tried as an attacker would: each way in is refused, with one reason that says why."""

from __future__ import annotations

import pytest

from runbot.engine.approvals import (
    ApprovalRequest,
    Identity,
    PolicyConfig,
    PriorVote,
    count_people,
    decide,
    who_voted,
)

ALICE = Identity.slack("U0ALICE", "T0TEAM")
CAROL = Identity.slack("U0CAROL", "T0TEAM")
TABLE = PolicyConfig(label_groups={"team-api": ["S0API"]}, identity_map={"slack:U0ALICE": "alice"})


def from_label(value: str | None, **kw: object) -> ApprovalRequest:
    return ApprovalRequest(from_labels=("owner",), label_values={"owner": value}, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["*", "U0CAROL", "slack:U0CAROL", "carol", "@carol", "", None, "team-db"])
def test_a_label_value_is_never_an_approver_itself(value: str | None) -> None:
    req = from_label(value)
    member_of = {str(value): True, "carol": True, "*": True}  # even if an adapter claimed membership by the value
    v = decide(req, CAROL, True, [], TABLE, member_of)
    assert not v.allowed
    assert "owner" in v.reason and ("RUNBOT_APPROVAL_LABEL_GROUPS" in v.reason or "has no label" in v.reason)
    assert req.groups(TABLE) == []


def test_a_label_value_in_the_table_names_its_groups_and_only_members_of_them_approve() -> None:
    req = from_label("team-api")
    assert req.groups(TABLE) == ["S0API"]
    assert decide(req, CAROL, True, [], TABLE, {"S0API": True}).allowed
    refused = decide(req, CAROL, True, [], TABLE, {"S0API": False})
    assert not refused.allowed and refused.reason == "you are not one of the approvers for this step (S0API)"


def test_a_wildcard_in_the_table_is_dropped_too() -> None:
    cfg = PolicyConfig(label_groups={"team-api": ["*"]})
    assert from_label("team-api").groups(cfg) == []


def test_an_unknown_label_value_beside_static_groups_leaves_the_static_groups() -> None:
    req = from_label("*", slack_usergroups=("sre-oncall",))
    assert decide(req, CAROL, True, [], TABLE, {"sre-oncall": True}).allowed
    v = decide(req, CAROL, True, [], TABLE, {"sre-oncall": False})
    assert "not one of the approvers for this step (sre-oncall)" in v.reason and "owner='*'" in v.reason


def test_slack_users_match_by_id_only() -> None:
    req = ApprovalRequest(slack_users=("carol", "*", "slack:U0BOB"))
    assert req.users() == ["U0BOB"]
    assert not decide(req, CAROL, True, [], TABLE).allowed
    assert decide(req, Identity.slack("U0BOB", "T0TEAM"), True, [], TABLE).allowed


def test_cli_users_are_enforced_against_the_host_user() -> None:
    req = ApprovalRequest(cli_users=("alice",))
    assert decide(req, Identity.host("alice"), True, [], TABLE).allowed
    v = decide(req, Identity.host("mallory"), True, [], TABLE)
    assert not v.allowed and "host user 'mallory' is not in this step's cli_users (alice)" in v.reason
    assert "--as only records on whose behalf" in v.reason


def test_no_cli_users_means_no_host_break_glass_unless_configured() -> None:
    v = decide(ApprovalRequest(), Identity.host("root"), True, [], TABLE)
    assert not v.allowed and "RUNBOT_APPROVAL_CLI_ANY_HOST_USER" in v.reason
    assert decide(ApprovalRequest(), Identity.host("root"), True, [], PolicyConfig(cli_any_host_user=True)).allowed


def test_a_slack_voter_is_not_a_cli_user_and_a_host_user_not_a_slack_user() -> None:
    req = ApprovalRequest(slack_users=("U0ALICE",), cli_users=("alice",))
    assert not decide(ApprovalRequest(cli_users=("U0ALICE",)), ALICE, True, [], TABLE).allowed
    assert not decide(ApprovalRequest(slack_users=("U0ALICE",)), Identity.host("U0ALICE"), True, [], TABLE).allowed
    assert decide(req, ALICE, True, [], TABLE).allowed


def test_one_person_counts_once_across_slack_and_the_cli() -> None:
    req = ApprovalRequest(slack_users=("U0ALICE",), cli_users=("alice",))
    prior = [PriorVote(ALICE.ref, "approve")]
    v = decide(req, Identity.host("alice"), True, prior, TABLE)
    assert not v.allowed and v.reason.startswith("you have already decided on this approval")
    assert "slack:T0TEAM/U0ALICE" in v.reason
    back = decide(req, ALICE, True, [PriorVote("cli:alice", "approve")], TABLE)
    assert not back.allowed and "already decided" in back.reason
    assert count_people([PriorVote(ALICE.ref, "approve"), PriorVote("cli:alice", "approve")], TABLE) == 1


def test_self_approval_is_recognised_across_slack_and_the_cli() -> None:
    by_slack = ApprovalRequest(cli_users=("alice",), requester="slack:T0TEAM/U0ALICE")
    v = decide(by_slack, Identity.host("alice"), True, [], TABLE)
    assert not v.allowed and "does not allow self-approval" in v.reason and "RUNBOT_IDENTITY_MAP" in v.reason
    by_cli = ApprovalRequest(slack_users=("U0ALICE",), requester="cli:alice")
    assert "self-approval" in decide(by_cli, ALICE, True, [], TABLE).reason
    legacy = ApprovalRequest(slack_users=("U0ALICE",), requester="slack:U0ALICE")  # a run requested before teams
    assert "self-approval" in decide(legacy, ALICE, True, [], PolicyConfig()).reason
    assert decide(legacy, ALICE, False, [], PolicyConfig()).allowed  # denying your own run is fine
    allowed = ApprovalRequest(slack_users=("U0ALICE",), requester="cli:alice", allow_self_approval=True)
    assert decide(allowed, ALICE, True, [], TABLE).allowed


def test_identity_refs_round_trip_and_names_never_identify() -> None:
    assert Identity.parse("slack:T0TEAM/U0ALICE") == ALICE
    assert Identity.parse("cli:alice") == Identity.host("alice")
    assert Identity.parse("system") is None
    assert TABLE.person(Identity.slack("U0ALICE")) == TABLE.person(ALICE) == "host:alice"
    assert TABLE.person(CAROL) == "slack:U0CAROL"


def test_describe_names_every_kind_of_approver() -> None:
    req = ApprovalRequest(slack_users=("U0BOB",), slack_usergroups=("sre-oncall",), from_labels=("owner", "team"),
                          label_values={"owner": "team-api", "team": "*"}, cli_users=("alice",),
                          escalate_group="S0ESC")  # fmt: skip
    assert req.describe(TABLE) == ["group:sre-oncall", "user:U0BOB", "label:owner=team-api->S0API",
                                   "label:team=*->(nobody)", "escalation:S0ESC", "cli:alice"]  # fmt: skip
    assert who_voted("cli:root", "root", "bob") == "root (cli:root) for bob"


def test_the_settings_refuse_a_name_as_a_slack_key_and_default_to_the_safe_side() -> None:
    from pydantic import ValidationError

    from runbot.settings import Settings

    with pytest.raises(ValidationError, match="identity_map keys must be slack:U"):
        Settings(identity_map={"alice": "alice"})
    s = Settings(identity_map={"slack:T0TEAM/U0ALICE": "cli:alice"}, approval_label_groups={"team-api": ["S0API"]})
    cfg = PolicyConfig.from_settings(s)
    assert cfg.person(ALICE) == "host:alice" and not cfg.cli_any_host_user
    assert Settings().slack_freeze_allow == []  # the kill switch: operators only unless configured
