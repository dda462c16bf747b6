"""The README demo as a test: `runbot fire` against a running bot, then `runbot alerts` / `runbot incidents`."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
import typer
from typer.testing import CliRunner

from runbot.cli.intake import register
from runbot.cli.main import CliError
from tests.support.ports import free_port

from .server import RunbotServer, runbot_command

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "runbooks" / "examples"


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    app.command("noop", hidden=True)(lambda: None)  # keep sub-commands addressed by name
    return app


def cli(srv: RunbotServer, *args: str, env: dict[str, str] | None = None) -> Any:
    """The intake commands in-process (fast), with the server's environment (plus `env`)."""
    app = _app()
    saved = structlog.get_config()  # the CLI points logging at this test's captured stderr: undo that after
    try:
        return CliRunner().invoke(app, list(args), env={**srv.env(), **(env or {})}, catch_exceptions=True)
    finally:
        structlog.configure(**saved)


def ok(result: Any) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return str(result.output)


def wait_settled(srv: RunbotServer, alerts: int, runs: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        a = srv.api("/api/v1/alerts")["alerts"]
        r = srv.api("/api/v1/runs")["runs"]
        if len(a) == alerts and not any(x["pending_since"] for x in a) and len(r) == runs and \
                all(x["status"] in ("waiting", "skipped", "cancelled") for x in r):  # fmt: skip
            return
        time.sleep(0.1)
    raise AssertionError("intake did not settle")


@pytest.mark.integration
def test_fire_the_examples_and_inspect_alerts_and_incidents(tmp_path):
    books = tmp_path / "runbooks"  # the demo runbook alone: other examples may come and go
    books.mkdir()
    shutil.copy(REPO / "runbooks" / "demo-disk-usage.yaml", books)
    srv = RunbotServer(tmp_path / "srv", books).start()
    try:
        # the installed entry point, as in the README
        first = subprocess.run([*runbot_command(), "fire", str(EXAMPLES / "disk-usage-firing.json")], env=srv.env(),
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert first.returncode == 0, first.stderr
        assert "sent 1 alert(s)" in first.stdout and '"new": 1' in first.stdout
        again = ok(cli(srv, "fire", str(EXAMPLES / "disk-usage-firing.json")))
        assert '"duplicates": 1' in again and '"new": 0' in again  # Alertmanager re-sending: nothing new
        group = ok(cli(srv, "fire", str(EXAMPLES / "disk-usage-group.json")))
        assert '"new": 2' in group and '"duplicates": 1' in group
        wait_settled(srv, alerts=3, runs=2)

        listing = ok(cli(srv, "alerts", "list"))
        assert "web-2:9100" in listing and "unhandled: no runbook matches" in listing
        assert len(json.loads(ok(cli(srv, "alerts", "list", "--unhandled", "--output", "json")))) == 1
        assert "HighDiskUsage: /var on web-1 is 93% full" in ok(cli(srv, "incidents", "list"))
        [inc] = json.loads(ok(cli(srv, "incidents", "list", "--output", "json")))
        assert inc["alerts_firing"] == 3 and inc["runs"] == 2
        shown = ok(cli(srv, "incidents", "show", inc["id"][:5]))
        assert "db-1:9100" in shown and shown.count("(awaiting approval)") == 2
        detail = json.loads(ok(cli(srv, "incidents", "show", inc["id"], "-o", "json")))
        assert {a["status"] for a in detail["alerts"]} == {"firing"}

        fresh = ok(cli(srv, "fire", "--fresh", str(EXAMPLES / "disk-usage-firing.json")))
        assert '"new": 1' in fresh  # a new startsAt: a new occurrence of the same alert
        wait_settled(srv, alerts=4, runs=3)
        runs = srv.api("/api/v1/runs")["runs"]
        assert "concurrency limit 1 reached" in runs[0]["reason"]  # web-1 already has a run waiting
        assert '"new": 3' in ok(cli(srv, "fire", "--resolve", str(EXAMPLES / "disk-usage-group.json")))
        still = [a for a in srv.api("/api/v1/alerts")["alerts"] if a["status"] == "firing"]
        assert len(still) == 1  # the fresh occurrence: resolve it as Alertmanager would
        body = json.loads((EXAMPLES / "disk-usage-resolved.json").read_text())
        body["alerts"][0]["startsAt"] = still[0]["starts_at"]
        (tmp_path / "resolved.json").write_text(json.dumps(body))
        assert '"new": 1' in ok(cli(srv, "fire", str(tmp_path / "resolved.json")))
        wait_settled(srv, alerts=4, runs=3)
        [inc] = json.loads(ok(cli(srv, "incidents", "list", "--output", "json")))
        assert inc["status"] == "resolved"  # every alert resolved: the pending cleanups were cancelled
        assert sorted(r["status"] for r in srv.api("/api/v1/runs")["runs"]) == ["cancelled", "cancelled", "skipped"]

        missing = cli(srv, "incidents", "show", "nope")
        assert isinstance(missing.exception, CliError) and "no incident 'nope'" in missing.exception.message
        assert "no alert was throttled" in ok(cli(srv, "alerts", "throttled"))
        assert "no rejected webhook bodies" in ok(cli(srv, "alerts", "rejects"))
    finally:
        srv.stop()


@pytest.mark.integration
def test_fire_explains_an_unreachable_bot_and_a_refusal(tmp_path):
    srv = RunbotServer(tmp_path / "srv", tmp_path)  # not started: nothing listens
    srv.port = free_port()
    res = cli(srv, "fire", str(EXAMPLES / "disk-usage-firing.json"))
    assert isinstance(res.exception, CliError)
    assert "could not reach" in res.exception.message and "runbot serve" in str(res.exception.hint)
    srv.start()
    try:
        res = cli(srv, "fire", "--token", "tok-not-it-1234", str(EXAMPLES / "disk-usage-firing.json"))
        assert isinstance(res.exception, CliError) and "HTTP 401" in res.exception.message
        assert "tok-not-it-1234" not in res.output + res.exception.message  # a token is never echoed
        # a shell whose settings point at another data directory: the answer is shown, nothing is created there
        elsewhere = tmp_path / "elsewhere"
        started = time.monotonic()
        res = cli(srv, "fire", str(EXAMPLES / "disk-usage-firing.json"), env={"RUNBOT_DATA_DIR": str(elsewhere)})
        assert res.exit_code == 0 and '"delivery": 1' in res.output and '"new"' not in res.output
        assert time.monotonic() - started < 5 and not elsewhere.exists()
    finally:
        srv.stop()
