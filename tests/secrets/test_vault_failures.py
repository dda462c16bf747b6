"""When Vault is sealed, gone, refuses or the token dies mid-run: the step fails (or retries per policy) with
a message naming the reference and the reason, never a value, and nothing falls back to other configuration."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from runbot.domain import RunStatus
from runbot.secrets.leases import lease_lines, lease_rows
from tests.conftest import write_runbook
from tests.engine.helpers import drive, run_row, start, steps
from tests.secrets.helpers import Hook, runbot_token, vault_settings, wait_until, with_test_steps
from tests.support.openbao import OpenBao, PgDatabase

pytest_plugins = ["tests.support.openbao_fixtures"]
pytestmark = pytest.mark.integration

USE_SECRET = """
name: use-secret
steps:
  - id: first
    type: log
    with: {message: "using {{ secret('kv/app#password') }}"}
    retry: {attempts: 2, initial: 100ms, max: 200ms}
"""


def attempts(rt: Any, run_id: str, step_id: str) -> list[dict[str, Any]]:
    return [s for s in steps(rt, run_id) if s["step_id"] == step_id]


def test_sealed_vault_fails_the_step_after_its_retries_and_works_once_unsealed(
        fresh_bao: OpenBao, make_runtime: Any, runbooks_dir: Path) -> None:  # fmt: skip
    fresh_bao.put_kv("kv", "app", {"password": "sealed-away-pw"})
    write_runbook(runbooks_dir, "use-secret", USE_SECRET)
    rt = make_runtime(**vault_settings(fresh_bao, vault_token=fresh_bao.root_token))
    fresh_bao.seal()
    run_id = start(rt, "use-secret")
    assert drive(rt, run_id) is RunStatus.FAILED
    tries = attempts(rt, run_id, "first")
    assert [t["status"] for t in tries] == ["failed", "failed"], "sealed is retryable: the policy's 2 attempts ran"
    assert tries[-1]["error"] == "secret 'kv/app#password': Vault is sealed"
    fresh_bao.unseal()
    again = start(rt, "use-secret")
    assert drive(rt, again) is RunStatus.SUCCEEDED


def test_permission_denied_is_not_retried(bao: OpenBao, make_runtime: Any, runbooks_dir: Path) -> None:
    path = f"denied/{uuid.uuid4().hex[:8]}"
    bao.put_kv("kv", path, {"password": "not-for-runbot"})
    bao.policy("elsewhere", 'path "kv/data/elsewhere/*" { capabilities = ["read"] }')
    write_runbook(runbooks_dir, "use-secret", USE_SECRET.replace("kv/app#password", f"kv/{path}#password"))
    rt = make_runtime(**vault_settings(bao, vault_token=bao.token(policies=["elsewhere"])))
    run_id = start(rt, "use-secret")
    assert drive(rt, run_id) is RunStatus.FAILED
    tries = attempts(rt, run_id, "first")
    assert len(tries) == 1
    assert tries[0]["error"] == f"secret 'kv/{path}#password': permission denied by Vault policy (403)"
    assert run_row(rt, run_id)["reason"] == f"step first failed: {tries[0]['error']}"


def test_a_missing_secret_never_falls_back_to_the_environment(bao: OpenBao, make_runtime: Any, runbooks_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    path = f"missing/{uuid.uuid4().hex[:8]}"
    # what the env provider would read for this reference: it must stay unused once Vault is configured
    monkeypatch.setenv(f"RUNBOT_SECRET_KV_{path.replace('/', '_').upper()}__PASSWORD", "plaintext-fallback")
    write_runbook(runbooks_dir, "use-secret", USE_SECRET.replace("kv/app#password", f"kv/{path}#password"))
    rt = make_runtime(**vault_settings(bao))
    run_id = start(rt, "use-secret")
    assert drive(rt, run_id) is RunStatus.FAILED
    assert attempts(rt, run_id, "first")[-1]["error"] == f"secret 'kv/{path}#password': no secret at this path (404)"
    assert all(s["output"] is None or "plaintext-fallback" not in str(s["output"]) for s in steps(rt, run_id))


def test_vault_stopped_mid_run_fails_the_step_and_the_lease_revocation_is_retried(
        fresh_bao: OpenBao, vault_pg: PgDatabase, make_runtime: Any, runbooks_dir: Path) -> None:  # fmt: skip
    fresh_bao.put_kv("kv", "app", {"password": "mid-run-pw-1"})
    fresh_bao.database_engine(vault_pg)
    creds = fresh_bao.db_role(vault_pg, "mid-run")
    write_runbook(runbooks_dir, "mid-run", f"""
        name: mid-run
        steps:
          - id: db
            type: vault.credentials
            with: {{path: {creds}}}
          - id: before
            type: log
            with: {{message: "{{{{ secret('kv/app#password') }}}}"}}
          - id: outage
            type: test.hook
            with: {{name: stop-vault}}
          - id: after
            type: log
            with: {{message: "{{{{ secret('kv/app#password') }}}}"}}
            retry: {{attempts: 3, initial: 100ms, max: 200ms}}
        """)  # fmt: skip
    Hook.hooks["stop-vault"] = fresh_bao.stop
    rt = with_test_steps(make_runtime(**vault_settings(fresh_bao, vault_token=fresh_bao.root_token)))
    run_id = start(rt, "mid-run")
    assert drive(rt, run_id) is RunStatus.FAILED
    after = attempts(rt, run_id, "after")
    assert len(after) == 3
    assert after[-1]["error"] == (f"secret 'kv/app#password': Vault at {fresh_bao.addr} is unreachable "
                                  "(connection failed)")  # fmt: skip
    lease = wait_until(lambda: next((r for r in lease_rows(rt.db, run_id) if r["last_error"]), None))
    assert lease["revoked_at"] is None
    assert lease["last_error"].startswith(f"revocation failed: Vault at {fresh_bao.addr} is unreachable")
    assert any("last error: revocation failed" in line for line in lease_lines(rt.db, run_id))


def test_an_expired_token_mid_run_fails_the_step_with_the_reason(bao: OpenBao, make_runtime: Any,
                                                                 runbooks_dir: Path) -> None:  # fmt: skip
    path = f"expiring/{uuid.uuid4().hex[:8]}"
    bao.put_kv("kv", path, {"password": "short-lived-token-pw"})
    write_runbook(runbooks_dir, "token-expires", f"""
        name: token-expires
        steps:
          - id: early
            type: log
            with: {{message: "{{{{ secret('kv/{path}#password') }}}}"}}
          - id: pause
            type: wait
            with: {{duration: 2500ms}}
          - id: late
            type: log
            with: {{message: "{{{{ secret('kv/{path}#password') }}}}"}}
            retry: {{attempts: 3, initial: 100ms, max: 200ms}}
        """)  # fmt: skip
    rt = make_runtime(**vault_settings(bao, vault_token=runbot_token(bao, ttl="2s", renewable=False)))
    run_id = start(rt, "token-expires")
    assert drive(rt, run_id) is RunStatus.FAILED
    late = attempts(rt, run_id, "late")
    assert len(late) == 1, "a token that cannot come back is not worth retrying"
    assert late[0]["error"] == (f"secret 'kv/{path}#password': the Vault token expired or was revoked, and token "
                                "auth cannot log in again: give runbot a new token (or use AppRole or Kubernetes auth)")  # fmt: skip


def test_a_token_revoked_mid_run_is_replaced_by_logging_in_again(bao: OpenBao, make_runtime: Any,
                                                                 runbooks_dir: Path) -> None:  # fmt: skip
    path = f"relogin/{uuid.uuid4().hex[:8]}"
    bao.put_kv("kv", path, {"password": "relogin-pw"})
    bao.policy("runbot", 'path "kv/data/*" { capabilities = ["read"] }')
    role_id = bao.approle("relogin", policies=["runbot"])
    write_runbook(runbooks_dir, "relogin", f"""
        name: relogin
        steps:
          - {{id: early, type: log, with: {{message: "{{{{ secret('kv/{path}#password') }}}}"}}}}
          - {{id: revoke, type: test.hook, with: {{name: revoke-token}}}}
          - {{id: late, type: log, with: {{message: "{{{{ secret('kv/{path}#password') }}}}"}}}}
        """)  # fmt: skip
    rt = with_test_steps(make_runtime(**vault_settings(bao, vault_auth_method="approle", vault_approle_role_id=role_id,
                                                       vault_approle_secret_id=bao.secret_id("relogin"))))  # fmt: skip
    Hook.hooks["revoke-token"] = lambda: bao.api("POST", "auth/token/revoke", {"token": rt.secrets._grant.token})
    run_id = start(rt, "relogin")
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
    assert rt.secrets.logins == 2
