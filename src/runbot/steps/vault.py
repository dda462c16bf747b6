"""`vault.credentials`: dynamic credentials (e.g. `database/creds/readonly`) that live exactly as long as the run.

The step asks Vault for credentials, has the lease tracked with the run (renewed while the run lives,
revoked when it ends), and returns *placeholders*, not values:

    - id: db
      type: vault.credentials
      with: {path: database/creds/readonly}
    - id: check
      type: command
      with:
        argv: [psql, "host=db dbname=app", -c, "select 1"]
        env: {PGUSER: "{{ steps.db.username }}", PGPASSWORD: "{{ steps.db.password }}"}

Deliver the values through `env:` or `stdin:`, never `argv`: every local user can read a process's argv
(`ps`, /proc/PID/cmdline), and the command step refuses a secret there unless the step says
`secret_in_argv: {allow: true, reason: ...}`.

`steps.db.username` is `⟦secret:lease:<lease_id>#username⟧`; the engine swaps in the value only when a later
step runs (as with `secret()`), and every value is registered with the run's redactor. So the stored step
output, approvals, audit and Slack show lease id and path only, never the credentials.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Protocol

from pydantic import Field, field_validator

from runbot.domain import StepKind
from runbot.runbooks.templating import secret_placeholder
from runbot.steps.base import Params, Step, StepContext, StepError, StepResult

_PATH = re.compile(r"^[A-Za-z0-9_.@+-]+(/[A-Za-z0-9_.@+-]+)+$")
RESERVED = frozenset({"lease_id", "path", "ttl", "renewable", "expires_at", "keys", "data", "status"})


class CredentialIssuer(Protocol):
    def issue(self, path: str, *, data: dict[str, Any] | None, run_id: str, step_id: str, renew: bool = True) -> Any: ...


def lease_placeholder(lease_id: str, key: str) -> str:
    return secret_placeholder(f"lease:{lease_id}#{key}")


class VaultCredentialsParams(Params):
    path: str = Field(description="Vault path that issues credentials, e.g. database/creds/readonly")
    data: dict[str, Any] | None = Field(
        default=None, description="request body; when given the path is written (e.g. pki/issue/web {common_name: x})"
    )
    renew: bool = Field(default=True, description="keep the lease alive while the run lives (it is revoked at the end)")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        v = v.strip().strip("/")
        if not _PATH.match(v) or ".." in v.split("/"):
            raise ValueError("expected a Vault path like database/creds/ROLE")
        if v.split("/", 1)[0] in ("kv", "sys"):
            raise ValueError("static secrets are read with secret('kv/PATH#KEY'), not with vault.credentials")
        return v


class VaultCredentials(Step[VaultCredentialsParams]):
    type = "vault.credentials"
    kind = StepKind.DIAGNOSTIC  # a repeat only makes another tracked lease, revoked with the run
    Params = VaultCredentialsParams
    default_timeout = 60.0
    doc = ("Obtains dynamic credentials from Vault; the lease is renewed while the run lives and revoked when it "
           "ends. Outputs placeholders (steps.ID.KEY) that later steps use; values are never stored.")  # fmt: skip

    issuer: CredentialIssuer | None = None

    def bind(self, issuer: CredentialIssuer) -> None:
        """The Vault provider attaches itself here when the runtime is built."""
        self.issuer = issuer

    async def run(self, params: VaultCredentialsParams, ctx: StepContext) -> StepResult:
        issuer = self.issuer
        if issuer is None:
            raise StepError("vault.credentials needs Vault: set RUNBOT_SECRETS_PROVIDER=vault and RUNBOT_VAULT_ADDR",
                            retryable=False)  # fmt: skip
        try:
            lease = await asyncio.to_thread(issuer.issue, params.path, data=params.data, run_id=ctx.run_id,
                                            step_id=ctx.step_id, renew=params.renew)  # fmt: skip
        except StepError:
            raise
        except Exception as exc:
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            raise StepError(f"vault.credentials {params.path}: {reason}",
                            retryable=bool(getattr(exc, "retryable", True))) from None  # fmt: skip
        for value in lease.values.values():
            ctx.redactor.register(value)
        refs = {k: lease_placeholder(lease.lease_id, k) for k in sorted(lease.values)}
        output: dict[str, Any] = {
            "lease_id": lease.lease_id, "path": lease.path, "ttl": lease.ttl, "renewable": lease.renewable,
            "expires_at": lease.expires_at.isoformat(), "keys": sorted(lease.values), "data": refs,
        }  # fmt: skip
        output.update({k: v for k, v in refs.items() if k not in RESERVED})
        ctx.log.info("vault credentials issued", lease_id=lease.lease_id, path=lease.path, ttl=lease.ttl)
        return StepResult(output=output, summary=f"lease {lease.lease_id} ({lease.ttl}s"
                                                 f"{', renewed while the run lives' if lease.renewable and params.renew else ''})")  # fmt: skip
