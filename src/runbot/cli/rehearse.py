"""`runbot test`: rehearse runbooks against recorded responses, so teams unit-test them in CI.

    runbot test runbooks/rehearsals/                         # every *.rehearsal.yaml below (CI)
    runbot test runbooks/rehearsals/disk.rehearsal.yaml      # one rehearsal file (it names runbook and alert)
    runbot test RUNBOOK --alert ALERT.json --responses RESPONSES.yaml   # a runbook (name or file) explicitly

Exit status 0 when every rehearsal passed, 1 otherwise (2 for usage errors).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from runbot.rehearsal import Rehearsal, Result


TARGET_HELP = ("A rehearsal file (*.rehearsal.yaml), a directory of them, or a runbook (name or file) to rehearse "
               "with --responses.")


def register(app: typer.Typer) -> None:
    app.command("test")(rehearse_cmd)


def rehearse_cmd(
    target: str = typer.Argument(..., help=TARGET_HELP),
    alert: Path | None = typer.Option(None, "--alert", help="Alert JSON (Alertmanager payload or one alert); "
                                      "replaces the rehearsal's `alert`."),
    responses: Path | None = typer.Option(None, "--responses", "-r", help="Rehearsal file: recorded responses, "
                                          "approvals, secrets, expectations (with a runbook TARGET)."),
    param: list[str] = typer.Option([], "--param", "-p", help="k=v parameter (repeatable); wins over the file's."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print full step outputs and Prometheus queries."),
    artifacts: Path | None = typer.Option(None, "--artifacts", help="Write graphs and other artifacts to this directory."),
) -> None:
    """Rehearse runbooks on the real engine with recorded Prometheus, HTTP and command answers (no live calls)."""
    from runbot.cli.main import STATE, _parse_params, fail, settings
    from runbot.observability import configure_logging
    from runbot.rehearsal import (  # the engine and plugins load only when this command runs
        Rehearsal,
        RehearsalFileError,
        find_rehearsals,
        is_rehearsal_file,
        load_rehearsal,
        rehearse,
        render,
    )

    params = _parse_params(param)
    path = Path(target)
    jobs: list[tuple[Rehearsal, str | None]] = []
    try:
        if path.is_dir():
            if alert or responses:
                fail("--alert and --responses go with one runbook, not a directory", code=2)
            files = find_rehearsals(path)
            if not files:
                fail(f"no *.rehearsal.yaml files under {path}", "see docs: examples and rehearsals")
            jobs = [(load_rehearsal(f), None) for f in files]
        elif path.is_file() and is_rehearsal_file(path):
            if responses:
                fail(f"{path} is already a rehearsal file; --responses goes with a runbook", code=2)
            jobs = [(load_rehearsal(path), None)]
        else:
            spec = load_rehearsal(responses) if responses else Rehearsal()
            jobs = [(spec, target)]
    except RehearsalFileError as exc:
        fail(str(exc))
    base = settings()
    if not STATE["debug"]:  # the report shows every step; engine and `log` step lines would only repeat it
        configure_logging("CRITICAL", base.log_format)
    results: list[Result] = []
    for spec, runbook in jobs:
        result = rehearse(spec, base, runbook=runbook, alert=alert, params=params)
        if runbook is not None and spec.source is None:
            result.label = runbook
        results.append(result)
        for line in render(result, verbose=verbose):
            typer.echo(line)
        if artifacts is not None:
            _save(artifacts, result)
        typer.echo("")
    failed = [r for r in results if not r.passed]
    if len(results) > 1:
        typer.echo(f"{len(results)} rehearsal(s): {len(results) - len(failed)} passed, {len(failed)} failed")
        for r in failed:
            typer.echo(f"  failed: {r.label}")
    if failed:
        raise typer.Exit(1)


def _save(directory: Path, result: Result) -> None:
    if not result.artifacts:
        return
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(result.label).name.removesuffix(".yaml")).strip("-") or "rehearsal"
    out = directory / stem
    out.mkdir(parents=True, exist_ok=True)
    for step_id, name, data in result.artifacts:
        target = out / f"{step_id}-{Path(name).name}"
        target.write_bytes(data)
        typer.echo(f"artifact {target}")
