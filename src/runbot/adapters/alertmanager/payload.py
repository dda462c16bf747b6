"""The Alertmanager webhook payload (version 4) as typed models, and errors that name the offending field.

Unknown fields are ignored (Alertmanager adds fields over time); the fields runbot relies on are required.
`fingerprint` is computed the way Alertmanager does when a sender leaves it out, so other senders dedupe too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SUPPORTED_VERSION = "4"
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_SEP = b"\xff"


def fingerprint(labels: dict[str, str]) -> str:
    """Alertmanager's label-set fingerprint: FNV-1a 64 over sorted name/value pairs, 0xff-separated."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name.encode(), _SEP, str(labels[name]).encode(), _SEP):
            for byte in part:
                h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def _zero_to_none(v: datetime | None) -> datetime | None:
    # Go's zero time (0001-01-01T00:00:00Z) means "not set"
    if v is None or v.year <= 1:
        return None
    return v.astimezone(UTC)


class AlertIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = ""

    @field_validator("ends_at", mode="after")
    @classmethod
    def _ends(cls, v: datetime | None) -> datetime | None:
        return _zero_to_none(v)

    @field_validator("starts_at", mode="after")
    @classmethod
    def _starts(cls, v: datetime) -> datetime:
        out = _zero_to_none(v)
        if out is None:
            raise ValueError("startsAt must be a real time, not the zero time")
        return out

    @model_validator(mode="after")
    def _fp(self) -> AlertIn:
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.labels)
        return self

    def as_template_alert(self) -> dict[str, Any]:
        """The alert as runbook templates see it (`alert.labels.x`), in Alertmanager's own spelling."""
        return template_alert(self.status, self.labels, self.annotations, self.starts_at, self.ends_at,
                              self.generator_url, self.fingerprint)  # fmt: skip


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    version: str
    group_key: str = Field(alias="groupKey")
    truncated_alerts: int = Field(default=0, alias="truncatedAlerts", ge=0)
    status: Literal["firing", "resolved"]
    receiver: str
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[AlertIn]

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v


def template_alert(status: str, labels: dict[str, Any] | None, annotations: dict[str, Any] | None,
                   starts_at: datetime | None, ends_at: datetime | None, generator_url: str | None,
                   fp: str) -> dict[str, Any]:  # fmt: skip
    return {
        "status": status,
        "labels": dict(labels or {}),
        "annotations": dict(annotations or {}),
        "startsAt": _iso(starts_at),
        "endsAt": _iso(ends_at),
        "generatorURL": generator_url or "",
        "fingerprint": fp,
    }


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z") if ts else None


class PayloadError(ValueError):
    """A refused body: HTTP status, a one-line message, and the offending fields."""

    def __init__(self, status: int, message: str, problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems or []

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.problems:
            out["problems"] = self.problems
        return out


def field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse(body: bytes) -> WebhookPayload:
    """Validate a webhook body; raise PayloadError (400 malformed JSON, 422 wrong shape or version)."""
    try:
        payload = WebhookPayload.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            ctx = errors[0].get("ctx") or {}
            raise PayloadError(400, f"malformed JSON: {ctx.get('error', errors[0]['msg'])}") from None
        if errors and errors[0]["type"] == "model_type" and not errors[0]["loc"]:
            raise PayloadError(422, "the body must be a JSON object (an Alertmanager webhook payload)") from None
        problems = [{"field": field_path(tuple(e["loc"])), "message": _message(e)} for e in errors[:20]]
        version = _peek_version(body)
        if version is not None and version != SUPPORTED_VERSION:
            raise _version_error(version) from None
        raise PayloadError(422, "invalid Alertmanager payload: " + "; ".join(
            f"{p['field']}: {p['message']}" for p in problems[:5]), problems) from None  # fmt: skip
    if payload.version != SUPPORTED_VERSION:
        raise _version_error(payload.version)
    return payload


def _version_error(version: str) -> PayloadError:
    return PayloadError(422, f"unsupported payload version {version!r}: runbot accepts Alertmanager webhook version "
                             f"{SUPPORTED_VERSION}", [{"field": "version", "message": f"must be {SUPPORTED_VERSION!r}"}])  # fmt: skip


def _peek_version(body: bytes) -> str | None:
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and "version" in data:
        return str(data["version"])
    return None


def _message(err: Any) -> str:
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "literal_error":
        return err["msg"].replace("Input should be", "must be")
    return str(err["msg"])
