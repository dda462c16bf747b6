"""Composition root: the one module that wires settings, store, engine, step plugins and adapters together."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runbot import __version__, tracing
from runbot.adapters.slack.config import enabled as slack_enabled
from runbot.engine.ports import SecretProvider
from runbot.engine.runner import Engine
from runbot.engine_worker import EngineThread
from runbot.health import Health, HealthCollector
from runbot.health_routes import install_health, watch_background
from runbot.observability import DbCollector, Metrics
from runbot.runbooks.catalog import Catalog
from runbot.runbooks.health import CatalogCollector
from runbot.secrets.local import EnvSecretProvider, FileSecretProvider
from runbot.settings import Settings
from runbot.steps.registry import StepRegistry
from runbot.store.db import Database

log = structlog.get_logger("runbot.app")

# Adapters mount themselves: each module exposes `install(rt: Runtime, app: FastAPI) -> None`, which may add
# routes, append starters to rt.background and stoppers to rt.stoppers. Adding an adapter is one line here.
ADAPTERS: list[str] = [
    "runbot.adapters.alertmanager:install",
    "runbot.adapters.slack:install",
    "runbot.adapters.audit_api:install",
    "runbot.adapters.api_docs:install",
]


def make_secret_provider(settings: Settings) -> SecretProvider:
    if settings.secrets_provider == "file":
        if settings.secrets_file is None:
            raise ValueError("RUNBOT_SECRETS_PROVIDER=file needs RUNBOT_SECRETS_FILE")
        return FileSecretProvider(settings.secrets_file)
    if settings.secrets_provider == "vault":
        from runbot.secrets.vault import build_vault_provider  # type: ignore[import-not-found,unused-ignore]

        provider: SecretProvider = build_vault_provider(settings)
        return provider
    return EnvSecretProvider()


@dataclass
class Runtime:
    settings: Settings
    db: Database
    registry: StepRegistry
    secrets: SecretProvider
    catalog: Catalog
    engine: Engine
    metrics: Metrics = field(default_factory=Metrics)
    background: list[Callable[[], Any]] = field(default_factory=list)  # extra starters (outbox, intake workers)
    stoppers: list[Callable[[], Any]] = field(default_factory=list)
    health: Health = field(default_factory=Health)  # every long-lived worker's heartbeat (runbot.health)

    def close(self) -> None:
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception as exc:
                log.warning("shutdown hook failed", error=str(exc))
        self.db.dispose()


def build_runtime(settings: Settings, *, upgrade: bool = True, secrets: SecretProvider | None = None) -> Runtime:
    db = Database(settings.effective_database_url)
    if upgrade:
        db.upgrade()
    registry = StepRegistry(settings)
    provider = secrets or make_secret_provider(settings)
    catalog = Catalog(settings.runbooks_dir, registry)
    catalog.reload()
    engine = Engine(settings, db, registry, provider)
    # Slack messages are queued whenever Slack is configured, also by CLI commands (e.g. a break-glass approval)
    # run in another process than the one that delivers them
    engine.outbox_enabled = slack_enabled(settings)
    rt = Runtime(settings, db, registry, provider, catalog, engine)
    rt.metrics.registry.register(DbCollector(db))
    rt.metrics.registry.register(CatalogCollector(catalog))
    rt.metrics.registry.register(HealthCollector(rt.health))
    attach = getattr(provider, "attach", None)
    if callable(attach):  # a provider with background work (Vault: token renewal, leases) joins the runtime
        attach(rt)
    return rt


def create_app(rt: Runtime, *, run_engine: bool = True) -> FastAPI:
    engine_thread = EngineThread(rt.engine, health=rt.health)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if run_engine:
            engine_thread.start()
            rt.metrics.engine_up.set_function(lambda: float(engine_thread.alive() and not any(
                p for n, p in rt.health.workers() if n.startswith("engine-"))))  # fmt: skip
        watch_background(rt)
        tracer = tracing.install()  # off unless OTEL_* variables ask for traces
        for start in rt.background:
            start()
        rt.catalog.log_broken()
        log.info("runbot started", version=__version__, runbooks=len(rt.catalog.all()),
                 database=rt.db.engine.url.render_as_string(hide_password=True))  # fmt: skip
        try:
            yield
        finally:
            rt.metrics.engine_up.set_function(lambda: 0.0)
            # SIGTERM (uvicorn stopped taking requests): drain the engine, then the stoppers flush the Slack
            # outbox and revoke the Vault token
            log.info("runbot stopping", drain_seconds=rt.settings.shutdown_grace_seconds)
            engine_thread.stop(grace=rt.settings.shutdown_grace_seconds)
            rt.close()
            tracer.shutdown()

    app = FastAPI(title="runbot", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)  # see runbot.adapters.api_docs (RUNBOT_API_DOCS)
    app.state.rt = rt
    app.state.engine_thread = engine_thread
    for spec in ADAPTERS:
        module, _, attr = spec.partition(":")
        getattr(importlib.import_module(module), attr or "install")(rt, app)

    install_health(rt, app, engine_thread, run_engine)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        return JSONResponse({"error": "internal error; see the runbot log"}, status_code=500)

    return app
