"""Fixtures for intake tests: an in-process bot (TestClient, real SQLite file); `runbooks_dir` is the suite's."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from runbot.adapters.alertmanager.processor import wait_idle
from runbot.adapters.alertmanager.unpack import unpack
from runbot.adapters.alertmanager.wiring import Intake
from runbot.app import Runtime, build_runtime, create_app
from runbot.engine.state import INCIDENTS, RUNS
from runbot.settings import Settings
from runbot.store import tables
from runbot.store.types import utcnow
from tests.conftest import write_runbook

__all__ = ["API_AUTH", "AUTH", "HOOK_TOKEN", "Bot", "write_runbook"]

ALERTS = tables.Alert.__table__
DELIVERIES = tables.WebhookDelivery.__table__
HOOK_TOKEN = "hook-token-for-tests"
API_TOKEN = "api-token-for-tests"
AUTH = {"Authorization": f"Bearer {HOOK_TOKEN}"}
API_AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@dataclass
class Bot:
    """A running in-process bot: HTTP client, runtime, and shortcuts to its database."""

    client: TestClient
    rt: Runtime
    intake: Intake
    stopped: bool = False

    def stop(self) -> None:
        """Shut the bot down (lifespan end: workers stop, database closed); idempotent."""
        if not self.stopped:
            self.stopped = True
            self.client.__exit__(None, None, None)

    def post(self, body: Any, headers: dict[str, str] | None = None) -> Any:
        return self.client.post("/webhooks/alertmanager", json=body, headers=AUTH if headers is None else headers)

    def delivered(self, response: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The delivery an accepted webhook answer names, once unpacked into alerts (`new`, `duplicates`).
        Without a running intake worker (`alertmanager_process=False`) it is unpacked here, as a replica would."""
        assert response.status_code == 200, response.text
        delivery_id = response.json()["delivery"]
        deadline = time.monotonic() + timeout
        while True:
            if not self.rt.settings.alertmanager_process:
                self.unpack()
            [row] = self.rows(DELIVERIES, DELIVERIES.c.id == delivery_id)
            if row["processed_at"] is not None:
                return row
            assert time.monotonic() < deadline, f"delivery {delivery_id} was not unpacked"
            self.intake.processor.notify()
            time.sleep(0.02)

    def unpack(self) -> None:
        """Unpack every accepted delivery into alert rows (no matching): what an intake worker does first."""
        with self.rt.db.tx() as conn:
            unpack(conn, utcnow(), 1_000_000)

    def settle(self, timeout: float = 10.0) -> None:
        """Until intake has matched everything and no run is still moving."""
        assert wait_idle(self.intake.processor, self.rt.db, timeout), "alerts still pending"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.rt.db.read() as conn:
                busy = conn.execute(select(RUNS.c.id).where(RUNS.c.status.in_(["pending", "running"]))).first()
            if busy is None:
                return
            time.sleep(0.02)
        raise AssertionError("runs did not settle")

    def wait_run(self, run_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            [run] = self.runs(RUNS.c.id == run_id)
            if run["status"] in statuses:
                return run
            time.sleep(0.02)
        raise AssertionError(f"run {run_id} is {run['status']}, not {statuses}")

    def rows(self, table: Any, *where: Any) -> list[dict[str, Any]]:
        with self.rt.db.read() as conn:
            return [dict(r) for r in conn.execute(select(table).where(*where)).mappings()]

    def alerts(self, *where: Any) -> list[dict[str, Any]]:
        return self.rows(ALERTS, *where)

    def runs(self, *where: Any) -> list[dict[str, Any]]:
        return self.rows(RUNS, *where)

    def incidents(self, *where: Any) -> list[dict[str, Any]]:
        return self.rows(INCIDENTS, *where)


@pytest.fixture
def make_bot(tmp_path: Path, runbooks_dir: Path) -> Iterator[Callable[..., Bot]]:
    """Start an in-process bot with these setting overrides; stopped at the end of the test."""
    started: list[Bot] = []

    def make(**overrides: Any) -> Bot:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data", "runbooks_dir": runbooks_dir, "poll_interval": 0.1,
            "alertmanager_webhook_token": HOOK_TOKEN, "api_token": API_TOKEN,
        }  # fmt: skip
        values.update(overrides)
        rt = build_runtime(Settings(**values))
        app = create_app(rt)
        client = TestClient(app)
        client.__enter__()
        bot = Bot(client, rt, app.state.intake)
        started.append(bot)
        return bot

    yield make
    for bot in started:
        bot.stop()
