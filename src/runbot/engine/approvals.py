"""Who may approve: ONE policy for Slack buttons, slash commands and the CLI break-glass.

Pure: it is given the approval request (the step's approver spec and the alert labels captured when it was
requested), the voter's identity, the facts an adapter looked up (which approver groups the Slack voter
is in), the prior votes and the configuration, and answers allowed/refused with one reason. The engine's
`vote()` asks it inside the vote's transaction, so whatever path a vote takes it meets the same rules and
the same words.

The rules, each closing a way in that was once open:
- People are named by stable ids only: a Slack user id (with its team), or the OS user running the CLI.
  A Slack *name* is never compared with anything; `--as NAME` only records on whose behalf someone acts.
- `from_labels` never puts a label value on the approver list: the value is looked up in the configured
  table `approval_label_groups` (label value -> user groups); anything not in it names nobody.
- Group approvers are matched by membership only (the adapter resolves handles to ids through Slack).
- `cli_users` is enforced against the OS user; with none listed the host break-glass is refused unless
  `approval_cli_any_host_user` is set.
- `min_approvals` counts distinct people, and self-approval is recognised, across Slack and the CLI
  through `identity_map` (Slack id -> host user).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from runbot.runbooks.model import ApprovalSpec
    from runbot.settings import Settings

Kind = Literal["slack", "host", "internal"]

SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{1,20}$")
SLACK_TEAM_ID = re.compile(r"^[TE][A-Z0-9]{2,20}$")
LABEL_SETTING = "RUNBOT_APPROVAL_LABEL_GROUPS"
MAP_SETTING = "RUNBOT_IDENTITY_MAP"
CLI_SETTING = "RUNBOT_APPROVAL_CLI_ANY_HOST_USER"


@dataclass(frozen=True)
class Identity:
    """A person's account, by stable id: `slack:T…/U…` (team optional in old records) or `cli:<os user>`.

    `internal` is trusted in-process code that names its own voters (the rehearsal driver): it skips the
    approver lists but not self-approval or distinctness. No outside path (Slack, CLI) can produce it.
    """

    kind: Kind
    id: str
    team: str | None = None

    @classmethod
    def slack(cls, user_id: str, team_id: str | None = None) -> Identity:
        return cls("slack", user_id, team_id or None)

    @classmethod
    def host(cls, user: str) -> Identity:
        return cls("host", user)

    @classmethod
    def internal(cls, name: str) -> Identity:
        return cls("internal", name)

    @classmethod
    def parse(cls, ref: str | None) -> Identity | None:
        """The identity a stored ref names (`slack:U1`, `slack:T1/U1`, `cli:alice`), or None (`system`)."""
        if not ref or ref == "system":
            return None
        if ref.startswith("slack:"):
            rest = ref.removeprefix("slack:")
            team, _, user = rest.rpartition("/")
            return cls.slack(user, team or None)
        if ref.startswith("cli:"):
            return cls.host(ref.removeprefix("cli:").split(" ", 1)[0])
        return cls.internal(ref)

    @property
    def ref(self) -> str:
        """How runs, votes and the audit trail name this account."""
        if self.kind == "slack":
            return f"slack:{self.team}/{self.id}" if self.team else f"slack:{self.id}"
        if self.kind == "host":
            return f"cli:{self.id}"
        return self.id


@dataclass(frozen=True)
class PolicyConfig:
    """The installation's side of the policy (settings), apart so the policy stays testable without them."""

    label_groups: Mapping[str, Sequence[str]] = field(default_factory=dict)
    identity_map: Mapping[str, str] = field(default_factory=dict)
    cli_any_host_user: bool = False
    escalation_group: str | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> PolicyConfig:
        return cls(label_groups=dict(s.approval_label_groups), identity_map=dict(s.identity_map),
                   cli_any_host_user=s.approval_cli_any_host_user,
                   escalation_group=s.slack_escalation_usergroup)  # fmt: skip

    def person(self, who: Identity) -> str:
        """The person behind an account: a Slack id mapped to a host user is that host user."""
        if who.kind == "slack":
            for key in (f"slack:{who.team}/{who.id}" if who.team else None, f"slack:{who.id}"):
                mapped = self.identity_map.get(key) if key else None
                if mapped:
                    return f"host:{mapped.removeprefix('cli:')}"
            return f"slack:{who.id}"  # Slack user ids are unique across an org; the team is checked apart
        if who.kind == "host":
            return f"host:{who.id}"
        return f"internal:{who.id}"


@dataclass(frozen=True)
class LabelApprover:
    """One `from_labels` entry as requested: the label, its value then, and the groups the table gives it."""

    label: str
    value: str | None
    groups: tuple[str, ...]

    @property
    def problem(self) -> str | None:
        if self.groups:
            return None
        if self.value is None or self.value == "":
            return f"the alert has no label {self.label!r}, so it names no approvers"
        return (f"label {self.label}={self.value!r} is not in {LABEL_SETTING}, so it names no approvers "
                f"(map it to user groups there, e.g. {{{self.value!r}: [\"S0GROUPID\"]}})")  # fmt: skip


@dataclass(frozen=True)
class ApprovalRequest:
    """The approver part of an approval row (`approvals.policy`), typed."""

    slack_users: tuple[str, ...] = ()
    slack_usergroups: tuple[str, ...] = ()
    from_labels: tuple[str, ...] = ()
    label_values: Mapping[str, str | None] = field(default_factory=dict)
    cli_users: tuple[str, ...] = ()
    allow_self_approval: bool = False
    escalate_group: str | None = None  # the escalation group, once escalated
    requester: str | None = None

    @classmethod
    def from_row(cls, appr: Mapping[str, Any], cfg: PolicyConfig | None = None) -> ApprovalRequest:
        policy: Mapping[str, Any] = appr.get("policy") or {}
        esc = None
        if appr.get("escalated"):
            esc = (policy.get("escalate_to") or {}).get("usergroup") or (cfg.escalation_group if cfg else None)
        values = policy.get("label_values") or {}
        return cls(slack_users=tuple(str(u) for u in policy.get("slack_users") or []),
                   slack_usergroups=tuple(str(g) for g in policy.get("slack_usergroups") or []),
                   from_labels=tuple(str(x) for x in policy.get("from_labels") or []),
                   label_values={str(k): (None if v is None else str(v)) for k, v in values.items()},
                   cli_users=tuple(str(u) for u in policy.get("cli_users") or []),
                   allow_self_approval=bool(policy.get("allow_self_approval")),
                   escalate_group=str(esc) if esc else None, requester=appr.get("requester"))  # fmt: skip

    @classmethod
    def from_spec(cls, spec: ApprovalSpec, labels: Mapping[str, Any] | None,
                  requester: str | None = None) -> ApprovalRequest:  # fmt: skip
        """The request a step's `approval:` block makes for an alert with these labels (values captured, never
        trusted: `labels()` looks them up in the table)."""
        labels = labels or {}
        a = spec.approvers
        return cls(slack_users=tuple(a.slack_users), slack_usergroups=tuple(a.slack_usergroups),
                   from_labels=tuple(a.from_labels),
                   label_values={x: (None if labels.get(x) is None else str(labels[x])) for x in a.from_labels},
                   cli_users=tuple(a.cli_users), allow_self_approval=spec.allow_self_approval,
                   requester=requester)  # fmt: skip

    def policy_fields(self) -> dict[str, Any]:
        """The approver part of `approvals.policy` as stored (JSON), read back by `from_row`."""
        return {"slack_users": list(self.slack_users), "slack_usergroups": list(self.slack_usergroups),
                "from_labels": list(self.from_labels), "label_values": dict(self.label_values),
                "cli_users": list(self.cli_users), "allow_self_approval": self.allow_self_approval}  # fmt: skip

    def labels(self, cfg: PolicyConfig) -> list[LabelApprover]:
        """Each `from_labels` label resolved through the configured table; a value is never an approver itself."""
        out = []
        for label in self.from_labels:
            value = self.label_values.get(label)
            groups = tuple(str(g) for g in cfg.label_groups.get(value, ())) if value else ()
            out.append(LabelApprover(label, value, tuple(g for g in groups if g and g != "*")))
        return out

    def groups(self, cfg: PolicyConfig) -> list[str]:
        """Every user group a Slack voter may be in to approve: the step's, label-derived, escalation."""
        refs = [*self.slack_usergroups, *(g for la in self.labels(cfg) for g in la.groups)]
        if self.escalate_group:
            refs.append(self.escalate_group)
        return list(dict.fromkeys(r for r in refs if r and r != "*"))

    def users(self) -> list[str]:
        """Slack user ids named directly (anything that is not a user id never matches anybody)."""
        return [u.removeprefix("slack:") for u in self.slack_users
                if SLACK_USER_ID.match(u.removeprefix("slack:"))]  # fmt: skip

    def describe(self, cfg: PolicyConfig) -> list[str]:
        """Every kind of approver, for dry runs, audit events, exports and postmortems."""
        out = [f"group:{g}" for g in self.slack_usergroups]
        out += [f"user:{u}" for u in self.slack_users]
        for la in self.labels(cfg):
            shown = "" if la.value is None else f"={la.value}"
            out.append(f"label:{la.label}{shown}->" + ("+".join(la.groups) if la.groups else "(nobody)"))
        if self.escalate_group:
            out.append(f"escalation:{self.escalate_group}")
        out += [f"cli:{u}" for u in self.cli_users]
        return out


@dataclass(frozen=True)
class PriorVote:
    user_id: str  # the voter's identity ref, as stored
    decision: str


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str  # why refused; empty when allowed
    person: str  # who the voter is for distinctness and self-approval


def _names(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "none"


def approver_problem(req: ApprovalRequest, voter: Identity, cfg: PolicyConfig,
                     member_of: Mapping[str, bool] | None = None) -> str | None:  # fmt: skip
    """Is this account one of the step's approvers? `member_of`: approver group ref -> voter is a member."""
    if voter.kind == "internal":
        return None
    if voter.kind == "host":
        if req.cli_users:
            if voter.id in req.cli_users:
                return None
            return (f"host user {voter.id!r} is not in this step's cli_users ({_names(req.cli_users)}); "
                    "--as only records on whose behalf you act, it does not change who you are")  # fmt: skip
        if cfg.cli_any_host_user:
            return None
        return (f"this step lists no approvers.cli_users, so approving from the host is refused "
                f"(add your host user {voter.id!r} to cli_users in the runbook, or set {CLI_SETTING}=true)")  # fmt: skip
    users = req.users()
    if voter.id in users:
        return None
    groups = req.groups(cfg)
    if any((member_of or {}).get(g) for g in groups):
        return None
    label_problems = [p for la in req.labels(cfg) if (p := la.problem)]
    if not users and not groups:
        why = "no Slack approvers are configured for this step"
        if label_problems:
            why += " (" + "; ".join(label_problems) + ")"
        return why + "; an operator can approve on the host with `runbot runs approve RUN`"
    why = "you are not one of the approvers for this step (" + _names([*groups, *users]) + ")"
    if label_problems:
        why += "; " + "; ".join(label_problems)
    return why


def decide(req: ApprovalRequest, voter: Identity, approve: bool, prior: Sequence[PriorVote], cfg: PolicyConfig,
           member_of: Mapping[str, bool] | None = None) -> Verdict:  # fmt: skip
    """Allowed or refused, with one reason, for one vote by `voter` on an approval request."""
    person = cfg.person(voter)
    problem = approver_problem(req, voter, cfg, member_of)
    if problem:
        return Verdict(False, problem, person)
    requester = Identity.parse(req.requester)
    if approve and not req.allow_self_approval and requester is not None and cfg.person(requester) == person:
        linked = "" if requester.ref == voter.ref else f" ({voter.ref} and {requester.ref} are one person in {MAP_SETTING})"
        return Verdict(False, "you requested this run and the runbook does not allow self-approval" + linked, person)
    for v in prior:
        earlier = Identity.parse(v.user_id)
        if earlier is not None and cfg.person(earlier) == person:
            same = earlier.ref == voter.ref
            return Verdict(False, "you have already decided on this approval"
                           + ("" if same else f" (as {earlier.ref}; one person counts once)"), person)  # fmt: skip
    return Verdict(True, "", person)


def count_people(votes: Sequence[PriorVote], cfg: PolicyConfig, decision: str = "approve") -> int:
    """Distinct people among the votes with this decision (min_approvals counts people, not accounts)."""
    people = set()
    for v in votes:
        who = Identity.parse(v.user_id)
        if v.decision == decision and who is not None:
            people.add(cfg.person(who))
    return len(people)


def who_voted(user_id: str | None, user_name: str | None, on_behalf_of: str | None = None) -> str:
    """A vote's author as people read it: name, the stable id it was counted by, and `for` whom (`--as`)."""
    uid = user_id or ""
    who = f"{user_name} ({uid})" if user_name and uid and user_name != uid else (user_name or uid)
    return who + (f" for {on_behalf_of}" if on_behalf_of else "")

