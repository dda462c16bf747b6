"""HTTP: streamed audit exports, the chain head, postmortems; plus the housekeeping loop (retention, drafts).

    GET /api/v1/audit/export?format=jsonl|csv|md|html&since=&until=&incident=&run=&runbook=&actor=
    GET /api/v1/audit/head                      -> {"seq": ..., "hash": ...}
    GET /api/v1/audit/summary?run=&incident=&since=   (text, as `/runbot audit` shows)
    GET /api/v1/incidents/{id}/postmortem?format=md|html

All need `Authorization: Bearer <RUNBOT_API_TOKEN>`; without a configured token they answer 401.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from runbot.audit.export import CONTENT_TYPES, FORMATS, export_chunks
from runbot.audit.records import ExportFilter, chain_head, parse_time
from runbot.store.types import utcnow

if TYPE_CHECKING:
    from runbot.app import Runtime

log = structlog.get_logger("runbot.audit_api")
UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="runbot"'}
DRAFT_POLL_SECONDS = 30.0


def _bearer_guard(rt: Runtime) -> Any:
    token = rt.settings.api_token.get_secret_value().encode() if rt.settings.api_token else b""

    def require(request: Request) -> None:
        if not token:
            raise HTTPException(401, "the API is disabled until RUNBOT_API_TOKEN is set", headers=UNAUTHORIZED)
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
            raise HTTPException(401, "missing or wrong API token", headers=UNAUTHORIZED)

    return require


def _time(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise HTTPException(400, f"{name}: {exc}") from None


def router(rt: Runtime) -> APIRouter:
    r = APIRouter(dependencies=[Depends(_bearer_guard(rt))])

    @r.get("/api/v1/audit/export")
    def export(format: str = "jsonl", since: str | None = None, until: str | None = None,
               incident: str | None = None, run: str | None = None, runbook: str | None = None,
               actor: str | None = None) -> Response:  # fmt: skip
        if format not in FORMATS:
            raise HTTPException(400, f"format must be one of {', '.join(FORMATS)}")
        flt = ExportFilter(since=_time(since, "since"), until=_time(until, "until"), incident_id=incident,
                           run_id=run, runbook=runbook, actor=actor)  # fmt: skip
        chunks: Iterator[str] = export_chunks(rt.db, format, flt)  # the head is taken now, rows as the client reads
        name = f"runbot-audit-{utcnow():%Y%m%dT%H%M%SZ}.{format}"
        return StreamingResponse(chunks, media_type=CONTENT_TYPES[format],
                                 headers={"Content-Disposition": f'attachment; filename="{name}"',
                                          "Cache-Control": "no-store"})  # fmt: skip

    @r.get("/api/v1/audit/head")
    async def head() -> dict[str, Any]:
        seq, digest = await run_in_threadpool(chain_head, rt.db)
        return {"seq": seq, "hash": digest}

    @r.get("/api/v1/audit/summary", response_class=PlainTextResponse)
    async def summary(run: str | None = None, incident: str | None = None, since: str | None = None) -> str:
        from runbot.audit.summary import summarize

        return await run_in_threadpool(summarize, rt.db, run, incident_id=incident, since=_time(since, "since"))

    @r.get("/api/v1/incidents/{incident_id}/postmortem")
    async def postmortem(incident_id: str, format: str = "md") -> Response:
        from runbot.postmortem import UnknownIncident, render_postmortem

        if format not in ("md", "html"):
            raise HTTPException(400, "format must be md or html")
        try:
            doc = await run_in_threadpool(render_postmortem, rt.db, incident_id, format,
                                          templates_dir=rt.settings.postmortem_templates_dir)  # fmt: skip
        except UnknownIncident as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        return Response(doc, media_type=CONTENT_TYPES[format], headers={"Cache-Control": "no-store"})

    return r


class Housekeeping:
    """A daemon thread: postmortem drafts for resolved incidents, and retention every interval."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name="runbot-housekeeping", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(10)

    def _main(self) -> None:
        from runbot.audit.retention import apply_retention
        from runbot.postmortem.auto import generate_pending

        s = self.rt.settings
        retain = bool(s.retention_runs_days or s.retention_alerts_days or s.retention_audit_days)
        next_retention = time.monotonic() + 60.0
        while not self.stop_event.wait(DRAFT_POLL_SECONDS if s.postmortem_auto else 60.0):
            try:
                if s.postmortem_auto:
                    generate_pending(self.rt)
                if retain and time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + s.retention_interval_hours * 3600
                    for line in apply_retention(self.rt.db, s).lines():
                        log.info("retention", result=line)
            except Exception as exc:  # the next round tries again
                log.error("housekeeping failed", error=f"{type(exc).__name__}: {exc}")


def install(rt: Runtime, app: FastAPI) -> None:
    from runbot.audit.publish import install as install_head_publisher

    app.include_router(router(rt))
    install_head_publisher(rt)  # RUNBOT_AUDIT_HEAD_PUBLISH_INTERVAL: the head, regularly, outside the database
    s = rt.settings
    if s.postmortem_auto or s.retention_runs_days or s.retention_alerts_days or s.retention_audit_days:
        keeper = Housekeeping(rt)
        rt.background.append(keeper.start)
        rt.stoppers.append(keeper.stop)
