"""`install(rt, app)`: mounts the webhook and API, and registers the intake worker, silence check and SIGHUP reload."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from fastapi import FastAPI

from runbot.adapters.alertmanager.api import api_router, reload_runbooks
from runbot.adapters.alertmanager.ingest import DeliveryWriter, WriteGate
from runbot.adapters.alertmanager.processor import IntakeProcessor
from runbot.adapters.alertmanager.silences import SilenceCheck
from runbot.adapters.alertmanager.webhook import GRAFANA_PATH, PATH, webhook_endpoint

if TYPE_CHECKING:
    from runbot.app import Runtime

log = structlog.get_logger("runbot.intake")


@dataclass
class Intake:
    """Handles kept on app.state.intake (tests and the bench look at them)."""

    writer: DeliveryWriter
    processor: IntakeProcessor


def install(rt: Runtime, app: FastAPI) -> None:
    gate = WriteGate()
    writer = DeliveryWriter(rt.db, gate=gate)
    processor = IntakeProcessor(rt, gate, writer.backlog)
    writer.on_commit = processor.notify
    processor.webhook_busy = lambda: time.monotonic() - writer.last_commit < 0.05
    endpoint = webhook_endpoint(rt, writer)
    app.add_route(PATH, endpoint, methods=["POST"], include_in_schema=False)
    app.add_route(GRAFANA_PATH, endpoint, methods=["POST"], include_in_schema=False)
    app.include_router(api_router(rt))
    rt.background.append(writer.start)
    rt.stoppers.append(writer.stop)
    if rt.settings.alertmanager_process:
        rt.background.append(processor.start)
        rt.stoppers.append(processor.stop)
    if rt.settings.alertmanager_url:
        rt.engine.hold_checks.append(SilenceCheck(rt.settings))
    rt.background.append(lambda: _watch_sighup(rt))
    app.state.intake = Intake(writer, processor)


def _watch_sighup(rt: Runtime) -> None:
    """`kill -HUP` reloads runbooks (only where the server's loop runs in the main thread, as under `runbot serve`)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return

    def on_hup() -> None:
        threading.Thread(target=_reload_quietly, args=(rt,), name="runbot-reload", daemon=True).start()

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (RuntimeError, ValueError, NotImplementedError):
        return  # not the main thread (e.g. a test client): POST /admin/reload still works
    # A serving process: move everything built at start-up (imports, app, runbooks) out of the garbage
    # collector's sight. Otherwise every full collection walks it all, a ~100 ms pause that stops the
    # webhook (it was the whole p99 of acknowledgement latency). Not done in test clients, where frozen
    # objects would pile up across apps.
    gc.collect()
    gc.freeze()

    def remove() -> None:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGHUP)

    rt.stoppers.append(remove)


def _reload_quietly(rt: Runtime) -> None:
    try:
        reload_runbooks(rt, "signal:SIGHUP")
    except Exception as exc:
        log.error("runbook reload on SIGHUP failed", error=repr(exc))
