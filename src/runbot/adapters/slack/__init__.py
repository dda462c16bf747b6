"""Slack chatops: incident threads, approval buttons, `/runbot`, App Home; HTTP or Socket Mode.

`install` is the adapter hook (app.ADAPTERS). It does nothing unless a bot token is configured; then it
turns the engine's outbox on, starts the delivery worker, and mounts Bolt on the web server (HTTP mode)
or dials Slack (Socket Mode).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from runbot.adapters.slack.config import enabled

if TYPE_CHECKING:
    from fastapi import FastAPI

    from runbot.app import Runtime

log = structlog.get_logger("runbot.slack")


def install(rt: Runtime, app: FastAPI) -> None:
    if not enabled(rt.settings):
        return
    from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
    from starlette.requests import Request
    from starlette.responses import Response

    from runbot.adapters.slack.bolt import build_bolt_app
    from runbot.adapters.slack.service import SlackService
    from runbot.adapters.slack.socket import SocketModeRunner

    svc = SlackService.build(rt)
    bolt = build_bolt_app(svc)
    app.state.slack = svc
    rt.engine.outbox_enabled = True
    rt.engine.on_outbox = svc.delivery.wake
    rt.background.append(svc.delivery.start)
    rt.stoppers.append(svc.delivery.stop)
    if svc.creds.mode == "socket":
        assert svc.creds.app_token is not None
        runner = SocketModeRunner(bolt, svc.creds.app_token, rt.settings.slack_socket_ping_interval)
        rt.background.append(runner.start)
        rt.stoppers.append(runner.stop)
    else:
        handler = AsyncSlackRequestHandler(bolt)

        async def slack_events(request: Request) -> Response:
            stamp = request.headers.get("x-slack-request-timestamp")
            if stamp is not None and not stamp.strip().isdigit():
                return Response(status_code=401)  # not a time: unsigned, whatever Bolt would make of it
            return await handler.handle(request)

        # a plain Starlette route: Bolt reads the raw body itself (the signature covers the exact bytes)
        app.router.add_route(rt.settings.slack_path, slack_events, methods=["POST"], include_in_schema=False)

    log.info("Slack enabled", mode=svc.creds.mode)
