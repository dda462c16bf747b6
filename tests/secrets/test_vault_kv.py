"""Reading KV v2 secrets through the provider, against a real OpenBao, and what a refusal looks like."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbot.engine.ports import SecretError
from runbot.secrets.vault import VaultProvider
from runbot.settings import Settings
from tests.secrets.helpers import runbot_token
from tests.support.openbao import OpenBao, PgDatabase

pytest_plugins = ["tests.support.openbao_fixtures"]
pytestmark = pytest.mark.integration


@pytest.fixture
def vault(tmp_path: Path, bao: OpenBao) -> Iterator[VaultProvider]:
    p = VaultProvider(Settings(data_dir=tmp_path, secrets_provider="vault", vault_addr=bao.addr,
                               vault_token=runbot_token(bao)))  # fmt: skip
    yield p
    p.close()


@pytest.fixture
def path(bao: OpenBao) -> str:
    return f"kv-tests/{uuid.uuid4().hex[:8]}"


def refusal(vault: VaultProvider, ref: str) -> SecretError:
    with pytest.raises(SecretError) as exc:
        vault.fetch(ref)
    return exc.value


def test_reads_the_latest_version(vault: VaultProvider, bao: OpenBao, path: str) -> None:
    bao.put_kv("kv", path, {"password": "first-pw-1", "user": "app"})
    bao.put_kv("kv", path, {"password": "second-pw-2", "user": "app"})
    assert vault.fetch(f"kv/{path}#password") == "second-pw-2"
    assert vault.fetch(f"kv/{path}#user") == "app"


def test_a_pinned_version_stays_put_after_rotation(vault: VaultProvider, bao: OpenBao, path: str) -> None:
    v1 = bao.put_kv("kv", path, {"password": "first-pw-1"})
    bao.put_kv("kv", path, {"password": "second-pw-2"})
    assert vault.fetch(f"kv/{path}@{v1}#password") == "first-pw-1"


def test_each_fetch_asks_vault_so_rotation_is_seen_at_once(vault: VaultProvider, bao: OpenBao, path: str) -> None:
    bao.put_kv("kv", path, {"password": "before-rotation"})
    assert vault.fetch(f"kv/{path}#password") == "before-rotation"
    bao.put_kv("kv", path, {"password": "after-rotation"})
    assert vault.fetch(f"kv/{path}#password") == "after-rotation"


def test_non_string_values_come_back_as_json(vault: VaultProvider, bao: OpenBao, path: str) -> None:
    bao.put_kv("kv", path, {"port": 5432, "hosts": ["a", "b"]})
    assert vault.fetch(f"kv/{path}#port") == "5432"
    assert vault.fetch(f"kv/{path}#hosts") == '["a", "b"]'


def test_a_missing_path_names_the_reference_and_the_reason(vault: VaultProvider, path: str) -> None:
    err = refusal(vault, f"kv/{path}#password")
    assert str(err).startswith(f"secret 'kv/{path}#password': no secret at this path (404)")
    assert not err.retryable


def test_a_missing_version_is_a_missing_path(vault: VaultProvider, bao: OpenBao, path: str) -> None:
    bao.put_kv("kv", path, {"password": "only-one-version"})
    err = refusal(vault, f"kv/{path}@7#password")
    assert "no secret at this path" in err.reason


def test_a_missing_key_lists_the_keys_that_exist_not_their_values(vault: VaultProvider, bao: OpenBao,
                                                                  path: str) -> None:  # fmt: skip
    bao.put_kv("kv", path, {"user": "app-user", "password": "pw-value-9"})
    err = refusal(vault, f"kv/{path}#token")
    assert err.reason == "no key 'token' at this path (keys: password, user)"
    assert "pw-value-9" not in str(err) and "app-user" not in str(err)


def test_permission_denied_by_policy(tmp_path: Path, bao: OpenBao, path: str) -> None:
    bao.put_kv("kv", path, {"password": "forbidden-pw"})
    bao.policy("narrow", 'path "kv/data/elsewhere/*" { capabilities = ["read"] }')
    p = VaultProvider(Settings(data_dir=tmp_path, vault_addr=bao.addr, vault_token=bao.token(policies=["narrow"])))
    try:
        err = refusal(p, f"kv/{path}#password")
        assert err.reason == "permission denied by Vault policy (403)"
        assert not err.retryable
        assert p.logins == 1, "a policy refusal is not mistaken for a dead token"
    finally:
        p.close()


def test_the_kv_mount_is_configurable(tmp_path: Path, bao: OpenBao, path: str) -> None:
    bao.enable("team-kv", "kv-v2")
    bao.put_kv("team-kv", path, {"value": "in-team-mount"})
    p = VaultProvider(Settings(data_dir=tmp_path, vault_addr=bao.addr, vault_token=bao.root_token,
                               vault_kv_mount="team-kv"))  # fmt: skip
    try:
        assert p.fetch(f"kv/{path}") == "in-team-mount"
    finally:
        p.close()


def test_a_namespace_scopes_every_request(tmp_path: Path, bao: OpenBao, path: str) -> None:
    team = f"team{uuid.uuid4().hex[:6]}"
    bao.api("POST", f"sys/namespaces/{team}", {})
    bao.api("POST", "sys/mounts/kv", {"type": "kv-v2"}, namespace=team)
    bao.api("POST", f"kv/data/{path}", {"data": {"value": "namespaced-value"}}, namespace=team)
    inside = VaultProvider(Settings(data_dir=tmp_path, vault_addr=bao.addr, vault_token=bao.root_token,
                                    vault_namespace=team))  # fmt: skip
    outside = VaultProvider(Settings(data_dir=tmp_path, vault_addr=bao.addr, vault_token=bao.root_token))
    try:
        assert inside.fetch(f"kv/{path}") == "namespaced-value"
        assert "no secret at this path" in refusal(outside, f"kv/{path}").reason
    finally:
        inside.close()
        outside.close()


def test_other_engines_are_read_as_plain_paths(tmp_path: Path, bao: OpenBao, path: str) -> None:
    bao.enable("kv1", "kv", options={"version": "1"})
    bao.api("POST", f"kv1/{path}", {"token": "kv-one-value"})
    bao.put_kv("secret", path, {"token": "kv-two-value"})  # the dev server's own KV v2 mount
    p = VaultProvider(Settings(data_dir=tmp_path, vault_addr=bao.addr, vault_token=bao.root_token))
    try:
        assert p.fetch(f"kv1/{path}#token") == "kv-one-value"
        assert p.fetch(f"secret/data/{path}#token") == "kv-two-value"  # a KV v2 path spelled out in full
    finally:
        p.close()


def test_dynamic_secrets_are_refused_outside_the_credentials_step_and_revoked(
        tmp_path: Path, bao_db: OpenBao, vault_pg: PgDatabase) -> None:  # fmt: skip
    bao_db.db_role(vault_pg, "kvtest")
    roles_before = set(vault_pg.leftover_roles())
    p = VaultProvider(Settings(data_dir=tmp_path, vault_addr=bao_db.addr, vault_token=bao_db.root_token))
    try:
        err = refusal(p, "database/creds/kvtest#password")
        assert "this path issues dynamic secrets: use a vault.credentials step" in err.reason
    finally:
        p.close()
    assert set(vault_pg.leftover_roles()) == roles_before, "the credentials it had to create were revoked at once"
