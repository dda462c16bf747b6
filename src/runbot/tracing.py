"""OpenTelemetry traces of runs: one trace per run, a span per step attempt, the approval wait as a span.

Off by default. On when the standard variables ask for it: OTEL_TRACES_EXPORTER=otlp, or an
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; OTEL_SDK_DISABLED=true wins. The exporter
is OTLP over HTTP/protobuf and reads the rest of its configuration (headers, timeout, service name,
resource attributes, batch delays) from the same standard variables.

A run outlives processes (parked for approval here, resumed by another replica after a restart), so no
span object lives as long as the run. Instead the trace id and the run span's id are derived from the run
id (runbot.tracing_ids), step spans are children of that run span, and the run span itself is emitted when
the run ends, with its start taken from the journal. Span attributes name the runbook, step, type, attempt
and outcome, never parameter values (they may be templated from alerts or hold secrets).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from runbot.tracing_ids import run_span_id, run_trace_id

log = structlog.get_logger("runbot.tracing")

_forced: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "runbot_forced_ids", default=None
)


class _RunIds(IdGenerator):
    """Random ids, except for the run span, whose ids are derived from the run id."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        forced = _forced.get()
        return forced[1] if forced else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced.get()
        return forced[0] if forced else self._random.generate_trace_id()


def enabled_by_env(env: dict[str, str] | None = None) -> bool:
    e = os.environ if env is None else env
    if e.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {x.strip().lower() for x in e.get("OTEL_TRACES_EXPORTER", "").split(",") if x.strip()}
    if "none" in exporters:
        return False
    return "otlp" in exporters or bool(
        e.get("OTEL_EXPORTER_OTLP_ENDPOINT") or e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class RunTracer:
    """The engine's view of tracing; every method is a cheap no-op while tracing is off."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("runbot") if provider is not None else None

    @property
    def on(self) -> bool:
        return self.tracer is not None

    def run_context(self, run_id: str) -> Any:
        """A context whose parent is the run span (which is emitted later, when the run ends)."""
        ctx = SpanContext(run_trace_id(run_id), run_span_id(run_id), is_remote=True,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED))  # fmt: skip
        return trace.set_span_in_context(NonRecordingSpan(ctx))

    def start_step(self, run_id: str, runbook: str, step_id: str, step_type: str, attempt: int,
                   started: datetime) -> Any:  # fmt: skip
        if self.tracer is None:
            return None
        return self.tracer.start_span(f"step {step_id}", context=self.run_context(run_id), kind=SpanKind.INTERNAL,
                                      start_time=_ns(started), attributes={
                                          "runbot.run.id": run_id, "runbot.runbook": runbook,
                                          "runbot.step.id": step_id, "runbot.step.type": step_type,
                                          "runbot.step.attempt": attempt})  # fmt: skip

    @contextlib.contextmanager
    def current(self, span: Any) -> Iterator[None]:
        """The span is current while the step runs (so http.request sends its traceparent)."""
        if span is None:
            yield
            return
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield

    def end_step(self, span: Any, outcome: str, finished: datetime | None = None) -> None:
        if span is None:
            return
        with contextlib.suppress(Exception):
            span.set_attribute("runbot.step.outcome", outcome)
            if outcome in ("failed", "retrying", "in_doubt"):
                span.set_status(Status(StatusCode.ERROR, outcome))
            span.end(end_time=_ns(finished) if finished is not None else None)

    def approval_wait(self, run_id: str, runbook: str, step_id: str, decision: str, requested: datetime,
                      decided: datetime) -> None:  # fmt: skip
        if self.tracer is None:
            return
        with contextlib.suppress(Exception):
            span = self.tracer.start_span(f"approval wait {step_id}", context=self.run_context(run_id),
                                          start_time=_ns(requested), attributes={
                                              "runbot.run.id": run_id, "runbot.runbook": runbook,
                                              "runbot.step.id": step_id, "runbot.approval.decision": decision})  # fmt: skip
            span.end(end_time=_ns(decided))

    def run_ended(
        self, run_id: str, runbook: str, status: str, created: datetime, finished: datetime
    ) -> None:
        """The run's root span, with the ids every step span already points at."""
        if self.tracer is None:
            return
        token = _forced.set((run_trace_id(run_id), run_span_id(run_id)))
        try:
            span = self.tracer.start_span(f"run {runbook}", context=trace.set_span_in_context(trace.INVALID_SPAN),
                                          start_time=_ns(created), attributes={
                                              "runbot.run.id": run_id, "runbot.runbook": runbook,
                                              "runbot.run.status": status})  # fmt: skip
        finally:
            _forced.reset(token)
        if status != "succeeded":
            span.set_status(Status(StatusCode.ERROR, status))
        span.end(end_time=_ns(finished))

    def delivery(self, run_ids: Sequence[str], alerts: int) -> None:
        """The webhook delivery's intake, linked to the runs it created (each in its own trace)."""
        if self.tracer is None or not run_ids:
            return
        with contextlib.suppress(Exception):
            links = [Link(SpanContext(run_trace_id(r), run_span_id(r), is_remote=True,
                                      trace_flags=TraceFlags(TraceFlags.SAMPLED))) for r in run_ids]  # fmt: skip
            span = self.tracer.start_span("alertmanager delivery", kind=SpanKind.CONSUMER, links=links,
                                          attributes={"runbot.alerts": alerts, "runbot.runs": len(run_ids)})  # fmt: skip
            span.end()

    def shutdown(self) -> None:
        if self.provider is not None:
            with contextlib.suppress(Exception):
                self.provider.shutdown()


def build_tracer(env: dict[str, str] | None = None) -> RunTracer:
    if not enabled_by_env(env):
        return RunTracer(None)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "runbot")})
    provider = TracerProvider(resource=resource, id_generator=_RunIds())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("tracing on: OTLP/HTTP export")
    return RunTracer(provider)


TRACER = RunTracer(None)  # the process's tracer; `install()` replaces it in serve


def install(env: dict[str, str] | None = None) -> RunTracer:
    global TRACER
    TRACER = build_tracer(env)
    return TRACER


def inject_traceparent(headers: Any) -> None:
    """Add W3C traceparent (and tracestate) of the current span, if any, to outgoing request headers."""
    with contextlib.suppress(Exception):
        carrier: dict[str, str] = {}
        inject(carrier)
        for k, v in carrier.items():
            if k not in headers:
                headers[k] = v


def _ns(ts: datetime) -> int:
    return int(ts.timestamp() * 1_000_000_000)
