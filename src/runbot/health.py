"""Liveness that tells the truth: every long-lived worker reports a heartbeat, and /healthz reads them.

A worker is *healthy* while its thread lives and it either waits for work (idle) or has been busy for less
than its stall bound. A worker that died (its supervisor gave up, or it was killed) or that has been busy
beyond the bound (wedged on a lock, a hung call) makes /healthz answer 503, naming it, so the orchestrator
restarts the process. Dependencies that are down (the database, Vault) are *readiness* problems, not
liveness ones: restarting the process would not bring them back, so workers ride them out with back-off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

DEFAULT_STALL_SECONDS = 120.0


class WorkerKilled(BaseException):
    """Raised inside a worker by the test-only kill hook: a fatal error its supervisor does not recover from."""


@dataclass
class Heartbeat:
    """One worker's pulse. Thread-safe enough: single writer (the worker), readers only compare numbers."""

    name: str
    stall_after: float = DEFAULT_STALL_SECONDS
    clock: Callable[[], float] = time.monotonic
    busy_since: float | None = None  # None while idle (waiting for work)
    last_beat: float = 0.0
    dead: str | None = None  # why the worker ended for good
    restarts: int = 0
    last_error: str | None = None
    kill_requested: bool = False
    thread: threading.Thread | None = None  # the worker's thread, once started
    started: bool = False

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def mine(self) -> bool:
        """Called from the worker's own thread (other threads may wait on its events too)."""
        return self.thread is threading.current_thread()

    def busy(self) -> None:
        """Starting a pass of work now."""
        self.check_kill()
        now = self.clock()
        self.busy_since, self.last_beat, self.started = now, now, True

    def idle(self) -> None:
        """Waiting for work (a wait with no bound is fine while idle)."""
        self.check_kill()
        self.busy_since, self.last_beat, self.started = None, self.clock(), True

    def check_kill(self) -> None:
        if self.kill_requested:
            self.kill_requested = False
            raise WorkerKilled(f"{self.name} killed by the test hook")

    def died(self, why: str) -> None:
        self.dead = why

    def restarted(self, error: str) -> None:
        self.restarts += 1
        self.last_error = error

    def problem(self) -> str | None:
        """Why this worker is not live, or None."""
        if self.dead is not None:
            return f"worker {self.name} died: {self.dead}"
        if self.started and not self.alive():
            return f"worker {self.name} is not running"
        if self.busy_since is not None:
            busy_for = self.clock() - self.busy_since
            if busy_for > self.stall_after:
                return f"worker {self.name} stalled: busy for {busy_for:.0f}s (bound {self.stall_after:.0f}s)"
        return None


@dataclass
class Probe:
    """A worker we do not own the loop of (Vault's keepers, APScheduler): live while `alive()` says so."""

    name: str
    alive: Callable[[], bool]

    def problem(self) -> str | None:
        try:
            ok = self.alive()
        except Exception as exc:  # a probe must not take /healthz down with it
            return f"worker {self.name}: probe failed ({type(exc).__name__})"
        return None if ok else f"worker {self.name} is not running"


@dataclass
class Health:
    """The process's workers, by name; also the `runbot_worker_up` collector."""

    beats: dict[str, Heartbeat] = field(default_factory=dict)
    probes: dict[str, Probe] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, beat: Heartbeat) -> Heartbeat:
        with self._lock:
            self.beats[beat.name] = beat
        return beat

    def probe(self, name: str, alive: Callable[[], bool]) -> None:
        with self._lock:
            self.probes[name] = Probe(name, alive)

    def unregister(self, name: str) -> None:
        with self._lock:
            self.beats.pop(name, None)
            self.probes.pop(name, None)

    def workers(self) -> list[tuple[str, str | None]]:
        """(name, problem or None) for every watched worker, sorted by name."""
        with self._lock:
            items: list[Heartbeat | Probe] = [*self.beats.values(), *self.probes.values()]
        return sorted(((w.name, w.problem()) for w in items), key=lambda t: t[0])

    def problems(self) -> list[str]:
        return [p for _, p in self.workers() if p is not None]

    def kill(self, name: str) -> bool:
        """Test hook: the named worker raises WorkerKilled at its next heartbeat."""
        beat = self.beats.get(name)
        if beat is None:
            return False
        beat.kill_requested = True
        return True


class HealthCollector(Collector):
    """`runbot_worker_up{worker}` computed at scrape time from the heartbeats, so it cannot go stale."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily(
            "runbot_worker_up", "1 while the worker runs and is not stalled", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "runbot_worker_restarts", "Worker restarts after a failure", labels=["worker"]
        )
        for name, problem in self.health.workers():
            up.add_metric([name], 0.0 if problem else 1.0)
        for beat in list(self.health.beats.values()):
            restarts.add_metric([beat.name], beat.restarts)
        yield up
        yield restarts


@dataclass
class Backoff:
    """Exponential back-off between restarts: 0.5 s, 1 s, 2 s ... capped; reset after a healthy stretch."""

    first: float = 0.5
    cap: float = 30.0
    healthy_after: float = 60.0
    _next: float = 0.0

    def delay(self, ran_for: float) -> float:
        if ran_for >= self.healthy_after or self._next == 0.0:
            self._next = self.first
        else:
            self._next = min(self.cap, self._next * 2)
        return self._next
