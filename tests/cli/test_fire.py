"""`runbot fire` times a sample as Alertmanager would: fresh by default, the same startsAt while it fires."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.adapters.alertmanager.server import RunbotServer
from tests.adapters.alertmanager.test_cli import EXAMPLES, REPO, cli, ok, wait_settled


@pytest.mark.integration
def test_fire_is_fresh_by_default_so_firing_after_a_resolve_starts_a_new_run(tmp_path: Path) -> None:
    books = tmp_path / "runbooks"
    books.mkdir()
    shutil.copy(REPO / "runbooks" / "demo-disk-usage.yaml", books)
    srv = RunbotServer(tmp_path / "srv", books).start()
    firing, resolved = str(EXAMPLES / "disk-usage-firing.json"), str(EXAMPLES / "disk-usage-resolved.json")
    try:
        assert '"new": 1' in ok(cli(srv, "fire", firing))
        assert '"duplicates": 1' in ok(cli(srv, "fire", firing))  # still firing: the same occurrence
        wait_settled(srv, alerts=1, runs=1)
        [alert] = srv.api("/api/v1/alerts")["alerts"]
        started = datetime.fromisoformat(alert["starts_at"])
        assert abs(datetime.now(UTC) - started.astimezone(UTC)) < timedelta(minutes=5)  # not the file's 2024

        assert '"new": 1' in ok(cli(srv, "fire", resolved))  # resolves that occurrence
        wait_settled(srv, alerts=1, runs=1)
        assert [a["status"] for a in srv.api("/api/v1/alerts")["alerts"]] == ["resolved"]

        assert '"new": 1' in ok(cli(srv, "fire", firing))  # fires again: a new occurrence and a new run
        wait_settled(srv, alerts=2, runs=2)

        assert '"new": 1' in ok(cli(srv, "fire", "--keep-times", firing))  # the file's own 2024 startsAt
        wait_settled(srv, alerts=3, runs=3)
        assert any(a["starts_at"].startswith("2024-05-01") for a in srv.api("/api/v1/alerts")["alerts"])
    finally:
        srv.stop()
