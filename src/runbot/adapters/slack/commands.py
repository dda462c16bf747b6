"""`/runbot` sub-commands: parsed and answered here, sync (the Bolt listener runs this in a worker thread).

Every answer is ephemeral text for the person who typed the command; unknown commands and bad arguments
get the usage, never a traceback.
"""

from __future__ import annotations

import importlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from runbot.adapters.slack import escape as E
from runbot.adapters.slack.approvals import ApprovalService
from runbot.adapters.slack.authz import Actor, Authorizer, DirectoryError
from runbot.adapters.slack.blocks import RUN_ICON, STEP_ICON
from runbot.adapters.slack.runview import load_run_view
from runbot.adapters.slack.store import SlackStore
from runbot.adapters.slack.views import run_modal
from runbot.audit import log as audit
from runbot.domain import LIVE_RUN
from runbot.engine.control import CommandError
from runbot.engine.guards import freeze_state
from runbot.engine.state import APPROVALS, RUNS

if TYPE_CHECKING:
    from runbot.app import Runtime


@dataclass
class Reply:
    text: str
    modal: dict[str, Any] | None = None  # open this view with the command's trigger_id
    extra: dict[str, Any] = field(default_factory=dict)


def usage(cmd: str) -> str:
    return "\n".join([
        f"*{cmd}* — incident runbooks from Slack",
        f"• `{cmd} list` — runbooks you can start",
        f"• `{cmd} run RUNBOOK [key=value ...]` — start a run (a form opens when parameters are needed)",
        f"• `{cmd} status [RUN]` — live runs, or one run's steps",
        f"• `{cmd} runs` — recent runs",
        f"• `{cmd} approve RUN [STEP]` / `{cmd} deny RUN [reason]` — decide a pending approval",
        f"• `{cmd} cancel RUN [reason]` — stop a run after its current step",
        f"• `{cmd} freeze [reason]` / `{cmd} unfreeze` — stop / allow all remediations (diagnostics go on)",
        f"• `{cmd} audit [RUN]` — summary of the audit trail",
        f"• `{cmd} postmortem INCIDENT` — draft a postmortem",
    ])  # fmt: skip


class BadArgs(ValueError):
    """The command was understood but its arguments were not; the message says what is expected."""


class Commands:
    def __init__(self, rt: Runtime, authorizer: Authorizer, approvals: ApprovalService, store: SlackStore,
                 on_change: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self.rt = rt
        self.cmd = rt.settings.slack_command
        self.authorizer = authorizer
        self.approvals = approvals
        self.store = store
        self.on_change = on_change
        self.table: dict[str, Callable[[Actor, list[str], dict[str, Any]], Reply]] = {
            "help": self.help, "list": self.list_runbooks, "run": self.run, "status": self.status, "runs": self.runs,
            "approve": self.approve, "deny": self.deny, "cancel": self.cancel, "freeze": self.freeze,
            "unfreeze": self.unfreeze, "audit": self.audit, "postmortem": self.postmortem,
        }  # fmt: skip

    def handle(self, actor: Actor, text: str, origin: dict[str, Any]) -> Reply:
        try:
            words = shlex.split(text or "")
        except ValueError:
            return Reply(f":warning: Could not read that (unbalanced quotes?).\n{usage(self.cmd)}")
        if not words:
            return self.help(actor, [], origin)
        sub, args = words[0].lower(), words[1:]
        handler = self.table.get(sub)
        if handler is None:
            return Reply(f":warning: Unknown command {E.code(sub, 40)}.\n{usage(self.cmd)}")
        problem = self.authorizer.workspace_problem(actor)
        if problem:
            return Reply(f":no_entry: {E.esc(problem)}.")
        try:
            return handler(actor, args, origin)
        except BadArgs as exc:  # its message is mrkdwn already (untrusted parts escaped where it was written)
            return Reply(f":warning: {exc}\n{usage(self.cmd)}")
        except CommandError as exc:
            return Reply(f":no_entry: {E.esc(exc)}")
        except DirectoryError as exc:
            return Reply(f":warning: Could not check your permissions ({E.esc(exc)}); try again in a moment.")

    # ---- sub-commands --------------------------------------------------------------------------------------------

    def help(self, actor: Actor, args: list[str], origin: dict[str, Any]) -> Reply:
        return Reply(usage(self.cmd))

    def list_runbooks(self, actor: Actor, args: list[str], origin: dict[str, Any]) -> Reply:
        books = sorted(self.rt.catalog.all(), key=lambda b: b.name)
        if not books:
            return Reply("No runbooks are loaded.")
        lines = []
        for b in books[:50]:
            mark = ":arrow_forward:" if self.authorizer.may_run(actor, b.name) else ":lock:"
            params = ", ".join(f"{k}" + ("*" if p.required else "") for k, p in b.spec.params.items())
            lines.append(f"{mark} {E.code(b.name)} — {E.esc(E.clip(b.spec.description or '', 120))}"
                         + (f" _(params: {E.esc(params)})_" if params else ""))  # fmt: skip
        return Reply("*Runbooks* (:arrow_forward: you may start it)\n" + "\n".join(lines))

    def run(self, actor: Actor, args: list[str], origin: dict[str, Any]) -> Reply:
        if not args:
            raise BadArgs("Which runbook? `run RUNBOOK [key=value ...]`")
        name, rest = args[0], args[1:]
        book = self.rt.catalog.get(name)
        if book is None:
            raise BadArgs(f"No runbook named {E.code(name, 80)}; see `{self.cmd} list`.")
        if not self.authorizer.may_run(actor, book.name):
            return Reply(f":no_entry: You may not start {E.code(book.name)} from Slack (see RUNBOT_SLACK_RUN_ALLOW).")
        params: dict[str, Any] = {}
        for item in rest:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise BadArgs(f"Parameters are key=value; got {E.code(item, 80)}.")
            params[key] = value
        if not params and book.spec.params:
            return Reply(f"Opening a form for {E.code(book.name)}…", modal=run_modal(book, origin))
        return Reply(self.start(actor, book.name, params))

    def start(self, actor: Actor, name: str, params: dict[str, Any]) -> str:
        """Start a manual run (also used by the run modal). Re-checks RBAC: the form may be old."""
        book = self.rt.catalog.get(name)
        if book is None:
            raise CommandError(f"runbook {name} is no longer loaded")
        if not self.authorizer.may_run(actor, book.name):
            raise CommandError(f"you may not start {book.name} from Slack")
        run_id = self.rt.engine.create_run(book, params=params, requester=actor.ref, manual=True)
        return f":arrow_forward: Started {E.code(book.name)} as run {E.code(run_id)}; its thread follows."

    def status(self, actor: Actor, args: list[str], origin: dict[str, Any]) -> Reply:
        if args:
            return Reply(self._run_detail(self.rt.engine.resolve_run_id(args[0])))
        frozen = freeze_state(self.rt.db)
        with self.rt.db.read() as conn:
            live = conn.execute(select(RUNS).where(RUNS.c.status.in_([s.value for s in LIVE_RUN]))
                                .order_by(RUNS.c.created_at.desc()).limit(15)).mappings().all()  # fmt: skip
        head = (f":ice_cube: *Remediations are frozen* by {E.esc(frozen.get('by'))}: "
                f"{E.esc(frozen.get('reason') or 'no reason given')}" if frozen
                else ":sunny: Remediations are allowed.")  # fmt: skip
        if not live:
            return Reply(head + "\nNo live runs.")
        return Reply(head + f"\n*Live runs* ({len(live)})\n" + "\n".join(_run_line(r) for r in live))

    def _run_detail(self, run_id: str) -> str:
        view = load_run_view(self.rt, run_id)
        if view is None:
            raise CommandError(f"no run {run_id!r}")
        r = view.run
        lines = [_run_line(r)]
        if r.get("reason"):
            lines.append(f"_{E.esc(E.clip(r['reason'], 400))}_")
        for s in view.steps:
            detail = s.summary if s.status in ("succeeded", "held", "waiting") else s.error
            lines.append(f"{'    ' * s.depth}{STEP_ICON.get(s.status, '')} {E.code(s.step_id, 60)} {E.esc(s.status)}"
                         + (f" — {E.one_line(detail, 140)}" if detail else ""))  # fmt: skip
        for a in view.approvals:
            if a["status"] == "pending":
                lines.append(f":lock: approval for {E.code(a['step_id'])}: "
                             f"{sum(v['decision'] == 'approve' for v in a['votes'])}/{a['min_approvals']}, "
                             f"expires {E.date(a['expires_at'])}")  # fmt: skip
        return "\n".join(lines)

    def runs(self, actor: Actor, args: list[str], origin: dict[str, Any]) -> Reply:
        with self.rt.db.read() as conn:
            rows = conn.execute(select(RUNS).order_by(RUNS.c.created_at.desc()).limit(15)).mappings().all()
        return Reply("*Recent runs*\n" + "\n".join(_run_line(r) for r in rows) if rows else "No runs yet.")

    def approve(self, actor: Actor, args: list[str], origin: dict[str, Any]) -> Reply:
        if not args or len(args) > 2:
            raise BadArgs("Usage: `approve RUN [STEP]`")
        approval_id, why = self.approvals.pending_for(args[0], args[1] if len(args) > 1 else None)
        if approval_id is None:
            return Reply(f":no_entry: {E.esc(why)}")
        d = self.approvals.decide(actor, approval_id, True)
        return Reply((":white_check_mark: " if d.ok else ":no_entry: ") + E.esc(d.message))

    def deny(self, actor: Actor, args: list[str], origin: dict[str, Any]) -> Reply:
        if not args:
            raise BadArgs("Usage: `deny RUN [reason]`")
        approval_id, why = self.approvals.pending_for(args[0])
        if approval_id is None:
            return Reply(f":no_entry: {E.esc(why)}")
        d = self.approvals.decide(actor, approval_id, False, reason=" ".join(args[1:]) or None)
        return Reply((":no_entry_sign: " if d.ok else ":no_entry: ") + E.esc(d.message))

    def cancel(self, actor: Actor, args: list[str], origin: dict[str, Any]) -> Reply:
        if not args:
            raise BadArgs("Usage: `cancel RUN [reason]`")
        run_id = self.rt.engine.resolve_run_id(args[0])
        with self.rt.db.read() as conn:
            book = conn.execute(select(RUNS.c.runbook_name).where(RUNS.c.id == run_id)).scalar_one()
        if not (self.authorizer.is_operator(actor) or self.authorizer.may_run(actor, book)):
            return Reply(f":no_entry: You may not cancel runs of {E.code(book)} (operators and people allowed "
                         "to start it may).")  # fmt: skip
        msg = self.rt.engine.cancel(run_id, actor.ref, " ".join(args[1:]))
        return Reply(f":heavy_multiplication_x: Run {E.code(run_id)}: {E.esc(msg)}.")

    def freeze(self, actor: Actor, args: list[str], origin: dict[str, Any]) -> Reply:
        if not self.authorizer.may_freeze(actor):
            return Reply(":no_entry: You may not freeze remediations: only operators and RUNBOT_SLACK_FREEZE_ALLOW may (see RUNBOT_SLACK_OPERATORS).")
        reason = " ".join(args) or "frozen from Slack"
        self.rt.engine.set_freeze(True, actor.ref, reason)
        self.on_change()
        return Reply(":ice_cube: Remediations are frozen: no remediation step starts until "
                     f"`{self.cmd} unfreeze`. Diagnostics continue. (Announced and audited.)")  # fmt: skip

    def unfreeze(self, actor: Actor, args: list[str], origin: dict[str, Any]) -> Reply:
        if not self.authorizer.is_operator(actor):
            return Reply(":no_entry: Only operators may unfreeze (see RUNBOT_SLACK_OPERATORS).")
        self.rt.engine.set_freeze(False, actor.ref, " ".join(args))
        self.on_change()
        return Reply(":sunny: Remediations are allowed again; held steps start now.")

    def audit(self, actor: Actor, args: list[str], origin: dict[str, Any]) -> Reply:
        run_id = self.rt.engine.resolve_run_id(args[0]) if args else None
        with self.rt.db.read() as conn:
            verdict = audit.verify_db(conn)
        head = (f":link: Audit chain intact: {verdict.count} events, head #{verdict.head_seq}." if verdict.ok
                else f":rotating_light: Audit chain BROKEN: {E.esc(verdict.problem)}")  # fmt: skip
        try:
            summary = importlib.import_module("runbot.audit.summary").summarize
            body = str(summary(self.rt.db, run_id=run_id))
        except (ImportError, AttributeError, TypeError):
            body = self._audit_fallback(run_id)
        return Reply(head + "\n" + E.code_block(body, 2600))

    def _audit_fallback(self, run_id: str | None) -> str:
        ev = audit.EVENTS
        q = select(ev.c.seq, ev.c.ts, ev.c.actor, ev.c.action, ev.c.step_id, ev.c.outcome)
        if run_id:
            q = q.where(ev.c.run_id == run_id)
        with self.rt.db.read() as conn:
            rows = conn.execute(q.order_by(ev.c.seq.desc()).limit(15)).all()
        return "\n".join(f"#{r.seq} {r.ts:%H:%M:%S} {r.action} {r.step_id or ''} {r.outcome or ''} by {r.actor}"
                         for r in reversed(rows)) or "no events"  # fmt: skip

    def postmortem(self, actor: Actor, args: list[str], origin: dict[str, Any]) -> Reply:
        if len(args) != 1:
            raise BadArgs("Usage: `postmortem INCIDENT`")
        try:
            mod = importlib.import_module("runbot.postmortem")
        except ImportError:
            return Reply("Postmortems are not available in this installation yet.")
        for name in ("render_for_slack", "slack_summary", "render_markdown", "render"):
            fn = getattr(mod, name, None)
            if callable(fn):
                try:
                    text = fn(self.rt.db, args[0])
                except (CommandError, KeyError, LookupError, ValueError) as exc:
                    return Reply(f":no_entry: {E.esc(exc)}")
                more = f"\n_(shortened; the whole draft: `runbot postmortem {E.esc(args[0])}` on the host)_" \
                    if len(str(text)) > 2700 else ""  # fmt: skip
                return Reply(f"*Postmortem draft for {E.code(args[0])}*\n" + E.code_block(text, 2700) + more)
        return Reply("Postmortems are not available in this installation yet.")

    # ---- for the App Home -----------------------------------------------------------------------------------------

    def pending_for_actor(self, actor: Actor) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        with self.rt.db.read() as conn:
            rows = conn.execute(select(APPROVALS, RUNS.c.runbook_name, RUNS.c.status.label("run_status"))
                                .join(RUNS, RUNS.c.id == APPROVALS.c.run_id)
                                .where(APPROVALS.c.status == "pending").order_by(APPROVALS.c.requested_at)).mappings().all()  # fmt: skip
        out = []
        for r in rows:
            appr = dict(r)
            try:
                if self.authorizer.approval_problem(actor, appr) is None:  # the engine's policy decides
                    out.append((appr, {"id": appr["run_id"], "runbook_name": appr["runbook_name"]}))
            except DirectoryError:
                continue
        return out

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        with self.rt.db.read() as conn:
            return [dict(r) for r in conn.execute(select(RUNS).order_by(RUNS.c.created_at.desc()).limit(limit)).mappings()]


def _run_line(r: Any) -> str:
    return (f"{RUN_ICON.get(r['status'], '')} {E.code(r['id'])} {E.code(r['runbook_name'])} *{E.esc(r['status'])}* "
            f"· {E.date(r['created_at'])}")  # fmt: skip
