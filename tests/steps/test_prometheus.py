"""prometheus.query / .range / .graph against a real Prometheus (and a scripted fake for rare failures)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from runbot.domain import StepKind
from runbot.redaction import Redactor
from runbot.settings import Settings
from runbot.steps.base import StepContext, StepError, StepLogger, StepResult
from runbot.steps.prometheus import decimate, parse_timestamp, resolve_server
from runbot.steps.registry import StepRegistry
from tests.support.ports import free_port
from tests.support.prometheus import (
    BasicAuthUser,
    FakePrometheusAPI,
    PrometheusProcess,
    Reply,
    bcrypt_available,
    prometheus_available,
    running_prometheus,
    self_signed_cert,
    vector_reply,
)

RULES = """
groups:
  - name: runbot-test
    interval: 1s
    rules:
      - record: runbot_test_ratio
        expr: vector(0.02)
      - record: runbot_test_requests
        expr: label_replace(vector(5), "code", "200", "", "") or label_replace(vector(0), "code", "500", "", "")
      - record: runbot_test_nan
        expr: vector(0) / 0
      - record: runbot_test_inf
        expr: vector(1) / 0
"""

needs_prometheus = pytest.mark.skipif(not prometheus_available(), reason="prometheus binary not installed")


# ---- helpers ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    result: StepResult | None
    error: StepError | None
    ctx: StepContext
    elapsed: float

    @property
    def output(self) -> dict[str, Any]:
        if self.result is not None:
            return self.result.output
        assert self.error is not None
        return self.error.output


def settings_for(url: str | None = None, **kw: Any) -> Settings:
    return Settings(prometheus_url=url, **kw)


def make_ctx(settings: Settings, alert: dict[str, Any] | None = None, step_id: str = "s1") -> StepContext:
    redactor = Redactor()
    return StepContext(
        run_id="run-1",
        step_id=step_id,
        attempt=1,
        idempotency_key=f"run-1:{step_id}:1",
        settings=settings,
        log=StepLogger(structlog.get_logger(), redactor),
        redactor=redactor,
        scope={"alert": alert or {}, "params": {}, "steps": {}, "run": {}, "incident": {}},
    )


def run_step(
    step_type: str,
    params: dict[str, Any],
    settings: Settings,
    *,
    alert: dict[str, Any] | None = None,
    timeout: float | None = 20.0,
    step_id: str = "s1",
) -> Outcome:
    plugin = StepRegistry(settings).get(step_type)
    validated = plugin.Params.model_validate(params)
    ctx = make_ctx(settings, alert, step_id)

    async def go() -> Outcome:
        loop = asyncio.get_running_loop()
        if timeout is not None:
            ctx.deadline = loop.time() + timeout
        t0 = time.monotonic()
        try:
            res = await plugin.run(validated, ctx)
            assert isinstance(res, StepResult)
            return Outcome(res, None, ctx, time.monotonic() - t0)
        except StepError as exc:
            return Outcome(None, exc, ctx, time.monotonic() - t0)

    return asyncio.run(go())


def strict_json(obj: Any) -> str:
    return json.dumps(obj, allow_nan=False)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, chunk = struct.unpack(">I4s", data[8:16])
    assert chunk == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not prometheus_available():
        pytest.skip("prometheus binary not installed")
    with running_prometheus(tmp_path_factory.mktemp("prom"), rules=[RULES], samples=4) as p:
        p.wait_for("runbot_test_requests", check=lambda r: len(r) == 2)
        p.wait_for("runbot_test_inf")
        yield p


@pytest.fixture(scope="module")
def settings(prom: PrometheusProcess) -> Settings:
    return settings_for(prom.url)


# ---- instant queries -------------------------------------------------------------------------------------


@pytest.mark.integration
class TestQuery:
    def test_scalar(self, settings: Settings) -> None:
        out = run_step("prometheus.query", {"query": "0.5 * 4"}, settings)
        assert out.error is None
        assert out.output["result_type"] == "scalar"
        assert out.output["value"] == 2.0
        assert out.output["series"] == [{"labels": {}, "value": 2.0}]
        assert out.output["server"] == "default"
        assert out.result is not None and out.result.summary == "value = 2"

    def test_single_series_vector(self, settings: Settings) -> None:
        out = run_step("prometheus.query", {"query": "runbot_test_ratio"}, settings)
        o = out.output
        assert o["result_type"] == "vector" and o["count"] == 1
        assert o["value"] == pytest.approx(0.02)
        assert o["series"][0]["labels"]["__name__"] == "runbot_test_ratio"
        assert o["truncated"] is False
        strict_json(o)

    def test_multi_series_from_self_scrape(self, settings: Settings) -> None:
        out = run_step(
            "prometheus.query", {"query": 'prometheus_http_requests_total{job="prometheus"}'}, settings
        )
        o = out.output
        assert o["count"] >= 2
        assert o["value"] is None  # only defined for exactly one series
        assert all("handler" in s["labels"] and isinstance(s["value"], float) for s in o["series"])
        assert out.result is not None and f"{o['count']} series" in out.result.summary
        strict_json(o)

    def test_up_is_one_with_expect(self, settings: Settings) -> None:
        out = run_step(
            "prometheus.query", {"query": 'up{job="prometheus"}', "expect": "value == 1"}, settings
        )
        assert out.error is None
        assert out.output["expect"] == {"expression": "value == 1", "passed": True}
        assert out.result is not None and out.result.summary.startswith("expect passed: value == 1")

    def test_expect_fails_with_the_value_in_message_and_output(self, settings: Settings) -> None:
        out = run_step("prometheus.query", {"query": "runbot_test_ratio", "expect": "value < 0.01"}, settings)
        err = out.error
        assert err is not None and err.retryable is False
        assert "expect failed: value < 0.01" in err.message and "0.02" in err.message
        assert err.output["value"] == pytest.approx(0.02)
        assert err.output["expect"] == {"expression": "value < 0.01", "passed": False}

    def test_expect_over_series(self, settings: Settings) -> None:
        q = {"query": "runbot_test_requests"}
        failing = run_step("prometheus.query", {**q, "expect": "all(series.value > 0)"}, settings)
        assert failing.error is not None and not failing.error.retryable
        assert 'code="500"' in failing.error.message and "= 0" in failing.error.message
        for expr in ("any(series.value > 0)", "len(series) == 2", 'any(series.labels.code == "500")',
                     "max(series.value) == 5 and min(series.value) == 0"):  # fmt: skip
            out = run_step("prometheus.query", {**q, "expect": expr}, settings)
            assert out.error is None, (expr, out.error)

    def test_expect_value_with_several_series_explains(self, settings: Settings) -> None:
        out = run_step("prometheus.query", {"query": "runbot_test_requests", "expect": "value > 1"}, settings)
        assert out.error is not None and not out.error.retryable
        assert "exactly one series" in out.error.message and "returned 2" in out.error.message

    def test_empty_result(self, settings: Settings) -> None:
        out = run_step("prometheus.query", {"query": "no_such_metric_runbot"}, settings)
        assert out.output["count"] == 0 and out.output["value"] is None and out.output["series"] == []
        failed = run_step(
            "prometheus.query", {"query": "no_such_metric_runbot", "expect": "value < 1"}, settings
        )
        assert failed.error is not None and "returned 0" in failed.error.message
        ok = run_step(
            "prometheus.query", {"query": "no_such_metric_runbot", "expect": "len(series) == 0"}, settings
        )
        assert ok.error is None

    def test_nan_and_inf_are_strict_json(self, settings: Settings) -> None:
        nan = run_step("prometheus.query", {"query": "runbot_test_nan"}, settings).output
        inf = run_step("prometheus.query", {"query": "runbot_test_inf", "expect": "value > 1000"}, settings)
        assert nan["value"] == "NaN"
        assert inf.error is None and inf.output["value"] == "+Inf"
        strict_json(nan)
        strict_json(inf.output)

    def test_promql_syntax_error_shows_server_message(self, settings: Settings) -> None:
        out = run_step("prometheus.query", {"query": "sum(rate(up[5m])"}, settings)
        err = out.error
        assert err is not None and err.retryable is False
        assert "PromQL error" in err.message and "parse error" in err.message
        assert "Traceback" not in err.message and str(settings.prometheus_url) in err.message
        assert err.output["query"] == "sum(rate(up[5m])"

    def test_execution_error_is_not_retried(self, settings: Settings) -> None:
        # many-to-many matching: valid syntax, fails when evaluated (HTTP 422, errorType execution)
        q = "runbot_test_requests + on() group_left() runbot_test_requests"
        out = run_step("prometheus.query", {"query": q}, settings)
        assert out.error is not None and out.error.retryable is False
        assert "query failed (execution)" in out.error.message and "many-to-many" in out.error.message

    def test_oversized_answer_is_refused(self, prom: PrometheusProcess) -> None:
        s = settings_for(prom.url, prometheus_max_response_bytes=4096)
        out = run_step("prometheus.query", {"query": '{job="prometheus"}'}, s)  # every series: ~100 kB
        assert out.error is not None and not out.error.retryable
        assert "answer larger than 4,096 bytes" in out.error.message and "topk()" in out.error.message

    def test_range_vector_in_instant_query_is_explained(self, settings: Settings) -> None:
        out = run_step("prometheus.query", {"query": "up[1m]"}, settings)
        assert out.error is not None and not out.error.retryable and "prometheus.range" in out.error.message

    def test_series_cap_sets_truncated_but_expect_sees_all(self, prom: PrometheusProcess) -> None:
        s = settings_for(prom.url, prometheus_max_series=1)
        out = run_step("prometheus.query", {"query": "runbot_test_requests", "expect": "len(series) == 2"}, s)
        assert out.error is None
        assert out.output["count"] == 2 and len(out.output["series"]) == 1 and out.output["truncated"] is True

    def test_long_query_goes_as_post(self, settings: Settings) -> None:
        query = "vector(1)" + " + 0" * 1500  # > 4000 characters: too long for a comfortable GET
        out = run_step("prometheus.query", {"query": query, "expect": "value == 1"}, settings)
        assert out.error is None

    def test_named_server_selected_per_step(self, prom: PrometheusProcess) -> None:
        down = f"http://127.0.0.1:{free_port()}"
        s = settings_for(down, prometheus_servers={"eu": {"url": prom.url}}, prometheus_attempts=1)
        assert run_step("prometheus.query", {"query": "1", "server": "eu"}, s).output["server"] == "eu"
        assert run_step("prometheus.query", {"query": "1"}, s).error is not None  # default is down

    def test_unknown_server_is_not_retryable(self, settings: Settings) -> None:
        out = run_step("prometheus.query", {"query": "1", "server": "nope"}, settings)
        assert out.error is not None and not out.error.retryable
        assert "unknown Prometheus server 'nope'" in out.error.message and "default" in out.error.message

    def test_url_prefix_and_trailing_slash(self, prom: PrometheusProcess) -> None:
        out = run_step("prometheus.query", {"query": "1"}, settings_for(prom.url + "/"))
        assert out.error is None


# ---- range and graph -------------------------------------------------------------------------------------


@pytest.mark.integration
class TestRange:
    def test_range_query_points(self, settings: Settings) -> None:
        out = run_step(
            "prometheus.range", {"query": 'up{job="prometheus"}', "range": "1m", "step": "1s"}, settings
        )
        assert out.error is None, out.error
        o = out.output
        assert o["count"] == 1 and o["step"] == 1.0 and o["anchor"] == "now"
        s = o["series"][0]
        assert s["labels"]["job"] == "prometheus"
        assert len(s["points"]) >= 3 and all(p[1] == 1.0 for p in s["points"])
        assert s["last"] == 1.0 and s["min"] == 1.0 and s["max"] == 1.0
        start = datetime.fromisoformat(o["start"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(o["end"].replace("Z", "+00:00"))
        assert end - start == timedelta(minutes=1)
        assert abs((datetime.now(UTC) - end).total_seconds()) < 10
        assert o["truncated"] is False
        strict_json(o)

    def test_points_are_capped(self, prom: PrometheusProcess) -> None:
        s = settings_for(prom.url, prometheus_max_points=3)
        out = run_step("prometheus.range", {"query": "up", "range": "1m", "step": "1s"}, s)
        pts = out.output["series"][0]["points"]
        assert len(pts) == 3 and out.output["truncated"] is True
        assert out.output["series"][0]["samples"] > 3

    def test_window_ends_at_alert_start_plus_margin(self, settings: Settings) -> None:
        starts = datetime.now(UTC) - timedelta(seconds=40)
        alert = {"startsAt": iso(starts), "labels": {"alertname": "X"}}
        out = run_step("prometheus.range", {"query": "up", "range": "1m", "end": "alert", "margin": "10s"},
                       settings, alert=alert)  # fmt: skip
        o = out.output
        assert o["anchor"] == "alert"
        end = datetime.fromisoformat(o["end"].replace("Z", "+00:00"))
        assert abs((end - (starts + timedelta(seconds=10))).total_seconds()) < 0.01

    def test_end_alert_without_alert_falls_back_to_now(self, settings: Settings) -> None:
        out = run_step("prometheus.range", {"query": "up", "range": "30s", "end": "alert"}, settings)
        assert out.output["anchor"] == "now"
        assert any("no alert startsAt" in line for line in out.ctx.log.lines)

    def test_too_many_points_refused_before_asking(self, settings: Settings) -> None:
        out = run_step("prometheus.range", {"query": "up", "range": "2d", "step": "1s"}, settings)
        assert out.error is not None and not out.error.retryable and "11000 points" in out.error.message

    def test_graph_png_from_real_range_query(self, settings: Settings) -> None:
        alert = {"startsAt": iso(datetime.now(UTC) - timedelta(seconds=20))}
        out = run_step(
            "prometheus.graph",
            {"query": 'sum by (handler) (prometheus_http_requests_total{job="prometheus"})', "range": "2m",
             "unit": "req", "title": "HTTP requests by handler"},
            settings, alert=alert, step_id="error_graph",
        )  # fmt: skip
        assert out.error is None, out.error
        assert len(out.ctx.artifacts) == 1
        art = out.ctx.artifacts[0]
        assert art.name == "error_graph.png" and art.content_type == "image/png"
        assert png_size(art.data) == (1000, 500)
        assert 10_000 < len(art.data) < 2_000_000
        o = out.output
        assert o["artifact"] == "error_graph.png" and o["bytes"] == len(art.data)
        assert o["count"] >= 1 and o["shown"] == o["count"] and o["alert_start"] == alert["startsAt"]
        assert "points" not in o["series"][0]  # the picture is the payload; the output stays small
        strict_json(o)

    def test_graph_size_name_and_series_limit(self, settings: Settings) -> None:
        out = run_step(
            "prometheus.graph",
            {"query": 'prometheus_http_requests_total{job="prometheus"}', "range": "1m", "width": 640,
             "height": 360, "max_series": 1, "name": "my graph!.png"},
            settings,
        )  # fmt: skip
        art = out.ctx.artifacts[0]
        assert png_size(art.data) == (640, 360)
        assert art.name == "my-graph-.png"
        assert out.output["shown"] == 1 and out.output["count"] >= 2

    def test_graph_of_empty_result_still_renders(self, settings: Settings) -> None:
        out = run_step("prometheus.graph", {"query": "no_such_metric_runbot", "range": "5m"}, settings)
        assert out.error is None and out.output["count"] == 0
        assert png_size(out.ctx.artifacts[0].data) == (1000, 500)


# ---- failures: down, slow, 5xx, auth ---------------------------------------------------------------------


@pytest.mark.integration
class TestFailures:
    def test_prometheus_down_retries_then_names_the_url(self) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        out = run_step("prometheus.query", {"query": "up"}, settings_for(url, prometheus_attempts=3))
        err = out.error
        assert err is not None and err.retryable is True
        assert url in err.message and "'default'" in err.message
        assert "cannot connect" in err.message and "after 3 attempts" in err.message
        assert sum("retrying" in line for line in out.ctx.log.lines) == 2
        assert out.elapsed < 5

    def test_internal_retries_stay_within_the_step_deadline(self) -> None:
        with FakePrometheusAPI([Reply(status=503, body={"status": "error", "errorType": "unavailable",
                                                        "error": "overloaded"})]) as fake:  # fmt: skip
            s = settings_for(fake.url, prometheus_attempts=10)
            out = run_step("prometheus.query", {"query": "up"}, s, timeout=1.0)
        assert out.error is not None and out.error.retryable
        assert "HTTP 503" in out.error.message and "overloaded" in out.error.message
        assert out.elapsed < 1.3
        assert 2 <= len(fake.seen) < 10

    def test_5xx_then_success(self) -> None:
        replies = [Reply(status=502, body="bad gateway"), Reply(status=503, body={"status": "error", "error": "x"}),
                   vector_reply(({"job": "api"}, 0.5))]  # fmt: skip
        with FakePrometheusAPI(replies) as fake:
            out = run_step(
                "prometheus.query", {"query": "up", "expect": "value == 0.5"}, settings_for(fake.url)
            )
        assert out.error is None, out.error
        assert len(fake.seen) == 3

    def test_429_honours_retry_after(self) -> None:
        replies = [Reply(status=429, body="slow down", headers={"Retry-After": "0"}), vector_reply(({}, 1.0))]
        with FakePrometheusAPI(replies) as fake:
            out = run_step("prometheus.query", {"query": "up"}, settings_for(fake.url))
        assert out.error is None and len(fake.seen) == 2

    def test_slow_server_times_out(self) -> None:
        with FakePrometheusAPI([Reply(delay=5.0, body={"status": "success"})]) as fake:
            out = run_step("prometheus.query", {"query": "up"}, settings_for(fake.url, prometheus_timeout=0.4,
                                                                             prometheus_attempts=2))  # fmt: skip
            assert out.error is not None and out.error.retryable
            assert "no answer within 0.4s" in out.error.message and "after 2 attempts" in out.error.message
            assert out.elapsed < 2.0
            # Prometheus is told to give up before we do
            assert float(fake.seen[0].form["timeout"][0]) < 0.4

    def test_method_get_for_short_post_for_long_queries(self) -> None:
        long_query = "vector(1)" + " + 0" * 1500
        with FakePrometheusAPI() as fake:
            for q in ("up", long_query):
                assert run_step("prometheus.query", {"query": q}, settings_for(fake.url)).error is None
        assert [x.method for x in fake.seen] == ["GET", "POST"]
        assert fake.seen[1].form["query"] == [long_query]
        assert fake.seen[0].headers["User-Agent"].startswith("runbot/")

    def test_html_login_page_is_not_retried(self) -> None:
        with FakePrometheusAPI([Reply(status=200, body="<html>Sign in</html>")]) as fake:
            out = run_step("prometheus.query", {"query": "up"}, settings_for(fake.url))
        assert out.error is not None and not out.error.retryable
        assert "not a Prometheus API answer" in out.error.message and len(fake.seen) == 1

    def test_401_is_not_retried(self) -> None:
        with FakePrometheusAPI([Reply(status=401, body="Unauthorized")]) as fake:
            out = run_step("prometheus.query", {"query": "up"}, settings_for(fake.url))
        assert out.error is not None and not out.error.retryable and "HTTP 401" in out.error.message
        assert len(fake.seen) == 1

    def test_bearer_token_sent_and_never_shown(self) -> None:
        token = "tok-" + "x7Qz" * 6
        with FakePrometheusAPI([Reply(status=500, body=f"echo {token}")]) as fake:
            s = settings_for(fake.url, prometheus_bearer_token=token, prometheus_attempts=2)
            out = run_step("prometheus.query", {"query": "up"}, s)
        assert fake.seen[0].headers["Authorization"] == f"Bearer {token}"
        assert out.error is not None and token not in out.error.message and "****" in out.error.message
        assert token not in json.dumps(out.output) and not any(token in x for x in out.ctx.log.lines)

    def test_basic_auth_sent_for_named_server_with_extra_headers(self) -> None:
        with FakePrometheusAPI() as fake:
            s = settings_for(None, prometheus_servers={"mimir": {"url": fake.url + "/prometheus", "username": "bot",
                             "password": "pa55-word", "headers": {"X-Scope-OrgID": "tenant-1"}}})  # fmt: skip
            out = run_step("prometheus.query", {"query": "up", "server": "mimir"}, s)
        assert out.error is None
        seen = fake.seen[0]
        assert seen.path == "/prometheus/api/v1/query" and seen.form["query"] == ["up"]
        assert seen.headers["Authorization"] == "Basic " + base64.b64encode(b"bot:pa55-word").decode()
        assert seen.headers["X-Scope-OrgID"] == "tenant-1"

    def test_credentials_in_url_are_moved_out_and_hidden(self) -> None:
        with FakePrometheusAPI([Reply(status=404, body="nope")]) as fake:
            url = fake.url.replace("http://", "http://bot:url-secret@")
            out = run_step("prometheus.query", {"query": "up"}, settings_for(url))
        assert (
            fake.seen[0].headers["Authorization"] == "Basic " + base64.b64encode(b"bot:url-secret").decode()
        )
        assert (
            out.error is not None
            and "url-secret" not in out.error.message
            and "HTTP 404" in out.error.message
        )


@pytest.mark.integration
@pytest.mark.skipif(not bcrypt_available(), reason="no bcrypt (crypt module) to write Prometheus' web config")
class TestTLSAndAuthAgainstRealPrometheus:
    @pytest.fixture(scope="class")
    def secure(self, tmp_path_factory: pytest.TempPathFactory) -> Any:
        if not prometheus_available():
            pytest.skip("prometheus binary not installed")
        d = tmp_path_factory.mktemp("secure-prom")
        cert, key = self_signed_cert(d / "tls")
        user = BasicAuthUser("runbot", "correct-horse-battery")
        with running_prometheus(d, samples=1, tls_cert=cert, tls_key=key, basic_auth=user) as p:
            yield p, cert, user

    def test_basic_auth_and_ca_file(self, secure: Any) -> None:
        p, cert, user = secure
        s = settings_for(p.url, prometheus_username=user.username, prometheus_password=user.password,
                         prometheus_ca_file=cert)  # fmt: skip
        out = run_step("prometheus.query", {"query": 'up{job="prometheus"}', "expect": "value == 1"}, s)
        assert out.error is None, out.error
        assert p.url.startswith("https://")

    def test_wrong_password_is_not_retried(self, secure: Any) -> None:
        p, cert, user = secure
        s = settings_for(p.url, prometheus_username=user.username, prometheus_password="wrong-password",
                         prometheus_ca_file=cert)  # fmt: skip
        out = run_step("prometheus.query", {"query": "up"}, s)
        assert out.error is not None and not out.error.retryable and "HTTP 401" in out.error.message
        assert "wrong-password" not in out.error.message

    def test_unknown_ca_fails_clearly(self, secure: Any) -> None:
        p, _cert, user = secure
        s = settings_for(p.url, prometheus_username=user.username, prometheus_password=user.password)
        out = run_step("prometheus.query", {"query": "up"}, s)
        assert out.error is not None and not out.error.retryable
        assert "certificate verification failed" in out.error.message

    def test_verify_tls_off(self, secure: Any) -> None:
        p, _cert, user = secure
        s = settings_for(None, prometheus_servers={"lab": {"url": p.url, "username": user.username,
                                                           "password": user.password, "verify_tls": False}})  # fmt: skip
        assert run_step("prometheus.query", {"query": "1", "server": "lab"}, s).error is None


# ---- lint, params, settings, registry (no server needed) --------------------------------------------------


class TestLintAndConfig:
    def plugin(self, name: str, settings: Settings | None = None) -> Any:
        return StepRegistry(settings or settings_for("http://127.0.0.1:9")).get(name)

    def test_registered_as_idempotent_diagnostics(self) -> None:
        for name in ("prometheus.query", "prometheus.range", "prometheus.graph"):
            p = self.plugin(name)
            assert p.type == name and p.kind is StepKind.DIAGNOSTIC
            assert p.idempotent(p.Params.model_validate({"query": "up"})) is True
            assert p.changes_things({"query": "up"}) is False

    def test_lint_query(self) -> None:
        p = self.plugin("prometheus.query")
        assert p.lint({"query": "up", "expect": "value < 0.01"}) == []
        assert p.lint({"query": "  "}) == [("query", "a non-empty PromQL query is required")]
        assert p.lint({"query": None}) == [("query", "a non-empty PromQL query is required")]
        assert p.lint({}) == []  # missing: the Params model reports it, not lint (no duplicate)
        [(field, msg)] = p.lint({"query": "up", "expect": "series.value > 0"})
        assert field == "expect" and "all(...)" in msg
        [(field, msg)] = p.lint({"query": "up", "expect": "value <"})
        assert field == "expect" and "syntax error" in msg
        assert p.lint({"query": "up", "expect": "value < {{ params.threshold }}"}) == []  # templated: runtime

    def test_lint_server_names(self) -> None:
        s = settings_for("http://127.0.0.1:9", prometheus_servers={"eu": {"url": "http://127.0.0.1:10"}})
        p = self.plugin("prometheus.query", s)
        assert p.lint({"query": "up", "server": "eu"}) == []
        [(field, msg)] = p.lint({"query": "up", "server": "us"})
        assert field == "server" and "'us'" in msg and "default, eu" in msg
        assert p.lint({"query": "up", "server": "{{ alert.labels.region }}"}) == []
        # no Prometheus configured at all (a laptop): the default server is not reported, named ones are
        bare = self.plugin("prometheus.query", settings_for(None))
        assert bare.lint({"query": "up"}) == []
        assert [f for f, _ in bare.lint({"query": "up", "server": "eu"})] == ["server"]

    def test_lint_range_durations(self) -> None:
        p = self.plugin("prometheus.graph")
        assert p.lint({"query": "up", "range": "1h", "step": "15s", "margin": "0s"}) == []
        assert [f for f, _ in p.lint({"query": "up", "range": "1hour"})] == ["range"]
        assert [f for f, _ in p.lint({"query": "up", "range": "0s"})] == ["range"]
        assert [f for f, _ in p.lint({"query": "up", "range": "1m", "step": "5m"})] == ["step"]
        assert [f for f, _ in p.lint({"query": "up", "range": "30d", "step": "1s"})] == ["step"]
        assert p.lint({"query": "up", "range": "{{ params.window }}", "step": "1s"}) == []

    def test_params_validation(self) -> None:
        q = self.plugin("prometheus.query").Params
        with pytest.raises(ValidationError):
            q.model_validate({"query": "up", "typo": 1})
        with pytest.raises(ValidationError):
            q.model_validate({"expect": "value < 1"})
        with pytest.raises(ValidationError):
            self.plugin("prometheus.range").Params.model_validate({"query": "up", "range": "1hour"})
        g = self.plugin("prometheus.graph").Params.model_validate(
            {"query": "up", "range": "90m", "unit": "%"}
        )
        assert g.range == 5400 and g.step is None and g.width == 1000
        with pytest.raises(ValidationError):
            self.plugin("prometheus.graph").Params.model_validate({"query": "up", "width": 10})

    def test_content_errors_fail_at_run_time_without_calling_prometheus(self) -> None:
        with FakePrometheusAPI() as fake:
            s = settings_for(fake.url)
            bad_expect = run_step("prometheus.query", {"query": "up", "expect": "__import__('os')"}, s)
            blank = run_step("prometheus.query", {"query": "  "}, s)
            blank_range = run_step("prometheus.range", {"query": "", "range": "1m"}, s)
            zero_step = run_step("prometheus.graph", {"query": "up", "range": "1m", "step": "0s"}, s)
        for out in (bad_expect, blank, blank_range, zero_step):
            assert out.error is not None and out.error.retryable is False
        assert "invalid expect: unknown function" in str(bad_expect.error)
        assert "query is empty" in str(blank.error) and "query is empty" in str(blank_range.error)
        assert "greater than zero" in str(zero_step.error)
        assert fake.seen == []

    def test_servers_from_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RUNBOT_PROMETHEUS_URL", "http://127.0.0.1:9090")
        monkeypatch.setenv(
            "RUNBOT_PROMETHEUS_SERVERS",
            json.dumps({"eu": {"url": "https://prom.eu.example:9090", "bearer_token": "env-token-123"}}),
        )
        s = Settings()
        eu = resolve_server(s, "eu")
        assert eu.bearer_token == "env-token-123" and eu.url == "https://prom.eu.example:9090"
        assert resolve_server(s, "default").url == "http://127.0.0.1:9090"
        masked = json.dumps(s.masked(), default=str)
        assert "env-token-123" not in masked and "****" in masked

    def test_both_auth_kinds_refused(self) -> None:
        s = settings_for("http://127.0.0.1:9", prometheus_username="u", prometheus_password="p-pass",
                         prometheus_bearer_token="t-token")  # fmt: skip
        with pytest.raises(StepError, match="not both"):
            resolve_server(s, "default")

    def test_timestamps_and_decimation(self) -> None:
        assert parse_timestamp("2024-05-01T12:00:00.123456789Z") == pytest.approx(1714564800.123456)
        assert parse_timestamp("2024-05-01T14:00:00+02:00") == 1714564800.0
        assert parse_timestamp("0001-01-01T00:00:00Z") is None
        assert parse_timestamp("garbage") is None and parse_timestamp(None) is None
        assert decimate(10, 20) == list(range(10))
        idx = decimate(1000, 5)
        assert idx[0] == 0 and idx[-1] == 999 and len(idx) == 5


def test_png_size_helper_rejects_garbage() -> None:
    with pytest.raises(AssertionError):
        png_size(b"GIF89a" + b"\0" * 30)
