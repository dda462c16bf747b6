"""The typed runbook spec (format version 1). Unknown keys are errors, so typos are caught by lint."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from runbot.durations import Duration
from runbot.runbooks.match import Matcher, parse_entry

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_STEP_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)


class RetryPolicy(Strict):
    attempts: int = Field(default=1, ge=1, le=100, description="total attempts, including the first")
    initial: Duration = 1.0
    max: Duration = 60.0
    multiplier: float = Field(default=2.0, ge=1.0)


class Approvers(Strict):
    slack_users: list[str] = Field(default_factory=list)
    slack_usergroups: list[str] = Field(default_factory=list)
    from_labels: list[str] = Field(
        default_factory=list, description="alert labels whose value names a Slack user group (e.g. owner)"
    )
    cli_users: list[str] = Field(default_factory=list, description="host users allowed to approve from the CLI")


class ApprovalSpec(Strict):
    approvers: Approvers = Field(default_factory=Approvers)
    min_approvals: int = Field(default=1, ge=1, le=10)
    allow_self_approval: bool = False
    timeout: Duration = 900.0
    on_timeout: Literal["escalate", "abort", "skip"] = "abort"
    on_deny: Literal["abort", "skip"] = "abort"
    escalate_to: dict[str, Any] = Field(default_factory=dict, description="channel / usergroup for escalation")


class VerifySpec(Strict):
    type: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    within: Duration = 300.0
    interval: Duration = 15.0


class StepSpec(Strict):
    id: str | None = None
    type: str
    name: str | None = Field(default=None, description="one-line human title")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    when: str | bool | None = None
    timeout: Duration | None = None
    retry: RetryPolicy | None = None
    risk: Literal["low", "high"] | None = None
    idempotent: bool | None = Field(default=None, description="override the plugin's own declaration")
    approval: ApprovalSpec | None = None
    verify: VerifySpec | None = None
    on_failure: list[StepSpec] = Field(default_factory=list)
    continue_on_failure: bool = False

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and not _STEP_ID.match(v):
            raise ValueError("step id must be a letter or _ followed by letters, digits or _")
        return v

    @property
    def sid(self) -> str:
        assert self.id is not None
        return self.id


class ParamSpec(Strict):
    type: Literal["string", "number", "integer", "boolean"] = "string"
    default: Any = None
    required: bool = False
    description: str | None = None
    choices: list[Any] | None = None

    def coerce(self, value: Any) -> Any:
        if value is None:
            return None
        try:
            if self.type == "number":
                return float(value)
            if self.type == "integer":
                return int(value)
            if self.type == "boolean":
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low in ("true", "yes", "1", "on"):
                        return True
                    if low in ("false", "no", "0", "off"):
                        return False
                    raise ValueError(value)
                return bool(value)
            return str(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected {self.type}, got {value!r}") from None


class Concurrency(Strict):
    key: str = Field(default="{{ run.runbook }}", description="template; runs with the same key share the limit")
    limit: int = Field(default=1, ge=1)
    on_limit: Literal["skip", "queue"] = "skip"


class Unattended(Strict):
    reason: str = Field(min_length=10, description="why remediation may run without a human approval")


class SlackSpec(Strict):
    channel: str | None = None
    channel_from_label: str | None = None


class Runbook(Strict):
    version: Literal[1] = 1
    name: str
    description: str = ""
    owner: str | None = None
    match: list[str] = Field(default_factory=list)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    concurrency: Concurrency | None = None
    cooldown: Duration | None = None
    on_resolve: Literal["cancel", "continue"] = "cancel"
    unattended: Unattended | None = None
    slack: SlackSpec | None = None
    tags: list[str] = Field(default_factory=list)
    steps: list[StepSpec] = Field(min_length=1)
    _matchers: list[Matcher] | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("name must be lowercase letters, digits and dashes, e.g. api-high-error-rate")
        return v

    @model_validator(mode="after")
    def _auto_ids(self) -> Runbook:
        def assign(steps: list[StepSpec], prefix: str) -> None:
            for i, s in enumerate(steps):
                if s.id is None:
                    s.id = f"{prefix}{s.type.replace('.', '_').replace('-', '_')}_{i + 1}"
                assign(s.on_failure, f"{s.id}__")

        assign(self.steps, "")
        return self

    def matchers(self) -> list[Matcher]:
        # Parsed once per loaded version: matching runs for every alert against every runbook, so the cache
        # is read from pydantic's private dict directly (its __getattr__ costs more than the match itself).
        private = self.__pydantic_private__ or {}
        found = private.get("_matchers")
        if found is None:
            found = self._matchers = [one for entry in self.match for one in parse_entry(entry)]
        return found

    def step(self, step_id: str) -> StepSpec | None:
        for s in self.all_steps():
            if s.id == step_id:
                return s
        return None

    def all_steps(self) -> list[StepSpec]:
        out: list[StepSpec] = []

        def walk(steps: list[StepSpec]) -> None:
            for s in steps:
                out.append(s)
                walk(s.on_failure)

        walk(self.steps)
        return out

    def resolve_params(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = set(given) - set(self.params)
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}; known: {', '.join(self.params) or 'none'}")
        out: dict[str, Any] = {}
        for name, spec in self.params.items():
            if name in given:
                value = spec.coerce(given[name])
            elif spec.default is not None:
                value = spec.coerce(spec.default)
            elif spec.required:
                raise ValueError(f"parameter {name} is required")
            else:
                value = None
            if spec.choices is not None and value is not None and value not in spec.choices:
                raise ValueError(f"parameter {name} must be one of {spec.choices}")
            out[name] = value
        return out


StepSpec.model_rebuild()
