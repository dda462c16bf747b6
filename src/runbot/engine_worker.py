"""The engine loops as supervised threads: restarted with back-off after a failure, watched by heartbeats."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import structlog

from runbot.engine.runner import Engine
from runbot.health import Backoff, Health, Heartbeat, WorkerKilled

log = structlog.get_logger("runbot.engine")

ENGINE_STALL_SECONDS = 120.0


def _scheduler_probe(engine: Engine, beat: Heartbeat) -> Callable[[], bool]:
    return lambda: engine.scheduler_running() or not beat.started or beat.problem() is not None


class EngineThread:
    """Engine loops in their own threads, so blocking commits never delay the web loop.

    SQLite takes one writer at a time, so one loop. PostgreSQL commits in parallel, so several loops
    (peers of rt.engine with their own lease-owner names) claim runs side by side. Each loop is named
    `engine-<n>` in /healthz and runbot_worker_up; its APScheduler is watched as `scheduler-<n>`.
    """

    def __init__(self, engine: Engine, loops: int | None = None, health: Health | None = None) -> None:
        self.engine = engine
        self.loops = loops or (1 if engine.db.is_sqlite else engine.settings.engine_loops_pg)
        self.threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self.health = health or Health()
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        engines = [self.engine] + [self.engine.spawn_peer(i) for i in range(1, self.loops)]
        for i, eng in enumerate(engines):
            beat = self.health.register(Heartbeat(f"engine-{i}", stall_after=ENGINE_STALL_SECONDS))
            eng.heartbeat = beat
            # the loop's timer scheduler; when the loop itself is down, that is the one problem reported
            self.health.probe(f"scheduler-{i}", _scheduler_probe(eng, beat))
            ready = threading.Event()
            t = threading.Thread(
                target=self._main, args=(eng, ready, beat), name=f"runbot-engine-{i}", daemon=True
            )
            beat.thread = t
            t.start()
            ready.wait(10)
            self.threads.append(t)

    def _main(self, engine: Engine, ready: threading.Event, beat: Heartbeat) -> None:
        backoff = Backoff()
        while not self._stopping:
            began = time.monotonic()
            try:
                asyncio.run(engine.run_forever(ready))
                return  # stopped
            except WorkerKilled as exc:
                self._died(beat, ready, exc, str(exc))
                return
            except Exception as exc:  # restart: a database failover must not end the loop for good
                beat.restarted(f"{type(exc).__name__}: {exc}")
                delay = backoff.delay(time.monotonic() - began)
                log.error("engine loop crashed; restarting after back-off", worker=beat.name, error=repr(exc),
                          retry_in=delay)  # fmt: skip
                ready.set()
                deadline = time.monotonic() + delay
                while not self._stopping and time.monotonic() < deadline:
                    time.sleep(min(0.1, delay))
            except BaseException as exc:
                self._died(beat, ready, exc, repr(exc))
                return

    def _died(self, beat: Heartbeat, ready: threading.Event, exc: BaseException, why: str) -> None:
        self.error = exc
        beat.died(why)
        log.error("engine loop died", worker=beat.name, error=why)
        ready.set()

    def alive(self) -> bool:
        return bool(self.threads) and all(t.is_alive() for t in self.threads)

    def stop(self, timeout: float = 10.0, grace: float = 0.0) -> None:
        """`grace`: seconds steps in flight may take to finish (SIGTERM drain); then runs are handed over."""
        self._stopping = True
        self.engine.stop(grace)
        for peer in self.engine.peers:
            peer.stop(grace)
        for t in self.threads:
            t.join(timeout + grace)
        for i in range(len(self.threads)):
            self.health.unregister(f"engine-{i}")
            self.health.unregister(f"scheduler-{i}")
