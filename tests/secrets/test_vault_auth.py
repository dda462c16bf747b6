"""Logging in to a real OpenBao: token, AppRole (plain and wrapped secret_id), Kubernetes, TLS, token upkeep."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from runbot.engine.ports import SecretError
from runbot.secrets.vault import VaultConfigError, VaultProvider
from runbot.settings import Settings
from tests.secrets.helpers import RUNBOT_POLICY, runbot_token, wait_until
from tests.support.http_target import HttpTarget, Reply
from tests.support.openbao import BaoError, OpenBao, openbao_server

pytest_plugins = ["tests.support.openbao_fixtures"]
pytestmark = pytest.mark.integration


def provider(tmp_path: Path, bao: OpenBao, **kw: Any) -> VaultProvider:
    return VaultProvider(Settings(data_dir=tmp_path, secrets_provider="vault", vault_addr=bao.addr, **kw))


@pytest.fixture
def app_secret(bao: OpenBao) -> tuple[str, str]:
    """A KV secret under a unique path: (reference, value)."""
    path = f"auth-tests/{uuid.uuid4().hex[:8]}"
    value = f"pw-{uuid.uuid4().hex}"
    bao.put_kv("kv", path, {"password": value})
    return f"kv/{path}#password", value


def approle(bao: OpenBao, **options: Any) -> tuple[str, str]:
    """A fresh AppRole role with the runbot policy: (role name, role_id)."""
    bao.policy("runbot", RUNBOT_POLICY)
    name = f"runbot-{uuid.uuid4().hex[:6]}"
    return name, bao.approle(name, policies=["runbot"], **options)


def token_alive(bao: OpenBao, token: str) -> bool:
    try:
        bao.api("POST", "auth/token/lookup", {"token": token})
        return True
    except BaoError:
        return False


class TestTokenAuth:
    def test_a_token_reads_kv(self, tmp_path: Path, bao: OpenBao, app_secret: tuple[str, str]) -> None:
        ref, value = app_secret
        p = provider(tmp_path, bao, vault_token=runbot_token(bao))
        try:
            assert p.fetch(ref) == value
            assert p.token_info()["method"] == "token"
        finally:
            p.close()

    def test_an_invalid_token_refuses_to_start(self, tmp_path: Path, bao: OpenBao) -> None:
        p = provider(tmp_path, bao, vault_token="s.not-a-real-token")
        with pytest.raises(VaultConfigError, match="token is invalid, expired or revoked"):
            p.start()
        p.close()

    def test_a_configured_token_is_not_revoked_at_shutdown(self, tmp_path: Path, bao: OpenBao,
                                                           app_secret: tuple[str, str]) -> None:  # fmt: skip
        token = runbot_token(bao)
        p = provider(tmp_path, bao, vault_token=token)
        p.fetch(app_secret[0])
        p.close()
        assert token_alive(bao, token), "the next start needs the same configured token"

    def test_a_token_file_is_read_again_when_the_token_dies(self, tmp_path: Path, bao: OpenBao,
                                                            app_secret: tuple[str, str]) -> None:  # fmt: skip
        ref, value = app_secret
        token_file = tmp_path / "token"
        first = runbot_token(bao)
        token_file.write_text(first + "\n")
        p = provider(tmp_path, bao, vault_token_file=token_file)
        try:
            assert p.fetch(ref) == value
            bao.api("POST", "auth/token/revoke", {"token": first})  # e.g. Vault Agent rotated it
            token_file.write_text(runbot_token(bao))
            assert p.fetch(ref) == value
            assert p.logins == 2
        finally:
            p.close()


class TestAppRole:
    def test_plain_secret_id_logs_in_and_the_token_is_revoked_on_clean_shutdown(
            self, tmp_path: Path, bao: OpenBao, app_secret: tuple[str, str]) -> None:  # fmt: skip
        name, role_id = approle(bao)
        p = provider(tmp_path, bao, vault_auth_method="approle", vault_approle_role_id=role_id,
                     vault_approle_secret_id=bao.secret_id(name))  # fmt: skip
        p.start()
        assert p.fetch(app_secret[0]) == app_secret[1]
        token = p._grant.token if p._grant else ""
        assert token_alive(bao, token)
        p.close()
        assert not token_alive(bao, token)

    def test_secret_id_file(self, tmp_path: Path, bao: OpenBao, app_secret: tuple[str, str]) -> None:
        name, role_id = approle(bao)
        f = tmp_path / "secret-id"
        f.write_text(bao.secret_id(name))
        p = provider(tmp_path, bao, vault_auth_method="approle", vault_approle_role_id=role_id,
                     vault_approle_secret_id_file=f)  # fmt: skip
        try:
            assert p.fetch(app_secret[0]) == app_secret[1]
        finally:
            p.close()

    def test_a_wrong_secret_id_refuses_to_start(self, tmp_path: Path, bao: OpenBao) -> None:
        _, role_id = approle(bao)
        p = provider(tmp_path, bao, vault_auth_method="approle", vault_approle_role_id=role_id,
                     vault_approle_secret_id="00000000-0000-0000-0000-000000000000")  # fmt: skip
        with pytest.raises(VaultConfigError, match="AppRole login at auth/approle refused"):
            p.start()
        p.close()


class TestWrappedSecretId:
    def test_a_good_wrapping_token_is_unwrapped_once_at_start(self, tmp_path: Path, bao: OpenBao,
                                                              app_secret: tuple[str, str]) -> None:  # fmt: skip
        name, role_id = approle(bao)
        wrapping = bao.wrapped_secret_id(name)
        p = provider(tmp_path, bao, vault_auth_method="approle", vault_approle_role_id=role_id,
                     vault_approle_wrapped_secret_id=wrapping, vault_approle_role_name=name)  # fmt: skip
        try:
            p.start()
            assert p.fetch(app_secret[0]) == app_secret[1]
            with pytest.raises(BaoError):  # used up: nobody can unwrap it again
                bao.api("POST", "sys/wrapping/lookup", {"token": wrapping})
        finally:
            p.close()

    def test_an_already_unwrapped_token_refuses_to_start(self, tmp_path: Path, bao: OpenBao) -> None:
        name, role_id = approle(bao)
        wrapping = bao.wrapped_secret_id(name)
        bao.api("POST", "sys/wrapping/unwrap", {}, token=wrapping)  # someone else got there first
        p = provider(tmp_path, bao, vault_auth_method="approle", vault_approle_role_id=role_id,
                     vault_approle_wrapped_secret_id=wrapping)  # fmt: skip
        with pytest.raises(VaultConfigError, match="already unwrapped, has expired") as exc:
            p.start()
        assert "someone else" in str(exc.value)
        p.close()

    def test_an_expired_wrapping_token_refuses_to_start(self, tmp_path: Path, bao: OpenBao) -> None:
        name, role_id = approle(bao)
        wrapping = bao.wrapped_secret_id(name, ttl="1s")
        time.sleep(1.6)
        p = provider(tmp_path, bao, vault_auth_method="approle", vault_approle_role_id=role_id,
                     vault_approle_wrapped_secret_id=wrapping)  # fmt: skip
        with pytest.raises(VaultConfigError, match="has expired"):
            p.start()
        p.close()

    def test_a_token_wrapping_something_else_is_refused_and_left_intact(self, tmp_path: Path, bao: OpenBao) -> None:
        _, role_id = approle(bao)
        wrapping = bao.wrap({"secret_id": "planted-by-an-attacker"})
        p = provider(tmp_path, bao, vault_auth_method="approle", vault_approle_role_id=role_id,
                     vault_approle_wrapped_secret_id=wrapping)  # fmt: skip
        with pytest.raises(VaultConfigError, match="created at sys/wrapping/wrap, not at auth/approle/role/<role>/secret-id"):
            p.start()
        p.close()
        assert bao.api("POST", "sys/wrapping/lookup", {"token": wrapping})["data"]  # not consumed: evidence kept

    def test_a_secret_id_of_another_role_is_refused_when_the_role_is_named(self, tmp_path: Path, bao: OpenBao) -> None:
        name, role_id = approle(bao)
        other, _ = approle(bao)
        p = provider(tmp_path, bao, vault_auth_method="approle", vault_approle_role_id=role_id,
                     vault_approle_role_name=name, vault_approle_wrapped_secret_id=bao.wrapped_secret_id(other))  # fmt: skip
        with pytest.raises(VaultConfigError, match=f"created at auth/approle/role/{other}/secret-id"):
            p.start()
        p.close()

    def test_serve_refuses_to_start_on_a_used_wrapping_token(self, make_runtime: Any, bao: OpenBao) -> None:
        from fastapi.testclient import TestClient

        from runbot.app import create_app

        name, role_id = approle(bao)
        wrapping = bao.wrapped_secret_id(name)
        bao.api("POST", "sys/wrapping/unwrap", {}, token=wrapping)
        rt = make_runtime(secrets_provider="vault", vault_addr=bao.addr, vault_auth_method="approle",
                          vault_approle_role_id=role_id, vault_approle_wrapped_secret_id=wrapping)  # fmt: skip
        app = create_app(rt, run_engine=False)
        with pytest.raises(VaultConfigError, match="already unwrapped"), TestClient(app):
            pass


# A throwaway self-signed CA: kubernetes auth insists on a CA certificate even for a plain-HTTP API server.
FAKE_K8S_CA = """-----BEGIN CERTIFICATE-----
MIIBgzCCASmgAwIBAgIUBtL28wn7FqB3Vu/VdmvfvyHrt4YwCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLZmFrZS1rOHMtY2EwIBcNMjYxMTIxMDgyMDMzWhgPMjEyNjEw
MjgwODIwMzNaMBYxFDASBgNVBAMMC2Zha2UtazhzLWNhMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAE5ztPCVJw3nCE0iSepiBHSKi5o2KX85EKUl/xINUID8dOzHvW
G4Wu7sC7fADliv8yKsYPeml1UGF6ImoPTjy4VqNTMFEwHQYDVR0OBBYEFG2xfgJG
X7+R4HUFmNl0z/HwGrZOMB8GA1UdIwQYMBaAFG2xfgJGX7+R4HUFmNl0z/HwGrZO
MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgQj3SXI8wM76emKm8
yAI3VjirRdd5eOPSYP3Q1cBETLMCIQDKLUPZdOB1jYKRA10dbgvhP5hVIEUBtauS
3Y4TzuWldA==
-----END CERTIFICATE-----
"""


def fake_service_account_jwt(namespace: str, name: str) -> str:
    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    claims = {"iss": "kubernetes/serviceaccount", "sub": f"system:serviceaccount:{namespace}:{name}",
              "kubernetes.io/serviceaccount/namespace": namespace,
              "kubernetes.io/serviceaccount/service-account.name": name,
              "kubernetes.io/serviceaccount/service-account.uid": "uid-1"}  # fmt: skip
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class TestKubernetes:
    def test_service_account_jwt_login_via_the_token_review_api(self, tmp_path: Path, bao: OpenBao,
                                                                app_secret: tuple[str, str]) -> None:  # fmt: skip
        jwt = fake_service_account_jwt("ops", "runbot")
        jwt_file = tmp_path / "sa-token"
        jwt_file.write_text(jwt)
        bao.policy("runbot", RUNBOT_POLICY)
        mount = f"k8s-{uuid.uuid4().hex[:6]}"
        with HttpTarget() as apiserver:  # the Kubernetes API server, as far as OpenBao's TokenReview goes
            apiserver.route("/apis/authentication.k8s.io/v1/tokenreviews", lambda req: Reply(201, json={
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "status": {"authenticated": req.json()["spec"]["token"] == jwt,
                           "user": {"username": "system:serviceaccount:ops:runbot", "uid": "uid-1"}}}))  # fmt: skip
            bao.enable_auth(mount, "kubernetes")
            bao.api("POST", f"auth/{mount}/config", {"kubernetes_host": apiserver.base_url, "disable_local_ca_jwt": True,
                                                     "token_reviewer_jwt": "reviewer", "kubernetes_ca_cert": FAKE_K8S_CA})  # fmt: skip
            bao.api("POST", f"auth/{mount}/role/runbot", {"bound_service_account_names": ["runbot"],
                                                          "bound_service_account_namespaces": ["ops"],
                                                          "token_policies": ["runbot"], "token_ttl": "1h"})  # fmt: skip
            p = provider(tmp_path, bao, vault_auth_method="kubernetes", vault_kubernetes_role="runbot",
                         vault_kubernetes_mount=mount, vault_kubernetes_jwt_file=jwt_file)  # fmt: skip
            try:
                assert p.fetch(app_secret[0]) == app_secret[1]
                assert apiserver.calls("/apis/authentication.k8s.io/v1/tokenreviews") == 1
            finally:
                p.close()
            jwt_file.write_text(fake_service_account_jwt("ops", "intruder"))
            p = provider(tmp_path, bao, vault_auth_method="kubernetes", vault_kubernetes_role="runbot",
                         vault_kubernetes_mount=mount, vault_kubernetes_jwt_file=jwt_file)  # fmt: skip
            with pytest.raises(VaultConfigError, match=f"Kubernetes login at auth/{mount} as role runbot refused"):
                p.start()
            p.close()


class TestTokenUpkeep:
    def test_the_token_is_renewed_in_the_background(self, tmp_path: Path, bao: OpenBao,
                                                    app_secret: tuple[str, str]) -> None:  # fmt: skip
        name, role_id = approle(bao, token_ttl="2s", token_max_ttl="1m")
        p = provider(tmp_path, bao, vault_auth_method="approle", vault_approle_role_id=role_id,
                     vault_approle_secret_id=bao.secret_id(name), vault_renew_fraction=0.5)  # fmt: skip
        try:
            p.start()
            wait_until(lambda: p.renewals >= 3, timeout=8)  # three TTLs later the first token still works
            assert p.fetch(app_secret[0]) == app_secret[1]
            assert p.logins == 1
        finally:
            p.close()

    def test_it_logs_in_again_when_the_max_ttl_is_reached(self, tmp_path: Path, bao: OpenBao,
                                                          app_secret: tuple[str, str]) -> None:  # fmt: skip
        name, role_id = approle(bao, token_ttl="2s", token_max_ttl="3s")
        p = provider(tmp_path, bao, vault_auth_method="approle", vault_approle_role_id=role_id,
                     vault_approle_secret_id=bao.secret_id(name), vault_renew_fraction=0.5)  # fmt: skip
        try:
            p.start()
            wait_until(lambda: p.logins >= 2, timeout=8)
            assert p.fetch(app_secret[0]) == app_secret[1]
        finally:
            p.close()

    def test_an_expired_token_that_cannot_be_replaced_fails_with_a_clear_message(
            self, tmp_path: Path, bao: OpenBao, app_secret: tuple[str, str]) -> None:  # fmt: skip
        ref, value = app_secret
        p = provider(tmp_path, bao, vault_token=runbot_token(bao, ttl="2s", renewable=False))
        try:
            assert p.fetch(ref) == value
            time.sleep(2.5)
            with pytest.raises(SecretError) as exc:
                p.fetch(ref)
            assert "token expired or was revoked, and token auth cannot log in again" in exc.value.reason
            assert ref in str(exc.value) and value not in str(exc.value)
            assert not exc.value.retryable
        finally:
            p.close()


class TestTls:
    def test_https_with_the_ca_bundle_and_a_clear_error_without_it(self, tmp_path: Path) -> None:
        with openbao_server(tmp_path / "tls-bao", tls=True) as bao:
            bao.enable("kv", "kv-v2")
            bao.put_kv("kv", "tls", {"value": "over-tls-1234"})
            assert bao.addr.startswith("https://")
            good = provider(tmp_path, bao, vault_token=bao.root_token, vault_ca_file=bao.ca_file)
            try:
                assert good.fetch("kv/tls") == "over-tls-1234"
            finally:
                good.close()
            bad = provider(tmp_path, bao, vault_token=bao.root_token)
            with pytest.raises(VaultConfigError, match="TLS error talking to Vault"):
                bad.start()
            bad.close()
