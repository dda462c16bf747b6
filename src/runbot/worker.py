"""The lifecycle every background thread of runbot shares: start once, wake on demand, stop and join.

The thread is supervised: if `_run` raises (a database failover, a bug hit by one odd row), the failure is
logged and `_run` starts again after an exponential back-off, so a transient outage never ends the worker
for good. Waiting on `_wake` or `_stop` is the heartbeat: a worker waiting is idle, a worker that returns
from the wait is busy, and one busy beyond its stall bound is reported by /healthz (runbot.health).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import structlog

from runbot.health import Backoff, Heartbeat, WorkerKilled

log = structlog.get_logger("runbot.worker")


class BeatingEvent(threading.Event):
    """A threading.Event whose wait() reports the waiting thread idle, then busy again."""

    def __init__(self, beat: Heartbeat) -> None:
        super().__init__()
        self.beat = beat

    def wait(self, timeout: float | None = None) -> bool:
        mine = self.beat.mine()
        if mine:
            self.beat.idle()
        try:
            return super().wait(timeout)
        finally:
            if mine:
                self.beat.busy()


class WorkerThread:
    """Subclasses implement `_run`, looping until `self._stop` is set and sleeping on `self._wake`."""

    thread_name = "runbot-worker"
    stall_after = 120.0  # seconds one pass of work may take before the worker counts as stalled

    def __init__(self) -> None:
        self.heartbeat = Heartbeat(self.worker_name(), stall_after=self.stall_after)
        self._stop = BeatingEvent(self.heartbeat)
        self._wake = BeatingEvent(self.heartbeat)
        self._thread: threading.Thread | None = None
        self._backoff = Backoff()

    def worker_name(self) -> str:
        """The `worker` label of runbot_worker_up (the thread name without the runbot- prefix)."""
        return self.thread_name.removeprefix("runbot-")

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._wake.set()  # first pass at once: work left by a previous process is picked up on start
        self.heartbeat.dead = None
        self._thread = threading.Thread(target=self._supervise, name=self.thread_name, daemon=True)
        self.heartbeat.thread = self._thread
        self._thread.start()

    def wake(self) -> None:
        """Thread-safe: there is new work."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.heartbeat.started = False

    def _supervise(self) -> None:
        self.heartbeat.busy()
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self._run()
            except WorkerKilled as exc:
                self._died(str(exc))
                return
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                self.heartbeat.restarted(error)
                delay = self._backoff.delay(time.monotonic() - began)
                _quiet_log("error", "worker failed; restarting after back-off", worker=self.heartbeat.name,
                           error=error, retry_in=delay)  # fmt: skip
                try:
                    threading.Event.wait(self._stop, delay)
                except WorkerKilled as killed:
                    self._died(str(killed))
                    return
                continue
            except BaseException as exc:
                self._died(f"{type(exc).__name__}: {exc}")
                raise
            if not self._stop.is_set():
                self._died("its loop returned")
                return

    def _died(self, why: str) -> None:
        self.heartbeat.died(why)
        _quiet_log("error", "worker died", worker=self.heartbeat.name, error=why)

    def _run(self) -> None:
        raise NotImplementedError


def _quiet_log(level: str, event: str, **kw: Any) -> None:
    """Not even a broken log stream may end a supervisor."""
    with contextlib.suppress(Exception):
        getattr(log, level)(event, **kw)
