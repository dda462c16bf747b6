"""`runbot vault status|check|leases` and `runbot config show`, run as the real command."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.secrets.helpers import runbot_token
from tests.support.openbao import OpenBao

pytest_plugins = ["tests.support.openbao_fixtures"]
pytestmark = pytest.mark.integration


def runbot(tmp_path: Path, bao: OpenBao, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBOT_", "VAULT_", "BAO_"))}
    env.update(RUNBOT_DATA_DIR=str(tmp_path / "data"), RUNBOT_RUNBOOKS_DIR=str(tmp_path),
               RUNBOT_SECRETS_PROVIDER="vault", RUNBOT_VAULT_ADDR=bao.addr, RUNBOT_VAULT_TOKEN=token)  # fmt: skip
    return subprocess.run([str(Path(sys.prefix) / "bin" / "runbot"), *args], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_status_check_and_config_show_never_print_a_value(tmp_path: Path, bao: OpenBao) -> None:
    path = f"cli/{uuid.uuid4().hex[:8]}"
    bao.put_kv("kv", path, {"password": "cli-secret-value-42"})
    token = runbot_token(bao)
    status = runbot(tmp_path, bao, "vault", "status", token=token)
    assert status.returncode == 0, status.stderr
    assert f"vault {bao.addr}: logged in with token auth; token ttl" in status.stdout
    check = runbot(tmp_path, bao, "vault", "check", f"kv/{path}#password", f"kv/{path}#nope", token=token)
    assert check.returncode == 1
    assert f"ok      kv/{path}#password (19 characters)" in check.stdout
    assert f"FAILED  kv/{path}#nope: no key 'nope' at this path (keys: password)" in check.stdout
    shown = runbot(tmp_path, bao, "config", "show", token=token)
    assert '"vault_token": "****"' in shown.stdout
    for out in (status, check, shown):
        assert "cli-secret-value-42" not in out.stdout + out.stderr and token not in out.stdout + out.stderr


def test_a_bad_token_is_one_clear_line(tmp_path: Path, bao: OpenBao) -> None:
    out = runbot(tmp_path, bao, "vault", "status", token="s.bogus-token")
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: cannot log in to Vault at {bao.addr} (token): the configured Vault token "
                                 "is invalid, expired or revoked")  # fmt: skip


def test_leases_lists_tracked_leases(tmp_path: Path, bao: OpenBao) -> None:
    out = runbot(tmp_path, bao, "vault", "leases", "--active", token=runbot_token(bao))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["LEASE", "RUN", "STEP", "TTL", "RENEWALS", "STATE"]
