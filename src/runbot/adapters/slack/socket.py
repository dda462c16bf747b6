"""Socket Mode: the bot dials out to Slack over a WebSocket, so no public endpoint is needed.

The connection lives in its own thread and event loop, so the web server and the engine are unaffected
by reconnects. slack-sdk keeps trying by itself (every ping interval) when Slack or the network is down
at start, and reconnects a dropped socket; start-up does not wait for it longer than a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import structlog
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp

log = structlog.get_logger("runbot.slack.socket")


class SocketModeRunner:
    def __init__(self, bolt: AsyncApp, app_token: str, ping_interval: float = 10.0) -> None:
        self.bolt = bolt
        self._token = app_token
        self.ping_interval = ping_interval
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._started = threading.Event()
        self.connected = threading.Event()

    def start(self, wait: float = 5.0) -> None:
        self._thread = threading.Thread(target=self._main, name="runbot-slack-socket", daemon=True)
        self._thread.start()
        self._started.wait(5)
        if not self.connected.wait(wait):
            log.warning("Socket Mode is not connected yet; it keeps trying in the background")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as exc:
            log.error("Socket Mode stopped", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._started.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._started.set()
        handler = AsyncSocketModeHandler(self.bolt, self._token, ping_interval=self.ping_interval)
        connecting = asyncio.ensure_future(handler.connect_async())
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({connecting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if connecting.done() and connecting.exception() is None:
                log.info("Socket Mode connected")
                self.connected.set()
                await stopped
        finally:
            await handler.close_async()  # also ends a connect loop still retrying
            for t in (connecting, stopped):
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t

    def stop(self, timeout: float = 10.0) -> None:
        loop, ev = self._loop, self._stopped
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ev.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
