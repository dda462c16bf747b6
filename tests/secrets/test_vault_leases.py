"""Dynamic credentials are real PostgreSQL users that live exactly as long as the run that asked for them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from runbot.domain import RunStatus
from runbot.secrets.leases import SHUTDOWN_REASON, lease_rows
from tests.conftest import write_runbook
from tests.engine.helpers import drive, start, steps
from tests.secrets.helpers import PgLogin, vault_settings, wait_until, with_test_steps
from tests.support.openbao import OpenBao, PgDatabase

pytest_plugins = ["tests.support.openbao_fixtures"]
pytestmark = pytest.mark.integration


def creds_then(name: str, creds: str, *later: str, renew: bool = True) -> str:
    body = [f"name: {name}", "steps:", "  - id: db", "    type: vault.credentials",
            f"    with: {{path: {creds}, renew: {str(renew).lower()}}}"]  # fmt: skip
    return "\n".join(body + [f"  {line}" for step in later for line in step.strip().splitlines()]) + "\n"


def login_step(database: str, sleep: float = 0) -> str:
    return f"""
- id: login
  type: test.pg_login
  with:
    user: "{{{{ steps.db.username }}}}"
    password: "{{{{ steps.db.password }}}}"
    database: {database}
    sleep: {sleep}
"""


WAIT = """
- id: pause
  type: wait
  with: {duration: 1h}
"""


@pytest.fixture
def creds(bao_db: OpenBao, vault_pg: PgDatabase) -> str:
    return bao_db.db_role(vault_pg, "readonly", default_ttl="1m")


@pytest.fixture
def short_creds(bao_db: OpenBao, vault_pg: PgDatabase) -> str:
    return bao_db.db_role(vault_pg, "short", default_ttl="2s", max_ttl="1m")


def revoked(rt: Any, run_id: str) -> list[dict[str, Any]]:
    rows = lease_rows(rt.db, run_id)
    return rows if rows and all(r["revoked_at"] is not None for r in rows) else []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_credentials_work_in_the_run_and_the_user_is_dropped_when_it_ends(
        backend: str, request: pytest.FixtureRequest, bao_db: OpenBao, vault_pg: PgDatabase, creds: str,
        make_runtime: Any, runbooks_dir: Path) -> None:  # fmt: skip
    db_url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    write_runbook(runbooks_dir, "db-check", creds_then("db-check", creds, login_step(vault_pg.name)))
    rt = with_test_steps(make_runtime(db_url, **vault_settings(bao_db)))
    run_id = start(rt, "db-check")
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
    user = PgLogin.users[-1]
    assert steps(rt, run_id)[-1]["output"]["logged_in"] is True
    [lease] = wait_until(lambda: revoked(rt, run_id))
    assert lease["revoke_reason"] == "run ended (succeeded)"
    assert not vault_pg.role_exists(user), "the database user no longer exists"
    assert not bao_db.lease_exists(lease["lease_id"])
    stored = json.dumps([s["output"] for s in steps(rt, run_id)], default=str)
    assert user not in stored and lease["lease_id"] in stored


def test_the_lease_is_renewed_during_a_long_step(bao_db: OpenBao, vault_pg: PgDatabase, short_creds: str,
                                                 make_runtime: Any, runbooks_dir: Path) -> None:  # fmt: skip
    write_runbook(runbooks_dir, "long", creds_then("long", short_creds, login_step(vault_pg.name, sleep=5)))
    rt = with_test_steps(make_runtime(**vault_settings(bao_db)))
    run_id = start(rt, "long")
    assert drive(rt, run_id) is RunStatus.SUCCEEDED, steps(rt, run_id)[-1]["error"]  # 2.5 TTLs later it still works
    [lease] = wait_until(lambda: revoked(rt, run_id))
    assert lease["renewals"] >= 2
    assert not vault_pg.role_exists(PgLogin.users[-1])


def test_without_renewal_the_same_long_step_finds_the_user_gone(bao_db: OpenBao, vault_pg: PgDatabase,
                                                                short_creds: str, make_runtime: Any,
                                                                runbooks_dir: Path) -> None:  # fmt: skip
    write_runbook(runbooks_dir, "long", creds_then("long", short_creds, login_step(vault_pg.name, sleep=4.5),
                                                   renew=False))  # fmt: skip
    rt = with_test_steps(make_runtime(**vault_settings(bao_db)))
    run_id = start(rt, "long")
    assert drive(rt, run_id) is RunStatus.FAILED
    assert steps(rt, run_id)[-1]["error"] == "could not log in with the issued credentials (role gone?)"


def test_a_failed_run_revokes_its_leases(bao_db: OpenBao, creds: str, make_runtime: Any, runbooks_dir: Path) -> None:
    write_runbook(runbooks_dir, "fails", creds_then("fails", creds, "- {id: boom, type: fail, with: {retryable: false}}"))
    rt = make_runtime(**vault_settings(bao_db))
    run_id = start(rt, "fails")
    assert drive(rt, run_id) is RunStatus.FAILED
    [lease] = wait_until(lambda: revoked(rt, run_id))
    assert lease["revoke_reason"] == "run ended (failed)"


def test_a_run_cancelled_while_parked_has_its_leases_revoked_by_the_sweep(
        bao_db: OpenBao, vault_pg: PgDatabase, creds: str, make_runtime: Any, runbooks_dir: Path) -> None:  # fmt: skip
    write_runbook(runbooks_dir, "parked", creds_then("parked", creds, WAIT))
    rt = make_runtime(**vault_settings(bao_db))
    run_id = start(rt, "parked")
    assert drive(rt, run_id) is RunStatus.WAITING
    [active] = lease_rows(rt.db, run_id)
    assert active["revoked_at"] is None and bao_db.lease_exists(active["lease_id"])
    assert rt.engine.cancel(run_id, "cli:tester", "not needed") == "cancelled"  # no worker holds it: no run-end hook
    [lease] = wait_until(lambda: revoked(rt, run_id))
    assert lease["revoke_reason"] == "run is over (cancelled)"
    assert not bao_db.lease_exists(lease["lease_id"])


def test_crash_recovery_revokes_leases_of_runs_that_are_over_and_keeps_live_ones(
        bao_db: OpenBao, creds: str, make_runtime: Any, runbooks_dir: Path) -> None:  # fmt: skip
    write_runbook(runbooks_dir, "parked", creds_then("parked", creds, WAIT))
    a = make_runtime(**vault_settings(bao_db, instance_id="runbot-a"))
    over, live = start(a, "parked"), start(a, "parked")
    assert drive(a, over) is RunStatus.WAITING and drive(a, live) is RunStatus.WAITING
    a.secrets.abandon()  # the process dies: nothing is revoked
    a.engine.cancel(over, "cli:tester")  # ... and the run ends while no runbot is up
    [gone] = lease_rows(a.db, over)
    [kept] = lease_rows(a.db, live)
    b = make_runtime(**vault_settings(bao_db, instance_id="runbot-b"))
    b.secrets.start()  # what `runbot serve` does on start
    wait_until(lambda: revoked(b, over))
    assert not bao_db.lease_exists(gone["lease_id"])
    assert bao_db.lease_exists(kept["lease_id"]) and lease_rows(b.db, live)[0]["revoked_at"] is None
    from runbot.engine.ports import SecretError

    with pytest.raises(SecretError, match="held in the memory of runbot instance runbot-a, not this one"):
        b.secrets.fetch(f"lease:{kept['lease_id']}#password")
    b.engine.cancel(live, "cli:tester")
    wait_until(lambda: revoked(b, live))


def test_clean_shutdown_revokes_held_leases_and_a_later_step_says_why(
        bao_db: OpenBao, vault_pg: PgDatabase, creds: str, make_runtime: Any, runbooks_dir: Path) -> None:  # fmt: skip
    write_runbook(runbooks_dir, "resume", creds_then("resume", creds, "- {id: pause, type: wait, with: {duration: 300ms}}",
                                                     login_step(vault_pg.name)))  # fmt: skip
    a = with_test_steps(make_runtime(**vault_settings(bao_db, instance_id="runbot-a")))
    run_id = start(a, "resume")
    assert drive(a, run_id, max_wait=0) is RunStatus.WAITING
    a.close()
    [lease] = lease_rows(a.db, run_id)
    assert lease["revoke_reason"] == SHUTDOWN_REASON
    b = with_test_steps(make_runtime(**vault_settings(bao_db, instance_id="runbot-b")))
    assert drive(b, run_id) is RunStatus.FAILED
    err = steps(b, run_id)[-1]["error"]
    assert err.startswith(f"secret 'lease:{lease['lease_id']}#") and "revoked at " in err and SHUTDOWN_REASON in err


def test_runs_show_lists_the_lease_with_its_ttl_but_no_value(bao_db: OpenBao, creds: str, make_runtime: Any,
                                                             runbooks_dir: Path, tmp_path: Path) -> None:  # fmt: skip
    from runbot.cli.main import app

    write_runbook(runbooks_dir, "parked", creds_then("parked", creds, WAIT))
    settings = vault_settings(bao_db)
    rt = make_runtime(**settings)
    run_id = start(rt, "parked")
    assert drive(rt, run_id) is RunStatus.WAITING
    [lease] = lease_rows(rt.db, run_id)
    values = rt.secrets.leases.values(lease["lease_id"])
    config = tmp_path / "runbot.yaml"
    config.write_text(json.dumps({"data_dir": str(tmp_path / "data"), "runbooks_dir": str(runbooks_dir),
                                  "database_url": rt.settings.effective_database_url, **settings}))  # fmt: skip
    out = CliRunner().invoke(app, ["--config", str(config), "runs", "show", run_id])
    assert out.exit_code == 0, out.output
    assert "vault leases:" in out.output
    section = out.output.split("vault leases:", 1)[1].splitlines()
    line = next(ln for ln in section if lease["lease_id"] in ln)
    assert "step db" in line and "ttl 60s" in line and "active" in line
    assert values["username"] not in out.output and values["password"] not in out.output
    rt.engine.cancel(run_id, "cli:tester")
    wait_until(lambda: revoked(rt, run_id))
