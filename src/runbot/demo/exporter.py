"""A demo exporter: one disk that fills and one service whose error ratio rises, plus the HTTP endpoints the
demo runbooks call to fix them. Values are computed from a clock at scrape time, so a test can predict them.

    python -m runbot.demo.exporter --port 9399 [--fill-seconds 120] [--error-seconds 300]

GET /metrics (Prometheus text), GET /state (JSON), POST /cleanup (frees the disk), POST /restart (resets the
error ratio), POST /reset (starts both problems again).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

DISK_START, DISK_FULL, DISK_CLEAN = 0.5, 1.0, 0.2
ERRORS_MAX = 0.5


@dataclass
class DemoState:
    """Both problems as lines over time: used ratio from DISK_START to full in fill_seconds, error ratio from 0
    to ERRORS_MAX in error_seconds. A fix stops the line at its healthy value until reset()."""

    fill_seconds: float = 120.0
    error_seconds: float = 300.0
    clock: Callable[[], float] = time.monotonic
    disk_since: float | None = None  # None: cleaned up
    errors_since: float | None = None  # None: restarted
    cleanups: int = 0
    restarts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.disk_since = self.errors_since = self.clock()

    def cleanup(self) -> None:
        with self._lock:
            self.disk_since, self.cleanups = None, self.cleanups + 1

    def restart(self) -> None:
        with self._lock:
            self.errors_since, self.restarts = None, self.restarts + 1

    def disk_used_ratio(self) -> float:
        if self.disk_since is None:
            return DISK_CLEAN
        done = (self.clock() - self.disk_since) / self.fill_seconds
        return min(DISK_FULL, DISK_START + (DISK_FULL - DISK_START) * done)

    def error_ratio(self) -> float:
        if self.errors_since is None:
            return 0.0
        return min(ERRORS_MAX, ERRORS_MAX * (self.clock() - self.errors_since) / self.error_seconds)

    def snapshot(self) -> dict[str, float | int | bool]:
        return {"disk_used_ratio": round(self.disk_used_ratio(), 4), "error_ratio": round(self.error_ratio(), 4),
                "disk_filling": self.disk_since is not None, "errors_rising": self.errors_since is not None,
                "cleanups": self.cleanups, "restarts": self.restarts}  # fmt: skip


class DemoCollector(Collector):
    """The state as gauges, read at scrape time."""

    def __init__(self, state: DemoState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        disk = GaugeMetricFamily("demo_disk_used_ratio", "Used fraction of the demo disk", labels=["mountpoint"])
        disk.add_metric(["/data"], self.state.disk_used_ratio())
        yield disk
        errors = GaugeMetricFamily("demo_service_error_ratio", "Fraction of demo requests answered 5xx",
                                   labels=["service"])  # fmt: skip
        errors.add_metric(["checkout"], self.state.error_ratio())
        yield errors


def make_server(state: DemoState, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    registry = CollectorRegistry()
    registry.register(DemoCollector(state))
    actions: dict[str, Callable[[], None]] = {"/cleanup": state.cleanup, "/restart": state.restart,
                                               "/reset": state.reset}  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                self._send(200, generate_latest(registry), "text/plain; version=0.0.4")
            elif self.path.startswith("/state"):
                self._send(200, json.dumps(state.snapshot()).encode())
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            action = actions.get(self.path.split("?")[0])
            if action is None:
                self._send(404, b'{"error": "not found"}')
                return
            action()
            self._send(200, json.dumps({"ok": True, **state.snapshot()}).encode())

        def log_message(self, format: str, *args: object) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m runbot.demo.exporter", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9399)
    p.add_argument("--fill-seconds", type=float, default=120.0, help="seconds from 50%% used to a full disk")
    p.add_argument("--error-seconds", type=float, default=300.0, help="seconds until 50%% of requests fail")
    args = p.parse_args(argv)
    server = make_server(DemoState(args.fill_seconds, args.error_seconds), args.port, args.host)
    print(f"demo exporter on http://{args.host}:{args.port}/metrics", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
