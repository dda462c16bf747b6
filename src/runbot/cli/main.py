"""The `runbot` command. Errors are one clear line plus a hint; `--debug` shows the traceback."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

# Plain (click) help: the same text, at a third of the start-up time of rich's; TYPER_USE_RICH=1 brings it back.
os.environ.setdefault("TYPER_USE_RICH", "0")

import typer

from runbot.cli.output import OUTPUT, emit_json

if TYPE_CHECKING:
    from runbot.settings import Settings

app = typer.Typer(no_args_is_help=True, help="runbot: incident runbook automation.")
runs_app = typer.Typer(no_args_is_help=True, help="Inspect and steer runs.")
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit trail.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
config_app = typer.Typer(no_args_is_help=True, help="Configuration.")
app.add_typer(runs_app, name="runs")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")

STATE: dict[str, Any] = {"debug": False, "config": None}

# Sub-command modules: each exposes `register(app: typer.Typer) -> None`. One line per module.
CLI_MODULES: list[str] = [
    "runbot.cli.intake",
    "runbot.cli.rehearse",
    "runbot.cli.vault",
    "runbot.cli.slack",
    "runbot.cli.audit_export",
    "runbot.cli.prometheus",
]


class CliError(Exception):
    def __init__(self, message: str, hint: str | None = None, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    raise CliError(message, hint, code)


def _version(value: bool) -> None:
    if value:
        from runbot import __version__

        typer.echo(f"runbot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors (accepted anywhere on the line)."),
    config: Path | None = typer.Option(
        None, "--config", "-c",
        help="Config file (YAML or TOML). Default: RUNBOT_CONFIG, else runbot.yaml here or in a parent directory."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    STATE["debug"] = STATE["debug"] or debug
    STATE["config"] = config


def settings() -> Settings:
    from runbot.config_file import ConfigError
    from runbot.observability import configure_logging
    from runbot.settings import load_settings
    from runbot.settings_files import SettingsFileError

    try:
        s = load_settings(config_file=STATE["config"])
    except (ConfigError, SettingsFileError) as exc:  # one line and a hint, like every CLI error
        fail(exc.message, exc.hint)
    configure_logging("WARNING" if not STATE["debug"] else "DEBUG", s.log_format)
    return s


def require_schema(s: Settings) -> None:
    """Commands other than `serve` and `db upgrade` never create or migrate a database: they say so instead."""
    from runbot.store.db import sqlite_file

    path = sqlite_file(s.effective_database_url)
    if path is not None and not path.exists():
        fail(f"no database at {path}", "start `runbot serve` (or run `runbot db upgrade`) first, or point "
             "RUNBOT_DATA_DIR / RUNBOT_DATABASE_URL (or runbot.yaml) at the bot's database")  # fmt: skip


def check_schema(db: Any) -> None:
    current, head = db.current_revision(), db.head_revision()
    if current is None:
        fail("the database has no runbot schema", "run `runbot db upgrade` (serve does it on start)")
    if current != head:
        fail(f"the database schema is at revision {current}, this runbot needs {head}", "run `runbot db upgrade`")


def runtime(upgrade: bool = False) -> Any:
    from runbot.app import build_runtime

    s = settings()
    if not upgrade:
        require_schema(s)
    rt = build_runtime(s, upgrade=upgrade)
    if not upgrade:
        try:
            check_schema(rt.db)
        except CliError:
            rt.close()
            raise
    return rt


def database() -> Any:
    """The bot's database alone, for commands that only read it (no web stack, no runbooks loaded)."""
    from runbot.store.db import Database

    s = settings()
    require_schema(s)
    db = Database(s.effective_database_url)
    try:
        check_schema(db)
    except CliError:
        db.dispose()
        raise
    return db


def user() -> str:
    """The host user as runbot names them in runs and the audit trail (real uid, see host_user)."""
    return f"cli:{host_user()}"


def _fmt_ts(ts: datetime | None) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) if c is not None else "-" for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    widths = [min(w, 80) for w in widths]
    line = lambda r: "  ".join(c[: widths[i]].ljust(widths[i]) for i, c in enumerate(r)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


# ---- runbooks ----------------------------------------------------------------------------------------------------


@app.command()
def lint(path: Path | None = typer.Argument(None, help="Runbook file or directory (default: the runbooks dir).")) -> None:
    """Validate runbooks; every problem is reported as file:line: field: message."""
    from runbot.runbooks.loader import load_dir
    from runbot.steps.registry import StepRegistry

    s = settings()
    target = path or s.runbooks_dir
    books, problems = load_dir(target, StepRegistry(s))
    for p in problems:
        typer.echo(str(p))
    for w in (w for b in books for w in b.warnings):
        typer.echo(f"warning: {w}")
    if problems:
        fail(f"{len(problems)} problem(s) in {target}", "fix them and run `runbot lint` again")
    if not books:
        fail(f"no runbooks found in {target}", "runbooks are *.yaml files with name, match and steps")
    typer.echo(f"{len(books)} runbook(s) OK: {', '.join(b.name for b in books)}")


def read_alerts(path: Path) -> list[dict[str, Any]]:
    """An Alertmanager webhook payload (alerts[]) or a single alert object."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    except json.JSONDecodeError as exc:
        fail(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}")
    if isinstance(data, dict) and isinstance(data.get("alerts"), list):
        return [a for a in data["alerts"] if isinstance(a, dict)]
    if isinstance(data, dict) and "labels" in data:
        return [data]
    fail(f"{path}: expected an Alertmanager webhook payload with `alerts` or one alert with `labels`")


@app.command()
def match(alert_file: Path = typer.Argument(..., help="Alertmanager webhook payload or one alert (JSON).")) -> None:
    """Show which runbooks match an alert payload, and why the others do not."""
    from runbot.runbooks.catalog import Catalog
    from runbot.steps.registry import StepRegistry

    s = settings()
    catalog = Catalog(s.runbooks_dir, StepRegistry(s))
    for p in catalog.reload():
        typer.echo(f"warning: {p}", err=True)
    for alert in read_alerts(alert_file):
        labels = alert.get("labels") or {}
        typer.echo(f"alert {labels.get('alertname', '?')} {json.dumps(labels, sort_keys=True)}")
        for book, reasons in catalog.explain(labels):
            if not reasons:
                typer.echo(f"  MATCH     {book.name}")
            else:
                typer.echo(f"  no match  {book.name}: {'; '.join(reasons)}")


def _find_runbook(rt: Any, ref: str) -> Any:
    from runbot.runbooks.loader import load_file

    p = Path(ref)
    if p.suffix in (".yaml", ".yml") and p.exists():
        book, problems = load_file(p, rt.registry)
        if book is None:
            for pr in problems:
                typer.echo(str(pr), err=True)
            fail(f"{ref} has {len(problems)} problem(s)", "run `runbot lint` on it")
        return book
    book = rt.catalog.get(ref)
    if book is None:
        for pr in rt.catalog.problems:
            typer.echo(f"warning: runbook skipped: {pr}", err=True)
        known = ", ".join(b.name for b in rt.catalog.all()) or "none"
        fail(f"no runbook named {ref!r}", f"known runbooks: {known}")
    return book


def _parse_params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            fail(f"parameter {item!r} is not k=v", "example: --param error_threshold=0.1")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


@app.command("run")
def run_cmd(
    runbook: str = typer.Argument(..., help="Runbook name or path to a runbook file."),
    alert: Path | None = typer.Option(None, "--alert", help="Alert JSON the run is about."),
    param: list[str] = typer.Option([], "--param", "-p", help="k=v parameter (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Render every step; execute nothing."),
    detach: bool = typer.Option(False, "--detach", help="Only create the run; a running `runbot serve` executes it."),
) -> None:
    """Start a manual run and follow it (or --dry-run to see what it would do)."""
    from runbot.engine.dryrun import errors, plan

    params = _parse_params(param)
    alert_obj = read_alerts(alert)[0] if alert else None
    if dry_run:
        from runbot.runbooks.catalog import Catalog
        from runbot.steps.registry import StepRegistry

        s = settings()
        reg = StepRegistry(s)
        cat = Catalog(s.runbooks_dir, reg)
        cat.reload()
        book = _find_runbook(type("R", (), {"catalog": cat, "registry": reg})(), runbook)
        try:
            resolved = book.spec.resolve_params(params)
        except ValueError as exc:
            fail(str(exc))
        typer.echo(f"dry run of {book.name} (version {book.short_version}); nothing is executed")
        from runbot.engine.approvals import PolicyConfig

        entries = plan(book, alert_obj, resolved, reg, PolicyConfig.from_settings(s))
        for entry in entries:
            typer.echo(entry)
        if errors(entries):
            fail(f"{errors(entries)} template(s) fail with this alert and these parameters",
                 "fix the template, or pass the alert it expects with --alert")  # fmt: skip
        return
    rt = runtime(upgrade=True)  # a manual run executes here, so it may create the database like `serve`
    try:
        book = _find_runbook(rt, runbook)
        run_id = rt.engine.create_run(book, alert=alert_obj, params=params, requester=user(), manual=True)
        typer.echo(f"run {run_id} created ({book.name} {book.short_version})")
        if detach:
            return
        _follow(rt, run_id)
    finally:
        rt.close()


def _follow(rt: Any, run_id: str, max_sleep: float = 120.0) -> None:
    from runbot.domain import RunStatus
    from runbot.store.types import utcnow

    seen: set[tuple[str, int, str]] = set()
    while True:
        import asyncio

        status = asyncio.run(rt.engine.drive(run_id))
        detail = run_detail(rt.db, run_id)
        for st in detail["steps"]:
            k = (st["step_id"], st["attempt"], st["status"])
            if k not in seen:
                seen.add(k)
                note = st["error"] or st["summary"] or ""
                typer.echo(f"  {st['step_id']:<28} #{st['attempt']} {st['status']:<10} {note[:140]}")
        if status.terminal:
            run = detail["run"]
            typer.echo(f"run {run_id} {status.value}: {run['reason'] or ''}")
            if status is not RunStatus.SUCCEEDED:
                raise typer.Exit(1)
            return
        run = detail["run"]
        wake = run["wake_at"]
        pending = [a for a in detail["approvals"] if a["status"] == "pending"]
        if wake is None or pending:
            typer.echo(f"run {run_id} is waiting: {run['reason']}")
            for a in pending:
                typer.echo(f"  approve with: runbot runs approve {run_id} --step {a['step_id']} [--as ON_BEHALF_OF] "
                           f"(expires {_fmt_ts(a['expires_at'])}Z)")  # fmt: skip
            return
        delay = (wake - utcnow()).total_seconds()
        if delay > max_sleep:
            typer.echo(f"run {run_id} is parked until {_fmt_ts(wake)}Z ({run['reason']}); `runbot serve` continues it")
            return
        time.sleep(max(0.0, delay) + 0.01)


# ---- runs --------------------------------------------------------------------------------------------------------


def resolve_run_id(db: Any, ref: str) -> str:
    from sqlalchemy import select

    from runbot.engine.state import RUNS

    with db.read() as conn:
        ids = [r.id for r in conn.execute(select(RUNS.c.id).where(RUNS.c.id.like(f"{ref}%")).limit(3))]
    if not ids:
        fail(f"no run {ref!r}", "list runs with: runbot runs list")
    if len(ids) > 1:
        fail(f"run id prefix {ref!r} is ambiguous ({', '.join(ids[:2])}, ...)", "give more of the id")
    return str(ids[0])


def run_detail(db: Any, run_id: str) -> dict[str, Any]:
    from sqlalchemy import select

    from runbot.engine.state import APPROVALS, ARTIFACTS, RUNS, STEPS, VOTES

    with db.read() as conn:
        run = conn.execute(select(RUNS).where(RUNS.c.id == run_id)).mappings().first()
        if run is None:
            fail(f"no run {run_id!r}", "list runs with: runbot runs list")
        steps = [dict(r) for r in conn.execute(select(STEPS).where(STEPS.c.run_id == run_id).order_by(STEPS.c.id)).mappings()]
        approvals = [dict(r) for r in conn.execute(select(APPROVALS).where(APPROVALS.c.run_id == run_id)).mappings()]
        for a in approvals:
            a["votes"] = [dict(v) for v in conn.execute(select(VOTES).where(VOTES.c.approval_id == a["id"])).mappings()]
        arts = [dict(r) for r in conn.execute(select(ARTIFACTS.c.id, ARTIFACTS.c.step_id, ARTIFACTS.c.name,
                                                     ARTIFACTS.c.content_type).where(ARTIFACTS.c.run_id == run_id)).mappings()]  # fmt: skip
    return {"run": dict(run), "steps": steps, "approvals": approvals, "artifacts": arts}


RUN_FIELDS = ("id", "runbook_name", "status", "incident_id", "alert_id", "requester", "manual", "params",
              "created_at", "started_at", "finished_at", "reason")  # the stable JSON fields of a run


@runs_app.command("list")
def runs_list(
    status: str | None = typer.Option(None, help="Only runs with this status."),
    limit: int = typer.Option(30, help="How many (newest first)."),
    output: str = OUTPUT,
) -> None:
    """Recent runs."""
    from sqlalchemy import select

    from runbot.engine.state import RUNS

    db = database()
    try:
        q = select(RUNS).order_by(RUNS.c.created_at.desc()).limit(limit)
        if status:
            q = q.where(RUNS.c.status == status)
        with db.read() as conn:
            rows = conn.execute(q).mappings().all()
    finally:
        db.dispose()
    if output == "json":
        emit_json([{k: r[k] for k in RUN_FIELDS} for r in rows])
        return
    typer.echo(_table(["RUN", "RUNBOOK", "STATUS", "CREATED (UTC)", "REQUESTER", "REASON"],
                      [[r["id"], r["runbook_name"], r["status"], _fmt_ts(r["created_at"]), r["requester"],
                        (r["reason"] or "")[:60]] for r in rows]))  # fmt: skip


@runs_app.command("show")
def runs_show(run_ref: str = typer.Argument(..., help="Run id (a unique prefix is enough)."),
              output: str = OUTPUT) -> None:  # fmt: skip
    """One run: its steps with timings and errors, approvals, artifacts."""
    from runbot.adapters.slack.refusals import refusal_lines
    from runbot.engine.approvals import who_voted
    from runbot.secrets.leases import lease_lines, lease_rows

    db = database()
    try:
        run_id = resolve_run_id(db, run_ref)
        d = run_detail(db, run_id)
        leases = lease_lines(db, run_id)  # Vault leases: id, step, TTL, state; never a value
        refusals = refusal_lines(db, run_id)  # messages Slack refused (an approval request included)
        lease_data = [{k: r[k] for k in ("lease_id", "step_id", "ttl_seconds", "expires_at", "renewals")}
                      for r in lease_rows(db, run_id)] if output == "json" else []  # fmt: skip
    finally:
        db.dispose()
    if output == "json":
        emit_json({"run": {k: d["run"][k] for k in RUN_FIELDS},
                   "steps": [{k: st[k] for k in ("step_id", "step_type", "attempt", "status", "started_at",
                                                 "finished_at", "summary", "error")} for st in d["steps"]],
                   "approvals": [{"id": a["id"], "step_id": a["step_id"], "status": a["status"],
                                  "min_approvals": a["min_approvals"], "expires_at": a["expires_at"],
                                  "votes": [{"user_id": v["user_id"], "user_name": v["user_name"],
                                             "decision": v["decision"]} for v in a["votes"]]} for a in d["approvals"]],
                   "artifacts": d["artifacts"], "leases": lease_data})  # fmt: skip
        return
    r = d["run"]
    typer.echo(f"run {r['id']}  runbook {r['runbook_name']}  status {r['status']}")
    typer.echo(f"requester {r['requester']}  created {_fmt_ts(r['created_at'])}  started {_fmt_ts(r['started_at'])}"
               f"  finished {_fmt_ts(r['finished_at'])}")  # fmt: skip
    if r["incident_id"]:
        typer.echo(f"incident {r['incident_id']}  alert {r['alert_id']}")
    if r["reason"]:
        typer.echo(f"reason: {r['reason']}")
    if r["params"]:
        typer.echo(f"params: {json.dumps(r['params'], sort_keys=True)}")
    rows = []
    for st in d["steps"]:
        dur = ""
        if st["finished_at"] and st["started_at"]:
            dur = f"{(st['finished_at'] - st['started_at']).total_seconds() * 1000:.0f}ms"
        rows.append([st["step_id"], st["step_type"], st["attempt"], st["status"], _fmt_ts(st["started_at"]), dur,
                     (st["error"] or st["summary"] or "")[:100]])  # fmt: skip
    typer.echo("")
    typer.echo(_table(["STEP", "TYPE", "#", "STATUS", "STARTED", "TOOK", "RESULT / ERROR"], rows))
    for a in d["approvals"]:
        votes = ", ".join(f"{who_voted(v['user_id'], v['user_name'], v.get('on_behalf_of'))}:{v['decision']}"
                          for v in a["votes"]) or "none"  # fmt: skip
        typer.echo(f"\napproval {a['id']} for {a['step_id']}: {a['status']} (needs {a['min_approvals']}; votes {votes})")
    for art in d["artifacts"]:
        typer.echo(f"artifact {art['id']}: {art['step_id']}/{art['name']} ({art['content_type']})")
    for line in leases + refusals:
        typer.echo(line)


@runs_app.command("decide")
def runs_decide(
    run_ref: str = typer.Argument(...),
    step: str = typer.Argument(..., help="The in-doubt step id."),
    decision: str = typer.Argument(..., help="retry | skip | abort"),
) -> None:
    """Decide what happens to an in-doubt step (it may or may not have taken effect)."""
    from runbot.domain import Decision

    try:
        d = Decision(decision)
    except ValueError:
        fail(f"unknown decision {decision!r}", "use retry, skip or abort", code=2)
    rt = runtime()
    try:
        run_id = rt.engine.resolve_run_id(run_ref)
        typer.echo(rt.engine.decide(run_id, step, d, user()))
        typer.echo("a running `runbot serve` continues the run; or follow it here with: runbot runs resume " + run_id)
    finally:
        rt.close()


def host_user() -> str:
    """The OS user running this command, by the real uid (not $USER or $LOGNAME, which anyone can set)."""
    import os
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid{os.getuid()}"


def _vote(run_ref: str, step: str | None, as_user: str | None, approve: bool, reason: str | None) -> None:
    from runbot.engine.approvals import Identity
    from runbot.engine.control import CommandError

    rt = runtime()
    try:
        run_id = rt.engine.resolve_run_id(run_ref)
        pending = [a for a in rt.engine.pending_approvals(run_id) if step is None or a["step_id"] == step]
        if not pending:
            fail(f"run {run_id} has no pending approval" + (f" for step {step}" if step else ""))
        if len(pending) > 1:
            fail("several approvals are pending", "name one with --step " + " | ".join(a["step_id"] for a in pending))
        me = host_user()
        on_behalf = as_user if as_user and as_user != me else None
        try:  # the engine's approval policy decides: cli_users, self-approval, distinct people
            res = rt.engine.vote(pending[0]["id"], Identity.host(me), approve, user_name=me, reason=reason,
                                 actor=f"cli:{me}" + (f" for {on_behalf}" if on_behalf else "") + " (break-glass)",
                                 break_glass=True, on_behalf_of=on_behalf)  # fmt: skip
        except CommandError as exc:
            fail(f"refused: {exc}", "approvals are checked against the host user running runbot "
                 f"({me}); --as only records on whose behalf you act")  # fmt: skip
        message = res.message
        if message.endswith("; the step runs now") and not server_answers(rt.settings):
            message = message.removesuffix("; the step runs now") + (
                f"; no runbot server answers at {server_url(rt.settings)}, so the step runs when a server picks the "
                f"run up (or run it here: runbot runs resume {run_id})")  # fmt: skip
        typer.echo(message)
    finally:
        rt.close()


def server_url(s: Settings) -> str:
    host = "127.0.0.1" if s.host in ("0.0.0.0", "", "::") else s.host  # noqa: S104 - reading, not binding
    return f"http://{host}:{s.port}"


def server_answers(s: Settings) -> bool:
    """Is a `runbot serve` listening where this configuration says (so an approved step runs now)?"""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{server_url(s)}/healthz", timeout=0.5) as resp:  # noqa: S310 - http(s) only
            return bool(resp.status)
    except OSError as exc:
        return getattr(exc, "code", None) is not None  # an HTTP error status still means a server answered


@runs_app.command("approve")
def runs_approve(
    run_ref: str = typer.Argument(...),
    as_user: str | None = typer.Option(None, "--as", help="On whose behalf you approve (recorded; you are the host user)."),
    step: str | None = typer.Option(None, help="Step id, when several approvals are pending."),
) -> None:
    """Approve a pending remediation from the host (break-glass): allowed for the step's `cli_users`."""
    _vote(run_ref, step, as_user, True, None)


@runs_app.command("deny")
def runs_deny(
    run_ref: str = typer.Argument(...),
    as_user: str | None = typer.Option(None, "--as", help="On whose behalf you deny (recorded)."),
    step: str | None = typer.Option(None),
    reason: str | None = typer.Option(None),
) -> None:
    """Deny a pending remediation from the host."""
    _vote(run_ref, step, as_user, False, reason)


@runs_app.command("cancel")
def runs_cancel(run_ref: str = typer.Argument(...), reason: str = typer.Option("", help="Why.")) -> None:
    """Cancel a run (a step in progress finishes first)."""
    rt = runtime()
    try:
        typer.echo(rt.engine.cancel(rt.engine.resolve_run_id(run_ref), user(), reason))
    finally:
        rt.close()


@runs_app.command("resume")
def runs_resume(run_ref: str = typer.Argument(...)) -> None:
    """Advance a run in this process (when no server is running) and follow it."""
    rt = runtime()
    try:
        _follow(rt, rt.engine.resolve_run_id(run_ref))
    finally:
        rt.close()


# ---- audit, db, config, serve ------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(
    file: Path | None = typer.Option(None, "--file", help="Verify a JSONL export offline instead."),
    head: str | None = typer.Option(None, "--head", help="SEQ:HASH anchored earlier: the chain must still hold it."),
    head_file: Path | None = typer.Option(None, "--head-file", help="A saved head (`runbot audit head` output, a "
                                          "published head line, a head record or export): the chain must hold it."),
) -> None:
    """Check the hash chain; names the first edited, inserted or deleted event (and checks a saved head)."""
    from runbot.audit import log as audit
    from runbot.cli.audit_export import anchors_of, check_anchors

    anchors = anchors_of(head, head_file)
    if file is not None:
        from runbot.audit.export import verify_export_file  # type: ignore[import-not-found,unused-ignore]

        result = verify_export_file(file)
        if result.ok:
            check_anchors(anchors, result, export=file)
    else:
        rt = runtime()
        try:
            with rt.db.read() as conn:
                result = audit.verify_db(conn)
                if result.ok:
                    check_anchors(anchors, result, conn=conn)
        finally:
            rt.close()
    if not result.ok:
        fail(f"audit chain BROKEN at event {result.broken_seq}: {result.problem}",
             f"{result.count} event(s) verified before it")  # fmt: skip
    typer.echo(f"audit chain OK: {result.count} event(s), head {result.head_seq} {result.head_hash}"
               + "".join(f"; anchor {a.seq} matches" for a in anchors))  # fmt: skip


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply schema migrations (serve does this on start)."""
    from runbot.store.db import Database

    s = settings()
    db = Database(s.effective_database_url)
    try:
        db.upgrade()
        typer.echo(f"database at revision {db.current_revision()}")
    finally:
        db.dispose()


@config_app.command("show")
def config_show() -> None:
    """Print the effective configuration, secrets masked."""
    typer.echo(json.dumps(settings().masked(), indent=2, sort_keys=True, default=str))


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Listen address (default from config)."),
    port: int | None = typer.Option(None, help="Listen port (default from config)."),
) -> None:
    """Run the bot: HTTP endpoints and the engine."""
    import structlog
    import uvicorn

    from runbot.app import build_runtime, create_app
    from runbot.logging_setup import configure_process_logging, uvicorn_log_level
    from runbot.observability import configure_logging

    s = settings()
    configure_process_logging(s.log_level, s.log_format)  # uvicorn, libraries, warnings, tracebacks: one stream
    configure_logging(s.log_level, s.log_format)  # before the runtime, so its start (migrations) is logged
    check_port_free(host or s.host, port or s.port)
    rt = build_runtime(s)
    say = structlog.get_logger("runbot.serve")
    for p in rt.catalog.problems:
        say.warning("runbook skipped", problem=str(p))
    say.info("runbot serving", url=f"http://{host or s.host}:{port or s.port}", runbooks=len(rt.catalog.all()))
    uvicorn.run(create_app(rt), host=host or s.host, port=port or s.port, log_level=uvicorn_log_level(s.log_level),
                log_config=None, access_log=True)


def check_port_free(host: str, port: int) -> None:
    """Say that the port is taken before anything says "serving" (uvicorn would only log it later)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                fail(f"{host}:{port} is already in use (another runbot serve?)",
                     "stop the other process, or choose another port with --port or RUNBOT_PORT")  # fmt: skip
            fail(f"cannot listen on {host}:{port}: {exc.strerror}", "check --host / RUNBOT_HOST")


def _register_modules() -> None:
    import importlib

    for name in CLI_MODULES:
        importlib.import_module(name).register(app)


def _usage_error(exc: BaseException) -> bool:
    """Click's UsageError, whether from click itself or the copy newer typer versions carry."""
    return any(cls.__name__ == "UsageError" for cls in type(exc).__mro__)


def main() -> None:
    _register_modules()
    argv = sys.argv[1:]
    if "--debug" in argv[: argv.index("--") if "--" in argv else len(argv)]:
        STATE["debug"] = True  # --debug anywhere: before or after the sub-command
        argv.remove("--debug")
    argv = [a for x in argv for a in (("--output", "json") if x == "--json" else (x,))]  # --json: short form
    try:
        rc = app(args=argv, prog_name="runbot", standalone_mode=False)  # returns (not raises) typer.Exit's code
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except CliError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            typer.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        if _usage_error(exc):
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError":  # `runbot runs`: the group's help, as a usage error
                if ctx is not None:
                    typer.echo(ctx.get_help(), err=True)
                sys.exit(2)
            typer.echo(f"error: {exc.format_message()}", err=True)  # type: ignore[attr-defined]
            typer.echo(f"hint: see `{ctx.command_path if ctx is not None else 'runbot'} --help`", err=True)
            sys.exit(2)
        if hasattr(exc, "exit_code") and hasattr(exc, "format_message"):  # other click exceptions
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(int(exc.exit_code))
        if STATE["debug"]:
            traceback.print_exc()
        typer.echo(f"error: {_describe(exc)}", err=True)
        typer.echo("hint: run again with --debug for the full traceback", err=True)
        sys.exit(1)


def _describe(exc: Exception) -> str:
    from runbot.engine.control import CommandError
    from runbot.runbooks.loader import RunbookError

    if isinstance(exc, CommandError | RunbookError):
        return str(exc)
    name = type(exc).__name__
    if name == "OperationalError":
        return f"database error: {str(exc).splitlines()[0]}"
    return f"{name}: {exc}"


if __name__ == "__main__":
    main()
