"""The `runbot` command. Errors are one clear line plus a hint; `--debug` shows the traceback."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import typer

from runbot.settings import Settings, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="runbot: incident runbook automation.")
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


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Config file (YAML or TOML).", envvar="RUNBOT_CONFIG_FILE"),
) -> None:
    STATE["debug"] = debug
    STATE["config"] = config


def settings() -> Settings:
    from runbot.observability import configure_logging

    s = load_settings(config_file=STATE["config"])
    configure_logging("WARNING" if not STATE["debug"] else "DEBUG", s.log_format)
    return s


def runtime(upgrade: bool = True) -> Any:
    from runbot.app import build_runtime

    return build_runtime(settings(), upgrade=upgrade)


def user() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli:unknown"


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
    from runbot.engine.dryrun import plan

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
        for entry in plan(book, alert_obj, resolved, reg):
            typer.echo(entry)
        return
    rt = runtime()
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
        status = asyncio.run(rt.engine.drive(run_id))
        detail = run_detail(rt, run_id)
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
                typer.echo(f"  approve with: runbot runs approve {run_id} --step {a['step_id']} --as YOUR_NAME "
                           f"(expires {_fmt_ts(a['expires_at'])}Z)")  # fmt: skip
            return
        delay = (wake - utcnow()).total_seconds()
        if delay > max_sleep:
            typer.echo(f"run {run_id} is parked until {_fmt_ts(wake)}Z ({run['reason']}); `runbot serve` continues it")
            return
        time.sleep(max(0.0, delay) + 0.01)


# ---- runs --------------------------------------------------------------------------------------------------------


def run_detail(rt: Any, run_id: str) -> dict[str, Any]:
    from sqlalchemy import select

    from runbot.engine.state import APPROVALS, ARTIFACTS, RUNS, STEPS, VOTES

    with rt.db.read() as conn:
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


@runs_app.command("list")
def runs_list(
    status: str | None = typer.Option(None, help="Only runs with this status."),
    limit: int = typer.Option(30, help="How many (newest first)."),
) -> None:
    """Recent runs."""
    from sqlalchemy import select

    from runbot.engine.state import RUNS

    rt = runtime()
    try:
        q = select(RUNS).order_by(RUNS.c.created_at.desc()).limit(limit)
        if status:
            q = q.where(RUNS.c.status == status)
        with rt.db.read() as conn:
            rows = conn.execute(q).mappings().all()
        typer.echo(_table(["RUN", "RUNBOOK", "STATUS", "CREATED (UTC)", "REQUESTER", "REASON"],
                          [[r["id"], r["runbook_name"], r["status"], _fmt_ts(r["created_at"]), r["requester"],
                            (r["reason"] or "")[:60]] for r in rows]))  # fmt: skip
    finally:
        rt.close()


@runs_app.command("show")
def runs_show(run_ref: str = typer.Argument(..., help="Run id (a unique prefix is enough).")) -> None:
    """One run: its steps with timings and errors, approvals, artifacts."""
    rt = runtime()
    try:
        run_id = rt.engine.resolve_run_id(run_ref)
        d = run_detail(rt, run_id)
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
            votes = ", ".join(f"{v['user_name'] or v['user_id']}:{v['decision']}" for v in a["votes"]) or "none"
            typer.echo(f"\napproval {a['id']} for {a['step_id']}: {a['status']} (needs {a['min_approvals']}; votes {votes})")
        for art in d["artifacts"]:
            typer.echo(f"artifact {art['id']}: {art['step_id']}/{art['name']} ({art['content_type']})")
        from runbot.secrets.leases import lease_lines

        for line in lease_lines(rt.db, run_id):  # Vault leases: id, step, TTL, state; never a value
            typer.echo(line)
    finally:
        rt.close()


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


def _vote(run_ref: str, step: str | None, as_user: str, approve: bool, reason: str | None) -> None:
    rt = runtime()
    try:
        run_id = rt.engine.resolve_run_id(run_ref)
        pending = [a for a in rt.engine.pending_approvals(run_id) if step is None or a["step_id"] == step]
        if not pending:
            fail(f"run {run_id} has no pending approval" + (f" for step {step}" if step else ""))
        if len(pending) > 1:
            fail("several approvals are pending", "name one with --step " + " | ".join(a["step_id"] for a in pending))
        res = rt.engine.vote(pending[0]["id"], f"cli:{as_user}", approve, user_name=as_user, reason=reason,
                             actor=f"{user()} as {as_user} (break-glass)", break_glass=True)  # fmt: skip
        typer.echo(res.message)
    finally:
        rt.close()


@runs_app.command("approve")
def runs_approve(
    run_ref: str = typer.Argument(...),
    as_user: str = typer.Option(..., "--as", help="Who approves (audited as break-glass)."),
    step: str | None = typer.Option(None, help="Step id, when several approvals are pending."),
) -> None:
    """Approve a pending remediation from the host (break-glass when Slack is unavailable)."""
    _vote(run_ref, step, as_user, True, None)


@runs_app.command("deny")
def runs_deny(
    run_ref: str = typer.Argument(...),
    as_user: str = typer.Option(..., "--as", help="Who denies (audited)."),
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
def audit_verify(file: Path | None = typer.Option(None, "--file", help="Verify a JSONL export offline instead.")) -> None:
    """Check the hash chain; names the first edited, inserted or deleted event."""
    from runbot.audit import log as audit

    if file is not None:
        from runbot.audit.export import verify_export_file  # type: ignore[import-not-found,unused-ignore]

        result = verify_export_file(file)
    else:
        rt = runtime()
        try:
            with rt.db.read() as conn:
                result = audit.verify_db(conn)
        finally:
            rt.close()
    if not result.ok:
        fail(f"audit chain BROKEN at event {result.broken_seq}: {result.problem}",
             f"{result.count} event(s) verified before it")  # fmt: skip
    typer.echo(f"audit chain OK: {result.count} event(s), head {result.head_seq} {result.head_hash}")


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
    import uvicorn

    from runbot.app import create_app
    from runbot.observability import configure_logging

    s = settings()
    configure_logging(s.log_level, s.log_format)
    rt = runtime()
    for p in rt.catalog.problems:
        typer.echo(f"warning: runbook skipped: {p}", err=True)
    typer.echo(f"runbot serving on http://{host or s.host}:{port or s.port} with {len(rt.catalog.all())} runbook(s)", err=True)
    uvicorn.run(create_app(rt), host=host or s.host, port=port or s.port, log_level="warning", access_log=False)


def _register_modules() -> None:
    import importlib

    for name in CLI_MODULES:
        importlib.import_module(name).register(app)


def main() -> None:
    _register_modules()
    try:
        rc = app(standalone_mode=False)  # click returns (not raises) a typer.Exit's code in this mode
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
        import click

        if isinstance(exc, click.exceptions.UsageError):
            typer.echo(f"error: {exc.format_message()}", err=True)
            if exc.ctx is not None:
                typer.echo(f"hint: see `{exc.ctx.command_path} --help`", err=True)
            sys.exit(2)
        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
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
