"""The rehearsal file: which runbook, which alert, what the outside world answers, and what must happen.

A rehearsal is to a runbook what a unit test is to a function. It is YAML, kept next to the runbook in git
and run in CI with `runbot test`:

    runbook: ../api-high-error-rate.yaml        # path (relative to this file) or a runbook name
    alert: ../examples/high-error-rate.json     # Alertmanager payload or one alert: path or inline
    params: {error_threshold: 0.05}
    responses:                                  # step id -> recorded answer, or a list (one per call)
      error_ratio: {value: 0.12}
      rollback_deploy: {status: 202, json: {id: rb-1}}
    approvals: {rollback_deploy: approve}       # approve | deny | timeout
    secrets: {"kv/deployer#token": fake-token}  # optional; other refs get generated fake values
    expect:
      status: succeeded
      steps: [[error_ratio, succeeded], [rollback_deploy, succeeded]]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

REHEARSAL_SUFFIXES = (".rehearsal.yaml", ".rehearsal.yml")
Decision = Literal["approve", "deny", "timeout"]


class RehearsalFileError(ValueError):
    """The rehearsal file (or a file it names) is unusable; the message says where and why."""


class Expectations(BaseModel):
    """What the rehearsal asserts. Every key is optional; absent keys are not checked."""

    model_config = ConfigDict(extra="forbid")

    status: str | None = Field(default=None, description="final run status, e.g. succeeded, aborted, failed")
    steps: list[str | list[str]] | None = Field(
        default=None,
        description="the exact sequence, one entry per attempt: [step_id, status], or step_id for any status",
    )
    outputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description='step id -> {path: value} on its last output, e.g. {value: 0.12}'
    )
    requests: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="step id -> what its last call sent: method, url, json, body, headers (subset), argv, query",
    )
    match: bool = Field(default=True, description="the alert must match the runbook's `match` (when both exist)")

    @field_validator("steps")
    @classmethod
    def _pairs(cls, v: list[str | list[str]] | None) -> list[str | list[str]] | None:
        for item in v or []:
            if isinstance(item, list) and len(item) != 2:
                raise ValueError(f"a step entry is step_id or [step_id, status], got {item!r}")
        return v


class Rehearsal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    runbook: str | None = Field(default=None, description="runbook file (relative to this file) or name")
    alert: str | dict[str, Any] | None = Field(default=None, description="payload/alert JSON file or inline")
    params: dict[str, Any] = Field(default_factory=dict)
    responses: dict[str, dict[str, Any] | list[dict[str, Any]]] = Field(default_factory=dict)
    approvals: dict[str, Decision] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)
    expect: Expectations | None = None
    source: Path | None = Field(default=None, exclude=True, description="where it was read from")

    @field_validator("responses")
    @classmethod
    def _non_empty(cls, v: dict[str, Any]) -> dict[str, Any]:
        for sid, entry in v.items():
            if isinstance(entry, list) and not entry:
                raise ValueError(f"responses.{sid}: an empty list records nothing; give at least one answer")
        return v

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source is not None else Path.cwd()

    @property
    def label(self) -> str:
        return str(self.source) if self.source is not None else "(inline rehearsal)"

    def load_alert(self) -> dict[str, Any] | None:
        return resolve_alert(self.alert, self.base_dir)


def is_rehearsal_file(path: Path) -> bool:
    return path.name.endswith(REHEARSAL_SUFFIXES)


def find_rehearsals(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and is_rehearsal_file(p))


def load_rehearsal(path: Path) -> Rehearsal:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RehearsalFileError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise RehearsalFileError(f"{path}:{line}: YAML syntax error: {exc.problem}") from None
    return parse_rehearsal(raw if raw is not None else {}, path)


def parse_rehearsal(raw: Any, source: Path | None = None) -> Rehearsal:
    where = str(source) if source else "rehearsal"
    if not isinstance(raw, dict):
        raise RehearsalFileError(f"{where}: a rehearsal is a YAML mapping (runbook, alert, responses, expect)")
    try:
        spec = Rehearsal.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{where}: {loc}: {msg}")
        raise RehearsalFileError("\n".join(lines)) from None
    spec.source = source
    return spec


def resolve_alert(alert: str | dict[str, Any] | None, base_dir: Path) -> dict[str, Any] | None:
    """One alert from a file or inline value holding an Alertmanager payload (first alert) or one alert."""
    if alert is None:
        return None
    where = "alert"
    data: Any = alert
    if isinstance(alert, str):
        path = base_dir / alert
        where = str(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise RehearsalFileError(f"{path}: cannot read the alert: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise RehearsalFileError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("alerts"), list):
        alerts = [a for a in data["alerts"] if isinstance(a, dict)]
        if not alerts:
            raise RehearsalFileError(f"{where}: the payload has no alerts")
        data = alerts[0]
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise RehearsalFileError(f"{where}: expected an Alertmanager payload with `alerts` or one alert with `labels`")
    return {"annotations": {}, "status": "firing", "fingerprint": "", "startsAt": None, "endsAt": None,
            "generatorURL": "", **data}  # fmt: skip
