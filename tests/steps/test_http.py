"""http.request against a real local server: expectations, retries, outbound policy, capture limits."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog

from runbot.redaction import Redactor
from runbot.settings import Settings
from runbot.steps.base import StepContext, StepError, StepLogger, StepResult
from runbot.steps.http import HttpRequest, HttpRequestParams, display_url, parse_path
from runbot.steps.registry import StepRegistry
from tests.support.http_target import HttpTarget, Reply
from tests.support.ports import free_port

LOOPBACK = ["127.0.0.0/8", "::1/128"]

# ---- every outbound connect() and DNS lookup in this process, via the interpreter's audit hooks ----------

_events: list[tuple[str, Any]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _events is not None and event in ("socket.connect", "socket.getaddrinfo"):
        _events.append((event, args[1] if event == "socket.connect" else args[0]))


sys.addaudithook(_audit)


@contextmanager
def record_network() -> Iterator[list[tuple[str, Any]]]:
    """Record socket.connect (address) and socket.getaddrinfo (host) events made inside the block."""
    global _events
    _events = []
    try:
        yield _events
    finally:
        _events = None


def connects(events: list[tuple[str, Any]]) -> list[Any]:
    return [a for e, a in events if e == "socket.connect"]


# ---- helpers -----------------------------------------------------------------------------------------


@pytest.fixture
def srv() -> Iterator[HttpTarget]:
    with HttpTarget() as target:
        yield target


def settings_for(*targets: HttpTarget, cidrs: list[str] | None = None, **kw: Any) -> Settings:
    return Settings(
        http_allow_hosts=[t.netloc for t in targets] + kw.pop("hosts", []),
        http_allow_cidrs=LOOPBACK if cidrs is None else cidrs,
        **kw,
    )


def make_ctx(settings: Settings, attempt: int = 1, redactor: Redactor | None = None) -> StepContext:
    red = redactor or Redactor()
    return StepContext(
        run_id="r1",
        step_id="s1",
        attempt=attempt,
        idempotency_key=f"r1:s1:{attempt}",
        settings=settings,
        log=StepLogger(structlog.get_logger(), red),
        redactor=red,
        scope={},
    )


def run(
    settings: Settings, raw: dict[str, Any], *, ctx: StepContext | None = None, timeout: float | None = 10.0
) -> StepResult:
    step = HttpRequest(settings)
    params = HttpRequestParams.model_validate(raw)
    context = ctx or make_ctx(settings)

    async def go() -> StepResult:
        if timeout is not None:
            context.deadline = asyncio.get_running_loop().time() + timeout
        result = await step.run(params, context)
        assert isinstance(result, StepResult)
        return result

    return asyncio.run(go())


def fails(settings: Settings, raw: dict[str, Any], **kw: Any) -> StepError:
    with pytest.raises(StepError) as info:
        run(settings, raw, **kw)
    assert "\n" not in info.value.message
    return info.value


# ---- success and expectations ------------------------------------------------------------------------


def test_get_captures_response_and_sends_idempotency_key(srv: HttpTarget) -> None:
    srv.route("/health", Reply(json={"status": "ok", "items": [{"ready": True}]}, headers={"X-Extra": "1"}))
    result = run(settings_for(srv), {"url": srv.url("/health")})
    out = result.output
    assert out["status"] == 200
    assert out["json"] == {"status": "ok", "items": [{"ready": True}]}
    assert out["body_encoding"] == "text" and '"status": "ok"' in out["body"]
    assert out["headers"]["content-type"] == "application/json" and out["headers"]["x-extra"] == "1"
    assert out["truncated"] is False and out["size"] == len(out["body"])
    assert isinstance(out["elapsed_ms"], int) and out["attempts"] == 1 and out["redirects"] == []
    req = srv.last("/health")
    assert req.method == "GET"
    assert req.header("Idempotency-Key") == "r1:s1:1"
    assert req.header("User-Agent") == "runbot"
    assert req.header("Accept-Encoding") == "identity"
    assert req.header("Host") == srv.netloc
    assert "→ 200" in result.summary


def test_unexpected_4xx_is_not_retryable_and_carries_the_response(srv: HttpTarget) -> None:
    srv.route("/x", Reply(404, json={"error": "no such service"}))
    err = fails(settings_for(srv), {"url": srv.url("/x"), "expect_status": [200]})
    assert err.retryable is False
    assert err.output["status"] == 404 and err.output["json"] == {"error": "no such service"}
    assert err.message.startswith(f"GET {srv.url('/x')}: HTTP 404 (expected [200])")
    assert "no such service" in err.message


def test_expect_status_may_accept_other_codes(srv: HttpTarget) -> None:
    srv.route("/gone", Reply(410))
    assert (
        run(settings_for(srv), {"url": srv.url("/gone"), "expect_status": [404, 410]}).output["status"] == 410
    )
    srv.route("/created", Reply(201))
    err = fails(settings_for(srv), {"url": srv.url("/created"), "expect_status": [200]})
    assert err.retryable is False and "HTTP 201" in err.message


def test_expect_json(srv: HttpTarget) -> None:
    doc = {"status": "ok", "replicas": 3, "ready": True, "items": [{"name": "a"}, {"name": "b"}], "k.v": 1}
    srv.route("/s", Reply(json=doc))
    s = settings_for(srv)
    ok = {
        "status": "ok",
        "replicas": 3.0,
        "ready": True,
        "items[1].name": "b",
        "items[-1].name": "b",
        '["k.v"]': 1,
    }
    assert run(s, {"url": srv.url("/s"), "expect_json": ok}).output["json"] == doc

    err = fails(s, {"url": srv.url("/s"), "expect_json": {"status": "degraded"}})
    assert err.retryable is False and err.output["status"] == 200
    assert 'expect_json: status is "ok", expected "degraded"' in err.message
    assert "not found" in fails(s, {"url": srv.url("/s"), "expect_json": {"items[5].name": "a"}}).message
    # JSON equality: true is not 1, "3" is not 3
    assert "expected 1" in fails(s, {"url": srv.url("/s"), "expect_json": {"ready": 1}}).message
    assert fails(s, {"url": srv.url("/s"), "expect_json": {"replicas": "3"}}).retryable is False

    srv.route("/text", Reply(body="all good"))
    assert "not JSON" in fails(s, {"url": srv.url("/text"), "expect_json": {"status": "ok"}}).message


def test_parse_path() -> None:
    assert parse_path("$.a.b[0]['c.d'][\"e\"]") == ["a", "b", 0, "c.d", "e"]
    assert parse_path("items[-1]") == ["items", -1]
    assert parse_path("") == []
    for bad in ["a..b", "a[x]", "a b", "[0"]:
        with pytest.raises(ValueError, match="invalid path"):
            parse_path(bad)


# ---- timeouts and retries ----------------------------------------------------------------------------


def test_timeout_is_retryable_and_respects_the_deadline(srv: HttpTarget) -> None:
    srv.route("/slow", Reply(delay=5.0))
    t0 = time.monotonic()
    err = fails(settings_for(srv), {"url": srv.url("/slow")}, timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert err.retryable is True and "timed out" in err.message


def test_in_step_retries_keep_the_same_idempotency_key(srv: HttpTarget) -> None:
    srv.route("/flaky", [Reply(503), Reply(503), Reply(200, json={"done": True})])
    out = run(settings_for(srv), {"method": "POST", "url": srv.url("/flaky"), "json": {"a": 1},
                                  "retries": 2, "retry_delay": "10ms"}).output  # fmt: skip
    assert out["status"] == 200 and out["attempts"] == 3
    reqs = srv.requests_for("/flaky")
    assert len(reqs) == 3
    assert {r.header("Idempotency-Key") for r in reqs} == {"r1:s1:1"}
    assert all(r.json() == {"a": 1} for r in reqs)


def test_5xx_after_retries_is_retryable_with_the_response(srv: HttpTarget) -> None:
    srv.route("/down", Reply(502, body="bad gateway"))
    err = fails(settings_for(srv), {"url": srv.url("/down"), "retries": 1, "retry_delay": "10ms"})
    assert err.retryable is True
    assert err.output["status"] == 502 and err.output["body"] == "bad gateway"
    assert "HTTP 502" in err.message and "after 2 tries" in err.message
    assert srv.calls("/down") == 2


def test_each_engine_attempt_sends_its_own_key(srv: HttpTarget) -> None:
    srv.route("/op", [Reply(503), Reply(200)])
    s = settings_for(srv)
    assert fails(s, {"method": "POST", "url": srv.url("/op")}, ctx=make_ctx(s, attempt=1)).retryable is True
    run(s, {"method": "POST", "url": srv.url("/op")}, ctx=make_ctx(s, attempt=2))
    assert [r.header("Idempotency-Key") for r in srv.requests_for("/op")] == ["r1:s1:1", "r1:s1:2"]


def test_429_honours_retry_after(srv: HttpTarget) -> None:
    srv.route("/rl", [Reply(429, headers={"Retry-After": "0"}), Reply(200)])
    assert (
        run(settings_for(srv), {"url": srv.url("/rl"), "retries": 1, "retry_delay": "1ms"}).output["status"]
        == 200
    )
    srv.route("/rl2", Reply(429, headers={"Retry-After": "3600"}))
    t0 = time.monotonic()
    err = fails(settings_for(srv), {"url": srv.url("/rl2"), "retries": 3}, timeout=2)
    assert err.retryable is True and time.monotonic() - t0 < 1.5  # a wait past the deadline is not attempted
    assert srv.calls("/rl2") == 1


def test_connection_refused_is_retryable() -> None:
    port = free_port()
    s = Settings(http_allow_hosts=[f"127.0.0.1:{port}"], http_allow_cidrs=LOOPBACK)
    err = fails(s, {"url": f"http://127.0.0.1:{port}/"})
    assert err.retryable is True and f"127.0.0.1:{port}" in err.message


def test_idempotency_header_name_is_configurable(srv: HttpTarget) -> None:
    srv.route("/k", Reply(200))
    s = settings_for(srv)
    run(s, {"url": srv.url("/k"), "idempotency_header": "X-Request-Id"})
    assert (
        srv.last("/k").header("X-Request-Id") == "r1:s1:1"
        and srv.last("/k").header("Idempotency-Key") is None
    )
    run(s, {"url": srv.url("/k"), "idempotency_header": None})
    assert srv.last("/k").header("Idempotency-Key") is None


# ---- request shape -----------------------------------------------------------------------------------


def test_request_shape(srv: HttpTarget) -> None:
    srv.route("/api", Reply(201))
    s = settings_for(srv)
    run(s, {"method": "put", "url": srv.url("/api?a=1"), "query": {"b": 2, "c": [True, "x"]},
            "headers": {"X-Team": "sre", "Content-Type": "application/vnd.x+json"}, "json": {"n": [1, 2]}})  # fmt: skip
    req = srv.last("/api")
    assert req.method == "PUT"
    assert req.params == {"a": ["1"], "b": ["2"], "c": ["true", "x"]}
    assert req.header("X-Team") == "sre" and req.header("Content-Type") == "application/vnd.x+json"
    assert req.json() == {"n": [1, 2]}

    run(s, {"method": "POST", "url": srv.url("/api"), "form": {"a": "1 2", "b": ["x", "y"]}})
    req = srv.last("/api")
    assert req.header("Content-Type") == "application/x-www-form-urlencoded"
    assert req.text() == "a=1+2&b=x&b=y"

    run(s, {"method": "PATCH", "url": srv.url("/api"), "body": "raw text"})
    assert srv.last("/api").text() == "raw text"

    srv.route("/h", Reply(200, body="ignored"))
    out = run(s, {"method": "HEAD", "url": srv.url("/h")}).output
    assert out["status"] == 200 and out["body"] == ""


def test_userinfo_becomes_basic_auth_and_is_masked(srv: HttpTarget) -> None:
    srv.route("/p", Reply(401, body="no"))
    err = fails(settings_for(srv), {"url": f"http://ops:hunter2@{srv.netloc}/p?token=abc123&page=2"})
    assert "hunter2" not in err.message and "abc123" not in err.message
    assert f"http://ops:****@{srv.netloc}/p?token=****&page=2" in err.message
    assert srv.last("/p").header("Authorization") == "Basic " + base64.b64encode(b"ops:hunter2").decode()


def test_registered_secrets_are_redacted_from_messages_and_output(srv: HttpTarget) -> None:
    secret = "s3cr3t-value-42"
    red = Redactor([secret])
    srv.route(f"/v1/{secret}", Reply(403, json={"echo": secret}))
    s = settings_for(srv)
    err = fails(s, {"url": srv.url(f"/v1/{secret}")}, ctx=make_ctx(s, redactor=red))
    assert secret not in err.message and "****" in err.message
    assert secret not in repr(err.output)


def test_display_url() -> None:
    assert (
        display_url("https://u:p@h.example:8443/a?api_key=1&x=&y=2")
        == "https://u:****@h.example:8443/a?api_key=****&x&y=2"
    )
    assert display_url("http://[::1]/") == "http://[::1]/"


# ---- outbound policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "cidrs", "reason"),
    [
        ("http://10.0.0.1/admin", [], "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", [], "169.254.169.254 is a cloud metadata address"),
        ("http://169.254.169.254/latest/meta-data/", ["169.254.0.0/16"], "metadata"),
        ("http://[fd00:ec2::254]/latest/", ["fd00::/8"], "fd00:ec2::254 is a cloud metadata address"),
        ("http://[::ffff:169.254.169.254]/", [], "cloud metadata"),
        ("http://0.0.0.0:9/", [], "unspecified"),
    ],
)
def test_blocked_addresses_are_refused_before_any_connection(url: str, cidrs: list[str], reason: str) -> None:
    s = Settings(http_allow_hosts=["*"], http_allow_cidrs=cidrs)
    with record_network() as events:
        err = fails(s, {"url": url})
    assert err.retryable is False and reason in err.message and "refused by outbound policy" in err.message
    assert connects(events) == []


def test_host_outside_the_allow_list_is_refused_without_dns_or_connection() -> None:
    s = Settings(http_allow_hosts=["*.internal.example"])
    with record_network() as events:
        err = fails(s, {"url": "https://example.com/"})
    assert "host example.com:443 is not in RUNBOT_HTTP_ALLOW_HOSTS" in err.message
    assert events == []
    with record_network() as events:
        err = fails(Settings(), {"url": "https://example.com/"})
    assert "RUNBOT_HTTP_ALLOW_HOSTS is empty" in err.message and events == []


def test_loopback_target_needs_explicit_cidr(srv: HttpTarget) -> None:
    srv.route("/ok", Reply(200))
    url = f"http://localhost:{srv.port}/ok"
    closed = Settings(http_allow_hosts=[f"localhost:{srv.port}"])
    with record_network() as events:
        err = fails(closed, {"url": url})
    assert "localhost resolves to" in err.message and "loopback" in err.message and err.retryable is False
    assert connects(events) == [] and srv.calls() == 0

    opened = Settings(http_allow_hosts=[f"localhost:{srv.port}"], http_allow_cidrs=LOOPBACK)
    with record_network() as events:
        assert run(opened, {"url": url}).output["status"] == 200
    # the connection went to the checked address, while Host still names the host
    assert connects(events) and all(addr[0] in ("127.0.0.1", "::1") for addr in connects(events))
    assert srv.last("/ok").header("Host") == f"localhost:{srv.port}"


def test_scheme_not_allowed(srv: HttpTarget) -> None:
    s = settings_for(srv, http_allow_schemes=["https"])
    assert "scheme 'http' is not allowed" in fails(s, {"url": srv.url("/")}).message
    assert srv.calls() == 0


# ---- redirects ---------------------------------------------------------------------------------------


def test_redirect_to_a_disallowed_host_is_refused(srv: HttpTarget) -> None:
    srv.route("/meta", Reply.redirect("http://169.254.169.254/latest/meta-data/iam/"))
    srv.route("/other", Reply.redirect(f"http://localhost:{srv.port}/x"))
    s = Settings(http_allow_hosts=[srv.netloc, "169.254.169.254"], http_allow_cidrs=LOOPBACK)
    with record_network() as events:
        err = fails(s, {"url": srv.url("/meta")})
    assert err.retryable is False
    assert "redirect to http://169.254.169.254/latest/meta-data/iam/ refused" in err.message
    assert "cloud metadata" in err.message
    assert [a[0] for a in connects(events)] == ["127.0.0.1"]  # only the first hop connected
    err = fails(s, {"url": srv.url("/other")})
    assert (
        f"redirect to http://localhost:{srv.port}/x refused: host localhost:{srv.port} is not in"
        in err.message
    )
    assert srv.calls("/x") == 0


def test_redirects_are_followed_up_to_the_limit(srv: HttpTarget) -> None:
    srv.route("/a", Reply.redirect("/b", 301))
    srv.route("/b", Reply.redirect(srv.url("/c"), 307))
    srv.route("/c", Reply(json={"at": "c"}))
    s = settings_for(srv)
    out = run(s, {"url": srv.url("/a")}).output
    assert out["json"] == {"at": "c"} and out["redirects"] == [srv.url("/b"), srv.url("/c")]
    assert out["url"] == srv.url("/c")
    assert "more than 1 redirects" in fails(s, {"url": srv.url("/a"), "max_redirects": 1}).message
    assert (
        "more than 0 redirects"
        in fails(settings_for(srv, http_max_redirects=0), {"url": srv.url("/a")}).message
    )
    out = run(s, {"url": srv.url("/a"), "follow_redirects": False, "expect_status": [301]}).output
    assert out["headers"]["location"] == "/b"

    srv.route("/loop", Reply.redirect("/loop"))
    assert "more than 5 redirects" in fails(s, {"url": srv.url("/loop")}).message
    assert srv.calls("/loop") == 6


def test_redirect_method_and_credential_rules() -> None:
    with HttpTarget() as a, HttpTarget() as b:
        a.route("/login", Reply.redirect(b.url("/done"), 303))
        a.route("/keep", Reply.redirect("/kept", 307))
        a.route("/kept", Reply(200))
        b.route("/done", Reply(200))
        s = settings_for(a, b)
        raw = {
            "method": "POST",
            "headers": {"Authorization": "Bearer tok", "Cookie": "c=1"},
            "json": {"x": 1},
        }
        run(s, {**raw, "url": a.url("/login")})
        done = b.last("/done")
        # 303 -> GET without body; a different origin never sees the credentials; the key travels on
        assert done.method == "GET" and done.body == b"" and done.header("Content-Type") is None
        assert done.header("Authorization") is None and done.header("Cookie") is None
        assert done.header("Idempotency-Key") == "r1:s1:1"

        run(s, {**raw, "url": a.url("/keep")})
        kept = a.last("/kept")
        # 307 on the same origin: method, body and credentials are kept
        assert (
            kept.method == "POST" and kept.json() == {"x": 1} and kept.header("Authorization") == "Bearer tok"
        )


def test_custom_secret_headers_do_not_follow_a_cross_origin_redirect() -> None:
    token = "tok-7c6b5a4f3e2d"
    with HttpTarget() as a, HttpTarget() as b:
        a.route("/hop", Reply.redirect(b.url("/land"), 302))
        a.route("/stay", Reply.redirect("/land", 302))
        a.route("/land", Reply(200))
        b.route("/land", Reply(200))
        s = settings_for(a, b)
        headers = {"X-Api-Key": "k-1", "X-Custom": f"Bearer {token}", "X-Request-Id": "req-1", "Accept": "text/plain"}
        run(s, {"url": a.url("/hop"), "headers": headers}, ctx=make_ctx(s, redactor=Redactor([token])))
        landed = b.last("/land")
        assert landed.header("X-Api-Key") is None, "a header named like a credential stays with its origin"
        assert landed.header("X-Custom") is None, "a header holding a registered secret stays with its origin"
        assert landed.header("X-Request-Id") == "req-1" and landed.header("Accept") == "text/plain"
        run(s, {"url": a.url("/stay"), "headers": headers}, ctx=make_ctx(s, redactor=Redactor([token])))
        assert a.last("/land").header("X-Api-Key") == "k-1" and a.last("/land").header("X-Custom") == f"Bearer {token}"


@pytest.mark.parametrize("status", [307, 308])
def test_a_body_is_never_resent_to_another_origin(status: int) -> None:
    with HttpTarget() as a, HttpTarget() as b:
        a.route("/post", Reply.redirect(b.url("/elsewhere"), status))
        b.route("/elsewhere", Reply(200))
        err = fails(settings_for(a, b), {"method": "POST", "url": a.url("/post"), "json": {"password": "pw"}})
        assert err.retryable is False and "would resend the request body" in err.message
        assert b.calls("/elsewhere") == 0


def test_a_binary_body_is_masked_before_it_is_base64_encoded(srv: HttpTarget) -> None:
    secret = "bin-s3cret-9a8b7c"
    srv.route("/bin", Reply(body=b"\xff\xfe" + secret.encode() + b"\x00\x81"))
    s = settings_for(srv)
    out = run(s, {"url": srv.url("/bin")}, ctx=make_ctx(s, redactor=Redactor([secret]))).output
    assert out["body_encoding"] == "base64" and base64.b64decode(out["body"]) == b"\xff\xfe****\x00\x81"


def test_a_secret_straddling_the_capture_cap_is_masked_whole(srv: HttpTarget) -> None:
    secret = "cut-s3cret-0123456789abcdef"
    srv.route("/long", Reply(body=("x" * 90 + secret + "y" * 500).encode()))
    s = settings_for(srv)
    out = run(s, {"url": srv.url("/long"), "max_response_bytes": 100},
              ctx=make_ctx(s, redactor=Redactor([secret]))).output  # fmt: skip
    assert out["truncated"] is True and out["body"].startswith("x" * 90 + "****")
    assert secret[:10] not in out["body"]


def test_basic_auth_uses_the_decoded_user_and_password(srv: HttpTarget) -> None:
    srv.route("/p", Reply(200))
    run(settings_for(srv), {"url": f"http://ops:p%40ss%2Fw@{srv.netloc}/p"})
    assert srv.last("/p").header("Authorization") == "Basic " + base64.b64encode(b"ops:p@ss/w").decode()


def test_cookies_are_not_carried_between_hops(srv: HttpTarget) -> None:
    srv.route("/set", Reply(302, headers={"Location": "/next", "Set-Cookie": "session=abc; Path=/"}))
    srv.route("/next", Reply(200))
    out = run(
        settings_for(srv), {"url": srv.url("/set"), "follow_redirects": False, "expect_status": [302]}
    ).output
    assert out["headers"]["set-cookie"] == "****"
    run(settings_for(srv), {"url": srv.url("/set")})
    assert srv.last("/next").header("Cookie") is None


# ---- capture limits ----------------------------------------------------------------------------------


def test_body_is_capped_and_flagged(srv: HttpTarget) -> None:
    srv.route("/big", Reply(body="é" * 3000))  # 6000 bytes of two-byte characters
    out = run(settings_for(srv), {"url": srv.url("/big"), "max_response_bytes": 1001}).output
    assert out["truncated"] is True and out["size"] == 1001
    assert out["body_encoding"] == "text" and out["body"] == "é" * 500  # the split character is dropped
    # the configured cap wins over a larger per-step value
    out = run(
        settings_for(srv, http_max_response_bytes=100), {"url": srv.url("/big"), "max_response_bytes": 5000}
    ).output
    assert out["size"] == 100 and out["truncated"] is True
    out = run(settings_for(srv), {"url": srv.url("/big")}).output
    assert out["truncated"] is False and out["size"] == 6000


def test_endless_body_stops_at_the_cap(srv: HttpTarget) -> None:
    srv.route("/stream", Reply(stream=Reply.endless()))
    t0 = time.monotonic()
    out = run(settings_for(srv, http_max_response_bytes=200_000), {"url": srv.url("/stream")}).output
    assert out["truncated"] is True and out["size"] == 200_000 and time.monotonic() - t0 < 5


def test_binary_body_is_base64(srv: HttpTarget) -> None:
    data = bytes(range(256)) * 4
    srv.route("/bin", Reply(body=data))
    out = run(settings_for(srv), {"url": srv.url("/bin")}).output
    assert out["body_encoding"] == "base64" and base64.b64decode(out["body"]) == data and out["json"] is None


# ---- declarations, lint, params ----------------------------------------------------------------------


def test_idempotent_and_changes_things() -> None:
    step = HttpRequest(Settings())

    def p(**kw: Any) -> HttpRequestParams:
        return HttpRequestParams.model_validate({"url": "https://x.example/", **kw})

    assert step.idempotent(p()) and step.idempotent(p(method="HEAD")) and step.idempotent(p(method="options"))
    assert not step.idempotent(p(method="POST")) and not step.idempotent(p(method="DELETE"))
    assert step.idempotent(p(method="PUT", idempotent=True))
    assert not step.idempotent(p(method="GET", idempotent=False))
    assert step.changes_things({"url": "x"}) is False
    assert step.changes_things({"method": "get"}) is False
    for m in ["POST", "PUT", "PATCH", "DELETE", "{{ params.method }}"]:
        assert step.changes_things({"method": m}) is True
    assert step.changes_things({"method": "PUT", "idempotent": True}) is True


def test_lint() -> None:
    step = HttpRequest(Settings(http_allow_hosts=["*.internal.example"]))
    assert step.lint({"url": "https://api.internal.example/{{ alert.labels.path }}"}) == []
    assert step.lint({"url": "https://{{ alert.labels.service }}.internal.example/healthz"}) == []
    assert step.lint({"url": "{{ params.url }}"}) == []
    problems = dict(step.lint({"url": "https://evil.example/x", "method": "FETCH", "json": {}, "body": "x",
                               "expect_status": 200, "expect_json": {"a..b": 1}}))  # fmt: skip
    assert "not in RUNBOT_HTTP_ALLOW_HOSTS" in problems["url"]
    assert "unknown method" in problems["method"]
    assert "at most one of json, form, body" in problems["body"]
    assert "list of status codes" in problems["expect_status"]
    assert "invalid path" in problems["expect_json.a..b"]
    assert step.lint({"url": "example.com/x"}) == [
        ("url", "url must be absolute, starting with http:// or https://")
    ]
    assert step.lint({}) == [("url", "url is required (an absolute http:// or https:// URL)")]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"headers": {"Host": "other"}}, "set by runbot"),
        ({"headers": {"X-A": "a\r\nInjected: 1"}}, "line breaks"),
        ({"headers": {"bad name": "x"}}, "invalid header name"),
        ({"json": {}, "form": {}}, "at most one of json, form"),
        ({"expect_status": [200, 700]}, "not HTTP statuses"),
        ({"method": "TRACE"}, "Input should be"),
        ({"retries": 11}, "less than or equal"),
    ],
)
def test_params_validation(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        HttpRequestParams.model_validate({"url": "https://x.example/", **raw})


def test_registered() -> None:
    reg = StepRegistry(Settings())
    assert isinstance(reg.get("http.request"), HttpRequest)


# ---- TLS ---------------------------------------------------------------------------------------------


def test_https_connects_to_the_checked_address_but_verifies_the_name() -> None:
    with HttpTarget(tls=True) as srv:
        srv.route("/ok", Reply(json={"tls": True}))
        s = Settings(
            http_allow_hosts=[f"localhost:{srv.port}"], http_allow_cidrs=LOOPBACK, http_ca_file=srv.ca_file
        )
        with record_network() as events:
            out = run(s, {"url": f"https://localhost:{srv.port}/ok"}).output
        assert out["json"] == {"tls": True}
        assert connects(events) and all(addr[0] in ("127.0.0.1", "::1") for addr in connects(events))
        assert srv.sni_names == ["localhost"]
        assert srv.last("/ok").header("Host") == f"localhost:{srv.port}"


def test_certificate_not_matching_the_name_is_not_retryable() -> None:
    with HttpTarget(tls=True, tls_names=["other.example"]) as srv:
        srv.route("/ok", Reply(200))
        s = Settings(
            http_allow_hosts=[f"localhost:{srv.port}"], http_allow_cidrs=LOOPBACK, http_ca_file=srv.ca_file
        )
        err = fails(s, {"url": f"https://localhost:{srv.port}/ok"})
        assert err.retryable is False and "TLS certificate verification failed" in err.message
        assert srv.calls() == 0
    with HttpTarget(tls=True) as srv:  # a CA nobody configured
        s = Settings(http_allow_hosts=[srv.netloc], http_allow_cidrs=LOOPBACK)
        assert "TLS certificate verification failed" in fails(s, {"url": srv.url("/")}).message
