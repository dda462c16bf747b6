"""Read API (/api/v1/incidents, runs, alerts, deliveries) and POST /admin/reload, behind the API token."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from runbot.adapters.alertmanager import queries
from runbot.adapters.alertmanager.auth import bearer_ok
from runbot.audit.log import Event, append

if TYPE_CHECKING:
    from runbot.app import Runtime

log = structlog.get_logger("runbot.api")
_reload_lock = threading.Lock()


def reload_runbooks(rt: Runtime, actor: str) -> dict[str, Any]:
    """Reload the runbook directory; in-flight runs keep the version they started with."""
    with _reload_lock:
        problems = rt.catalog.reload()
        rt.catalog.log_broken()
        names = sorted(b.name for b in rt.catalog.all())
        with rt.db.tx() as conn:
            append(conn, [Event("runbooks.reloaded", actor=actor, outcome="ok" if not problems else "partial",
                                details={"runbooks": names, "problems": [str(p) for p in problems]})])  # fmt: skip
    log.info("runbooks reloaded", actor=actor, runbooks=len(names), problems=len(problems))
    return {"runbooks": names, "problems": [str(p) for p in problems]}


def api_router(rt: Runtime) -> APIRouter:
    token = rt.settings.api_token.get_secret_value() if rt.settings.api_token else None

    def require_token(request: Request) -> None:
        if not token:
            raise HTTPException(401, "the API is disabled until RUNBOT_API_TOKEN is set",
                                headers={"WWW-Authenticate": 'Bearer realm="runbot"'})  # fmt: skip
        if not bearer_ok(token, request.headers.get("authorization")):
            raise HTTPException(401, "missing or wrong API token", headers={"WWW-Authenticate": 'Bearer realm="runbot"'})

    router = APIRouter(dependencies=[Depends(require_token)])

    def read(fn: Any, *args: Any, **kwargs: Any) -> Any:
        with rt.db.read() as conn:
            return fn(conn, *args, **kwargs)

    @router.get("/api/v1/incidents")
    async def incidents(status: str | None = None, limit: int = 50) -> dict[str, Any]:
        return {"incidents": await run_in_threadpool(read, queries.list_incidents, status=status, limit=limit)}

    @router.get("/api/v1/incidents/{incident_ref}")
    async def incident(incident_ref: str) -> dict[str, Any]:
        def get(conn: Any) -> dict[str, Any] | None:
            try:
                inc_id = queries.resolve_incident_id(conn, incident_ref)
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from None
            return queries.incident_detail(conn, inc_id) if inc_id else None

        found = await run_in_threadpool(read, get)
        if found is None:
            raise HTTPException(404, f"no incident {incident_ref!r}")
        return dict(found)

    @router.get("/api/v1/runs")
    async def runs(status: str | None = None, incident: str | None = None, runbook: str | None = None,
                   limit: int = 50) -> dict[str, Any]:  # fmt: skip
        return {"runs": await run_in_threadpool(read, queries.list_runs, status=status, incident=incident,
                                                runbook=runbook, limit=limit)}  # fmt: skip

    @router.get("/api/v1/runs/{run_id}")
    async def run(run_id: str) -> dict[str, Any]:
        found = await run_in_threadpool(read, queries.run_detail, run_id)
        if found is None:
            raise HTTPException(404, f"no run {run_id!r}")
        return dict(found)

    @router.get("/api/v1/alerts")
    async def alerts(status: str | None = None, incident: str | None = None, unhandled: bool = False,
                     pending: bool = False, limit: int = 50) -> dict[str, Any]:  # fmt: skip
        return {"alerts": await run_in_threadpool(read, queries.list_alerts, status=status, incident=incident,
                                                  unhandled=unhandled, pending=pending, limit=limit)}  # fmt: skip

    @router.get("/api/v1/alerts/throttled")
    async def throttled() -> dict[str, Any]:
        return {"throttled": await run_in_threadpool(read, queries.throttle_summary)}

    @router.get("/api/v1/deliveries/{delivery_id}")
    async def delivery(delivery_id: int) -> dict[str, Any]:
        found = await run_in_threadpool(read, queries.delivery, delivery_id)
        if found is None:
            raise HTTPException(404, f"no delivery {delivery_id} (processed ones are kept up to "
                                     "RUNBOT_ALERTMANAGER_DELIVERIES_KEEP)")  # fmt: skip
        return found

    @router.get("/api/v1/webhook/rejects")
    async def rejects(limit: int = 20) -> dict[str, Any]:
        return {"rejects": await run_in_threadpool(read, queries.list_rejects, limit)}

    @router.post("/admin/reload")
    async def reload() -> dict[str, Any]:
        return await run_in_threadpool(reload_runbooks, rt, "api")

    return router
