"""Vault (or OpenBao) behind the engine's SecretProvider port: log in, read KV v2, issue dynamic credentials.

Why it is built this way:

- **References, not values.** `secret('kv/deployer#token')` reads key `token` of KV v2 path `deployer` in
  the mount RUNBOT_VAULT_KV_MOUNT (default `kv`, so the reference is the path `bao kv get` shows);
  `kv/deployer@3#token` pins version 3. Any other path (`cubbyhole/x#k`, a KV v1 mount) is a plain logical
  read, which refuses dynamic secrets: those go through the `vault.credentials` step so their lease is
  tracked. `lease:<lease_id>#key` references the values of such a lease, held in this process's memory.
- **Fetched at the moment of use, never cached and never from elsewhere.** Each fetch asks Vault. When Vault
  is sealed, unreachable or refuses, the error names the reference and the reason (never a value) and says
  whether a retry can help; there is no fallback to environment variables or files.
- **Token life cycle.** Token, AppRole (plain, file or response-wrapped secret_id) and Kubernetes
  (service-account JWT) login. A background thread renews the token after `vault_renew_fraction` of its
  TTL and logs in again when renewal is no longer possible (max TTL reached, token gone). A request
  refused with 403 checks whether the token itself died and, if so, logs in again once and retries.
  A token obtained by login is revoked on clean shutdown (which also revokes its remaining leases).
- **Wrapped secret_id.** The wrapping token is looked up before it is unwrapped: an already unwrapped or
  expired token, or one not created by `auth/<mount>/role/<role>/secret-id`, is refused with a clear
  message, because any of these may mean someone else saw the secret_id first.
- **hvac stays here.** The engine only sees `fetch(ref) -> str` and SecretError; hvac is a sync library,
  called from worker threads (the engine already runs secret resolution in one).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import hvac
import hvac.exceptions
import requests
import structlog
from pydantic import BaseModel, SecretStr

from runbot.engine.ports import SecretError
from runbot.observability import count_vault_failure
from runbot.redaction import REGISTRY
from runbot.secrets.leases import HeldLease, LeaseKeeper, LeaseUnavailable

if TYPE_CHECKING:
    from runbot.app import Runtime
    from runbot.domain import RunStatus
    from runbot.settings import Settings

log = structlog.get_logger("runbot.vault")
T = TypeVar("T")

SETTINGS_PREFIX = "secret:"  # a setting whose value is `secret:PATH#KEY` is read from Vault at start
_VERSION = re.compile(r"^(?P<path>.+)@(?P<version>\d+)$")


class VaultConfigError(RuntimeError):
    """Vault cannot be used as configured; runbot refuses to start rather than run without its secrets."""


class VaultFailure(Exception):
    """A Vault request failed. `reason` is one line without secret values; `retryable` says if waiting helps."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


# ---- references ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretRef:
    raw: str
    kind: Literal["kv", "lease", "logical"]
    path: str  # kv: path inside the mount; lease: the lease id; logical: the full Vault path
    key: str
    mount: str = ""
    version: int | None = None


def parse_ref(ref: str, kv_mount: str) -> SecretRef:
    """`kv/app@2#password`, `lease:database/creds/ro/AbC#username`, `cubbyhole/x#k`; the key defaults to `value`."""
    body, _, key = ref.partition("#")
    key = key or "value"
    if body.startswith("lease:"):
        lease_id = body[len("lease:"):]
        if not lease_id:
            raise SecretError(ref, "empty lease id")
        return SecretRef(ref, "lease", lease_id, key)
    body = body.strip("/")
    if not body or ".." in body.split("/"):
        raise SecretError(ref, "not a valid Vault path")
    if body == "kv" or body.startswith("kv/"):
        path = body[3:]
        version = None
        m = _VERSION.match(path)
        if m:
            path, version = m.group("path"), int(m.group("version"))
        if not path:
            raise SecretError(ref, "a KV reference needs a path after kv/, e.g. kv/app#password")
        return SecretRef(ref, "kv", path, key, mount=kv_mount.strip("/"), version=version)
    return SecretRef(ref, "logical", body, key)


# ---- errors -------------------------------------------------------------------------------------------------


def _first_error(exc: hvac.exceptions.VaultError) -> str:
    errors = getattr(exc, "errors", None) or []
    text = str(errors[0]) if errors and errors[0] else (str(exc.args[0]) if exc.args and exc.args[0] else "")
    if text == "None":
        text = ""
    lines = [ln.strip(" *\t") for ln in text.splitlines() if ln.strip(" *\t")]
    line = next((ln for ln in lines if not ln.endswith("error occurred:") and "errors occurred" not in ln), "")
    return REGISTRY.redact(line)[:200]  # mask first: a cut could leave a secret's head unrecognised


def explain(exc: BaseException, addr: str, timeout: float) -> VaultFailure:
    """Turn an hvac/requests exception into one line a human can act on, and whether a retry may help."""
    if isinstance(exc, VaultFailure):
        return exc
    if isinstance(exc, hvac.exceptions.VaultDown):
        msg = _first_error(exc)
        if "sealed" in msg.lower():
            return VaultFailure("Vault is sealed", retryable=True)
        return VaultFailure(f"Vault is unavailable (503{': ' + msg if msg else ''})", retryable=True)
    if isinstance(exc, hvac.exceptions.Forbidden):
        return VaultFailure("permission denied by Vault policy (403)", retryable=False)
    if isinstance(exc, hvac.exceptions.Unauthorized):
        return VaultFailure("not authenticated to Vault (401)", retryable=False)
    if isinstance(exc, hvac.exceptions.InvalidPath):
        msg = _first_error(exc)
        return VaultFailure("no secret at this path (404)" + (f": {msg}" if msg else ""), retryable=False)
    if isinstance(exc, hvac.exceptions.RateLimitExceeded):
        return VaultFailure("Vault rate limit exceeded (429)", retryable=True)
    if isinstance(exc, hvac.exceptions.InternalServerError | hvac.exceptions.BadGateway):
        return VaultFailure(f"Vault server error: {_first_error(exc) or type(exc).__name__}", retryable=True)
    if isinstance(exc, hvac.exceptions.VaultNotInitialized):
        return VaultFailure("Vault is not initialized", retryable=True)
    if isinstance(exc, hvac.exceptions.VaultError):
        return VaultFailure(f"Vault refused the request: {_first_error(exc) or type(exc).__name__}", retryable=False)
    if isinstance(exc, requests.exceptions.SSLError):
        return VaultFailure(f"TLS error talking to Vault at {addr} (check RUNBOT_VAULT_CA_FILE)", retryable=False)
    if isinstance(exc, requests.exceptions.Timeout):
        return VaultFailure(f"Vault at {addr} did not answer within {timeout:g}s", retryable=True)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return VaultFailure(f"Vault at {addr} is unreachable (connection failed)", retryable=True)
    if isinstance(exc, requests.exceptions.RequestException):
        return VaultFailure(f"request to Vault at {addr} failed: {type(exc).__name__}", retryable=True)
    return VaultFailure(f"unexpected error talking to Vault: {type(exc).__name__}", retryable=True)


# ---- login --------------------------------------------------------------------------------------------------


@dataclass
class TokenGrant:
    """The token in use and when it expires (ttl 0: never)."""

    token: str
    ttl: float
    renewable: bool
    obtained: float  # time.monotonic()
    from_login: bool  # obtained by login: we may log in again, and revoke it at shutdown
    capped: bool = False  # the last renewal got less than asked: max TTL is near, log in again next time


def _read_file(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise VaultConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if not value:
        raise VaultConfigError(f"{what} file {path} is empty")
    return value


class Login:
    """One auth method. `login` returns a fresh grant or raises VaultConfigError / VaultFailure."""

    method = "?"
    can_login_again = True

    def login(self, client: hvac.Client) -> TokenGrant:
        raise NotImplementedError


class TokenLogin(Login):
    method = "token"

    def __init__(self, settings: Settings) -> None:
        self.token = settings.vault_token
        self.file = settings.vault_token_file
        if self.token is None and self.file is None:
            raise VaultConfigError("RUNBOT_VAULT_AUTH_METHOD=token needs RUNBOT_VAULT_TOKEN or RUNBOT_VAULT_TOKEN_FILE")
        # only a token file can change under us (Vault Agent sink); a fixed token cannot be obtained again
        self.can_login_again = self.file is not None

    def login(self, client: hvac.Client) -> TokenGrant:
        token = _read_file(self.file, "Vault token") if self.file is not None else self.token.get_secret_value()  # type: ignore[union-attr]
        REGISTRY.global_redactor.register(token)
        client.token = token
        try:
            data = client.auth.token.lookup_self()["data"]
        except hvac.exceptions.Forbidden:
            raise VaultFailure("the configured Vault token is invalid, expired or revoked", retryable=False) from None
        return TokenGrant(token, float(data.get("ttl") or 0), bool(data.get("renewable")), time.monotonic(), False)


class AppRoleLogin(Login):
    method = "approle"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mount = settings.vault_approle_mount.strip("/")
        self.role_id = settings.vault_approle_role_id
        self.role_name = settings.vault_approle_role_name
        self.wrapped = settings.vault_approle_wrapped_secret_id
        self.wrapped_file = settings.vault_approle_wrapped_secret_id_file
        self.secret_file = settings.vault_approle_secret_id_file
        self.secret_id: str | None = (
            settings.vault_approle_secret_id.get_secret_value() if settings.vault_approle_secret_id else None
        )
        if not self.role_id:
            raise VaultConfigError("RUNBOT_VAULT_AUTH_METHOD=approle needs RUNBOT_VAULT_APPROLE_ROLE_ID")
        given = [n for n, v in (("SECRET_ID", self.secret_id), ("SECRET_ID_FILE", self.secret_file),
                                ("WRAPPED_SECRET_ID", self.wrapped), ("WRAPPED_SECRET_ID_FILE", self.wrapped_file))
                 if v]  # fmt: skip
        if len(given) > 1:
            raise VaultConfigError(f"set only one of RUNBOT_VAULT_APPROLE_{{{', '.join(given)}}}")
        self.unwrapped = False

    def _secret_id(self, client: hvac.Client) -> str | None:
        if self.wrapped is not None or self.wrapped_file is not None:
            if not self.unwrapped:  # once per process: the wrapping token is single-use
                wrapping = (_read_file(self.wrapped_file, "wrapped secret_id") if self.wrapped_file is not None
                            else self.wrapped.get_secret_value())  # type: ignore[union-attr]  # fmt: skip
                REGISTRY.global_redactor.register(wrapping)
                self.secret_id = unwrap_secret_id(self.settings, client, wrapping, self.mount, self.role_name)
                self.unwrapped = True
            return self.secret_id
        if self.secret_file is not None:
            return _read_file(self.secret_file, "AppRole secret_id")
        return self.secret_id  # None: a role with bind_secret_id=false

    def login(self, client: hvac.Client) -> TokenGrant:
        secret_id = self._secret_id(client)
        if secret_id:
            REGISTRY.global_redactor.register(secret_id)
        try:
            auth = client.auth.approle.login(role_id=self.role_id, secret_id=secret_id, use_token=False,
                                             mount_point=self.mount)["auth"]  # fmt: skip
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden) as exc:
            raise VaultFailure(f"AppRole login at auth/{self.mount} refused: {_first_error(exc) or 'invalid credentials'}",
                               retryable=False) from None  # fmt: skip
        return _grant(client, auth)


class KubernetesLogin(Login):
    method = "kubernetes"

    def __init__(self, settings: Settings) -> None:
        self.mount = settings.vault_kubernetes_mount.strip("/")
        self.role = settings.vault_kubernetes_role
        self.jwt_file = settings.vault_kubernetes_jwt_file
        if not self.role:
            raise VaultConfigError("RUNBOT_VAULT_AUTH_METHOD=kubernetes needs RUNBOT_VAULT_KUBERNETES_ROLE")

    def login(self, client: hvac.Client) -> TokenGrant:
        jwt = _read_file(self.jwt_file, "Kubernetes service-account token")  # re-read: kubelet rotates it
        REGISTRY.global_redactor.register(jwt)
        try:
            auth = client.auth.kubernetes.login(role=self.role, jwt=jwt, use_token=False, mount_point=self.mount)["auth"]
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden) as exc:
            raise VaultFailure(f"Kubernetes login at auth/{self.mount} as role {self.role} refused: "
                               f"{_first_error(exc) or 'invalid service-account token'}", retryable=False) from None  # fmt: skip
        return _grant(client, auth)


def _grant(client: hvac.Client, auth: dict[str, Any]) -> TokenGrant:
    token = str(auth["client_token"])
    REGISTRY.global_redactor.register(token)
    client.token = token
    return TokenGrant(token, float(auth.get("lease_duration") or 0), bool(auth.get("renewable")), time.monotonic(), True)


def unwrap_secret_id(settings: Settings, client: hvac.Client, wrapping_token: str, mount: str,
                     role_name: str | None) -> str:
    """Validate a wrapping token (exists, unexpired, created by the AppRole secret-id endpoint), then unwrap it."""
    try:
        info = client.adapter.post("/v1/sys/wrapping/lookup", json={"token": wrapping_token})["data"]
    except hvac.exceptions.InvalidRequest:
        raise VaultConfigError(
            "the wrapped secret_id is not valid: its wrapping token was already unwrapped, has expired, or never "
            "existed. A wrapping token is single-use; if runbot did not unwrap it, someone else may have: "
            "investigate, then issue a new one") from None  # fmt: skip
    except Exception as exc:
        raise VaultConfigError(f"cannot look up the wrapped secret_id: {explain(exc, client.url, 10).reason}") from None
    path = str(info.get("creation_path") or "")
    role = re.escape(role_name) if role_name else "[^/]+"
    if not re.fullmatch(rf"auth/{re.escape(mount)}/role/{role}/secret-id", path):
        expected = f"auth/{mount}/role/{role_name or '<role>'}/secret-id"
        raise VaultConfigError(f"the wrapped secret_id was created at {path or '(unknown path)'}, not at {expected}: "
                               "refusing it, it may have been substituted")  # fmt: skip
    unwrapper = make_client(settings)
    unwrapper.token = wrapping_token
    try:
        data = unwrapper.sys.unwrap()["data"]
    except hvac.exceptions.VaultError as exc:
        raise VaultConfigError(f"unwrapping the secret_id failed ({_first_error(exc)}): it was unwrapped by "
                               "someone else between lookup and unwrap; investigate") from None  # fmt: skip
    finally:
        unwrapper.adapter.close()
    secret_id = data.get("secret_id") if isinstance(data, dict) else None
    if not secret_id:
        raise VaultConfigError("the wrapped response holds no secret_id")
    return str(secret_id)


def make_login(settings: Settings) -> Login:
    method = settings.vault_auth_method
    if method == "approle":
        return AppRoleLogin(settings)
    if method == "kubernetes":
        return KubernetesLogin(settings)
    return TokenLogin(settings)


def make_client(settings: Settings) -> hvac.Client:
    if not settings.vault_addr:
        raise VaultConfigError("RUNBOT_SECRETS_PROVIDER=vault needs RUNBOT_VAULT_ADDR (e.g. https://vault.internal:8200)")
    for name in ("vault_ca_file", "vault_client_cert", "vault_client_key"):
        p = getattr(settings, name)
        if p is not None and not Path(p).is_file():
            raise VaultConfigError(f"RUNBOT_{name.upper()}: no such file {p}")
    if (settings.vault_client_cert is None) != (settings.vault_client_key is None):
        raise VaultConfigError("RUNBOT_VAULT_CLIENT_CERT and RUNBOT_VAULT_CLIENT_KEY go together")
    verify: bool | str = str(settings.vault_ca_file) if settings.vault_ca_file else settings.vault_verify_tls
    cert = (str(settings.vault_client_cert), str(settings.vault_client_key)) if settings.vault_client_cert else None
    # token="" (not None): hvac would otherwise pick up VAULT_TOKEN or ~/.vault-token on its own
    return hvac.Client(url=settings.vault_addr.rstrip("/"), token="", verify=verify, cert=cert,
                       timeout=settings.vault_timeout, namespace=settings.vault_namespace)  # fmt: skip


# ---- the provider -------------------------------------------------------------------------------------------


@dataclass
class IssuedLease:
    """What the vault.credentials step gets back; values are for the run's redactor and nothing else."""

    lease_id: str
    path: str
    ttl: int
    renewable: bool
    expires_at: datetime
    values: dict[str, str]


class VaultProvider:
    """SecretProvider for Vault/OpenBao; also issues, renews and revokes dynamic credentials (via LeaseKeeper)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.addr = (settings.vault_addr or "").rstrip("/")
        self.client = make_client(settings)
        self.auth = make_login(settings)
        self.kv_mount = settings.vault_kv_mount
        self._lock = threading.RLock()
        self._grant: TokenGrant | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._closing = False
        self.leases: LeaseKeeper | None = None
        self.logins = 0
        self.renewals = 0

    # ---- life cycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Log in now (refusing to start on failure), then keep the token and leases alive in the background."""
        try:
            self._ensure_login()
        except VaultFailure as exc:
            raise VaultConfigError(f"cannot log in to Vault at {self.addr} ({self.auth.method}): {exc.reason}") from None
        if self.leases is not None:
            self.leases.start()

    def attach(self, rt: Runtime) -> None:
        """Join a runtime: lease table, run-end revocation, the vault.credentials step, start and stop hooks."""
        self.leases = LeaseKeeper(rt.db, self, holder=rt.settings.owner_id,
                                  renew_fraction=self.settings.vault_renew_fraction,
                                  sweep_interval=self.settings.vault_lease_sweep_interval)  # fmt: skip
        rt.engine.on_run_end.append(self._run_ended)
        if rt.registry.has("vault.credentials"):
            step = rt.registry.get("vault.credentials")
            bind = getattr(step, "bind", None)
            if callable(bind):
                bind(self)
        rt.background.append(self.start)
        rt.stoppers.append(self.close)

    def close(self) -> None:
        """Clean shutdown: revoke held leases (their values die with this process), then our own token."""
        if self._closing:
            return
        self._closing = True
        if self.leases is not None:
            self.leases.close()  # may still need to log in, to revoke leases of runs that ended meanwhile
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        grant = self._grant
        if grant is not None and grant.from_login and self.settings.vault_revoke_token_on_shutdown:
            try:
                self.client.auth.token.revoke_self()
                log.info("vault token revoked on shutdown")
            except Exception as exc:
                log.warning("could not revoke the vault token on shutdown", reason=explain(exc, self.addr, 1).reason)
        self._grant = None
        try:
            self.client.adapter.close()
        except Exception as exc:  # closing a pool is best effort
            log.debug("closing the vault session failed", error=type(exc).__name__)

    def abandon(self) -> None:
        """Stop background work without revoking anything: what a crash leaves behind (for recovery tests)."""
        self._closed = self._closing = True
        if self.leases is not None:
            self.leases.abandon()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run_ended(self, run_id: str, status: RunStatus) -> None:
        if self.leases is not None:
            self.leases.run_ended(run_id)

    # ---- login and token upkeep ---------------------------------------------------------------------------

    def _ensure_login(self) -> None:
        if self._grant is not None:
            return
        with self._lock:
            if self._grant is None:
                self._login()

    def _login(self) -> None:
        if self._closed:
            raise VaultFailure("runbot is shutting down", retryable=True)
        try:
            grant = self.auth.login(self.client)
        except (VaultFailure, VaultConfigError):
            count_vault_failure("login")
            raise
        except Exception as exc:
            count_vault_failure("login")
            raise explain(exc, self.addr, self.settings.vault_timeout) from None
        self._grant = grant
        self.logins += 1
        log.info("logged in to vault", method=self.auth.method, ttl=grant.ttl, renewable=grant.renewable)
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._token_loop, name="runbot-vault-token", daemon=True)
            self._thread.start()
        self._wake.set()

    def _relogin(self, why: str, failed: TokenGrant | None = None) -> None:
        with self._lock:
            if failed is not None and self._grant is not None and self._grant is not failed:
                return  # another thread already replaced the dead token
            if not self.auth.can_login_again:
                self._grant = None  # the next request tries the configured token once more and reports
                raise VaultFailure(f"the Vault token {why}, and {self.auth.method} auth cannot log in again: "
                                   "give runbot a new token (or use AppRole or Kubernetes auth)", retryable=False)  # fmt: skip
            self._grant = None
            try:
                self._login()
            except VaultConfigError as exc:
                raise VaultFailure(f"the Vault token {why} and logging in again failed: {exc}", retryable=False) from None
            except VaultFailure as exc:
                raise VaultFailure(f"the Vault token {why} and logging in again failed: {exc.reason}",
                                   retryable=exc.retryable) from None  # fmt: skip

    def _token_dead(self) -> bool:
        try:
            self.client.auth.token.lookup_self()
            return False
        except hvac.exceptions.Forbidden:
            return True
        except Exception:
            return False

    def _token_loop(self) -> None:
        fraction = self.settings.vault_renew_fraction
        while not self._stop.is_set():
            self._wake.clear()
            g = self._grant
            if g is None or g.ttl <= 0:
                self._wake.wait()
                continue
            delay = g.obtained + g.ttl * fraction - time.monotonic()
            if delay > 0:
                self._wake.wait(delay)
                continue
            try:
                self._renew_or_login(g)
            except VaultFailure as exc:
                remaining = g.obtained + g.ttl - time.monotonic()
                if exc.retryable and remaining > 0:
                    log.warning("vault token renewal failed; retrying", reason=exc.reason, expires_in=round(remaining))
                    self._wake.wait(min(5.0, max(0.2, remaining / 4)))
                else:
                    log.error("vault token could not be renewed or re-obtained; secrets will fail until it is fixed",
                              reason=exc.reason)  # fmt: skip
                    with self._lock:
                        if self._grant is g:
                            self._grant = None  # a later request logs in again (and reports if it cannot)
            except Exception as exc:  # never let the upkeep thread die
                log.error("vault token upkeep error", error=type(exc).__name__)
                self._wake.wait(5.0)

    def _renew_or_login(self, g: TokenGrant) -> None:
        if g.renewable and not g.capped:
            asked = max(int(g.ttl), 1)
            try:
                auth = self.client.auth.token.renew_self(increment=asked)["auth"]
            except hvac.exceptions.Forbidden:
                self._relogin("expired or was revoked")
                return
            except hvac.exceptions.InvalidRequest as exc:
                if self.auth.can_login_again:
                    self._relogin(f"cannot be renewed ({_first_error(exc)})")
                    return
                raise explain(exc, self.addr, self.settings.vault_timeout) from None
            except Exception as exc:
                raise explain(exc, self.addr, self.settings.vault_timeout) from None
            granted = float(auth.get("lease_duration") or 0)
            with self._lock:
                if self._grant is g:
                    g.obtained, g.ttl = time.monotonic(), granted
                    g.capped = granted < asked * 0.9
            self.renewals += 1
            log.debug("vault token renewed", ttl=granted)
            if g.capped:
                log.info("vault token is near its max TTL; logging in again before it expires", ttl=granted)
            return
        if self.auth.can_login_again:
            self._relogin("reached its max TTL" if g.capped else "is not renewable")
            return
        remaining = g.obtained + g.ttl - time.monotonic()
        log.warning("vault token is not renewable and cannot be obtained again; it expires soon",
                    expires_in=round(max(0.0, remaining)))  # fmt: skip
        g.ttl = 0  # nothing more to do; stop waking up for it

    def _call(self, fn: Callable[[hvac.Client], T]) -> T:
        """One Vault request with login on demand and one re-login when the token turns out to be dead."""
        try:
            self._ensure_login()
            used = self._grant
            try:
                return fn(self.client)
            except hvac.exceptions.Forbidden:
                if self._grant is used and not self._token_dead():
                    raise  # a policy refusal, not a dead token
                self._relogin("expired or was revoked", failed=used)  # a no-op if another thread already did
                return fn(self.client)
        except VaultConfigError as exc:
            raise VaultFailure(str(exc), retryable=False) from None
        except VaultFailure:
            raise
        except Exception as exc:
            raise explain(exc, self.addr, self.settings.vault_timeout) from None

    # ---- SecretProvider -----------------------------------------------------------------------------------

    def fetch(self, ref: str) -> str:
        r = parse_ref(ref, self.kv_mount)
        try:
            if r.kind == "lease":
                return self._lease_value(r)
            data = self._call(lambda c: self._read_kv(c, r)) if r.kind == "kv" else self._call(lambda c: self._read_logical(c, r))
        except VaultFailure as exc:
            raise SecretError(ref, exc.reason, retryable=exc.retryable) from None
        if r.key not in data:
            keys = ", ".join(sorted(str(k) for k in data)) or "none"
            raise SecretError(ref, f"no key {r.key!r} at this path (keys: {keys})")
        return _text(data[r.key])

    def _read_kv(self, c: hvac.Client, r: SecretRef) -> dict[str, Any]:
        resp = c.secrets.kv.v2.read_secret_version(path=r.path, version=r.version, mount_point=r.mount,
                                                   raise_on_deleted_version=True)  # fmt: skip
        data = (resp or {}).get("data", {}).get("data")
        if not isinstance(data, dict):
            raise VaultFailure("no data at this path (deleted or destroyed version?)", retryable=False)
        return data

    def _read_logical(self, c: hvac.Client, r: SecretRef) -> dict[str, Any]:
        resp = c.adapter.get(f"/v1/{r.path}")
        if not isinstance(resp, dict):
            raise VaultFailure("no secret at this path", retryable=False)
        if resp.get("lease_id"):
            with contextlib.suppress(Exception):  # nobody will use it: do not let it live out its TTL
                c.sys.revoke_lease(resp["lease_id"])
            raise VaultFailure("this path issues dynamic secrets: use a vault.credentials step, so the lease is "
                               "tracked and revoked with the run", retryable=False)  # fmt: skip
        data = resp.get("data")
        if isinstance(data, dict) and isinstance(data.get("data"), dict) and isinstance(data.get("metadata"), dict):
            data = data["data"]  # a KV v2 path read as <mount>/data/<path>
        if not isinstance(data, dict):
            raise VaultFailure("no data at this path", retryable=False)
        return data

    def _lease_value(self, r: SecretRef) -> str:
        if self.leases is None:
            raise SecretError(r.raw, "lease references need the runtime's lease tracking (not attached)")
        try:
            values = self.leases.values(r.path)
        except LeaseUnavailable as exc:
            raise SecretError(r.raw, exc.reason) from None
        if r.key not in values:
            raise SecretError(r.raw, f"the lease has no key {r.key!r} (keys: {', '.join(sorted(values)) or 'none'})")
        return values[r.key]

    # ---- dynamic credentials ------------------------------------------------------------------------------

    def issue(self, path: str, *, data: dict[str, Any] | None, run_id: str, step_id: str,
              renew: bool = True) -> IssuedLease:  # fmt: skip
        """Read (or write `data` to) a path that issues credentials; track its lease with the run before returning."""
        if self.leases is None:
            raise VaultFailure("dynamic credentials need lease tracking: the provider is not attached to a runtime",
                               retryable=False)  # fmt: skip
        path = path.strip("/")
        if data is None:
            resp = self._call(lambda c: c.adapter.get(f"/v1/{path}"))
        else:
            resp = self._call(lambda c: c.adapter.post(f"/v1/{path}", json=data))
        if not isinstance(resp, dict) or not resp.get("lease_id"):
            raise VaultFailure("this path returned no lease (static secrets are read with secret('...'))", retryable=False)
        raw = resp.get("data") or {}
        values = {str(k): _text(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        for v in values.values():
            REGISTRY.for_run(run_id).register(v)
        ttl = int(resp.get("lease_duration") or 0)
        now = datetime.now(UTC)
        lease = HeldLease(lease_id=str(resp["lease_id"]), run_id=run_id, step_id=step_id, path=path, values=values,
                          ttl=ttl, increment=ttl, renewable=bool(resp.get("renewable")), renew=renew,
                          granted_at=time.monotonic(), expires_at=now + timedelta(seconds=ttl))  # fmt: skip
        try:
            self.leases.track(lease)
        except Exception:
            # not tracked means nobody would revoke it: revoke now rather than let it outlive the run unseen
            try:
                self.revoke_lease(lease.lease_id)
            except VaultFailure as exc:
                log.error("untracked lease could not be revoked", lease_id=lease.lease_id, reason=exc.reason)
            raise
        return IssuedLease(lease.lease_id, path, ttl, lease.renewable, lease.expires_at, values)

    def renew_lease(self, lease_id: str, increment: int) -> tuple[int, bool]:
        resp = self._call(lambda c: c.sys.renew_lease(lease_id=lease_id, increment=increment))
        return int(resp.get("lease_duration") or 0), bool(resp.get("renewable"))

    def revoke_lease(self, lease_id: str) -> None:
        self._call(lambda c: c.sys.revoke_lease(lease_id=lease_id))

    # ---- introspection (tests, `runbot vault status`) ------------------------------------------------------

    def token_info(self) -> dict[str, Any]:
        g = self._grant
        if g is None:
            return {"logged_in": False, "method": self.auth.method}
        remaining = g.obtained + g.ttl - time.monotonic() if g.ttl > 0 else None
        return {"logged_in": True, "method": self.auth.method, "ttl": g.ttl, "renewable": g.renewable,
                "expires_in": round(remaining, 1) if remaining is not None else None, "logins": self.logins,
                "renewals": self.renewals}  # fmt: skip


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


# ---- runbot's own credentials from Vault --------------------------------------------------------------------


def _secret_fields(obj: BaseModel, where: str) -> Iterator[tuple[BaseModel, str, str, str]]:
    """(model, field, display name, ref) for every SecretStr setting holding `secret:PATH#KEY`."""
    for name in type(obj).model_fields:
        value = getattr(obj, name)
        label = f"{where}{name}"
        items: list[tuple[str, Any]] = []
        if isinstance(value, dict):
            items = [(f"{label}.{k}", v) for k, v in value.items()]
        elif isinstance(value, list | tuple):
            items = [(f"{label}[{i}]", v) for i, v in enumerate(value)]
        for sub_label, sub in items:
            if isinstance(sub, BaseModel):
                yield from _secret_fields(sub, sub_label + ".")
        if isinstance(value, BaseModel):
            yield from _secret_fields(value, label + ".")
        if isinstance(value, SecretStr) and value.get_secret_value().startswith(SETTINGS_PREFIX):
            yield obj, name, label, value.get_secret_value()[len(SETTINGS_PREFIX):].strip()


def settings_secret_refs(settings: Settings) -> list[tuple[str, str]]:
    return [(label, ref) for _, _, label, ref in _secret_fields(settings, "")]


def resolve_settings_secrets(settings: Settings, fetch: Callable[[str], str]) -> list[str]:
    """Replace every `secret:PATH#KEY` secret setting with its value (in memory only); returns the names.

    Provider-agnostic; a failure raises VaultConfigError naming the setting, so runbot refuses to start
    rather than fall back to some other value.
    """
    done = []
    for model, name, label, ref in list(_secret_fields(settings, "")):
        try:
            value = fetch(ref)
        except SecretError as exc:
            raise VaultConfigError(f"setting {label} ({SETTINGS_PREFIX}{ref}): {exc.reason}") from None
        REGISTRY.global_redactor.register(value)
        setattr(model, name, SecretStr(value))
        done.append(label)
    return done


def build_vault_provider(settings: Settings) -> VaultProvider:
    """The provider app.make_secret_provider uses. Logs in lazily unless settings need secrets right now."""
    provider = VaultProvider(settings)
    if settings_secret_refs(settings):
        provider.start()
        names = resolve_settings_secrets(settings, provider.fetch)
        log.info("settings read from vault", settings=names)
    return provider
