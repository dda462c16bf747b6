"""POST /webhooks/alertmanager: authenticate, cap, validate, commit, answer. Nothing else on the request path.

Grafana Alerting's webhook contact point posts the same way (`version: "1"`, detected from the body), to this
path or to its alias /webhooks/grafana, with the same credentials.

Responses (JSON):
  200 {"status": "ok", "alerts": n, "delivery": id}   committed (re-deliveries are fine: dedupe comes after)
  400 malformed JSON; 422 wrong shape or version (with "problems": [{field, message}])
  401 missing or wrong credentials; 403 credentials of another receiver; 413 body too large
  503 the database refused the write, or the backlog of accepted alerts not yet unpacked is full
      (RUNBOT_ALERTMANAGER_BACKLOG_MAX_ALERTS): Alertmanager retries, nothing was acknowledged
Bodies refused after authentication are kept (size-capped) in `webhook_rejects` for inspection. An accepted
body is one `webhook_deliveries` row; the intake worker unpacks it into alerts (how many were new and how
many repeats ends up on that row, `GET /api/v1/deliveries/{id}`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from runbot.adapters.alertmanager.auth import ANY_RECEIVER, Credential, authenticate, webhook_credentials
from runbot.adapters.alertmanager.ingest import DeliveryWriter, store_reject
from runbot.adapters.alertmanager.payload import CHUNKED_ABOVE, PayloadError, check

if TYPE_CHECKING:
    from runbot.app import Runtime

log = structlog.get_logger("runbot.webhook")
PATH = "/webhooks/alertmanager"
GRAFANA_PATH = "/webhooks/grafana"  # the same endpoint, under the name a Grafana contact point is given
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="runbot", Basic realm="runbot"'}
NOT_CONFIGURED = ("webhook credentials are not configured: set RUNBOT_ALERTMANAGER_WEBHOOK_TOKEN (or "
                  "RUNBOT_ALERTMANAGER_ALLOW_UNAUTHENTICATED=true for a local demo)")  # fmt: skip


class _TooLarge(Exception):
    def __init__(self, head: bytes, size: int) -> None:
        self.head = head
        self.size = size


def webhook_endpoint(rt: Runtime, writer: DeliveryWriter) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint, mounted as a plain Starlette route: it reads its own body, so FastAPI's per-request
    parameter solving would only add cost on the hottest path (it is ~40 us of a ~150 us request)."""
    s = rt.settings
    m = rt.metrics
    creds = webhook_credentials(s)
    open_door = s.alertmanager_allow_unauthenticated
    max_body = s.alertmanager_max_body_bytes
    max_backlog = s.alertmanager_backlog_max_alerts
    backlog = writer.backlog
    received: dict[str, Any] = {}  # receiver label -> counter child, looked up once

    async def read_capped(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            head = b""
            async for chunk in request.stream():
                head += chunk
                if len(head) >= s.alertmanager_reject_keep_bytes:
                    break
            raise _TooLarge(head, int(declared))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                raise _TooLarge(bytes(body), len(body))
        return bytes(body)

    def refuse(status: int, body: dict[str, object], reason: str, started: float,
               headers: dict[str, str] | None = None) -> Response:  # fmt: skip
        m.webhook_rejected.labels(reason=reason).inc()
        m.webhook_latency.observe(time.perf_counter() - started)
        return JSONResponse(body, status_code=status, headers=headers)

    async def keep(cred: Credential, status: int, error: str, body: bytes, size: int) -> None:
        try:
            await run_in_threadpool(store_reject, rt.db, receiver=cred.receiver, status_code=status, error=error,
                                    body=body, body_size=size, keep_bytes=s.alertmanager_reject_keep_bytes,
                                    keep_rows=s.alertmanager_rejects_keep)  # fmt: skip
        except Exception as exc:  # keeping the evidence must not turn a 4xx into a 500
            log.warning("could not keep a rejected webhook body", error=repr(exc))

    async def backlog_full(n: int) -> bool:
        try:
            pending = await run_in_threadpool(writer.recount)
        except Exception:  # cannot tell: the write itself will say whether the database takes it
            return False
        return pending + n > max_backlog

    async def alertmanager_webhook(request: Request) -> Response:
        started = time.perf_counter()
        cred = authenticate(creds, request.headers.get("authorization")) if creds else None
        if cred is None:
            if not open_door:
                msg = "missing or wrong credentials" if creds else NOT_CONFIGURED
                log.warning("webhook refused: " + msg, client=request.client.host if request.client else None)
                return refuse(401, {"error": msg}, "auth", started, CHALLENGE)
            cred = Credential(ANY_RECEIVER)
        try:
            body = await read_capped(request)
        except _TooLarge as big:
            msg = f"body too large: {big.size} bytes; the limit is {max_body} (RUNBOT_ALERTMANAGER_MAX_BODY_BYTES)"
            await keep(cred, 413, msg, big.head, big.size)
            return refuse(413, {"error": msg}, "too_large", started)
        try:
            # a big body is checked in chunks on a worker thread, so the loop acknowledges others in between
            payload = check(body) if len(body) <= CHUNKED_ABOVE else await run_in_threadpool(check, body)
        except PayloadError as exc:
            await keep(cred, exc.status, exc.message, body, len(body))
            log.warning("webhook payload refused", status=exc.status, error=exc.message)
            return refuse(exc.status, exc.body(), "invalid", started)
        if cred.receiver != ANY_RECEIVER and payload.receiver != cred.receiver:
            msg = f"these credentials belong to receiver {cred.receiver!r}, not {payload.receiver!r}"
            await keep(cred, 403, msg, body, len(body))
            return refuse(403, {"error": msg, "problems": [{"field": "receiver", "message": msg}]}, "receiver", started)
        n = payload.alerts
        if n and backlog.alerts + n > max_backlog and await backlog_full(n):
            msg = (f"intake backlog full: {backlog.alerts} accepted alerts are not unpacked yet (limit {max_backlog}, "
                   "RUNBOT_ALERTMANAGER_BACKLOG_MAX_ALERTS); retry later")  # fmt: skip
            log.warning("webhook refused: " + msg)
            return refuse(503, {"error": msg}, "backlog", started, {"Retry-After": "10"})
        try:
            delivery = await writer.submit(payload.receiver, n, body)
        except Exception:
            return refuse(503, {"error": "could not store the alerts right now; retry"}, "store", started)
        label = cred.receiver if cred.receiver != ANY_RECEIVER else "default"
        counter = received.get(label)
        if counter is None:
            counter = received[label] = m.alerts_received.labels(receiver=label)
        counter.inc(n)
        if payload.truncated_alerts:
            log.warning("Alertmanager truncated this notification (max_alerts)", group_key=payload.group_key,
                        truncated=payload.truncated_alerts)  # fmt: skip
        m.webhook_latency.observe(time.perf_counter() - started)
        # a fixed shape: formatting it beats a JSON encoder on the hottest path
        return Response(b'{"status":"ok","alerts":%d,"delivery":%d}' % (n, delivery), media_type="application/json")

    return alertmanager_webhook
