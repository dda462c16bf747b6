"""Composition root: the one module that wires settings, store, engine, step plugins and adapters together."""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runbot import __version__
from runbot.adapters.slack.config import enabled as slack_enabled
from runbot.engine.ports import SecretProvider
from runbot.engine.runner import Engine
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
    attach = getattr(provider, "attach", None)
    if callable(attach):  # a provider with background work (Vault: token renewal, leases) joins the runtime
        attach(rt)
    return rt


class EngineThread:
    """Engine loops in their own threads, so blocking commits never delay the web loop.

    SQLite takes one writer at a time, so one loop. PostgreSQL commits in parallel, so several loops
    (peers of rt.engine with their own lease-owner names) claim runs side by side.
    """

    def __init__(self, engine: Engine, loops: int | None = None) -> None:
        self.engine = engine
        self.loops = loops or (1 if engine.db.is_sqlite else engine.settings.engine_loops_pg)
        self.threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    def start(self) -> None:
        engines = [self.engine] + [self.engine.spawn_peer(i) for i in range(1, self.loops)]
        for i, eng in enumerate(engines):
            ready = threading.Event()
            t = threading.Thread(target=self._main, args=(eng, ready), name=f"runbot-engine-{i}", daemon=True)
            t.start()
            ready.wait(10)
            self.threads.append(t)

    def _main(self, engine: Engine, ready: threading.Event) -> None:
        try:
            asyncio.run(engine.run_forever(ready))
        except BaseException as exc:  # surfaced by /readyz
            self.error = exc
            log.error("engine loop crashed", error=repr(exc))
            ready.set()

    def alive(self) -> bool:
        return bool(self.threads) and all(t.is_alive() for t in self.threads)

    def stop(self, timeout: float = 10.0) -> None:
        self.engine.stop()
        for peer in self.engine.peers:
            peer.stop()
        for t in self.threads:
            t.join(timeout)


def create_app(rt: Runtime, *, run_engine: bool = True) -> FastAPI:
    engine_thread = EngineThread(rt.engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if run_engine:
            engine_thread.start()
            rt.metrics.engine_up.set(1)
        for start in rt.background:
            start()
        rt.catalog.log_broken()
        log.info("runbot started", version=__version__, runbooks=len(rt.catalog.all()),
                 database=rt.db.engine.url.render_as_string(hide_password=True))  # fmt: skip
        try:
            yield
        finally:
            rt.metrics.engine_up.set(0)
            engine_thread.stop()
            rt.close()

    app = FastAPI(title="runbot", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)  # see runbot.adapters.api_docs (RUNBOT_API_DOCS)
    app.state.rt = rt
    app.state.engine_thread = engine_thread
    for spec in ADAPTERS:
        module, _, attr = spec.partition(":")
        getattr(importlib.import_module(module), attr or "install")(rt, app)

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/readyz")
    def readyz() -> Response:
        problems = []
        try:
            rt.db.ping()
            if not rt.db.at_head():
                problems.append("database schema is not at the latest migration (run: runbot db upgrade)")
        except Exception as exc:
            problems.append(f"database unreachable: {type(exc).__name__}")
        if run_engine and not engine_thread.alive():
            problems.append("engine loop is not running")
        # Broken runbooks do not make a replica unready (the others run); this endpoint is unauthenticated, so it
        # names the files only: `runbot lint` (or the authenticated reload answer) says what is wrong with them.
        body = {"ready": not problems, "problems": problems, "runbooks": len(rt.catalog.all()),
                "broken_runbooks": [{"file": b.file, "problems": b.problems, "kept_last_good_version": b.kept_version}
                                    for b in rt.catalog.broken]}  # fmt: skip
        return JSONResponse(body, status_code=200 if not problems else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        return JSONResponse({"error": "internal error; see the runbot log"}, status_code=500)

    return app
