"""One observed incident cycle per module: a real `runbot serve` (JSON logs, INFO), the fake Slack, a target
and a real Prometheus scraping runbot; the logs, the final /metrics and every dashboard query's answer are
captured for the tests to check."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.prometheus import PrometheusProcess, prometheus_available

from .cycle import run_cycle, start

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "runbot.json"


class ScrapingPrometheus(PrometheusProcess):
    """A real Prometheus that also scrapes one runbot as job="runbot"."""

    def __init__(self, workdir: Path, target: str) -> None:
        super().__init__(workdir)
        self.target = target

    def _write_config(self) -> Path:
        path = super()._write_config()
        config = json.loads(path.read_text())
        config["scrape_configs"].append(
            {"job_name": "runbot", "static_configs": [{"targets": [self.target]}]}
        )
        path.write_text(json.dumps(config, indent=2))
        return path


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target in the Grafana dashboard."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for t in panel.get("targets", []):
            out.append((panel["title"], t["expr"]))
    return out


@dataclass
class Observed:
    log: str
    metrics: str
    run: dict[str, Any]
    answers: dict[str, list[Any]] = field(default_factory=dict)  # PromQL -> result (with Prometheus only)
    spans: list[ReceivedSpan] = field(default_factory=list)  # what the OTLP receiver decoded
    traceparents: dict[str, str | None] = field(default_factory=dict)  # target path -> traceparent it got
    raw_spans: bytes = b""


OTEL_ENV = {
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "OTEL_SERVICE_NAME": "runbot",
}


@pytest.fixture(scope="session")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    root = tmp_path_factory.mktemp("observed")
    books = root / "runbooks"
    books.mkdir()
    receiver = OtlpReceiver().start()
    saved = {k: os.environ.get(k) for k in OTEL_ENV}
    os.environ.update({**OTEL_ENV, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint})
    srv, fake, target = start(root, books, log_format="json", log_level="INFO")
    prom: ScrapingPrometheus | None = None
    try:
        with srv:
            if prometheus_available():
                prom = ScrapingPrometheus(root / "prom", f"127.0.0.1:{srv.port}").start()
            run = run_cycle(srv, fake, target)
            assert httpx.post(srv.url + "/debug/error", timeout=10).status_code == 500
            answers: dict[str, list[Any]] = {}
            if prom is not None:
                prom.wait_for(
                    'count_over_time(up{job="runbot"}[5m])',
                    check=lambda r: bool(r) and float(r[0]["value"][1]) >= 3,
                )
                for _, expr in dashboard_queries():
                    try:
                        answers[expr] = prom.wait_for(expr.replace("$__rate_interval", "1m"), timeout=15)
                    except RuntimeError:
                        answers[expr] = []
            metrics = httpx.get(srv.url + "/metrics", timeout=10).text
        traceparents = {p: target.last(p).header("traceparent") for p in ("/health", "/fix")}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if prom is not None:
            prom.stop()
        fake.stop()
        target.stop()
        receiver.stop()
    yield Observed(
        srv.log_path.read_text(),
        metrics,
        run,
        answers,
        list(receiver.spans),
        traceparents,
        b"".join(receiver.raw),
    )
