"""Who may do what from Slack: workspace check, approvers (users and user groups), run RBAC, operators.

User group members come from `usergroups.users.list` and are cached briefly, so a person removed from the
on-call group loses approval rights within the cache time. Any doubt (Slack unreachable) refuses.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from slack_sdk import WebClient

from runbot.adapters.slack import escape as E
from runbot.engine.approvals import ApprovalRequest, Identity, PolicyConfig, approver_problem
from runbot.settings import Settings

T = TypeVar("T")
ANYONE = "*"


class DirectoryError(RuntimeError):
    """Slack could not tell us who is in a group; callers refuse rather than guess."""


@dataclass(frozen=True)
class Actor:
    """The person behind a Slack request, as Slack's signed payload names them."""

    user_id: str
    user_name: str | None = None
    team_id: str | None = None  # the user's own workspace (differs for Slack Connect guests)
    enterprise_id: str | None = None

    @property
    def identity(self) -> Identity:
        """The stable id the approval policy knows this person by: user id plus team, never the name."""
        return Identity.slack(self.user_id, self.team_id)

    @property
    def ref(self) -> str:
        """How runbot names this person in runs, votes and the audit trail (`slack:T…/U…`)."""
        return self.identity.ref

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Actor:
        u = body.get("user") or {}
        if isinstance(u, dict) and u.get("id"):  # interactivity payloads
            team = (body.get("team") or {}).get("id") if isinstance(body.get("team"), dict) else None
            ent = (body.get("enterprise") or {}).get("id") if isinstance(body.get("enterprise"), dict) else None
            return cls(u["id"], u.get("username") or u.get("name"), u.get("team_id") or team, ent)
        # slash commands (form fields)
        return cls(str(body.get("user_id") or ""), body.get("user_name"), body.get("team_id"),
                   body.get("enterprise_id") or None)  # fmt: skip


class Directory:
    """Slack users and user groups, with a short cache; sync (call from a worker thread)."""

    def __init__(self, client: WebClient, settings: Settings) -> None:
        self.client = client
        self.ttl = settings.slack_usergroup_cache_seconds
        self.aliases = settings.slack_usergroup_map
        self._cache: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._team: tuple[str | None, str | None] | None = None

    def _cached(self, key: str, load: Callable[[], T], ttl: float | None = None) -> T:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                value: T = hit[1]
                return value
        try:
            value = load()
        except Exception as exc:
            raise DirectoryError(f"Slack did not answer ({type(exc).__name__})") from exc
        with self._lock:
            self._cache[key] = (now + (self.ttl if ttl is None else ttl), value)
        return value

    def team(self) -> tuple[str | None, str | None]:
        """(team_id, enterprise_id) of the workspace the bot token belongs to (auth.test, cached for good)."""
        if self._team is None:
            resp = self._cached("auth.test", lambda: self.client.auth_test().data, ttl=10**9)
            assert isinstance(resp, dict)
            self._team = (resp.get("team_id"), resp.get("enterprise_id") or None)
        return self._team

    def group_id(self, ref: str) -> str | None:
        """A user group id for an id, a handle (`sre-oncall`, `@sre-oncall`) or a mapped alias."""
        ref = self.aliases.get(ref, ref).lstrip("@")
        if E.is_group_id(ref):
            return ref
        groups = self._cached("usergroups.list", self._list_groups)
        return groups.get(ref.lower())

    def _list_groups(self) -> dict[str, str]:
        data = self.client.usergroups_list().data
        assert isinstance(data, dict)
        out: dict[str, str] = {}
        for g in data.get("usergroups") or []:
            for name in (g.get("handle"), g.get("name")):
                if name:
                    out.setdefault(str(name).lower(), g["id"])
        return out

    def members(self, group_id: str) -> frozenset[str]:
        def load() -> frozenset[str]:
            data = self.client.usergroups_users_list(usergroup=group_id).data
            assert isinstance(data, dict)
            return frozenset(data.get("users") or [])

        return self._cached(f"members:{group_id}", load)

    def handle(self, group_id: str) -> str | None:
        groups = self._cached("usergroups.list", self._list_groups)
        return next((name for name, gid in groups.items() if gid == group_id), None)

    def describe(self, refs: list[str]) -> str:
        """Mentions for users and groups (unknown names shown as escaped text), for 'who may approve'."""
        out = []
        for ref in refs:
            if ref == ANYONE:
                out.append("anyone in the workspace")
            elif E.is_user_id(ref.removeprefix("slack:")):
                out.append(E.user(ref))
            else:
                try:
                    gid = self.group_id(ref)
                except DirectoryError:
                    gid = None
                out.append(E.usergroup(gid, ref) if gid else E.usergroup(ref))
        return ", ".join(out) if out else "_nobody in Slack (use the CLI break-glass)_"


class Authorizer:
    def __init__(self, settings: Settings, directory: Directory) -> None:
        self.settings = settings
        self.directory = directory

    def workspace_problem(self, actor: Actor) -> str | None:
        """Refuse people from another workspace or org (Slack Connect guests, other Grid workspaces)."""
        want_team = self.settings.slack_team_id
        want_ent = self.settings.slack_enterprise_id
        explicit_team = want_team is not None
        if want_team is None and want_ent is None:
            try:
                want_team, want_ent = self.directory.team()
            except DirectoryError as exc:
                return f"could not confirm your workspace ({exc}); try again in a moment"
        if want_ent and actor.enterprise_id != want_ent:
            return "you are not in the organisation this runbot serves"
        same_org = bool(want_ent) and actor.enterprise_id == want_ent
        if want_team and actor.team_id != want_team and (explicit_team or not same_org):
            return "you are not in the workspace this runbot serves"
        return None

    def member_of_any(self, actor: Actor, refs: list[str]) -> bool:
        """Is the person named in `refs` (user id, or `*` in admin settings) or in one of the groups there?

        Names are never compared: a user called `sre-oncall` is not the group `sre-oncall`.
        """
        for ref in refs:
            r = ref.removeprefix("slack:")
            if r == ANYONE or r.rpartition("/")[2] == actor.user_id:
                return True
        for ref in refs:
            r = ref.removeprefix("slack:")
            if E.is_user_id(r.rpartition("/")[2]) or r == ANYONE:
                continue
            gid = self.directory.group_id(r)
            if gid is not None and actor.user_id in self.directory.members(gid):
                return True
        return False

    def policy(self) -> PolicyConfig:
        return PolicyConfig.from_settings(self.settings)

    def approvers(self, appr: dict[str, Any]) -> list[str]:
        """Groups and users allowed to approve in Slack: the step's, label-derived (through the configured
        table only), plus the escalation group once escalated."""
        cfg = self.policy()
        req = ApprovalRequest.from_row(appr, cfg)
        return list(dict.fromkeys([*req.groups(cfg), *req.users()]))

    def membership(self, actor: Actor, appr: dict[str, Any]) -> dict[str, bool]:
        """Which of the approval's groups the person is in (looked up in Slack), for the engine's policy."""
        cfg = self.policy()
        out: dict[str, bool] = {}
        for ref in ApprovalRequest.from_row(appr, cfg).groups(cfg):
            gid = self.directory.group_id(ref)
            out[ref] = gid is not None and actor.user_id in self.directory.members(gid)
        return out

    def approval_problem(self, actor: Actor, appr: dict[str, Any]) -> str | None:
        """Slack's part (workspace, group lookups) then the engine's approval policy, without prior votes."""
        problem = self.workspace_problem(actor)
        if problem:
            return problem
        try:
            member_of = self.membership(actor, appr)
        except DirectoryError as exc:
            return f"could not check the approver groups ({exc}); try again in a moment"
        cfg = self.policy()
        return approver_problem(ApprovalRequest.from_row(appr, cfg), actor.identity, cfg, member_of)

    def may_run(self, actor: Actor, runbook: str) -> bool:
        refs = [r for pattern, who in self.settings.slack_run_allow.items()
                if fnmatch.fnmatchcase(runbook, pattern) for r in who]  # fmt: skip
        return bool(refs) and self.member_of_any(actor, refs)

    def is_operator(self, actor: Actor) -> bool:
        return bool(self.settings.slack_operators) and self.member_of_any(actor, self.settings.slack_operators)

    def may_freeze(self, actor: Actor) -> bool:
        """Operators, plus whoever RUNBOT_SLACK_FREEZE_ALLOW names (default nobody else: not the whole workspace)."""
        return self.is_operator(actor) or (bool(self.settings.slack_freeze_allow)
                                           and self.member_of_any(actor, self.settings.slack_freeze_allow))  # fmt: skip
