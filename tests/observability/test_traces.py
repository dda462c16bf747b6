"""A traced run, as a real OTLP collector receives it (protobuf decoded with opentelemetry-proto): one trace
per run, run -> step attempts and the approval wait, the downstream HTTP target got a traceparent of that
trace, the webhook delivery is linked to the run, and no secret or parameter value is in any span."""

from __future__ import annotations

import pytest

from runbot.tracing import enabled_by_env
from runbot.tracing_ids import run_span_id, trace_hex

from .cycle import CANARY

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_tracing_is_off_unless_the_standard_variables_ask_for_it():
    assert not enabled_by_env({})
    assert enabled_by_env({"OTEL_TRACES_EXPORTER": "otlp"})
    assert enabled_by_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not enabled_by_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    assert not enabled_by_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}
    )


def test_one_trace_per_run_with_steps_and_the_approval_wait_under_the_run_span(observed):
    run_id = observed.run["id"]
    trace_id = trace_hex(run_id)
    mine = [s for s in observed.spans if s.trace_id == trace_id]
    [root] = [s for s in mine if s.name == "run cycle"]
    assert root.parent_span_id == "" and root.span_id == f"{run_span_id(run_id):016x}"
    assert root.attributes["runbot.run.status"] == "succeeded" and root.service == "runbot"
    steps = {s.attributes["runbot.step.id"]: s for s in mine if s.name.startswith("step ")}
    assert set(steps) == {"look", "health", "fix"}
    for sid, span in steps.items():
        assert span.parent_span_id == root.span_id, sid
        assert span.attributes["runbot.runbook"] == "cycle"
        assert span.attributes["runbot.step.attempt"] == 1
        assert span.attributes["runbot.step.outcome"] == "succeeded"
        assert root.start_ns <= span.start_ns <= span.end_ns <= root.end_ns
    assert steps["fix"].attributes["runbot.step.type"] == "http.request"
    [wait] = [s for s in mine if s.name == "approval wait fix"]
    assert wait.parent_span_id == root.span_id and wait.attributes["runbot.approval.decision"] == "approved"
    assert wait.start_ns <= wait.end_ns <= steps["fix"].start_ns


def test_the_downstream_target_got_a_traceparent_of_the_runs_trace(observed):
    trace_id = trace_hex(observed.run["id"])
    steps = {s.attributes.get("runbot.step.id"): s for s in observed.spans if s.trace_id == trace_id}
    for path, step in (("/health", "health"), ("/fix", "fix")):
        header = observed.traceparents[path]
        assert header is not None, path
        version, tid, parent, flags = header.split("-")
        assert (version, tid, parent, flags) == ("00", trace_id, steps[step].span_id, "01"), path


def test_the_webhook_delivery_is_linked_to_the_run_it_created(observed):
    run_id = observed.run["id"]
    deliveries = [s for s in observed.spans if s.name == "alertmanager delivery"]
    assert any((trace_hex(run_id), f"{run_span_id(run_id):016x}") in s.links for s in deliveries)


def test_no_secret_or_parameter_value_in_any_span(observed):
    raw = observed.raw_spans
    assert raw
    for value in (CANARY, "checkout", "db-1", "/fix", "127.0.0.1"):
        assert value.encode() not in raw, value
