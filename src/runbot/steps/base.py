"""The one small interface every step type implements.

A plugin declares its parameters as a pydantic model (validation and documentation at once), its kind,
and whether a repeat is harmless. The engine renders templates, resolves secrets at the last moment,
validates the params, and calls `run` with a context; the plugin returns a result, suspends, or raises
StepError. Plugins never touch the database.
"""

from __future__ import annotations

import asyncio
import builtins
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from runbot.domain import StepKind
from runbot.redaction import Redactor

if TYPE_CHECKING:
    from runbot.settings import Settings


class Params(BaseModel):
    """Base for plugin params: unknown keys are errors so typos in `with:` are caught by lint."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


P = TypeVar("P", bound=BaseModel)


class StepError(Exception):
    """The step failed. `retryable=False` skips the retry policy (e.g. a refused input, a failed check)."""

    def __init__(self, message: str, *, retryable: bool = True, output: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.output = output or {}


@dataclass
class Artifact:
    name: str
    content_type: str
    data: bytes


@dataclass
class StepResult:
    output: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


@dataclass
class Suspend:
    """Park the step durably; the engine calls `run` again with `ctx.resume_state` at `until` or on an event."""

    until: datetime | None
    state: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


class StepLogger:
    """Logger handed to plugins: every message passes through the run's redactor."""

    def __init__(self, base: Any, redactor: Redactor, **context: Any) -> None:
        self._base = base
        self._context = context  # bound lazily: most steps never log, and binding costs per step
        self._redactor = redactor
        self.lines: list[str] = []

    def _emit(self, level: str, msg: str, **kw: Any) -> None:
        clean = self._redactor.redact(str(msg))
        fields = {k: self._redactor.redact_obj(v) for k, v in kw.items()}
        self.lines.append(f"{level}: {clean}")
        getattr(self._base, level)(clean, **self._context, **fields)

    def debug(self, msg: str, **kw: Any) -> None:
        self._emit("debug", msg, **kw)

    def info(self, msg: str, **kw: Any) -> None:
        self._emit("info", msg, **kw)

    def warning(self, msg: str, **kw: Any) -> None:
        self._emit("warning", msg, **kw)

    def error(self, msg: str, **kw: Any) -> None:
        self._emit("error", msg, **kw)


@dataclass
class StepContext:
    run_id: str
    step_id: str
    attempt: int
    idempotency_key: str  # run_id:step_id:attempt, to pass on (e.g. Idempotency-Key header)
    settings: Settings
    log: StepLogger
    redactor: Redactor
    scope: dict[str, Any]  # alert, incident, params, steps, run: what templates saw
    deadline: float | None = None  # loop.time() by which the step must finish
    resume_state: dict[str, Any] | None = None
    rehearsal: Any = None  # recorded responses when rehearsing (runbot test); None when live
    raw_params: dict[str, Any] | None = None  # the step's `with:` before rendering: which values are templated
    artifacts: list[Artifact] = field(default_factory=list)

    def attach(self, name: str, content_type: str, data: bytes) -> None:
        """Keep a file (e.g. a graph PNG) with the run, for Slack and the postmortem."""
        self.artifacts.append(Artifact(name, content_type, data))

    def remaining(self, default: float = 30.0) -> float:
        if self.deadline is None:
            return default
        return max(0.05, self.deadline - asyncio.get_running_loop().time())


class Step(ABC, Generic[P]):
    """Subclass, set `type`, `kind`, `Params`; implement `run`. Register in steps/registry.py."""

    type: ClassVar[str]
    kind: ClassVar[StepKind] = StepKind.DIAGNOSTIC
    Params: ClassVar[builtins.type[BaseModel]]
    default_timeout: ClassVar[float] = 300.0
    doc: ClassVar[str] = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def idempotent(self, params: P) -> bool:
        """May the engine repeat this step after a crash without asking a human?"""
        return self.kind is not StepKind.REMEDIATION

    def lint(self, raw_params: dict[str, Any]) -> list[tuple[str, str]]:
        """Static checks on the (still templated) params: (field path, message) pairs."""
        return []

    def changes_things(self, raw_params: dict[str, Any]) -> bool:
        """Does this step, with these params, change the world (so it needs approval)?"""
        return self.kind is StepKind.REMEDIATION

    @abstractmethod
    async def run(self, params: P, ctx: StepContext) -> StepResult | Suspend: ...
