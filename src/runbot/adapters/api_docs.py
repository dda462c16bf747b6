"""/docs, /redoc and /openapi.json: off unless RUNBOT_API_DOCS says otherwise.

The schema lists every route and parameter of the bot, which helps whoever probes it, so the app is built
without FastAPI's documentation routes. `RUNBOT_API_DOCS=token` serves them behind the API bearer token (the
same check as /api/v1; fetch /openapi.json with the token, e.g. for a client generator), `public` serves
them to anyone who can reach the port (a lab setup).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

if TYPE_CHECKING:
    from runbot.app import Runtime


def install(rt: Runtime, app: FastAPI) -> None:
    from runbot.adapters.audit_api import _bearer_guard

    mode = rt.settings.api_docs
    if mode == "off":
        return
    deps: list[Any] = [Depends(_bearer_guard(rt))] if mode == "token" else []

    @app.get("/openapi.json", include_in_schema=False, dependencies=deps)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=deps)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} API")

    @app.get("/redoc", include_in_schema=False, dependencies=deps)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} API")
