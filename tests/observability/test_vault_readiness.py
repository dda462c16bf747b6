"""/readyz says when Vault (the configured secrets provider) is sealed, and /healthz does not: a restart would
not unseal it. The Vault keepers are watched workers."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from runbot.app import create_app
from tests.secrets.helpers import vault_settings
from tests.support.openbao import OpenBao

pytest_plugins = ["tests.support.openbao_fixtures"]
pytestmark = pytest.mark.integration


def test_a_sealed_vault_makes_readyz_fail_but_not_healthz(fresh_bao: OpenBao, make_runtime: Any) -> None:
    rt = make_runtime(**vault_settings(fresh_bao, vault_token=fresh_bao.root_token))
    with TestClient(create_app(rt)) as client:
        first = client.get("/readyz")
        assert first.status_code == 200, first.json()
        workers = client.get("/healthz").json()["workers"]
        assert workers["vault-token"] == "ok" and workers["vault-leases"] == "ok"
        fresh_bao.seal()
        try:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert any(p.startswith("vault") for p in ready.json()["problems"]), ready.json()
            assert client.get("/healthz").status_code == 200
        finally:
            fresh_bao.unseal()
        assert client.get("/readyz").status_code == 200
