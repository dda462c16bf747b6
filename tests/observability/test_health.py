"""Liveness tells the truth: workers restart after a failure, and a dead or stalled one fails /healthz."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from runbot.app import create_app
from runbot.health import Health, Heartbeat
from runbot.worker import WorkerThread
from tests.support.waiting import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_busy_worker_is_stalled_only_beyond_its_bound_and_an_idle_one_never():
    clock = Clock()
    beat = Heartbeat("w", stall_after=60, clock=clock)
    beat.thread = threading.current_thread()
    beat.busy()
    clock.now += 59
    assert beat.problem() is None
    clock.now += 2
    assert "stalled" in (beat.problem() or "")
    beat.idle()
    clock.now += 10_000
    assert beat.problem() is None


class Flaky(WorkerThread):
    thread_name = "runbot-flaky"

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.passes = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.01)
            self._wake.clear()
            if self.failures:
                self.failures -= 1
                raise ConnectionError("server closed the connection unexpectedly")
            self.passes += 1


def test_a_worker_whose_loop_raises_restarts_with_back_off_and_stays_live():
    w = Flaky(failures=2)
    w._backoff.first = 0.01
    health = Health()
    health.register(w.heartbeat)
    w.start()
    try:
        wait_until(lambda: w.passes > 3, timeout=10, what="passes after the restarts")
        assert w.heartbeat.restarts == 2 and "ConnectionError" in (w.heartbeat.last_error or "")
        assert health.problems() == []
    finally:
        w.stop()


def test_a_killed_worker_is_dead_and_named():
    w = Flaky(failures=0)
    health = Health()
    health.register(w.heartbeat)
    w.start()
    try:
        assert health.kill("flaky")
        w.wake()
        problems = wait_until(health.problems, timeout=10, what="the dead worker reported")
        assert problems == ["worker flaky died: flaky killed by the test hook"]
    finally:
        w.stop()


def test_killing_the_engine_loop_fails_healthz_and_zeroes_its_up_gauges(make_runtime):
    rt = make_runtime(debug_worker_hooks=True)
    with TestClient(create_app(rt)) as client:
        assert client.get("/healthz").status_code == 200
        assert 'runbot_worker_up{worker="engine-0"} 1.0' in client.get("/metrics").text
        assert client.post("/debug/workers/engine-0/kill").status_code == 200
        dead = wait_until(lambda: (r := client.get("/healthz")).status_code == 503 and r, timeout=10,
                          what="/healthz failing")  # fmt: skip
        assert any("engine-0 died" in p for p in dead.json()["problems"])
        metrics = client.get("/metrics").text
        assert 'runbot_worker_up{worker="engine-0"} 0.0' in metrics
        assert "runbot_engine_up 0.0" in metrics
        assert client.get("/readyz").status_code == 503


def test_without_the_debug_setting_there_is_no_kill_hook(make_runtime):
    rt = make_runtime()
    with TestClient(create_app(rt)) as client:
        assert client.post("/debug/workers/engine-0/kill").status_code in (404, 405)
