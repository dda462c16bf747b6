"""runbot's own credentials (API token, Slack, Alertmanager webhook) read from Vault paths at start."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from runbot.secrets.vault import VaultConfigError
from tests.secrets.helpers import vault_settings
from tests.support.openbao import OpenBao

pytest_plugins = ["tests.support.openbao_fixtures"]
pytestmark = pytest.mark.integration


def test_secret_settings_are_read_from_vault_at_start(bao: OpenBao, make_runtime: Any) -> None:
    path = f"runbot-config/{uuid.uuid4().hex[:8]}"
    bao.put_kv("kv", path, {"api_token": "api-token-from-vault", "bot": "xoxb-from-vault", "signing": "sig-from-vault",
                            "webhook": "am-token-from-vault"})  # fmt: skip
    rt = make_runtime(**vault_settings(bao), api_token=f"secret:kv/{path}#api_token",
                      slack_bot_token=f"secret:kv/{path}#bot", slack_signing_secret=f"secret:kv/{path}#signing",
                      alertmanager_webhook_receivers={"prod": {"token": f"secret:kv/{path}#webhook"}})  # fmt: skip
    s = rt.settings
    assert s.api_token.get_secret_value() == "api-token-from-vault"
    assert s.slack_bot_token.get_secret_value() == "xoxb-from-vault"
    assert s.slack_signing_secret.get_secret_value() == "sig-from-vault"
    assert s.alertmanager_webhook_receivers["prod"].token.get_secret_value() == "am-token-from-vault"
    assert s.masked()["api_token"] == "****"


def test_a_setting_vault_refuses_stops_the_start_naming_setting_and_reason(bao: OpenBao, make_runtime: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("RUNBOT_SECRET_KV_NOWHERE__API_TOKEN", "plaintext-fallback")  # never consulted
    with pytest.raises(VaultConfigError, match=r"^setting api_token \(secret:kv/nowhere#api_token\): no secret at "
                                               r"this path \(404\)$"):  # fmt: skip
        make_runtime(**vault_settings(bao), api_token="secret:kv/nowhere#api_token")


def test_vault_unreachable_at_start_refuses_to_start(make_runtime: Any) -> None:
    from tests.support.ports import free_port

    addr = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(VaultConfigError, match=f"cannot log in to Vault at {addr} \\(token\\): Vault at {addr} is unreachable"):
        make_runtime(secrets_provider="vault", vault_addr=addr, vault_token="t", api_token="secret:kv/runbot#api")
