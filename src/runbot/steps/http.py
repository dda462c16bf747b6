"""`http.request`: one HTTP call from a runbook, behind the outbound network policy.

Why it is built this way:

- **Outbound policy on every hop.** The URL (and each redirect target) must match the host allow-list; the
  host is then resolved here, *every* resolved address is checked (runbot.netpolicy), and the request is
  sent to that checked IP, with the Host header and TLS SNI / certificate verification still using the
  name. A DNS answer that changes between check and connect (DNS rebinding) therefore cannot move the
  request elsewhere, and a refused address is never connected to.
- **Redirects are followed here**, not by httpx, so each location is re-checked; Authorization, Cookie and
  Proxy-Authorization are dropped when the origin changes; 303 (and 301/302 after POST) become GET
  without a body. Cookies are not kept between hops.
- **Proxy environment variables are ignored** (trust_env=False): a proxy resolves names itself, which
  would bypass the address check.
- **Bounded capture.** The body is read up to a cap and the connection is then dropped, so a huge or
  endless body cannot exhaust memory. It is kept as text if it decodes, else base64, with `truncated`.
  `Accept-Encoding: identity` is sent by default so a compressed body cannot expand past the cap's spirit.
- **Idempotency key.** `ctx.idempotency_key` (run_id:step_id:attempt) is sent on every try *within* one
  attempt (in-step `retries`), so a server that honours Idempotency-Key deduplicates them; the engine's
  next attempt carries a new key by design.
- **Expectations.** `expect_status` (default: any 2xx) and `expect_json`, a mapping of simple paths
  (`status`, `data.items[0].name`, `checks["db.primary"]`) to expected values compared as JSON (so `1` does
  not equal `true`). A small path syntax rather than JSONPath (jsonpath-ng) keeps dependencies down and
  covers what a check needs; richer conditions belong in a later step's `when`.
- **Errors** are one line, name the method and URL (password and sensitive query values masked, then the
  run's redactor applied) and say whether a retry can help: 5xx, 408, 429, connection errors and timeouts
  are retryable; policy refusals, other 4xx and failed expectations are not (the response is in
  `StepError.output`).
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import math
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import Field, field_validator, model_validator

from runbot.domain import StepKind
from runbot.durations import Duration
from runbot.netpolicy import NetPolicy, PolicyError, ResolveError, ip_literal
from runbot.redaction import Redactor
from runbot.steps.base import Params, Step, StepContext, StepError, StepResult
from runbot.tracing import inject_traceparent

if TYPE_CHECKING:
    from runbot.settings import Settings

Method = Literal["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]
METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
SAFE_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_STATUSES = frozenset({408, 429})  # plus every 5xx
_ORIGIN_BOUND_HEADERS = ("authorization", "cookie", "proxy-authorization")
_MANAGED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SENSITIVE_QUERY = re.compile(r"token|key|secret|pass|pwd|sig|auth|credential|session|code", re.IGNORECASE)
_SENSITIVE_HEADER = re.compile(r"auth|token|key|secret|pass|session|cookie|sig|credential|csrf|xsrf", re.IGNORECASE)
_STATIC_ORIGIN = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")
MASK = "****"

Scalar = str | int | float | bool


def _scalar_text(v: Scalar) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _is_template(v: Any) -> bool:
    return isinstance(v, str) and ("{{" in v or "{%" in v)


# ---- expect_json paths ------------------------------------------------------------------------------

_PATH_TOKEN = re.compile(
    r"""\.?(?P<name>[A-Za-z_][A-Za-z0-9_-]*)
      | \[(?P<index>-?\d+)\]
      | \[(?P<quoted>"(?:[^"\\]|\\.)*"|'[^']*')\]""",
    re.VERBOSE,
)


def parse_path(path: str) -> list[str | int]:
    """`a.b[0]["c.d"]` -> ['a', 'b', 0, 'c.d']; a leading `$` is accepted and ignored."""
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    tokens: list[str | int] = []
    pos = 0
    while pos < len(text):
        m = _PATH_TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f'invalid path {path!r} near {text[pos : pos + 10]!r}: use a.b[0] or ["key"]')
        if m.group("name") is not None:
            tokens.append(m.group("name"))
        elif m.group("index") is not None:
            tokens.append(int(m.group("index")))
        else:
            q = m.group("quoted")
            tokens.append(json.loads(q) if q.startswith('"') else q[1:-1])
        pos = m.end()
    return tokens


def lookup(doc: Any, tokens: list[str | int]) -> tuple[bool, Any]:
    cur = doc
    for t in tokens:
        in_list = isinstance(t, int) and isinstance(cur, list) and -len(cur) <= t < len(cur)
        in_dict = isinstance(t, str) and isinstance(cur, dict) and t in cur
        if not (in_list or in_dict):
            return False, None
        cur = cur[t]
    return True, cur


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: booleans are not numbers, 1 == 1.0, containers compared deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


# ---- capture helpers (shared with the command step) ---------------------------------------------------


def capture_text(data: bytes, *, truncated: bool, charset: str | None = None) -> tuple[str, str]:
    """(text, "text") if `data` decodes in `charset` (default UTF-8), else (base64, "base64").

    A truncated body may end inside a multi-byte character; the incomplete tail is dropped rather than
    turning the whole body into base64.
    """
    try:
        decoder = codecs.getincrementaldecoder(charset or "utf-8")("strict")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        return decoder.decode(data, final=not truncated), "text"
    except (UnicodeDecodeError, ValueError):
        return base64.b64encode(data).decode("ascii"), "base64"


REDACTION_MARGIN = 65536  # bytes read beyond a capture cap, so a secret straddling the cut is masked whole


def redacted_capture(data: bytes, total: int, cap: int, redactor: Redactor) -> tuple[bytes, bool]:
    """Mask secrets in the raw bytes read (cap + REDACTION_MARGIN), *then* cut to `cap`.

    Masking comes before any encoding (a body that is not UTF-8 is stored as base64, which the text
    redactor could only find again by its cores) and before truncation (a cut secret is a partial leak).
    """
    masked = redactor.redact_bytes(data)
    return masked[:cap], total > cap or len(masked) > cap


def one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def display_url(url: httpx.URL | str) -> str:
    """The URL for messages: password and values of secret-looking query parameters replaced by ****."""
    try:
        u = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return re.sub(r"//[^/@]*@", f"//{MASK}@", str(url))
    user = ""
    if u.userinfo:
        user = u.username + (f":{MASK}" if u.password else "") + "@"
    port = f":{u.port}" if u.port is not None else ""
    host = u.raw_host.decode("ascii")
    host = f"[{host}]" if ":" in host else host
    query = ""
    if u.query:
        parts = []
        for k, v in u.params.multi_items():
            parts.append(f"{k}={MASK}" if _SENSITIVE_QUERY.search(k) and v else f"{k}={v}" if v else k)
        query = "?" + "&".join(parts)
    return f"{u.scheme}://{user}{host}{port}{u.path}{query}"


# ---- params -------------------------------------------------------------------------------------------


class HttpRequestParams(Params):
    method: Method = Field(default="GET", description="GET, HEAD, OPTIONS (safe) or POST, PUT, PATCH, DELETE")
    url: str = Field(description="absolute http(s) URL; its host must be in RUNBOT_HTTP_ALLOW_HOSTS")
    headers: dict[str, str] = Field(default_factory=dict, description="request headers")
    query: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict, description="added to the URL query"
    )
    json_: Any = Field(default=None, alias="json", description="JSON body (any value)")
    form: dict[str, Scalar | list[Scalar]] | None = Field(default=None, description="form-urlencoded body")
    body: str | None = Field(default=None, description="raw text body (set Content-Type in headers)")
    expect_status: list[int] | None = Field(default=None, description="accepted statuses; default any 2xx")
    expect_json: dict[str, Any] | None = Field(
        default=None, description='path -> expected value, e.g. {"status": "ok", "items[0].ready": true}'
    )
    follow_redirects: bool = Field(default=True, description="follow 3xx (each hop re-checked)")
    max_redirects: int | None = Field(default=None, ge=0, description="at most RUNBOT_HTTP_MAX_REDIRECTS")
    max_response_bytes: int | None = Field(
        default=None, ge=0, description="body bytes kept; at most RUNBOT_HTTP_MAX_RESPONSE_BYTES"
    )
    retries: int = Field(
        default=0, ge=0, le=10, description="in-step retries on 5xx/408/429/connection errors"
    )
    retry_delay: Duration = Field(default=1.0, description="first in-step retry delay; doubles each time")
    idempotency_header: str | None = Field(
        default="Idempotency-Key", description="header carrying ctx.idempotency_key; null to send none"
    )
    idempotent: bool | None = Field(
        default=None,
        description="override: may the engine repeat this call after a crash? default: safe method",
    )

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out: dict[str, str] = {}
        for k, val in v.items():
            name = str(k)
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in _MANAGED_HEADERS:
                raise ValueError(f"header {name} is set by runbot (put the host in url)")
            if isinstance(val, bool) or not isinstance(val, str | int | float):
                raise ValueError(f"header {name}: expected a string")
            text = _scalar_text(val)
            if any(c in text for c in "\r\n\x00"):
                raise ValueError(f"header {name}: line breaks and NUL are not allowed")
            out[name] = text
        return out

    @field_validator("expect_status")
    @classmethod
    def _statuses(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("expect_status must list at least one status")
            bad = [s for s in v if not 100 <= s <= 599]
            if bad:
                raise ValueError(f"not HTTP statuses: {bad}")
        return v

    @field_validator("expect_json")
    @classmethod
    def _paths(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        for path in v or {}:
            parse_path(path)
        return v

    @field_validator("idempotency_header")
    @classmethod
    def _idem_header(cls, v: str | None) -> str | None:
        if v is not None and v != "" and not _HEADER_NAME.match(v):
            raise ValueError(f"invalid header name {v!r}")
        return v or None

    @model_validator(mode="after")
    def _one_body(self) -> HttpRequestParams:
        present = {
            "json": "json_" in self.model_fields_set,
            "form": self.form is not None,
            "body": self.body is not None,
        }
        given = [name for name, yes in present.items() if yes]
        if len(given) > 1:
            raise ValueError(f"give at most one of json, form, body (got {', '.join(given)})")
        return self


# ---- the step -----------------------------------------------------------------------------------------


@dataclass
class _Captured:
    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool
    url: httpx.URL  # the logical URL (host name, not the pinned address)


class _Refused(Exception):
    """The outbound policy refused a hop; the message already says which."""


class HttpRequest(Step[HttpRequestParams]):
    type = "http.request"
    kind = StepKind.REMEDIATION  # per call: safe methods are diagnostics, see idempotent/changes_things
    Params = HttpRequestParams
    default_timeout = 30.0
    doc = (
        "Calls an HTTP endpoint on an allow-listed host (private addresses refused unless configured), "
        "checks status and JSON, and captures the response for later steps."
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.policy = NetPolicy.from_settings(settings)
        self._ssl = ssl.create_default_context()
        if settings.http_ca_file is not None:  # trusted in addition to the system store
            self._ssl.load_verify_locations(cafile=str(settings.http_ca_file))

    def idempotent(self, params: HttpRequestParams) -> bool:
        if params.idempotent is not None:
            return params.idempotent
        return params.method in SAFE_METHODS

    def changes_things(self, raw_params: dict[str, Any]) -> bool:
        """GET/HEAD/OPTIONS are read-only; anything else (or a templated method) needs approval."""
        method = raw_params.get("method", "GET")
        if not isinstance(method, str) or _is_template(method):
            return True
        return method.strip().upper() not in SAFE_METHODS

    def lint(self, raw_params: dict[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        method = raw_params.get("method", "GET")
        if not isinstance(method, str) or (
            not _is_template(method) and method.strip().upper() not in METHODS
        ):
            problems.append(("method", f"unknown method {method!r}; use one of {', '.join(sorted(METHODS))}"))
        url = raw_params.get("url")
        if not isinstance(url, str) or not url.strip():
            problems.append(("url", "url is required (an absolute http:// or https:// URL)"))
        else:
            m = _STATIC_ORIGIN.match(url.strip())
            if m is None:
                if not url.lstrip().startswith(("{{", "{%")):
                    problems.append(("url", "url must be absolute, starting with http:// or https://"))
            elif not _is_template(m.group(0)):
                try:
                    self.policy.check_url(m.group(0))
                except PolicyError as exc:
                    problems.append(("url", str(exc)))
        bodies = [k for k in ("json", "form", "body") if k in raw_params]
        if len(bodies) > 1:
            problems.append((bodies[1], f"give at most one of json, form, body (got {', '.join(bodies)})"))
        expect = raw_params.get("expect_status")
        statuses_ok = isinstance(expect, list) and all(
            isinstance(s, int) and not isinstance(s, bool) for s in expect
        )
        if expect is not None and not _is_template(expect) and not statuses_ok:
            problems.append(
                ("expect_status", "expect_status must be a list of status codes, e.g. [200, 204]")
            )
        expect_json = raw_params.get("expect_json")
        if isinstance(expect_json, dict):
            for path in expect_json:
                try:
                    parse_path(str(path))
                except ValueError as exc:
                    problems.append((f"expect_json.{path}", str(exc)))
        elif expect_json is not None and not _is_template(expect_json):
            problems.append(
                ("expect_json", 'expect_json must be a mapping of path to value, e.g. {status: "ok"}')
            )
        return problems

    async def run(self, params: HttpRequestParams, ctx: StepContext) -> StepResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + ctx.remaining(self.default_timeout)
        method = params.method
        red = ctx.redactor.redact

        try:
            url = httpx.URL(params.url.strip())
            if params.query:
                url = url.copy_merge_params(
                    {
                        k: [_scalar_text(x) for x in v] if isinstance(v, list) else _scalar_text(v)
                        for k, v in params.query.items()
                    }
                )
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise StepError(
                red(f"{method} {display_url(red(params.url))}: invalid URL: {red(str(exc))}"), retryable=False
            ) from None
        shown = self._shown_url(params, ctx.redactor)
        if not url.scheme or not url.host:
            msg = f"{method} {shown}: url must be absolute, starting with http:// or https://"
            raise StepError(msg, retryable=False)

        headers = self._headers(params, ctx, url)
        content = self._content(params, headers)
        url = url.copy_with(userinfo=b"") if url.userinfo else url
        cap = self.settings.http_max_response_bytes
        if params.max_response_bytes is not None:
            cap = min(cap, params.max_response_bytes)
        max_redirects = self.settings.http_max_redirects
        if params.max_redirects is not None:
            max_redirects = min(max_redirects, params.max_redirects)
        if not params.follow_redirects:
            max_redirects = -1

        tries = 0
        async with httpx.AsyncClient(
            verify=self._ssl,
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            # `runbot test`: answered from the recorded responses (see runbot.rehearsal), never the network
            transport=ctx.rehearsal.transport("http") if ctx.rehearsal is not None else None,
        ) as client:
            while True:
                tries += 1
                try:
                    async with asyncio.timeout_at(deadline):
                        captured, redirects = await self._exchange(
                            client, method, url, headers, content, max_redirects, cap, deadline, ctx.redactor
                        )
                except _Refused as exc:
                    raise StepError(red(f"{method} {shown}: {exc}"), retryable=False) from None
                except TimeoutError:
                    spent = loop.time() - started
                    msg = f"{method} {shown}: timed out after {spent:.1f}s (try {tries})"
                    raise StepError(red(msg), retryable=True) from None
                except (httpx.TransportError, ResolveError) as exc:
                    if _tls_verification_failed(exc):
                        msg = f"{method} {shown}: TLS certificate verification failed: {one_line(red(str(exc)), 200)}"
                        raise StepError(red(msg), retryable=False) from None
                    if isinstance(exc, httpx.TimeoutException):
                        reason = f"timed out ({type(exc).__name__})"
                    else:
                        reason = one_line(red(str(exc)) or type(exc).__name__)
                    if self._may_retry(tries, params, deadline, 0.0):
                        await self._pause(ctx, tries, params, deadline, None, f"{method} {shown}: {reason}")
                        continue
                    raise StepError(
                        red(f"{method} {shown}: {reason} (try {tries})"), retryable=True
                    ) from None

                elapsed_ms = round((loop.time() - started) * 1000)
                output = self._output(captured, method, redirects, tries, elapsed_ms, params, ctx, cap, shown)
                status = captured.status
                ok = status in params.expect_status if params.expect_status else 200 <= status < 300
                if not ok:
                    retryable = status >= 500 or status in RETRYABLE_STATUSES
                    wanted = params.expect_status or "2xx"
                    snippet = (
                        f": {one_line(output['body'], 160)}" if output["body_encoding"] == "text" else ""
                    )
                    msg = f"{method} {shown}: HTTP {status} (expected {wanted})"
                    retry_after = _retry_after(captured.headers.get("retry-after"))
                    if retryable and self._may_retry(tries, params, deadline, retry_after or 0.0):
                        await self._pause(ctx, tries, params, deadline, retry_after, msg)
                        continue
                    if tries > 1:
                        msg += f" after {tries} tries"
                    raise StepError(red(msg + snippet), retryable=retryable, output=output)
                if params.expect_json:
                    problem = self._check_json(params.expect_json, output, captured, cap)
                    if problem:
                        raise StepError(red(f"{method} {shown}: {problem}"), retryable=False, output=output)
                return StepResult(
                    output=output, summary=red(f"{method} {shown} → {status} in {elapsed_ms} ms")
                )

    # ---- request building ---------------------------------------------------------------------------

    @staticmethod
    def _shown_url(params: HttpRequestParams, redactor: Redactor) -> str:
        """The URL for messages and output, built from the *masked* inputs the same way the real one is.

        Masking the URL httpx built would come too late: it re-encodes a spliced-in secret and splits it
        at `&`, so no single form of it is left to find.
        """
        try:
            twin = httpx.URL(redactor.redact(params.url.strip()))
            if params.query:
                twin = twin.copy_merge_params(
                    {
                        redactor.redact(k): [redactor.redact(_scalar_text(x)) for x in v]
                        if isinstance(v, list) else redactor.redact(_scalar_text(v))
                        for k, v in params.query.items()
                    }
                )
        except (httpx.InvalidURL, TypeError, ValueError):
            return redactor.redact(display_url(redactor.redact(params.url)))
        return redactor.redact(display_url(twin))

    def _headers(self, params: HttpRequestParams, ctx: StepContext, url: httpx.URL) -> httpx.Headers:
        headers = httpx.Headers({"User-Agent": self.settings.http_user_agent, "Accept-Encoding": "identity"})
        if params.idempotency_header:
            headers[params.idempotency_header] = ctx.idempotency_key
        if url.userinfo:  # RFC 7617: the decoded user and password, not their percent-encoded URL form
            token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        for k, v in params.headers.items():
            headers[k] = v
        inject_traceparent(headers)  # W3C trace context of the step's span, when tracing is on
        return headers

    @staticmethod
    def _content(params: HttpRequestParams, headers: httpx.Headers) -> bytes | None:
        def default_type(ct: str) -> None:
            if "content-type" not in headers:
                headers["Content-Type"] = ct

        if "json_" in params.model_fields_set:
            default_type("application/json")
            return json.dumps(params.json_, ensure_ascii=False, separators=(",", ":")).encode()
        if params.form is not None:
            pairs = [
                (k, _scalar_text(x))
                for k, v in params.form.items()
                for x in (v if isinstance(v, list) else [v])
            ]
            default_type("application/x-www-form-urlencoded")
            return urllib.parse.urlencode(pairs).encode()
        if params.body is not None:
            default_type("text/plain; charset=utf-8")
            return params.body.encode()
        return None

    # ---- sending --------------------------------------------------------------------------------------

    async def _exchange(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: httpx.URL,
        headers: httpx.Headers,
        content: bytes | None,
        max_redirects: int,
        cap: int,
        deadline: float,
        redactor: Redactor,
    ) -> tuple[_Captured, list[str]]:
        """One logical request: check, resolve, send to the checked address, follow redirects manually."""
        redirects: list[str] = []
        loop = asyncio.get_running_loop()

        def shown(u: httpx.URL | str) -> str:  # a server-given URL: masked before display_url decodes it
            return redactor.redact(display_url(redactor.redact(str(u))))

        while True:
            try:
                target = self.policy.check_url(url)
                addrs = await self.policy.resolve(target.host, target.port, timeout=deadline - loop.time())
            except PolicyError as exc:
                if redirects:
                    raise _Refused(f"redirect to {shown(url)} refused: {exc}") from None
                raise _Refused(f"refused by outbound policy: {exc}") from None
            captured = await self._send_pinned(
                client, method, url, addrs, headers, content, cap + REDACTION_MARGIN, deadline
            )
            location = captured.headers.get("location")
            if max_redirects < 0 or captured.status not in REDIRECT_STATUSES or not location:
                return captured, redirects
            if len(redirects) >= max_redirects:
                raise _Refused(f"more than {max_redirects} redirects (last to {shown(location)})")
            try:
                nxt = url.join(location)
            except (httpx.InvalidURL, ValueError):
                raise _Refused(f"invalid redirect location {one_line(redactor.redact(location), 100)!r}") from None
            if (captured.status == 303 and method != "HEAD") or (
                captured.status in (301, 302) and method == "POST"
            ):
                method, content = "GET", None
                headers = headers.copy()
                headers.pop("content-type", None)
            if (nxt.scheme, nxt.host, nxt.port) != (url.scheme, url.host, url.port):
                if content is not None:  # 307/308 (or 301/302 after PUT, ...) would resend the body elsewhere
                    raise _Refused(
                        f"HTTP {captured.status} redirect to another origin ({shown(nxt)}) would resend "
                        "the request body there; refused (call that URL directly if it is meant)"
                    )
                headers = _same_origin_only(headers, redactor)
            redirects.append(shown(nxt))
            url = nxt.copy_with(userinfo=b"") if nxt.userinfo else nxt

    async def _send_pinned(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: httpx.URL,
        addrs: list[Any],
        headers: httpx.Headers,
        content: bytes | None,
        cap: int,
        deadline: float,
    ) -> _Captured:
        """Send to each checked address in turn until one accepts the connection."""
        loop = asyncio.get_running_loop()
        host = url.raw_host.decode("ascii")
        literal = ip_literal(host) is not None
        host_header = url.netloc.decode("ascii")
        extensions: dict[str, Any] = {}
        if url.scheme == "https" and not literal:
            extensions["sni_hostname"] = host
        last: httpx.TransportError | None = None
        for i, ip in enumerate(addrs):
            remaining = max(0.05, deadline - loop.time())
            pinned = url if literal else url.copy_with(host=ip.compressed)
            h = headers.copy()
            h["Host"] = host_header
            client.cookies.clear()  # never carry cookies between hops or hosts
            request = client.build_request(
                method,
                pinned,
                headers=h,
                content=content,
                timeout=httpx.Timeout(remaining, connect=remaining / (len(addrs) - i)),
                extensions=dict(extensions),
            )
            try:
                response = await client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc
                continue
            try:
                body, truncated = await _read_capped(response, cap)
            finally:
                await response.aclose()
            return _Captured(response.status_code, response.headers, body, truncated, url)
        assert last is not None
        raise last

    # ---- retries and results ----------------------------------------------------------------------

    @staticmethod
    def _may_retry(tries: int, params: HttpRequestParams, deadline: float, wait_at_least: float) -> bool:
        if tries > params.retries:
            return False
        delay = max(params.retry_delay * 2 ** (tries - 1), wait_at_least)
        return asyncio.get_running_loop().time() + delay < deadline

    @staticmethod
    async def _pause(
        ctx: StepContext,
        tries: int,
        params: HttpRequestParams,
        deadline: float,
        retry_after: float | None,
        why: str,
    ) -> None:
        delay = max(params.retry_delay * 2 ** (tries - 1), retry_after or 0.0)
        ctx.log.warning(f"{one_line(why)}; retrying in {delay:g}s (try {tries + 1} of {params.retries + 1})")
        await asyncio.sleep(delay)

    def _output(
        self,
        cap: _Captured,
        method: str,
        redirects: list[str],
        tries: int,
        elapsed_ms: int,
        params: HttpRequestParams,
        ctx: StepContext,
        limit: int,
        shown: str,
    ) -> dict[str, Any]:
        content_type = cap.headers.get("content-type", "")
        charset = _charset(content_type)
        extra = 1 if cap.truncated else 0  # more was sent than was read
        body, truncated = redacted_capture(cap.body, len(cap.body) + extra, limit, ctx.redactor)
        cap.body, cap.truncated = body, truncated  # what _check_json looks at
        text, encoding = capture_text(body, truncated=truncated, charset=charset)  # base64 of masked bytes
        parsed: Any = None
        if encoding == "text" and not truncated and (_is_json_type(content_type) or params.expect_json):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
        headers: dict[str, str] = {}
        for k, v in cap.headers.multi_items():
            k = k.lower()
            v = MASK if k == "set-cookie" else v
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        out = {
            "status": cap.status,
            "method": method,
            "url": redirects[-1] if redirects else shown,
            "headers": headers,
            "body": text,
            "body_encoding": encoding,
            "truncated": cap.truncated,
            "size": len(cap.body),
            "json": parsed,
            "elapsed_ms": elapsed_ms,
            "attempts": tries,
            "redirects": redirects,
        }
        redacted: dict[str, Any] = ctx.redactor.redact_obj(out)
        return redacted

    @staticmethod
    def _check_json(expect: dict[str, Any], output: dict[str, Any], cap: _Captured, limit: int) -> str | None:
        if cap.truncated:
            return (
                f"expect_json: response truncated at {limit} bytes, cannot check (raise max_response_bytes)"
            )
        if output["json"] is None and output["body"].strip() != "null":
            ctype = cap.headers.get("content-type", "no content-type")
            return f"expect_json: response is not JSON ({ctype})"
        for path, wanted in expect.items():
            found, actual = lookup(output["json"], parse_path(path))
            if not found:
                return f"expect_json: {path} not found in the response"
            if not json_equal(actual, wanted):
                got = one_line(json.dumps(actual, ensure_ascii=False, default=str), 100)
                want = one_line(json.dumps(wanted, ensure_ascii=False, default=str), 100)
                return f"expect_json: {path} is {got}, expected {want}"
        return None


def _same_origin_only(headers: httpx.Headers, redactor: Redactor) -> httpx.Headers:
    """Headers for a hop to another origin: no credentials (Authorization, cookies), no header whose name
    says it carries one (X-Api-Key, X-Auth-Token, ...), and no header holding a registered secret."""
    kept = headers.copy()
    for name, value in headers.items():
        low = name.lower()
        credential = low in _ORIGIN_BOUND_HEADERS or _SENSITIVE_HEADER.search(low) is not None
        if low != "idempotency-key" and (credential or redactor.contains_secret(value)):
            kept.pop(name, None)
    return kept


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """Read at most `cap` bytes; stop (and let the caller drop the connection) once more arrives."""
    buf = bytearray()
    async for chunk in response.aiter_bytes():
        room = cap - len(buf)
        if len(chunk) > room:
            buf += chunk[:room]
            return bytes(buf), True
        buf += chunk
    return bytes(buf), False


def _tls_verification_failed(exc: BaseException) -> bool:
    """A certificate the CA bundle does not vouch for: retrying cannot help."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _charset(content_type: str) -> str | None:
    m = re.search(r"charset\s*=\s*\"?([A-Za-z0-9._:-]+)", content_type, re.IGNORECASE)
    return m.group(1) if m else None


def _is_json_type(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or unparseable."""
    if not value:
        return None
    v = value.strip()
    if v.isdigit():
        return float(v)
    try:
        when = parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None
