"""/healthz (liveness: are our workers alive?) and /readyz (readiness: are the dependencies we need up?).

Kept apart on purpose: Kubernetes restarts a pod whose liveness fails, so liveness must only fail when a
restart helps (a worker died or is wedged), never because PostgreSQL or Vault is down for everyone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from runbot.health import Health
from runbot.worker import WorkerThread

if TYPE_CHECKING:
    from runbot.app import Runtime
    from runbot.engine_worker import EngineThread

log = structlog.get_logger("runbot.health")


def watch_background(rt: Runtime) -> None:
    """Every WorkerThread among the runtime's starters, and Vault's keepers, report to rt.health."""
    stall = rt.settings.worker_stall_seconds
    for start in rt.background:
        owner = getattr(start, "__self__", None)
        if isinstance(owner, WorkerThread):
            owner.heartbeat.stall_after = stall
            rt.health.register(owner.heartbeat)
    _watch_vault(rt.health, rt.secrets)


def _watch_vault(health: Health, provider: Any) -> None:
    """Vault's token and lease keepers are plain threads: live while started and running (or not needed yet)."""
    if not hasattr(provider, "_ensure_login"):
        return

    def token_alive() -> bool:
        t = getattr(provider, "_thread", None)
        return bool(getattr(provider, "_closing", False)) or t is None or t.is_alive()

    def leases_alive() -> bool:
        keeper = getattr(provider, "leases", None)
        t = getattr(keeper, "_thread", None)
        return keeper is None or t is None or t.is_alive() or keeper._stop.is_set()

    health.probe("vault-token", token_alive)
    health.probe("vault-leases", leases_alive)


def vault_problem(rt: Runtime) -> str | None:
    """Vault reachable, initialised and unsealed (only when it is the secrets provider)."""
    if rt.settings.secrets_provider != "vault":
        return None
    client = getattr(rt.secrets, "client", None)
    if client is None:
        return None
    try:
        status = client.sys.read_health_status(method="GET", standby_ok=True)
        code = getattr(status, "status_code", 200)
        if isinstance(status, dict) or code in (200, 429, 473):
            return None
        return f"vault unhealthy: HTTP {code}"
    except Exception as exc:  # hvac raises VaultDown for 503 (sealed), requests errors when unreachable
        if type(exc).__name__ == "VaultDown":
            return "vault is sealed or unavailable (HTTP 503)"
        return f"vault unreachable: {type(exc).__name__}"


def install_health(rt: Runtime, app: FastAPI, engine_thread: EngineThread, run_engine: bool) -> None:
    @app.get("/healthz")
    def healthz() -> Response:
        workers = rt.health.workers()
        problems = [p for _, p in workers if p is not None]
        body = {"live": not problems, "problems": problems,
                "workers": {name: ("ok" if p is None else p) for name, p in workers}}  # fmt: skip
        return JSONResponse(body, status_code=200 if not problems else 503)

    @app.get("/readyz")
    def readyz() -> Response:
        problems = []
        try:
            rt.db.ping()
            if not rt.db.at_head():
                problems.append("database schema is not at the latest migration (run: runbot db upgrade)")
        except Exception as exc:
            problems.append(f"database unreachable: {type(exc).__name__}")
        vault = vault_problem(rt)
        if vault is not None:
            problems.append(vault)
        if run_engine and not engine_thread.alive():
            problems.append("engine loop is not running")
        problems += rt.health.problems()
        # Broken runbooks do not make a replica unready (the others run); this endpoint is unauthenticated, so it
        # names the files only: `runbot lint` (or the authenticated reload answer) says what is wrong with them.
        body = {"ready": not problems, "problems": problems, "runbooks": len(rt.catalog.all()),
                "broken_runbooks": [{"file": b.file, "problems": b.problems, "kept_last_good_version": b.kept_version}
                                    for b in rt.catalog.broken]}  # fmt: skip
        return JSONResponse(body, status_code=200 if not problems else 503)

    if rt.settings.debug_worker_hooks:
        log.warning("debug worker hooks are on (RUNBOT_DEBUG_WORKER_HOOKS); never in production")

        @app.post("/debug/error")
        def error() -> Response:
            raise RuntimeError("deliberate server error (debug hook)")

        @app.post("/debug/workers/{name}/kill")
        def kill(name: str) -> Response:
            if not rt.health.kill(name):
                return JSONResponse({"error": f"no worker {name}"}, status_code=404)
            for start in rt.background:  # wake it, so it meets the kill at once
                owner = getattr(start, "__self__", None)
                if isinstance(owner, WorkerThread) and owner.heartbeat.name == name:
                    owner.wake()
            rt.engine.wake()
            return JSONResponse({"killing": name})
