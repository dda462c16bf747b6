"""CLI: `runbot audit export|head|summary`, `runbot postmortem INCIDENT`, `runbot retention apply`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from runbot.cli.main import audit_app, fail, runtime

retention_app = typer.Typer(no_args_is_help=True, help="Delete old runs, alerts (and audit events, if configured).")


def _when(value: str | None, name: str) -> Any:
    from runbot.audit.records import parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        fail(f"--{name}: {exc}")


def _write(path: Path | None, chunks: Any) -> None:
    """To stdout, or to a file that appears complete or not at all (written aside, then renamed)."""
    if path is None:
        for chunk in chunks:
            sys.stdout.write(chunk)
        sys.stdout.flush()
        return
    part = path.with_name(path.name + ".partial")
    try:
        with part.open("w", encoding="utf-8", newline="") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(part, path)
    except OSError as exc:
        part.unlink(missing_ok=True)
        fail(f"cannot write {path}: {exc.strerror}")


def audit_export(
    since: str | None = typer.Option(None, help="From this time: ISO 8601 (UTC if no zone) or a duration ago (24h, 7d)."),
    until: str | None = typer.Option(None, help="Before this time (same forms as --since)."),
    incident: str | None = typer.Option(None, help="Only this incident's events."),
    run: str | None = typer.Option(None, help="Only this run's events."),
    runbook: str | None = typer.Option(None, help="Only events of this runbook."),
    actor: str | None = typer.Option(None, help="Only events whose actor contains this (Slack user id, cli:user, system)."),
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl (verifiable) | csv | md | html"),
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write (default: standard output)."),
) -> None:
    """Export audit events, streamed; JSONL carries the hash chain and a head record for offline verification."""
    from runbot.audit.export import FORMATS, Tally, export_chunks
    from runbot.audit.records import ExportFilter

    if fmt not in FORMATS:
        fail(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}", code=2)
    flt = ExportFilter(since=_when(since, "since"), until=_when(until, "until"), incident_id=incident, run_id=run,
                       runbook=runbook, actor=actor)  # fmt: skip
    rt = runtime()
    try:
        tally = Tally()
        _write(output, export_chunks(rt.db, fmt, flt, tally=tally))
        if output is not None:
            typer.echo(f"exported {tally.count} event(s) to {output}", err=True)
            if fmt == "jsonl":
                typer.echo(f"verify offline with: runbot audit verify --file {output}", err=True)
    finally:
        rt.close()


def _anchor(check: str) -> Any:
    from runbot.audit.anchor import AnchorError, parse_anchor

    try:
        return parse_anchor(check)
    except AnchorError as exc:
        fail(str(exc), "use the output of `runbot audit head`, e.g. 1234:9f86d0...", code=2)


def anchors_of(head: str | None, head_file: Path | None) -> list[Any]:
    """The anchors given to `audit verify` (--head and/or --head-file), read before any database work."""
    from runbot.audit.anchor import AnchorError, read_anchor_file

    out = [_anchor(head)] if head is not None else []
    if head_file is not None:
        try:
            out.append(read_anchor_file(head_file))
        except AnchorError as exc:
            fail(str(exc), "write it with `runbot audit head > FILE`, or pass --head SEQ:HASH", code=2)
    return out


def check_anchors(anchors: list[Any], result: Any, *, conn: Any = None, export: Path | None = None) -> None:
    """Fail (exit 1, one line and a hint) unless the verified chain or export holds every anchor."""
    from runbot.audit import anchor as A

    for a in anchors:
        problem = A.check_export(export, a, result) if export is not None else A.check_db(conn, a, result)
        if problem is not None:
            fail(f"audit chain does not hold the anchored head {a.seq}: {problem}",
                 "the anchor came from outside the database: investigate before trusting this chain")  # fmt: skip


def audit_head(
    check: str | None = typer.Option(None, help="SEQ:HASH anchored earlier: check the chain still contains it."),
    file: Path | None = typer.Option(None, "--file", help="With --check: check a JSONL export instead of the database."),
) -> None:
    """Print the chain head (seq and hash) to anchor elsewhere, or check an anchored one."""
    from sqlalchemy import func, select

    from runbot.audit import anchor as A
    from runbot.audit import log as audit
    from runbot.audit.records import chain_head

    if check is not None and file is not None:
        from runbot.audit.export import verify_export_file

        anchor = _anchor(check)
        result = verify_export_file(file)
        if not result.ok:
            fail(f"{file} does not verify: {result.problem}")
        problem = A.check_export(file, anchor, result)
        if problem is not None:
            fail(problem)
        typer.echo(f"anchor {anchor.seq} matches {file}")
        return
    rt = runtime()
    try:
        if check is None:
            seq, digest = chain_head(rt.db)
            typer.echo(f"{seq} {digest}")
            return
        anchor = _anchor(check)
        seq, digest = chain_head(rt.db)
        with rt.db.read() as conn:  # a look-up, not a walk: `runbot audit verify --head` also verifies the chain
            first = conn.execute(select(func.min(audit.EVENTS.c.seq))).scalar()
            kept_from = first - 1 if first is not None and first > 1 else None
            problem = A.check_db(conn, anchor, audit.VerifyResult(True, 0, seq, digest, anchor_seq=kept_from))
        if problem is not None:
            fail(problem)
        typer.echo(f"anchor {anchor.seq} matches")
    finally:
        rt.close()


def audit_summary(
    run: str | None = typer.Option(None, help="One run."),
    incident: str | None = typer.Option(None, help="One incident."),
    since: str | None = typer.Option(None, help="Window start (default: the last 24 hours)."),
) -> None:
    """A short digest: counts, decisions with approvers, failures, latest events (as /runbot audit shows)."""
    from runbot.audit.summary import summarize

    rt = runtime()
    try:
        run_id = rt.engine.resolve_run_id(run) if run else None
        typer.echo(summarize(rt.db, run_id, incident_id=incident, since=_when(since, "since")))
    finally:
        rt.close()


def postmortem(
    incident: str = typer.Argument(..., help="Incident id."),
    fmt: str = typer.Option("md", "--format", "-f", help="md | html"),
    template: Path | None = typer.Option(None, "--template", "-t", help="Jinja2 template file (overrides team templates)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write (default: standard output)."),
    assets_dir: Path | None = typer.Option(None, "--assets-dir", help="Write graphs here and link them (md) instead of embedding."),
    no_images: bool = typer.Option(False, "--no-images", help="Name graphs instead of embedding them."),
) -> None:
    """Render the postmortem skeleton of an incident: times, timeline, diagnostics, remediations, sections to fill."""
    from runbot.postmortem import UnknownIncident, render_postmortem

    if fmt not in ("md", "html"):
        fail(f"unknown format {fmt!r}", "use md or html", code=2)
    rt = runtime()
    try:
        images = "omit" if no_images else ("link" if assets_dir is not None else "embed")
        try:
            doc = render_postmortem(rt.db, incident, fmt, template, templates_dir=rt.settings.postmortem_templates_dir,
                                    images=images, assets_dir=assets_dir)  # type: ignore[arg-type]  # fmt: skip
        except UnknownIncident as exc:
            fail(str(exc.args[0]), "list incidents with: runbot incidents list")
        except FileNotFoundError as exc:
            fail(str(exc))
        _write(output, iter([doc]))
        if output is not None:
            typer.echo(f"postmortem for {incident} written to {output}", err=True)
    finally:
        rt.close()


def retention_apply(dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be deleted; delete nothing.")) -> None:
    """Apply RUNBOT_RETENTION_* now (`serve` also does it periodically); every deletion is audited."""
    from runbot.audit.retention import apply_retention
    from runbot.cli.main import user

    rt = runtime()
    try:
        s = rt.settings
        if not (s.retention_runs_days or s.retention_alerts_days or s.retention_audit_days):
            typer.echo("no retention configured: everything is kept "
                       "(set RUNBOT_RETENTION_RUNS_DAYS, RUNBOT_RETENTION_ALERTS_DAYS, RUNBOT_RETENTION_AUDIT_DAYS)")  # fmt: skip
            return
        try:
            report = apply_retention(rt.db, s, actor=user(), dry_run=dry_run)
        except RuntimeError as exc:
            fail(str(exc), "run `runbot audit verify` and investigate before deleting anything")
        for line in report.lines():
            typer.echo(line)
    finally:
        rt.close()


def register(app: typer.Typer) -> None:
    if any(c.name == "export" for c in audit_app.registered_commands):
        return  # main() may run more than once in one process (tests)
    audit_app.command("export")(audit_export)
    audit_app.command("head")(audit_head)
    audit_app.command("summary")(audit_summary)
    app.command("postmortem")(postmortem)
    retention_app.command("apply")(retention_apply)
    app.add_typer(retention_app, name="retention")
