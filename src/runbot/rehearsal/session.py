"""One rehearsal: the real engine, on a throwaway SQLite database, with the outside world recorded.

Why the real engine rather than a simulator: a rehearsal should fail exactly where production would,
including template errors, `when` conditions, retries, approvals, verification windows and compensation.
Only three things differ from a live run: plugins answer from recordings (runbot.rehearsal.recordings),
waits are skipped by moving the run's clock (runbot.rehearsal.driver), and secrets are fake values.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from runbot.engine.control import CommandError
from runbot.engine.ports import SecretError
from runbot.engine.runner import Engine
from runbot.engine.state import ARTIFACTS
from runbot.redaction import Redactor
from runbot.rehearsal.driver import drive_run
from runbot.rehearsal.plugins import RehearsalRegistry
from runbot.rehearsal.recordings import Recordings, keys_for
from runbot.rehearsal.report import Result, check, timeline
from runbot.rehearsal.spec import Rehearsal, RehearsalFileError, resolve_alert
from runbot.runbooks.loader import LoadedRunbook, load_file, runbook_files
from runbot.runbooks.match import explain
from runbot.settings import Settings
from runbot.store.db import Database

FAKE_PROMETHEUS = "http://{name}.prometheus.rehearsal.invalid"  # never contacted: answers are recorded
REQUESTER = "rehearsal"


class RehearsalSecrets:
    """secret() for rehearsals: the file's fake values, else a generated one; every value is redacted."""

    def __init__(self, given: dict[str, str], redactor: Redactor) -> None:
        self.given = given
        self.redactor = redactor
        self.used: set[str] = set()
        for v in given.values():
            redactor.register(v)

    def fetch(self, ref: str) -> str:
        if not ref:
            raise SecretError(ref, "empty reference")
        value = self.given.get(ref) or "fake-" + hashlib.sha256(ref.encode()).hexdigest()[:16]
        self.redactor.register(value)
        self.used.add(ref)
        return value


def locate_runbook(ref: str, base_dir: Path, runbooks_dir: Path) -> Path:
    """A runbook file by path (relative to base_dir, then as given) or by `name:` in runbooks_dir."""
    for candidate in (base_dir / ref, Path(ref)):
        if candidate.is_file():
            return candidate
    for path in runbook_files(runbooks_dir):
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(raw, dict) and raw.get("name") == ref:
            return path
    raise RehearsalFileError(f"runbook {ref!r}: no such file, and no runbook with that name in {runbooks_dir}")


def _scan(raw: Any) -> tuple[set[str], set[str], set[str]]:
    """Literal command programs (local, ssh) and Prometheus server names the runbook uses."""
    local: set[str] = set()
    remote: set[str] = set()
    servers: set[str] = set()

    def walk(steps: Any) -> None:
        for step in steps if isinstance(steps, list) else []:
            if not isinstance(step, dict):
                continue
            for s in (step, step.get("verify")):
                if not isinstance(s, dict):
                    continue
                with_: dict[str, Any] = s["with"] if isinstance(s.get("with"), dict) else {}
                if s.get("type") == "command" and isinstance(with_.get("argv"), list) and with_["argv"]:
                    (remote if with_.get("host") else local).add(str(with_["argv"][0]))
                if str(s.get("type", "")).startswith("prometheus.") and isinstance(with_.get("server"), str):
                    servers.add(with_["server"])
            walk(step.get("on_failure"))

    walk(raw.get("steps") if isinstance(raw, dict) else None)
    return local, remote, servers


def rehearsal_settings(base: Settings, workdir: Path, runbook_source: str) -> Settings:
    """The operator's settings for step behaviour, with everything that could reach out neutralised.

    Outbound policies are widened (no request leaves the process, so they cannot be exercised here;
    `runbot lint` with the real configuration checks them) and Prometheus servers become fake names.
    """
    try:
        raw = yaml.safe_load(runbook_source)
    except yaml.YAMLError:
        raw = None
    local, remote, servers = _scan(raw)
    names = (set(base.prometheus_servers) | servers) - {"default"}
    fake = {n: Settings.PrometheusServer(url=FAKE_PROMETHEUS.format(name=n)) for n in sorted(names) if "{" not in n}
    return base.model_copy(update={
        "data_dir": workdir, "database_url": f"sqlite:///{workdir / 'rehearsal.db'}",
        "runbooks_dir": workdir / "runbooks", "instance_id": REQUESTER, "engine_workers": 1,
        "prometheus_url": FAKE_PROMETHEUS.format(name="default"), "prometheus_servers": fake,
        "prometheus_username": None, "prometheus_password": None, "prometheus_bearer_token": None,
        "prometheus_ca_file": None, "prometheus_client_cert": None, "prometheus_client_key": None,
        "http_allow_hosts": ["*"], "http_ca_file": None,
        "command_allow": sorted(set(base.command_allow) | local),
        "command_ssh_allow": sorted(set(base.command_ssh_allow) | remote), "command_ssh_hosts": ["*"],
    })  # fmt: skip


def _step_types(book: LoadedRunbook) -> dict[str, str]:
    types = {}
    for s in book.spec.all_steps():
        types[s.sid] = s.type
        if s.verify is not None:
            types[f"{s.sid}__verify"] = s.verify.type
    return types


def _check_inputs(spec: Rehearsal, book: LoadedRunbook) -> list[str]:
    types = _step_types(book)
    known = ", ".join(types)
    problems = []
    for sid, entries in spec.responses.items():
        if sid not in types:
            problems.append(f"responses.{sid}: {book.name} has no step {sid!r} (steps: {known})")
            continue
        allowed = keys_for(types[sid])
        for i, entry in enumerate(entries if isinstance(entries, list) else [entries]):
            bad = sorted(set(entry) - allowed)
            if bad:
                where = f"responses.{sid}" + (f"[{i}]" if isinstance(entries, list) else "")
                problems.append(f"{where}: unknown key(s) {', '.join(bad)} for a {types[sid]} step "
                                f"(use {', '.join(sorted(allowed))})")  # fmt: skip
    gated = {s.sid for s in book.spec.all_steps() if s.approval is not None}
    for sid in spec.approvals:
        if sid not in gated:
            problems.append(f"approvals.{sid}: {book.name} has no step {sid!r} with an approval "
                            f"(steps with one: {', '.join(sorted(gated)) or 'none'})")  # fmt: skip
    return problems


def _describe_alert(alert: dict[str, Any]) -> str:
    labels = dict(alert.get("labels") or {})
    name = labels.pop("alertname", "?")
    return f"{name} {{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def rehearse(spec: Rehearsal, base: Settings, *, runbook: str | None = None, alert: Path | None = None,
             params: dict[str, Any] | None = None) -> Result:  # fmt: skip
    """Run the rehearsal; every problem (setup, lint, expectation) ends up in `Result.problems`."""
    result = Result(spec.label)
    try:
        ref = runbook or spec.runbook
        if ref is None:
            raise RehearsalFileError(f"{spec.label}: name the runbook (`runbook:` in the file, or on the command line)")
        path = locate_runbook(ref, spec.base_dir if runbook is None else Path.cwd(), base.runbooks_dir)
        alert_obj = resolve_alert(str(alert), Path.cwd()) if alert is not None else spec.load_alert()
    except RehearsalFileError as exc:
        result.problems.append(str(exc))
        return result
    result.runbook_path = os.path.normpath(path)
    with tempfile.TemporaryDirectory(prefix="runbot-rehearsal-") as tmp:
        _run(spec, base, path, alert_obj, {**spec.params, **(params or {})}, Path(tmp), result)
    return result


def _run(spec: Rehearsal, base: Settings, path: Path, alert: dict[str, Any] | None, params: dict[str, Any],
         workdir: Path, result: Result) -> None:  # fmt: skip
    settings = rehearsal_settings(base, workdir, path.read_text())
    registry = RehearsalRegistry(settings)
    book, lint = load_file(path, registry)
    if book is None:
        result.problems += [f"lint: {p}" for p in lint]
        return
    result.runbook, result.version = book.name, book.short_version
    if alert is not None:
        result.alert = _describe_alert(alert)
        reasons = explain(book.spec.matchers(), {k: str(v) for k, v in alert["labels"].items()}) if book.spec.match else []
        if reasons and (spec.expect is None or spec.expect.match):
            result.problems.append("the alert does not match the runbook: " + "; ".join(reasons))
    result.problems += _check_inputs(spec, book)
    if result.problems:
        return
    redactor = Redactor()
    secrets = RehearsalSecrets(spec.secrets, redactor)
    recordings = Recordings(spec.responses, redactor)
    db = Database(settings.effective_database_url)
    try:
        db.upgrade()
        engine = Engine(settings, db, registry, secrets, owner=REQUESTER)
        engine.rehearsal = recordings
        try:
            run_id = engine.create_run(book, alert=alert, params=params, requester=REQUESTER, manual=alert is None)
        except CommandError as exc:
            result.problems.append(f"cannot start the run: {exc}")
            return
        drive = drive_run(engine, run_id, spec.approvals)
        result.lines, run = timeline(db, run_id, recordings.calls, redactor)
        result.status, result.reason = drive.status.value, redactor.redact(run["reason"] or "")
        result.skipped_seconds = drive.skipped_seconds
        with db.read() as conn:
            result.artifacts = [(r.step_id, r.name, r.data) for r in conn.execute(
                select(ARTIFACTS.c.step_id, ARTIFACTS.c.name, ARTIFACTS.c.data).where(ARTIFACTS.c.run_id == run_id))]  # fmt: skip
    finally:
        db.dispose()
    if drive.stuck:
        result.reason = f"stopped: {redactor.redact(drive.stuck)}"
    unused = recordings.unused()
    if unused:
        result.notes.append(f"recorded but never asked for: {', '.join(unused)}")
    if secrets.used:
        result.notes.append(f"secrets used (fake values, shown as ****): {', '.join(sorted(secrets.used))}")
    expect = spec.expect
    result.checked = expect is not None
    if expect is not None:
        result.problems += check(expect, result, redactor)
        if drive.stuck and expect.status is None:
            result.problems.append(f"the run did not finish: {drive.stuck}")
    elif result.status != "succeeded":
        result.problems.append(f"the run ended {result.status}, not succeeded: {result.reason}")
