"""Prometheus diagnostics: `prometheus.query` (instant, optional `expect`), `prometheus.range`, `prometheus.graph`.

Why httpx.AsyncClient and not prometheus-api-client's PrometheusConnect: the client is synchronous
(requests, so every call would need a worker thread that cannot be cancelled when the step times out),
its urllib3 retry adapter sleeps on its own schedule regardless of the step's deadline, it discards the
`resultType` (so a scalar cannot be told from a one-series vector) and the `warnings`, and on errors it
raises "HTTP Status Code 400 (b'{...}')" instead of Prometheus' own message. The HTTP API is small and
stable (/api/v1/query, /api/v1/query_range), so we call it directly: every request is bounded by the
step's remaining time, retries are ours (5xx, 429, timeouts, connection errors; bounded attempts with
jittered backoff inside ctx.remaining()), and PromQL errors surface as the server's message.

Servers come only from configuration (`RUNBOT_PROMETHEUS_URL` for `default`, `RUNBOT_PROMETHEUS_SERVERS`
for named ones); a runbook selects one by name, so a templated label can never aim a step at another host.
Credentials are SecretStr in settings and are registered with the run's redactor before any request.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import Field

from runbot import __version__
from runbot.domain import StepKind
from runbot.durations import Duration, format_duration, parse_duration
from runbot.steps.base import Params, Step, StepContext, StepError, StepResult
from runbot.steps.expect import Expect, ExpectError, ExpectEvalError, compile_expect

if TYPE_CHECKING:
    from runbot.settings import Settings

DEFAULT_SERVER = "default"
MAX_POINTS_PER_SERIES = 11_000  # Prometheus refuses range queries above this resolution
AUTO_POINTS = 360  # default resolution of range/graph when `step` is not given
GET_URL_LIMIT = 4000  # longer queries are sent as a POST form (Prometheus accepts both)
MIN_TRY_SECONDS = 0.25  # do not start an attempt with less time than this left
BACKOFF_BASE = 0.25
BACKOFF_CAP = 4.0
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_NAME_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


# ---- servers -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    """A resolved server: what requests need, plus `display_url` (no credentials) for messages."""

    name: str
    url: str  # without credentials: safe to show
    timeout: float
    headers: dict[str, str] = field(default_factory=dict)
    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    verify_tls: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @property
    def display_url(self) -> str:
        return self.url

    @property
    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.bearer_token) if s]


def configured_servers(settings: Settings) -> list[str]:
    names = set(settings.prometheus_servers)
    if settings.prometheus_url:
        names.add(DEFAULT_SERVER)
    return sorted(names)


def _secret(v: Any) -> str | None:
    return v.get_secret_value() if v is not None else None


def _display_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def resolve_server(settings: Settings, name: str) -> ServerConfig:
    """The server called `name`; `default` is RUNBOT_PROMETHEUS_URL (else a servers entry named default)."""
    if name == DEFAULT_SERVER and settings.prometheus_url:
        url = settings.prometheus_url
        cfg: dict[str, Any] = {
            "username": settings.prometheus_username,
            "password": _secret(settings.prometheus_password),
            "bearer_token": _secret(settings.prometheus_bearer_token),
            "verify_tls": settings.prometheus_verify_tls,
            "ca_file": settings.prometheus_ca_file,
            "client_cert": settings.prometheus_client_cert,
            "client_key": settings.prometheus_client_key,
            "headers": {},
            "timeout": None,
        }
    elif name in settings.prometheus_servers:
        srv = settings.prometheus_servers[name]
        url = srv.url
        cfg = {
            "username": srv.username,
            "password": _secret(srv.password),
            "bearer_token": _secret(srv.bearer_token),
            "verify_tls": srv.verify_tls,
            "ca_file": srv.ca_file,
            "client_cert": srv.client_cert,
            "client_key": srv.client_key,
            "headers": dict(srv.headers),
            "timeout": srv.timeout,
        }
    else:
        known = ", ".join(configured_servers(settings)) or "none"
        hint = (
            " (set RUNBOT_PROMETHEUS_URL)"
            if name == DEFAULT_SERVER
            else " (add it to RUNBOT_PROMETHEUS_SERVERS)"
        )
        raise StepError(f"unknown Prometheus server {name!r}{hint}; configured: {known}", retryable=False)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StepError(
            f"Prometheus server {name!r}: URL must be http(s)://host[:port][/prefix]", retryable=False
        )
    if cfg["bearer_token"] and (cfg["username"] or cfg["password"] or parts.username):
        raise StepError(f"Prometheus server {name!r}: configure basic auth or a bearer token, not both",
                        retryable=False)  # fmt: skip
    if parts.username and not cfg["username"]:  # credentials in the URL: move them out of it
        cfg["username"], cfg["password"] = parts.username, parts.password or ""
    return ServerConfig(
        name=name,
        url=_display_url(url),  # credentials removed; passed as auth instead
        timeout=float(cfg["timeout"] or settings.prometheus_timeout),
        headers=cfg["headers"],
        username=cfg["username"],
        password=cfg["password"],
        bearer_token=cfg["bearer_token"],
        verify_tls=bool(cfg["verify_tls"]),
        ca_file=str(cfg["ca_file"]) if cfg["ca_file"] else None,
        client_cert=str(cfg["client_cert"]) if cfg["client_cert"] else None,
        client_key=str(cfg["client_key"]) if cfg["client_key"] else None,
    )


def _ssl_context(server: ServerConfig) -> ssl.SSLContext | bool:
    if not server.verify_tls:
        return False
    try:
        ctx = ssl.create_default_context(cafile=server.ca_file)
        if server.client_cert:
            ctx.load_cert_chain(server.client_cert, server.client_key)
    except (OSError, ssl.SSLError) as exc:
        raise StepError(
            f"Prometheus server {server.name!r}: cannot load TLS files: {exc}", retryable=False
        ) from None
    return ctx


# ---- HTTP with bounded retries --------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth another attempt; `retry_after` is the server's hint, if any."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class PrometheusClient:
    """One step's view of one server; requests never outlive the step's deadline."""

    def __init__(
        self, server: ServerConfig, ctx: StepContext, attempts: int, max_bytes: int = 64 * 2**20
    ) -> None:
        self.server = server
        self.ctx = ctx
        self.attempts = attempts
        self.max_bytes = max_bytes  # a runaway query must not take the worker's memory with it
        for s in server.secrets:
            ctx.redactor.register(s)

    def _fail(self, message: str, *, retryable: bool) -> StepError:
        text = self.ctx.redactor.redact(
            f"Prometheus server {self.server.name!r} ({self.server.display_url}): {message}"
        )
        return StepError(text, retryable=retryable, output={"server": self.server.name})

    async def api(self, path: str, form: dict[str, str]) -> tuple[Any, list[str]]:
        """GET/POST /api/v1/<path>; returns (data, warnings) or raises StepError."""
        loop = asyncio.get_running_loop()
        budget = self.ctx.remaining(default=self.server.timeout * self.attempts + BACKOFF_CAP)
        deadline = loop.time() + budget
        headers = {"User-Agent": f"runbot/{__version__}", "Accept": "application/json", **self.server.headers}
        if self.server.bearer_token:
            headers["Authorization"] = f"Bearer {self.server.bearer_token}"
        auth = (
            httpx.BasicAuth(self.server.username, self.server.password or "")
            if self.server.username
            else None
        )
        url = f"{self.server.url}/api/v1/{path}"
        last = "no attempt made"
        tried = 0
        # `runbot test`: answered from the recorded responses (see runbot.rehearsal), never the network
        transport = self.ctx.rehearsal.transport("prometheus") if self.ctx.rehearsal is not None else None
        async with httpx.AsyncClient(auth=auth, headers=headers, verify=_ssl_context(self.server),
                                     follow_redirects=False, transport=transport) as client:  # fmt: skip
            for attempt in range(1, self.attempts + 1):
                left = deadline - loop.time()
                if left < MIN_TRY_SECONDS and attempt > 1:
                    break
                timeout = max(min(self.server.timeout, left), 0.05)
                # Ask Prometheus to give up a little before we do, so it reports a timeout instead of
                # computing for nobody.
                req_form = {**form, "timeout": f"{max(timeout - 0.1, 0.05):.3f}"}
                tried = attempt
                try:
                    return await self._once(client, url, req_form, timeout)
                except _Transient as exc:
                    last = exc.reason
                    wait = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                    if exc.retry_after is not None:
                        wait = max(wait, min(exc.retry_after, BACKOFF_CAP * 2))
                    if attempt == self.attempts or loop.time() + wait + MIN_TRY_SECONDS > deadline:
                        break
                    self.ctx.log.warning(
                        f"prometheus {self.server.name}: {last}; retrying in {wait:.2f}s "
                        f"(attempt {attempt + 1}/{self.attempts})"
                    )
                    await asyncio.sleep(wait)
        raise self._fail(f"{last} (after {tried} attempt{'s' if tried != 1 else ''})", retryable=True)

    async def _once(
        self, client: httpx.AsyncClient, url: str, form: dict[str, str], timeout: float
    ) -> tuple[Any, list[str]]:
        if len(url) + sum(len(k) + len(v) for k, v in form.items()) > GET_URL_LIMIT:
            request = client.build_request("POST", url, data=form, timeout=timeout)
        else:
            request = client.build_request("GET", url, params=form, timeout=timeout)
        try:
            # httpx timeouts are per read; the outer one bounds the whole exchange (a slow drip included)
            async with asyncio.timeout(timeout):
                resp = await client.send(request, stream=True)
                try:
                    body = bytearray()
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise self._fail(
                                f"answer larger than {self.max_bytes:,} bytes; narrow the query "
                                "(fewer series: topk(), sum by (...); fewer points: a larger step)",
                                retryable=False,
                            )
                finally:
                    await resp.aclose()
        except (httpx.TimeoutException, TimeoutError):
            raise _Transient(f"no answer within {timeout:.1f}s") from None
        except httpx.ConnectError as exc:
            reason = str(exc) or type(exc).__name__
            if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate verify failed" in reason:
                raise self._fail(f"TLS certificate verification failed: {reason}", retryable=False) from None
            raise _Transient(f"cannot connect: {reason}") from None
        except httpx.TransportError as exc:
            raise _Transient(f"connection error: {str(exc) or type(exc).__name__}") from None
        return self._parse(resp, bytes(body))

    def _parse(self, resp: httpx.Response, raw: bytes) -> tuple[Any, list[str]]:
        body: Any = None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        error = ""
        error_type = ""
        if isinstance(body, dict):
            error = str(body.get("error") or "")
            error_type = str(body.get("errorType") or "")
        code = resp.status_code
        if code == 200 and isinstance(body, dict) and body.get("status") == "success":
            warnings = [str(w) for w in body.get("warnings") or []]
            return body.get("data"), warnings
        detail = error or _excerpt(raw.decode("utf-8", "replace"))
        if code in _RETRY_STATUS:
            kind = f" {error_type}" if error_type else ""
            raise _Transient(f"HTTP {code}{kind}: {detail}", _retry_after(resp.headers.get("Retry-After")))
        if code in (400, 422) and error:
            # bad_data (syntax, bad parameters) or execution (e.g. many-to-many matching): the query's fault
            label = "PromQL error" if error_type in ("bad_data", "") else f"query failed ({error_type})"
            raise self._fail(f"{label}: {error}", retryable=False)
        if code in (401, 403):
            raise self._fail(f"HTTP {code}: not authorised (check the server's credentials): {detail}",
                             retryable=False)  # fmt: skip
        if code == 200:
            raise self._fail(f"response is not a Prometheus API answer: {detail}", retryable=False)
        if 300 <= code < 400:
            where = resp.headers.get("Location", "?")
            raise self._fail(f"HTTP {code} redirect to {where} (check the configured URL)", retryable=False)
        raise self._fail(f"HTTP {code}: {detail}", retryable=False)


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else (text or "(empty body)")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# ---- results -------------------------------------------------------------------------------------------


def parse_sample(raw: Any) -> float:
    """Prometheus sends sample values as strings ("1.5", "NaN", "+Inf")."""
    try:
        return float(raw)
    except (TypeError, ValueError):
        return math.nan


def jsonable(v: Any) -> Any:
    """Finite floats stay numbers; NaN/±Inf become Prometheus' own strings (strict JSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
    return v


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return str(jsonable(v)) if not math.isfinite(v) else f"{v:.6g}"
    return repr(v)


def _fmt_labels(labels: Mapping[str, str]) -> str:
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


@dataclass
class InstantResult:
    result_type: str
    series: list[dict[str, Any]]  # [{"labels": {...}, "value": float|str}], all of them (for expect)

    @property
    def value(self) -> Any:
        return self.series[0]["value"] if len(self.series) == 1 else None


def parse_instant(data: Any) -> InstantResult:
    if not isinstance(data, dict) or "resultType" not in data:
        raise StepError("Prometheus answer has no resultType", retryable=False)
    rtype = data["resultType"]
    result: Any = data.get("result")
    if rtype in ("scalar", "string"):
        raw = result if isinstance(result, list) and len(result) == 2 else [None, None]
        value = parse_sample(raw[1]) if rtype == "scalar" else str(raw[1])
        return InstantResult(rtype, [{"labels": {}, "value": value}])
    if rtype == "vector":
        series = []
        for item in result or []:
            raw = item.get("value") or [None, None]
            series.append({"labels": dict(item.get("metric") or {}), "value": parse_sample(raw[1])})
        return InstantResult("vector", series)
    if rtype == "matrix":
        raise StepError(
            "the query returns a range vector (e.g. `metric[5m]`): use prometheus.range, or wrap it in a "
            "function such as rate(), max_over_time() or last_over_time()",
            retryable=False,
        )
    raise StepError(f"unsupported resultType {rtype!r}", retryable=False)


@dataclass
class RangeSeries:
    labels: dict[str, str]
    times: list[float]
    values: list[float]

    def stats(self) -> dict[str, Any]:
        finite = [v for v in self.values if math.isfinite(v)]
        return {
            "labels": self.labels,
            "last": jsonable(self.values[-1]) if self.values else None,
            "min": min(finite) if finite else None,
            "max": max(finite) if finite else None,
            "samples": len(self.values),
        }


def parse_matrix(data: Any) -> list[RangeSeries]:
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        raise StepError(f"expected a matrix from query_range, got {data.get('resultType') if isinstance(data, dict) else data!r}",
                        retryable=False)  # fmt: skip
    out = []
    for item in data.get("result") or []:
        pts = item.get("values") or []
        out.append(
            RangeSeries(
                labels=dict(item.get("metric") or {}),
                times=[float(p[0]) for p in pts],
                values=[parse_sample(p[1]) for p in pts],
            )
        )
    return out


def decimate(n: int, limit: int) -> list[int]:
    """Indices of at most `limit` evenly spread points of n, always keeping the first and the last."""
    if n <= limit:
        return list(range(n))
    if limit < 2:
        return [n - 1]
    return sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})


# ---- time window ---------------------------------------------------------------------------------------

_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from an Alertmanager time (RFC 3339, possibly with nanoseconds), or None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if not isinstance(value, str) or not value.strip():
        return None
    text = _FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00").replace("z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.year <= 1:  # Go's zero time: "not set"
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Window:
    start: float
    end: float
    step: float
    anchor: str
    alert_start: float | None

    def as_output(self) -> dict[str, Any]:
        return {"start": _iso(self.start), "end": _iso(self.end), "step": self.step, "anchor": self.anchor}


def auto_step(range_s: float) -> float:
    return float(max(1, math.ceil(range_s / AUTO_POINTS)))


def window_for(params: RangeParams, ctx: StepContext, now: float | None = None) -> Window:
    now = time.time() if now is None else now
    alert = ctx.scope.get("alert")
    alert_start = parse_timestamp(alert.get("startsAt")) if isinstance(alert, Mapping) else None
    anchor = "now"
    end = now
    if params.end == "alert":
        if alert_start is None:
            ctx.log.warning("end: alert, but the run has no alert startsAt; the window ends now")
        else:
            end = min(now, alert_start + params.margin)
            anchor = "alert"
    if params.range <= 0 or (params.step is not None and params.step <= 0):
        raise StepError("range and step must be greater than zero", retryable=False)
    step = params.step or auto_step(params.range)
    if params.range / step > MAX_POINTS_PER_SERIES:
        raise StepError(
            f"range {format_duration(params.range)} / step {format_duration(step)} is more than "
            f"{MAX_POINTS_PER_SERIES} points per series; use a larger step",
            retryable=False,
        )
    return Window(start=end - params.range, end=end, step=step, anchor=anchor, alert_start=alert_start)


# ---- params and lint -----------------------------------------------------------------------------------


# The models check types only; content (blank query, expect syntax, range/step sense, server names) is
# checked by `lint` and again at run time. The loader reports model errors *and* lint problems, so checking
# the same thing in both places would print every mistake twice.


class QueryParams(Params):
    query: str = Field(description="PromQL (templated), evaluated at the current time")
    server: str = Field(default=DEFAULT_SERVER, description="Configured Prometheus server name")
    expect: str | None = Field(default=None, description="Condition that must hold, e.g. `value < 0.01`")


class RangeParams(Params):
    query: str = Field(description="PromQL (templated)")
    server: str = Field(default=DEFAULT_SERVER, description="Configured Prometheus server name")
    range: Duration = Field(default=3600.0, description="Window length, e.g. 1h")
    step: Duration | None = Field(default=None, description=f"Resolution; default range/{AUTO_POINTS}")
    end: Literal["now", "alert"] = Field(
        default="now", description="Window ends now, or at alert startsAt + margin"
    )
    margin: Duration = Field(
        default=900.0, description="With end: alert, how far past the alert start to show"
    )


class GraphParams(RangeParams):
    unit: str = Field(
        default="", max_length=20, description='Y axis unit: "req/s", "%", "ratio", "bytes", "s"...'
    )
    title: str | None = Field(default=None, max_length=200, description="Chart title; default the query")
    name: str | None = Field(
        default=None, max_length=100, description="Artifact file name; default <step id>.png"
    )
    width: int = Field(default=1000, ge=300, le=3000, description="PNG width in pixels")
    height: int = Field(default=500, ge=200, le=2000, description="PNG height in pixels")
    max_series: int = Field(
        default=20, ge=1, le=50, description="Plot at most this many series (highest peaks)"
    )
    y_min: float | None = Field(default=None, description="Y axis minimum; default 0 when all values >= 0")
    y_max: float | None = Field(default=None, description="Y axis maximum")


def _require_query(query: str) -> None:
    if not query.strip():
        raise StepError("query is empty (after rendering its template)", retryable=False)


def _templated(v: Any) -> bool:
    return isinstance(v, str) and ("{{" in v or "{%" in v)


class _PrometheusStep(Step[Any]):
    kind = StepKind.DIAGNOSTIC
    default_timeout = 30.0
    _durations: ClassVar[tuple[str, ...]] = ()

    def lint(self, raw_params: dict[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        query = raw_params.get("query")
        # a missing `query` is reported by the Params model ("required parameter is missing")
        if "query" in raw_params and (not isinstance(query, str) or not query.strip()):
            problems.append(("query", "a non-empty PromQL query is required"))
        server = raw_params.get("server", DEFAULT_SERVER)
        if not isinstance(server, str) or not server:
            problems.append(("server", "must be the name of a configured Prometheus server"))
        elif not _templated(server):
            known = configured_servers(self.settings)
            # A missing `default` is only reported once a site has configured Prometheus at all, so runbooks
            # lint cleanly on a laptop; named servers must always exist.
            if server not in known and (server != DEFAULT_SERVER or self.settings.prometheus_servers):
                problems.append(("server", f"unknown Prometheus server {server!r}; configured: "
                                           f"{', '.join(known) or 'none'}"))  # fmt: skip
        for name in self._durations:
            raw = raw_params.get(name)
            if raw is None or _templated(raw):
                continue
            try:
                if parse_duration(raw) <= 0 and name != "margin":
                    problems.append((name, "must be greater than zero"))
            except ValueError as exc:
                problems.append((name, str(exc)))
        return problems

    def _client(self, server: str, ctx: StepContext) -> PrometheusClient:
        s = self.settings
        return PrometheusClient(
            resolve_server(s, server), ctx, s.prometheus_attempts, s.prometheus_max_response_bytes
        )

    def _error(self, exc: StepError, base: dict[str, Any], ctx: StepContext) -> StepError:
        """Add what we know (query, server) to a StepError's output, redacted."""
        exc.output = ctx.redactor.redact_obj({**base, **exc.output})
        exc.message = ctx.redactor.redact(exc.message)
        exc.args = (exc.message,)
        return exc


class PrometheusQuery(_PrometheusStep):
    type = "prometheus.query"
    Params = QueryParams
    default_timeout = 30.0
    doc = "Instant PromQL query; `value` for one series, `series` otherwise; `expect` makes it a check."

    def lint(self, raw_params: dict[str, Any]) -> list[tuple[str, str]]:
        problems = super().lint(raw_params)
        expect = raw_params.get("expect")
        if expect is not None and not _templated(expect):
            if not isinstance(expect, str):
                problems.append(("expect", "must be a condition string, e.g. `value < 0.01`"))
            else:
                try:
                    compile_expect(expect)
                except ExpectError as exc:
                    problems.append(("expect", str(exc)))
        return problems

    async def run(self, params: QueryParams, ctx: StepContext) -> StepResult:
        base: dict[str, Any] = {"query": params.query, "server": params.server}
        try:
            _require_query(params.query)
            expect = compile_expect(params.expect) if params.expect is not None else None
            client = self._client(params.server, ctx)
            data, warnings = await client.api("query", {"query": params.query})
            result = parse_instant(data)
        except ExpectError as exc:
            raise self._error(StepError(f"invalid expect: {exc}", retryable=False), base, ctx) from None
        except StepError as exc:
            raise self._error(exc, base, ctx) from None
        for w in warnings:
            ctx.log.warning(f"prometheus warning: {w}")
        output = self._output(params, result, warnings)
        summary = _summarise(result)
        if expect is not None:
            passed, why = _check(expect, result)
            output["expect"] = {"expression": expect.source, "passed": passed}
            if not passed:
                msg = f"expect failed: {expect.source} ({why})"
                raise StepError(
                    ctx.redactor.redact(msg), retryable=False, output=ctx.redactor.redact_obj(output)
                )
            summary = f"expect passed: {expect.source} ({why})"
        return StepResult(output=ctx.redactor.redact_obj(output), summary=ctx.redactor.redact(summary)[:500])

    def _output(self, params: QueryParams, result: InstantResult, warnings: list[str]) -> dict[str, Any]:
        cap = self.settings.prometheus_max_series
        kept = result.series[:cap]
        out: dict[str, Any] = {
            "query": params.query,
            "server": params.server,
            "result_type": result.result_type,
            "value": jsonable(result.value),
            "count": len(result.series),
            "series": [{"labels": s["labels"], "value": jsonable(s["value"])} for s in kept],
            "truncated": len(result.series) > cap,
        }
        if warnings:
            out["warnings"] = warnings[:20]
        return out


def _summarise(result: InstantResult, limit: int = 5) -> str:
    n = len(result.series)
    if n == 0:
        return "no series (empty result)"
    if n == 1:
        return f"value = {_fmt_value(result.series[0]['value'])}"
    shown = "; ".join(f"{_fmt_labels(s['labels'])} = {_fmt_value(s['value'])}" for s in result.series[:limit])
    more = f"; … {n - limit} more" if n > limit else ""
    return f"{n} series: {shown}{more}"


def _check(expect: Expect, result: InstantResult) -> tuple[bool, str]:
    """Evaluate on every series (not the truncated output) and say what the values were."""
    try:
        passed = expect.evaluate(result.value, result.series)
    except ExpectEvalError as exc:
        return False, f"{exc}; {_summarise(result)}"
    return passed, _summarise(result)


class _WindowStep(_PrometheusStep):
    """Steps that query a time window (range and graph): same duration params, same window lint."""

    _durations = ("range", "step", "margin")

    def lint(self, raw_params: dict[str, Any]) -> list[tuple[str, str]]:
        problems = super().lint(raw_params)
        return problems + _lint_window(raw_params, problems)

    async def _fetch(self, params: RangeParams,
                     ctx: StepContext) -> tuple[dict[str, Any], Window, list[RangeSeries], list[str]]:  # fmt: skip
        """(the output's base fields, the window, its series, Prometheus' warnings); errors as step errors."""
        base: dict[str, Any] = {"query": params.query, "server": params.server}
        try:
            window, series, warnings = await _range_query(self, params, ctx)
        except StepError as exc:
            raise self._error(exc, base, ctx) from None
        return base, window, series, warnings


class PrometheusRange(_WindowStep):
    type = "prometheus.range"
    Params = RangeParams
    default_timeout = 60.0
    doc = "Range query over a window ending now or at the alert's start + margin; points per series, bounded."

    async def run(self, params: RangeParams, ctx: StepContext) -> StepResult:
        base, window, series, warnings = await self._fetch(params, ctx)
        max_series = self.settings.prometheus_max_series
        max_points = self.settings.prometheus_max_points
        truncated = len(series) > max_series
        out_series = []
        for s in series[:max_series]:
            idx = decimate(len(s.times), max_points)
            truncated = truncated or len(idx) < len(s.times)
            entry = s.stats()
            entry["points"] = [[s.times[i], jsonable(s.values[i])] for i in idx]
            out_series.append(entry)
        output: dict[str, Any] = {
            **base,
            **window.as_output(),
            "count": len(series),
            "series": out_series,
            "truncated": truncated,
        }
        if warnings:
            output["warnings"] = warnings[:20]
        summary = (
            f"{len(series)} series over {format_duration(params.range)} (step {format_duration(window.step)})"
        )
        return StepResult(output=ctx.redactor.redact_obj(output), summary=summary)


def _lint_window(raw: dict[str, Any], earlier: list[tuple[str, str]]) -> list[tuple[str, str]]:
    bad = {f for f, _ in earlier}
    r, s = raw.get("range"), raw.get("step")
    if r is None or s is None or "range" in bad or "step" in bad or _templated(r) or _templated(s):
        return []
    range_s, step_s = parse_duration(r), parse_duration(s)
    if step_s > range_s:
        return [("step", f"step {s} is longer than range {r}")]
    if range_s / step_s > MAX_POINTS_PER_SERIES:
        return [
            ("step", f"range/step is more than {MAX_POINTS_PER_SERIES} points; Prometheus would refuse it")
        ]
    return []


async def _range_query(
    step: _PrometheusStep, params: RangeParams, ctx: StepContext
) -> tuple[Window, list[RangeSeries], list[str]]:
    _require_query(params.query)
    window = window_for(params, ctx)
    client = step._client(params.server, ctx)
    form = {
        "query": params.query,
        "start": f"{window.start:.3f}",
        "end": f"{window.end:.3f}",
        "step": f"{window.step:g}",
    }
    data, warnings = await client.api("query_range", form)
    for w in warnings:
        ctx.log.warning(f"prometheus warning: {w}")
    return window, parse_matrix(data), warnings


class PrometheusGraph(_WindowStep):
    type = "prometheus.graph"
    Params = GraphParams
    default_timeout = 60.0
    doc = "Range query rendered as a PNG line chart (alert start marked), attached to the run."

    async def run(self, params: GraphParams, ctx: StepContext) -> StepResult:
        base, window, series, warnings = await self._fetch(params, ctx)
        shown = _top_series(series, params.max_series)
        differing = _differing_label_keys([s.labels for s in shown])
        lines = [_line(s, differing, params.query) for s in shown]
        title = params.title or " ".join(params.query.split())
        subtitle = f"{params.server} · {format_duration(params.range)} · step {format_duration(window.step)}"
        note = f"top {len(shown)} of {len(series)} series by peak value" if len(shown) < len(series) else ""

        from runbot.graphs import render_line_chart  # matplotlib is heavy: load it only when drawing

        png = await asyncio.to_thread(
            render_line_chart,
            lines,
            title=ctx.redactor.redact(title),
            unit=params.unit,
            subtitle=subtitle,
            start=window.start,
            end=window.end,
            marker=window.alert_start,
            note=note,
            width=params.width,
            height=params.height,
            y_min=params.y_min,
            y_max=params.y_max,
        )
        name = _artifact_name(params.name or f"{ctx.step_id}.png")
        ctx.attach(name, "image/png", png)
        cap = self.settings.prometheus_max_series
        output: dict[str, Any] = {
            **base,
            **window.as_output(),
            "alert_start": _iso(window.alert_start) if window.alert_start is not None else None,
            "artifact": name,
            "content_type": "image/png",
            "bytes": len(png),
            "width": params.width,
            "height": params.height,
            "unit": params.unit,
            "count": len(series),
            "shown": len(shown),
            "series": [s.stats() for s in series[:cap]],
            "truncated": len(series) > cap,
        }
        if warnings:
            output["warnings"] = warnings[:20]
        summary = f"graph {name}: {len(shown)} of {len(series)} series over {format_duration(params.range)}"
        return StepResult(output=ctx.redactor.redact_obj(output), summary=summary)


def _peak(s: RangeSeries) -> float:
    finite = [v for v in s.values if math.isfinite(v)]
    return max(finite) if finite else -math.inf


def _top_series(series: Sequence[RangeSeries], limit: int) -> list[RangeSeries]:
    if len(series) <= limit:
        return list(series)
    keep = set(sorted(range(len(series)), key=lambda i: _peak(series[i]), reverse=True)[:limit])
    return [s for i, s in enumerate(series) if i in keep]  # keep Prometheus' order for stable colours


def _differing_label_keys(label_sets: Sequence[Mapping[str, str]]) -> list[str]:
    keys = sorted({k for ls in label_sets for k in ls})
    if len(label_sets) <= 1:
        return keys
    return [k for k in keys if len({ls.get(k) for ls in label_sets}) > 1]


def _line(s: RangeSeries, keys: Sequence[str], query: str) -> Any:
    from runbot.graphs import Line

    shown = {k: s.labels[k] for k in keys if k in s.labels}
    label = _fmt_labels(shown) if shown else (_fmt_labels(s.labels) if s.labels else " ".join(query.split()))
    return Line(label=label, times=s.times, values=s.values)


def _artifact_name(name: str) -> str:
    clean = _NAME_SAFE.sub("-", name).strip(".-") or "graph"
    return clean if clean.lower().endswith(".png") else f"{clean}.png"
