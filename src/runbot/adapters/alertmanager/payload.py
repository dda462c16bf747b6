"""The Alertmanager webhook payload (version 4) as typed models, and errors that name the offending field.

Unknown fields are ignored (Alertmanager adds fields over time); the fields runbot relies on are required.
`fingerprint` is computed the way Alertmanager does when a sender leaves it out, so other senders dedupe too.

Grafana Alerting's webhook contact point sends the same shape with `version: "1"` and a few fields more
(`orgId`, `title`, `state`, `message`; per alert `values`, `valueString`, `silenceURL`, `dashboardURL`,
`panelURL`, `imageURL`): it is accepted as well, and the per-alert extras are kept on the alert (`extras`).

The `receiver` field is unquoted on the way in: Alertmanager fills it with `regexp.QuoteMeta(name)`
(template.Data), so a receiver named `runbot.prod` arrives as `runbot\\.prod`.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

SUPPORTED_VERSION = "4"
GRAFANA_VERSION = "1"  # Grafana Alerting's webhook contact point
VERSIONS = (SUPPORTED_VERSION, GRAFANA_VERSION)
_META = frozenset("\\.+*?()|[]{}^$")  # the bytes Go's regexp.QuoteMeta escapes
# Grafana's per-alert fields kept on the alert as sent (empty strings, Grafana's "not set", are left out)
GRAFANA_ALERT_FIELDS = ("dashboardURL", "panelURL", "silenceURL", "imageURL", "values", "valueString")


def unquote_meta(name: str) -> str:
    """The reverse of Go's regexp.QuoteMeta: drop the backslash before each escaped metacharacter."""
    if "\\" not in name:
        return name
    out: list[str] = []
    i, n = 0, len(name)
    while i < n:
        ch = name[i]
        if ch == "\\" and i + 1 < n and name[i + 1] in _META:
            out.append(name[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)
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


# The wire shape, checked entirely inside pydantic-core (no Python validator per alert): the webhook runs this
# on every request, and a 50-alert body spent most of its time in per-field Python callbacks before.
class _AlertWire(TypedDict):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: NotRequired[dict[str, str]]
    startsAt: datetime
    endsAt: NotRequired[datetime | None]
    generatorURL: NotRequired[str]
    fingerprint: NotRequired[str]
    # Grafana Alerting only
    silenceURL: NotRequired[str]
    dashboardURL: NotRequired[str]
    panelURL: NotRequired[str]
    imageURL: NotRequired[str]
    values: NotRequired[dict[str, float | None] | None]
    valueString: NotRequired[str]


class _Envelope(TypedDict):
    version: str | int
    groupKey: str
    truncatedAlerts: NotRequired[Annotated[int, Field(ge=0)]]
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: NotRequired[dict[str, str]]
    commonLabels: NotRequired[dict[str, str]]
    commonAnnotations: NotRequired[dict[str, str]]
    externalURL: NotRequired[str]
    # Grafana Alerting only (title, state and message are deprecated there and not kept)
    orgId: NotRequired[int]
    title: NotRequired[str]
    state: NotRequired[str]
    message: NotRequired[str]


class _PayloadWire(_Envelope):
    alerts: list[_AlertWire]


class _BigPayloadWire(_Envelope):
    alerts: list[dict[str, Any]]  # checked after, CHUNK alerts at a time (_ALERTS)


_WIRE = TypeAdapter(_PayloadWire)
_BIG_WIRE = TypeAdapter(_BigPayloadWire)
_ALERTS = TypeAdapter(list[_AlertWire])
# Above this size a body is validated in chunks of CHUNK alerts. pydantic-core holds the GIL for a whole call,
# and one call over 36,000 alerts (a 4 MiB body) takes 0.5-1.5 s: every other thread, the event loop that
# acknowledges other senders included, would stop for that long. Between chunks the GIL changes hands.
CHUNKED_ABOVE = 256 * 1024
CHUNK = 500
_gc_lock = threading.Lock()
_gc_pausers = 0  # bodies being decoded right now
_gc_resume = True  # whether the collector was on when the first of them began


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while a big body is decoded: its ~1M new objects (no cycles among them) would
    trigger full collections that walk the whole heap, each 0.4-0.6 s with the GIL held (measured), one after
    the other. Nested and concurrent users share one pause; the collector resumes when the last one ends."""
    global _gc_pausers, _gc_resume
    with _gc_lock:
        _gc_pausers += 1
        if _gc_pausers == 1:
            _gc_resume = gc.isenabled()
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_resume:
                gc.enable()


def _zero_to_none(v: datetime | None) -> datetime | None:
    # Go's zero time (0001-01-01T00:00:00Z) means "not set"
    if v is None or v.year <= 1:
        return None
    return v.astimezone(UTC)


@dataclass(slots=True)
class AlertIn:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str
    fingerprint: str
    extras: dict[str, Any] | None = None  # Grafana's per-alert fields (links, values), as sent

    def as_template_alert(self) -> dict[str, Any]:
        """The alert as runbook templates see it (`alert.labels.x`), in Alertmanager's own spelling."""
        return template_alert(self.status, self.labels, self.annotations, self.starts_at, self.ends_at,
                              self.generator_url, self.fingerprint, self.extras)  # fmt: skip


@dataclass(slots=True)
class WebhookPayload:
    version: str
    group_key: str
    status: str
    receiver: str
    alerts: list[AlertIn]
    truncated_alerts: int = 0
    group_labels: dict[str, str] = field(default_factory=dict)
    common_labels: dict[str, str] = field(default_factory=dict)
    common_annotations: dict[str, str] = field(default_factory=dict)
    external_url: str = ""


@dataclass(slots=True)
class Accepted:
    """What the request path needs of a valid body (it is unpacked into alerts later)."""

    receiver: str
    alerts: int
    group_key: str
    truncated_alerts: int


def template_alert(status: str, labels: dict[str, Any] | None, annotations: dict[str, Any] | None,
                   starts_at: datetime | None, ends_at: datetime | None, generator_url: str | None,
                   fp: str, extras: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The alert as runbooks, Slack and postmortems see it; a Grafana alert's extras keep Grafana's spelling
    (`alert.dashboardURL`, `alert.values.B`), next to the Alertmanager fields they cannot shadow."""
    out = {
        "status": status,
        "labels": dict(labels or {}),
        "annotations": dict(annotations or {}),
        "startsAt": _iso(starts_at),
        "endsAt": _iso(ends_at),
        "generatorURL": generator_url or "",
        "fingerprint": fp,
    }
    if extras:
        out.update({k: v for k, v in extras.items() if k in GRAFANA_ALERT_FIELDS or k == "orgId"})
    return out


LINKS = {"dashboard": "dashboardURL", "panel": "panelURL", "silence": "silenceURL", "image": "imageURL"}


def alert_links(extras: dict[str, Any] | None, generator_url: str | None) -> dict[str, str]:
    """An alert's links by name (`source`: its generatorURL; Grafana's `dashboard`, `panel`, `silence`, `image`),
    for Slack, postmortems and the API: the URLs a responder clicks first."""
    ex = extras or {}
    out = {"source": generator_url} if generator_url else {}
    out.update({name: ex[key] for name, key in LINKS.items() if isinstance(ex.get(key), str) and ex[key]})
    return out


def grafana_extras(alert: Any, org_id: int | None) -> dict[str, Any] | None:
    """A Grafana alert's extra fields worth keeping (set ones only), or None for a plain Alertmanager alert."""
    out: dict[str, Any] = {k: alert[k] for k in GRAFANA_ALERT_FIELDS if alert.get(k) not in (None, "", {})}
    if not out and org_id is None:
        return None
    if org_id is not None:
        out["orgId"] = org_id
    return out


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


def check(body: bytes) -> Accepted:
    """Validate a webhook body without building alerts; raise PayloadError (400 malformed JSON, 422 shape)."""
    if len(body) > CHUNKED_ABOVE:
        with _collector_paused():
            data = _validate(body)
    else:
        data = _validate(body)
    return Accepted(unquote_meta(data["receiver"]), len(data["alerts"]), data["groupKey"],
                    data.get("truncatedAlerts", 0))  # fmt: skip


def parse(body: bytes) -> WebhookPayload:
    """Validate a webhook body into typed alerts; the same checks as `check`, so what was accepted unpacks."""
    if len(body) > CHUNKED_ABOVE:
        with _collector_paused():
            return _parse(body)
    return _parse(body)


def _parse(body: bytes) -> WebhookPayload:
    data = _validate(body)
    alerts = []
    grafana = str(data["version"]) == GRAFANA_VERSION
    org_id = data.get("orgId")
    for a in data["alerts"]:
        labels = a["labels"]
        alerts.append(AlertIn(a["status"], labels, a.get("annotations") or {}, a["startsAt"].astimezone(UTC),
                              _zero_to_none(a.get("endsAt")), a.get("generatorURL") or "",
                              a.get("fingerprint") or fingerprint(labels),
                              grafana_extras(a, org_id) if grafana else None))  # fmt: skip
    return WebhookPayload(str(data["version"]), data["groupKey"], data["status"], unquote_meta(data["receiver"]), alerts,
                          data.get("truncatedAlerts", 0), data.get("groupLabels") or {}, data.get("commonLabels") or {},
                          data.get("commonAnnotations") or {}, data.get("externalURL") or "")  # fmt: skip


def _validate(body: bytes) -> Any:
    if len(body) > CHUNKED_ABOVE:
        return _validate_big(body)
    try:
        data = _WIRE.validate_json(body)
    except ValidationError as exc:
        raise _refusal(exc, body) from None
    return _checked(data)


def _validate_big(body: bytes) -> Any:
    """The same checks as `_WIRE`, in bounded pieces: the envelope (alerts as plain objects), then the alerts."""
    try:
        data = _BIG_WIRE.validate_json(body)
    except ValidationError as exc:
        raise _refusal(exc, body) from None
    version = str(data["version"])
    if version not in VERSIONS:
        raise _version_error(version)
    raw, alerts = data["alerts"], []
    for start in range(0, len(raw), CHUNK):
        try:
            alerts += _ALERTS.validate_python(raw[start:start + CHUNK])
        except ValidationError as exc:
            raise _refusal(exc, body, offset=start) from None
    whole: _PayloadWire = {**data, "alerts": alerts}
    return _checked(whole)


def _refusal(exc: ValidationError, body: bytes, offset: int | None = None) -> PayloadError:
    errors = exc.errors(include_input=False, include_url=False)
    if offset is not None:  # a chunk of alerts: name the field as in the whole body
        for e in errors:
            loc = list(e["loc"])
            if loc and isinstance(loc[0], int):
                loc[0] += offset
            e["loc"] = ("alerts", *loc)
    if any(e["type"] == "json_invalid" for e in errors):
        ctx = errors[0].get("ctx") or {}
        return PayloadError(400, f"malformed JSON: {ctx.get('error', errors[0]['msg'])}")
    if errors and errors[0]["type"] in ("model_type", "dict_type") and not errors[0]["loc"]:
        return PayloadError(422, "the body must be a JSON object (an Alertmanager webhook payload)")
    problems = [{"field": field_path(tuple(e["loc"])), "message": _message(e)} for e in errors[:20]]
    version = _peek_version(body)
    if version is not None and version not in VERSIONS:
        return _version_error(version)
    return _invalid(problems)


def _checked(data: Any) -> Any:
    version = str(data["version"])
    if version not in VERSIONS:
        raise _version_error(version)
    zero = [i for i, a in enumerate(data["alerts"]) if a["startsAt"].year <= 1]
    if zero:
        raise _invalid([{"field": f"alerts[{i}].startsAt", "message": "startsAt must be a real time, not the zero time"}
                        for i in zero[:20]])  # fmt: skip
    return data


def _invalid(problems: list[dict[str, str]]) -> PayloadError:
    return PayloadError(422, "invalid Alertmanager payload: " + "; ".join(
        f"{p['field']}: {p['message']}" for p in problems[:5]), problems)  # fmt: skip


def _version_error(version: str) -> PayloadError:
    return PayloadError(422, f"unsupported payload version {version!r}: runbot accepts Alertmanager webhook version "
                             f"{SUPPORTED_VERSION} and Grafana Alerting webhook version {GRAFANA_VERSION}",
                        [{"field": "version", "message": f"must be {SUPPORTED_VERSION!r} (or {GRAFANA_VERSION!r} from Grafana)"}])  # fmt: skip


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
