"""Structured logging that cannot leak secrets, and Prometheus metrics."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any, TextIO, cast

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from runbot.redaction import REGISTRY


def _redact_processor(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: mask every registered secret in every string a log line carries."""
    for k, v in list(event_dict.items()):
        if isinstance(v, str):
            event_dict[k] = REGISTRY.redact(v)
        elif isinstance(v, dict | list | tuple):
            event_dict[k] = REGISTRY.redact(repr(v)) if v else v
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
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream or cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
    install_stdlib_redaction()


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


class Metrics:
    """One registry per app instance (tests build several apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
        except Exception:  # a scrape must not fail because the database is briefly busy
            return
        yield runs
        yield incidents
        yield backlog
        yield lag
