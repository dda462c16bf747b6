"""`runbot vault ...`: check the Vault set-up and see leases, without ever printing a secret value."""

from __future__ import annotations

import typer

vault_app = typer.Typer(no_args_is_help=True, help="Vault: login check, secret access check, leases.")


def register(app: typer.Typer) -> None:
    app.add_typer(vault_app, name="vault")


def _provider() -> object:
    from runbot.cli.main import fail, settings
    from runbot.secrets.vault import VaultConfigError, VaultProvider

    s = settings()
    if s.secrets_provider != "vault":
        fail("secrets do not come from Vault here", "set RUNBOT_SECRETS_PROVIDER=vault and RUNBOT_VAULT_ADDR")
    try:
        p = VaultProvider(s)
        p.start()
    except VaultConfigError as exc:
        fail(str(exc), "see `runbot config show` for the vault_* settings")
    return p


@vault_app.command("status")
def status() -> None:
    """Log in with the configured method and show the token's TTL (not the token)."""
    from runbot.secrets.vault import VaultProvider

    p = _provider()
    assert isinstance(p, VaultProvider)
    try:
        info = p.token_info()
        ttl = "never expires" if not info.get("ttl") else f"ttl {info['ttl']:.0f}s"
        renew = "renewable" if info.get("renewable") else "not renewable"
        typer.echo(f"vault {p.addr}: logged in with {info['method']} auth; token {ttl}, {renew}")
    finally:
        p.close()


@vault_app.command("check")
def check(refs: list[str] = typer.Argument(..., help="References like kv/app#password (values are never shown).")) -> None:
    """Can runbot read these secrets? Prints ok or the reason for each; exits 1 if any fails."""
    from runbot.cli.main import fail
    from runbot.engine.ports import SecretError
    from runbot.secrets.vault import VaultProvider

    p = _provider()
    assert isinstance(p, VaultProvider)
    bad = 0
    try:
        for ref in refs:
            try:
                value = p.fetch(ref)
                typer.echo(f"ok      {ref} ({len(value)} characters)")
            except SecretError as exc:
                bad += 1
                typer.echo(f"FAILED  {ref}: {exc.reason}")
    finally:
        p.close()
    if bad:
        fail(f"{bad} of {len(refs)} reference(s) cannot be read")


@vault_app.command("leases")
def leases(active: bool = typer.Option(False, "--active", help="Only leases not yet revoked.")) -> None:
    """Dynamic-credential leases runbot tracks: run, step, TTL and state (never a value)."""
    from sqlalchemy import select

    from runbot.cli.main import _table, settings
    from runbot.secrets.leases import LEASES, lease_state
    from runbot.store.db import Database

    db = Database(settings().effective_database_url)
    try:
        db.upgrade()
        q = select(LEASES).order_by(LEASES.c.id.desc()).limit(200)
        if active:
            q = q.where(LEASES.c.revoked_at.is_(None))
        with db.read() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
    finally:
        db.dispose()
    typer.echo(_table(["LEASE", "RUN", "STEP", "TTL", "RENEWALS", "STATE"],
                      [[r["lease_id"], r["run_id"], r["step_id"], f"{r['ttl_seconds']}s", r["renewals"],
                        lease_state(r)] for r in rows]))  # fmt: skip
