"""Structured logging that cannot leak secrets, and Prometheus metrics."""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any, TextIO, cast

import prometheus_client
import structlog
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from runbot.redaction import REGISTRY
from runbot.tracing_ids import trace_hex


def redact_processor(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: mask every registered secret in every string a log line carries."""
    for k, v in list(event_dict.items()):
        if isinstance(v, str):
            event_dict[k] = REGISTRY.redact(v)
        elif isinstance(v, dict | list | tuple):
            event_dict[k] = REGISTRY.redact(repr(v)) if v else v
    return event_dict




def add_trace_id(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A line naming a run also names its trace (derived from the run id: runbot.tracing_ids)."""
    run_id = event_dict.get("run_id")
    if isinstance(run_id, str) and run_id and "trace_id" not in event_dict:
        event_dict["trace_id"] = trace_hex(run_id)
    return event_dict


class _CurrentStderr:
    """Whatever sys.stderr is at write time (it is swapped by test runners and daemonisers)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO", fmt: str = "console", stream: Any = None) -> None:
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            add_trace_id,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream or cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
    install_stdlib_redaction()
    global _events, _events_on
    _events_on = logging.getLevelName(level.upper()) <= logging.INFO
    _events = structlog.get_logger("runbot.events").bind()  # bound once: audit events are the hot path


def install_stdlib_redaction() -> None:
    """stdlib logging (httpx logs full URLs, hvac, uvicorn, plugins) is masked too, at record creation.

    Done in the record factory rather than a handler filter, so every handler (and pytest's caplog) sees
    the masked text, whoever configured it. Idempotent.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_runbot_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging to report
            return record
        clean = REGISTRY.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = REGISTRY.redact(logging.Formatter().formatException(record.exc_info))
        return record

    factory._runbot_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_events: Any = structlog.get_logger("runbot.events")
_events_on = True  # until configure_logging says the level is above INFO
# what an operator following a run wants on the line; everything else stays in the audit trail
_EVENT_DETAILS = ("attempt", "type", "duration_ms", "error", "reason", "retry_at", "until", "status",
                  "decision", "required", "timeout", "escalation", "alerts", "receiver")  # fmt: skip


def log_events(events: Any) -> None:
    """One INFO line per audit event (run created, step started/finished, approval, held, in doubt, incident
    resolved...), logged as the event is appended to the trail. Never raises."""
    if not _events_on:
        return
    try:
        for e in events:
            details = e.details or {}
            fields = {k: details[k] for k in _EVENT_DETAILS if details.get(k) is not None}
            ids = {k: v for k, v in (("run_id", e.run_id), ("step_id", e.step_id), ("incident_id", e.incident_id),
                                     ("runbook", e.runbook)) if v}  # fmt: skip
            actor = {"actor": e.actor} if e.actor and e.actor != "system" else {}
            outcome = {"outcome": e.outcome} if e.outcome else {}
            _events.info(e.action, **ids, **outcome, **actor, **fields)
    except Exception:  # noqa: S110 - the log line must never fail a commit
        pass


# `_created` series double every counter and histogram for little use (and confuse: runbot_runs_created_created)
prometheus_client.disable_created_metrics()

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)


class ProcessMetrics:
    """Counted where the work happens (engine, Slack client, Vault keepers) without a runtime at hand; one set
    per process, registered into every app's registry."""

    def __init__(self) -> None:
        self.step_duration = Histogram("runbot_step_duration_seconds", "Duration of one step attempt",
                                       ["runbook", "type", "outcome"], buckets=STEP_BUCKETS, registry=None)  # fmt: skip
        self.step_outcomes = Counter("runbot_step_outcomes", "Step attempts by outcome",
                                     ["runbook", "type", "outcome"], registry=None)  # fmt: skip
        self.approval_wait = Histogram("runbot_approval_wait_seconds", "From approval request to decision",
                                       ["runbook", "decision"], buckets=WAIT_BUCKETS, registry=None)  # fmt: skip
        self.slack_api_errors = Counter("runbot_slack_api_errors", "Failed Slack Web API calls",
                                        ["method", "error"], registry=None)  # fmt: skip
        self.slack_rate_limited = Counter("runbot_slack_rate_limited", "Slack Web API calls answered 429",
                                          ["method"], registry=None)  # fmt: skip
        self.vault_failures = Counter("runbot_vault_failures", "Failed Vault operations", ["operation"], registry=None)
        for op in ("login", "lease_renew", "lease_revoke"):  # zero until the first failure, not absent
            self.vault_failures.labels(operation=op)
        self.build_info = Gauge("runbot_build_info", "Always 1; the labels say which runbot runs",
                                ["version", "python"], registry=None)  # fmt: skip
        from runbot import __version__

        self.build_info.labels(version=__version__, python=platform.python_version()).set(1)

    def collectors(self) -> list[Any]:
        return [self.step_duration, self.step_outcomes, self.approval_wait, self.slack_api_errors,
                self.slack_rate_limited, self.vault_failures, self.build_info]  # fmt: skip


PROCESS = ProcessMetrics()


def observe_step(runbook: str, step_type: str, outcome: str, seconds: float | None = None) -> None:
    """One step attempt ended (or parked); never raises."""
    with contextlib.suppress(Exception):
        PROCESS.step_outcomes.labels(runbook=runbook, type=step_type, outcome=outcome).inc()
        if seconds is not None:
            PROCESS.step_duration.labels(runbook=runbook, type=step_type, outcome=outcome).observe(max(0.0, seconds))


def observe_approval(runbook: str, decision: str, seconds: float) -> None:
    with contextlib.suppress(Exception):
        PROCESS.approval_wait.labels(runbook=runbook, decision=decision).observe(max(0.0, seconds))


def count_vault_failure(operation: str) -> None:
    with contextlib.suppress(Exception):
        PROCESS.vault_failures.labels(operation=operation).inc()


def instrument_slack(client: Any) -> Any:
    """Count the client's failed Web API calls by method (and 429s apart); returns the same client."""
    inner = client.api_call

    def api_call(api_method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return inner(api_method, *args, **kwargs)
        except Exception as exc:
            with contextlib.suppress(Exception):
                resp = getattr(exc, "response", None)
                status = int(getattr(resp, "status_code", 0) or 0)
                error = str(resp.get("error") or "") if resp is not None else type(exc).__name__
                if status == 429 or error == "ratelimited":
                    PROCESS.slack_rate_limited.labels(method=api_method).inc()
                PROCESS.slack_api_errors.labels(method=api_method, error=error or f"http_{status}").inc()
            raise

    client.api_call = api_call
    return client


class Metrics:
    """One registry per app instance (tests build several apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        for c in (*PROCESS.collectors(), PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(c)
        self.alerts_received = Counter("runbot_alerts_received", "Alerts received by the webhook", ["receiver"], registry=r)
        self.alerts_deduplicated = Counter("runbot_alerts_deduplicated", "Alerts already known (re-sent)", registry=r)
        self.alerts_unhandled = Counter("runbot_alerts_unhandled", "Alerts that matched no runbook", registry=r)
        self.alerts_throttled = Counter("runbot_alerts_throttled", "Alerts whose run was refused by a rate limit",
                                        ["runbook"], registry=r)  # fmt: skip
        self.webhook_latency = Histogram("runbot_webhook_seconds", "Webhook acknowledgement latency", registry=r,
                                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))  # fmt: skip
        self.webhook_rejected = Counter("runbot_webhook_rejected", "Webhook requests refused", ["reason"], registry=r)
        self.runs_created = Counter("runbot_runs_created", "Runs created", ["runbook"], registry=r)
        self.engine_up = Gauge("runbot_engine_up", "1 while the engine loop runs", registry=r)
        self.slack_deliveries = Counter("runbot_slack_deliveries", "Outbox deliveries to Slack", ["outcome"], registry=r)


class DbCollector(Collector):
    """Gauges read from the database at scrape time, so every replica reports the same truth."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from runbot.adapters.alertmanager.ingest import pending_alerts_query
        from runbot.engine.state import INCIDENTS, RUNS
        from runbot.store import tables
        from runbot.store.types import utcnow

        deliveries = tables.WebhookDelivery.__table__  # type: ignore[attr-defined]
        alerts = tables.Alert.__table__  # type: ignore[attr-defined]
        approvals_t = tables.Approval.__table__  # type: ignore[attr-defined]
        steps_t = tables.StepExecution.__table__  # type: ignore[attr-defined]
        outbox_t = tables.Outbox.__table__  # type: ignore[attr-defined]
        pending = GaugeMetricFamily("runbot_approvals_pending", "Approvals waiting for a decision")
        pending_age = GaugeMetricFamily("runbot_approval_oldest_pending_seconds",
                                        "Age of the oldest pending approval (0: none)")  # fmt: skip
        timeout_in = GaugeMetricFamily("runbot_approval_next_timeout_seconds",
                                       "Seconds until the next pending approval times out (absent: none)")  # fmt: skip
        unnotified = GaugeMetricFamily("runbot_approvals_unnotified",
                                       "Pending approvals whose request message has not been delivered yet")  # fmt: skip
        in_doubt = GaugeMetricFamily("runbot_steps_in_doubt", "Steps in doubt, waiting for a human decision")
        in_doubt_age = GaugeMetricFamily("runbot_step_in_doubt_oldest_seconds",
                                         "Age of the oldest in-doubt step (0: none)")  # fmt: skip
        outbox = GaugeMetricFamily("runbot_outbox_backlog", "Messages queued for Slack, not delivered yet")
        outbox_age = GaugeMetricFamily("runbot_outbox_oldest_seconds",
                                       "Age of the oldest undelivered outbox message (0: none)")  # fmt: skip
        runs = GaugeMetricFamily("runbot_runs", "Runs by status", labels=["status"])
        incidents = GaugeMetricFamily("runbot_incidents_open", "Open incidents")
        backlog = GaugeMetricFamily("runbot_intake_backlog_alerts",
                                    "Accepted alerts intake has not unpacked and matched yet", labels=["stage"])  # fmt: skip
        lag = GaugeMetricFamily("runbot_intake_lag_seconds",
                                "Age of the oldest accepted webhook delivery not unpacked yet (0: none)")  # fmt: skip
        try:
            with self.db.read() as conn:
                for status, n in conn.execute(select(RUNS.c.status, func.count()).group_by(RUNS.c.status)):
                    runs.add_metric([status], n)
                incidents.add_metric([], conn.execute(select(func.count()).select_from(INCIDENTS)
                                                      .where(INCIDENTS.c.status == "open")).scalar_one())  # fmt: skip
                waiting = deliveries.c.processed_at.is_(None)
                n = conn.execute(pending_alerts_query()).scalar_one()  # less what big ones have unpacked so far
                oldest = conn.execute(select(func.min(deliveries.c.received_at)).where(waiting)).scalar_one()
                backlog.add_metric(["unpack"], n)
                backlog.add_metric(["match"], conn.execute(select(func.count()).select_from(alerts)
                                                           .where(alerts.c.pending_since.is_not(None))).scalar_one())  # fmt: skip
                lag.add_metric([], max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0)
                now = utcnow()

                def age(ts: Any) -> float:
                    return max(0.0, (now - ts).total_seconds()) if ts is not None else 0.0

                is_pending = approvals_t.c.status == "pending"
                n, first, nxt = conn.execute(select(func.count(), func.min(approvals_t.c.requested_at),
                                                    func.min(approvals_t.c.expires_at)).where(is_pending)).one()  # fmt: skip
                pending.add_metric([], n)
                pending_age.add_metric([], age(first))
                if nxt is not None:
                    timeout_in.add_metric([], (nxt - now).total_seconds())
                undelivered = select(outbox_t.c.run_id).where(outbox_t.c.topic == "approval.requested",
                                                               outbox_t.c.delivered_at.is_(None))  # fmt: skip
                unnotified.add_metric([], conn.execute(select(func.count()).select_from(approvals_t).where(
                    is_pending, approvals_t.c.run_id.in_(undelivered))).scalar_one())  # fmt: skip
                n, first = conn.execute(select(func.count(), func.min(steps_t.c.started_at))
                                        .where(steps_t.c.status == "in_doubt")).one()  # fmt: skip
                in_doubt.add_metric([], n)
                in_doubt_age.add_metric([], age(first))
                n, first = conn.execute(select(func.count(), func.min(outbox_t.c.created_at))
                                        .where(outbox_t.c.delivered_at.is_(None))).one()  # fmt: skip
                outbox.add_metric([], n)
                outbox_age.add_metric([], age(first))
        except Exception:  # a scrape must not fail because the database is briefly busy
            return
        yield from (runs, incidents, backlog, lag, pending, pending_age, timeout_in, unnotified, in_doubt, in_doubt_age,
                    outbox, outbox_age)  # fmt: skip
