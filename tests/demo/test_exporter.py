"""The demo exporter: problems that grow on a clock, fixes that stop them, all visible at /metrics."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runbot.demo.exporter import DemoState, make_server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_disk_fills_linearly_to_full_and_a_cleanup_frees_it() -> None:
    clock = Clock()
    state = DemoState(fill_seconds=100, error_seconds=200, clock=clock)
    assert state.disk_used_ratio() == 0.5
    clock.now += 60
    assert state.disk_used_ratio() == pytest.approx(0.8)
    clock.now += 1000
    assert state.disk_used_ratio() == 1.0
    state.cleanup()
    clock.now += 1000
    assert state.disk_used_ratio() == 0.2 and state.cleanups == 1
    state.reset()
    assert state.disk_used_ratio() == 0.5


def test_the_error_ratio_rises_until_a_restart() -> None:
    clock = Clock()
    state = DemoState(fill_seconds=100, error_seconds=200, clock=clock)
    clock.now += 100
    assert state.error_ratio() == pytest.approx(0.25)
    state.restart()
    assert state.error_ratio() == 0.0 and state.restarts == 1


@pytest.fixture
def served() -> Iterator[tuple[str, DemoState, Clock]]:
    clock = Clock()
    state = DemoState(fill_seconds=100, error_seconds=200, clock=clock)
    server = make_server(state, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state, clock
    finally:
        server.shutdown()
        server.server_close()


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def _post(url: str) -> dict[str, object]:
    req = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return dict(json.loads(resp.read()))


def test_metrics_and_the_remediation_endpoints_over_http(served: tuple[str, DemoState, Clock]) -> None:
    url, _, clock = served
    clock.now += 80
    assert _metrics(url) == {"demo_disk_used_ratio": pytest.approx(0.9), "demo_service_error_ratio": pytest.approx(0.2)}
    assert _post(f"{url}/cleanup")["disk_used_ratio"] == 0.2
    assert _post(f"{url}/restart")["error_ratio"] == 0.0
    assert _metrics(url) == {"demo_disk_used_ratio": 0.2, "demo_service_error_ratio": 0.0}
    assert _post(f"{url}/reset")["disk_filling"] is True
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(f"{url}/nothing")
    assert err.value.code == 404
