"""Secret references and configuration checks that need no server."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from runbot.engine.ports import SecretError
from runbot.secrets.vault import (
    VaultConfigError,
    VaultProvider,
    parse_ref,
    resolve_settings_secrets,
    settings_secret_refs,
)
from runbot.settings import Settings


class TestReferences:
    def test_kv_reference_names_path_in_the_configured_mount_and_key(self) -> None:
        r = parse_ref("kv/deployer#token", "secret")
        assert (r.kind, r.mount, r.path, r.key, r.version) == ("kv", "secret", "deployer", "token", None)

    def test_a_version_can_be_pinned_with_at(self) -> None:
        r = parse_ref("kv/team/app@3#password", "kv")
        assert (r.path, r.version, r.key) == ("team/app", 3, "password")

    def test_the_key_defaults_to_value(self) -> None:
        assert parse_ref("kv/app", "kv").key == "value"

    def test_lease_references_point_at_held_credentials(self) -> None:
        r = parse_ref("lease:database/creds/ro/AbC123#username", "kv")
        assert (r.kind, r.path, r.key) == ("lease", "database/creds/ro/AbC123", "username")

    def test_other_paths_are_plain_logical_reads(self) -> None:
        r = parse_ref("cubbyhole/runbot#x", "kv")
        assert (r.kind, r.path, r.key) == ("logical", "cubbyhole/runbot", "x")

    @pytest.mark.parametrize("ref", ["kv/#k", "kv/../sys/x#k", "#k", "lease:#k"])
    def test_malformed_references_are_refused_with_the_reference_named(self, ref: str) -> None:
        with pytest.raises(SecretError) as exc:
            parse_ref(ref, "kv")
        assert repr(ref) in str(exc.value)


class TestConfiguration:
    def test_vault_needs_an_address(self, tmp_path: Path) -> None:
        with pytest.raises(VaultConfigError, match="RUNBOT_VAULT_ADDR"):
            VaultProvider(Settings(data_dir=tmp_path, secrets_provider="vault", vault_token="t"))

    @pytest.mark.parametrize(("method", "needs"), [("token", "RUNBOT_VAULT_TOKEN"),
                                                   ("approle", "RUNBOT_VAULT_APPROLE_ROLE_ID"),
                                                   ("kubernetes", "RUNBOT_VAULT_KUBERNETES_ROLE")])  # fmt: skip
    def test_each_auth_method_names_what_it_is_missing(self, tmp_path: Path, method: str, needs: str) -> None:
        with pytest.raises(VaultConfigError, match=needs):
            VaultProvider(Settings(data_dir=tmp_path, vault_addr="http://127.0.0.1:1", vault_auth_method=method))

    def test_only_one_secret_id_source_is_accepted(self, tmp_path: Path) -> None:
        with pytest.raises(VaultConfigError, match="only one"):
            VaultProvider(Settings(data_dir=tmp_path, vault_addr="http://127.0.0.1:1", vault_auth_method="approle",
                                   vault_approle_role_id="r", vault_approle_secret_id="s",
                                   vault_approle_wrapped_secret_id="w"))  # fmt: skip

    def test_a_missing_ca_file_is_reported_at_start(self, tmp_path: Path) -> None:
        with pytest.raises(VaultConfigError, match="no such file"):
            VaultProvider(Settings(data_dir=tmp_path, vault_addr="https://v:8200", vault_token="t",
                                   vault_ca_file=tmp_path / "missing.pem"))  # fmt: skip

    def test_config_show_masks_vault_credentials(self, tmp_path: Path) -> None:
        shown = Settings(data_dir=tmp_path, vault_token="hvs.very-secret-token", vault_approle_secret_id="sid-123456",
                         vault_approle_wrapped_secret_id="hvs.wrapping-token").masked()  # fmt: skip
        assert shown["vault_token"] == shown["vault_approle_secret_id"] == shown["vault_approle_wrapped_secret_id"] == "****"
        assert "very-secret" not in repr(shown) and "sid-123456" not in repr(shown)


class TestSettingsFromVault:
    def test_secret_prefixed_settings_are_replaced_in_memory(self, tmp_path: Path) -> None:
        s = Settings(data_dir=tmp_path, api_token="secret:kv/runbot#api_token",
                     prometheus_servers={"eu": {"url": "https://p", "password": "secret:kv/prom#pw"}})  # fmt: skip
        assert sorted(label for label, _ in settings_secret_refs(s)) == ["api_token", "prometheus_servers.eu.password"]
        values = {"kv/runbot#api_token": "tok-from-vault", "kv/prom#pw": "pw-from-vault"}
        resolve_settings_secrets(s, values.__getitem__)
        assert s.api_token == SecretStr("tok-from-vault")
        assert s.prometheus_servers["eu"].password == SecretStr("pw-from-vault")

    def test_a_failing_reference_refuses_to_start_naming_the_setting(self, tmp_path: Path) -> None:
        s = Settings(data_dir=tmp_path, api_token="secret:kv/runbot#api_token")

        def fetch(ref: str) -> str:
            raise SecretError(ref, "permission denied by Vault policy (403)")

        with pytest.raises(VaultConfigError, match=r"api_token .*permission denied"):
            resolve_settings_secrets(s, fetch)
