"""Shared pieces for the Vault tests: settings, a policy for runbot, test-only step types, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, ClassVar

import psycopg
from pydantic import Field

from runbot.domain import StepKind
from runbot.steps.base import Params, Step, StepContext, StepError, StepResult
from tests.support.openbao import OpenBao

RUNBOT_POLICY = """
path "kv/data/*"          { capabilities = ["read"] }
path "database/creds/*"   { capabilities = ["read"] }
path "sys/leases/renew"   { capabilities = ["update"] }
path "sys/leases/revoke"  { capabilities = ["update"] }
"""


def runbot_token(bao: OpenBao, *, ttl: str = "1h", renewable: bool = True, **options: Any) -> str:
    """A token with the policy runbot needs (KV read, database creds, lease renew/revoke)."""
    bao.policy("runbot", RUNBOT_POLICY)
    return bao.token(policies=["runbot"], ttl=ttl, renewable=renewable, **options)


def vault_settings(bao: OpenBao, **overrides: Any) -> dict[str, Any]:
    """Settings overrides for a runtime that resolves secrets through `bao` (token auth unless overridden)."""
    base: dict[str, Any] = {"secrets_provider": "vault", "vault_addr": bao.addr, "vault_lease_sweep_interval": 0.3,
                            "vault_timeout": 3.0}  # fmt: skip
    if "vault_auth_method" not in overrides and "vault_token" not in overrides and "vault_token_file" not in overrides:
        base["vault_token"] = runbot_token(bao)
    return {**base, **overrides}


def wait_until(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until `check()` is truthy; returns its value or fails with what it last returned."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = check()
    assert value, f"condition not met within {timeout}s (last: {value!r})"
    return value


# ---- test-only step types ----------------------------------------------------------------------------------


class PgLoginParams(Params):
    user: str
    password: str
    database: str
    sleep: float = Field(default=0.0, description="seconds to wait before logging in (a long step)")


class PgLogin(Step[PgLoginParams]):
    """Logs in to PostgreSQL with the credentials it is given: proves dynamic credentials really work."""

    type = "test.pg_login"
    kind = StepKind.DIAGNOSTIC
    Params = PgLoginParams
    users: ClassVar[list[str]] = []  # the user names it was handed, so a test can look for them afterwards

    async def run(self, params: PgLoginParams, ctx: StepContext) -> StepResult:
        self.users.append(params.user)
        if params.sleep:
            await asyncio.sleep(params.sleep)

        def login() -> str:
            with psycopg.connect(host="127.0.0.1", port=5432, user=params.user, password=params.password,
                                 dbname=params.database, connect_timeout=5) as conn:  # fmt: skip
                row = conn.execute("SELECT current_user").fetchone()
                return str(row[0]) if row else ""

        try:
            who = await asyncio.to_thread(login)
        except psycopg.OperationalError:
            raise StepError("could not log in with the issued credentials (role gone?)", retryable=False) from None
        return StepResult(output={"logged_in": who == params.user}, summary="logged in")


class HookParams(Params):
    name: str


class Hook(Step[HookParams]):
    """Calls a function the test registered (e.g. stop Vault mid-run)."""

    type = "test.hook"
    kind = StepKind.CONTROL
    Params = HookParams
    hooks: ClassVar[dict[str, Callable[[], Any]]] = {}

    async def run(self, params: HookParams, ctx: StepContext) -> StepResult:
        await asyncio.to_thread(self.hooks[params.name])
        return StepResult(output={}, summary=f"called {params.name}")


def with_test_steps(rt: Any) -> Any:
    """Register the test-only step types, then reload runbooks so those using them pass lint."""
    rt.registry.register(PgLogin)
    rt.registry.register(Hook)
    problems = rt.catalog.reload()
    assert not problems, problems
    return rt
