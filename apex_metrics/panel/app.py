"""The panel's FastAPI app: factory, lifespan (pool, HTTP client, watcher), error handlers, serve.

``create_app(config)`` builds the app; its lifespan opens the source (a PostgreSQL pool, or a
Dataverse client plus an optional pool for sync health), starts the change watcher and closes
everything on shutdown. ``serve(config)`` runs it under uvicorn (used by ``apex-metrics panel``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr
from starlette.middleware.gzip import GZipMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from apex_metrics import __version__
from apex_metrics.aio import cancel_and_wait
from apex_metrics.db import DriverError
from apex_metrics.exceptions import ApexMetricsError, ConfigError
from apex_metrics.panel import assets
from apex_metrics.panel.api import PanelState, router
from apex_metrics.panel.live import Broadcaster, Watcher, listen
from apex_metrics.panel.params import BadParameter
from apex_metrics.panel.proxy import RootPathMiddleware
from apex_metrics.panel.security import CSP, SecurityMiddleware, check_bind
from apex_metrics.panel.sources import (
    PostgresSource,
    Source,
    SyncHealthReader,
    panel_conninfo,
)
from apex_metrics.rollup import run_refresher
from apex_metrics.settings import Settings

log = logging.getLogger(__name__)
SourceKind = Literal["dataverse", "postgres"]


@dataclass
class PanelConfig:
    """How to serve the panel."""

    source: SourceKind = "postgres"
    database_url: str | None = None
    settings: Settings | None = None  # Dataverse credentials (source="dataverse")
    token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    watch_interval: float | None = None  # default: 0.25 s on postgres, 1 s on dataverse
    use_rollup: bool = True
    refresh_rollup: bool = True  # run the rollup refresher (apex_metrics.rollup) in this process
    dataverse_options: dict[str, Any] = field(default_factory=dict)  # e.g. a test transport
    root_path: str = ""  # behind a reverse proxy: served under this prefix (proxy.py)
    forwarded_allow_ips: str = "127.0.0.1"  # proxies whose X-Forwarded-* are trusted ("": none)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        source: SourceKind | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
    ) -> PanelConfig:
        chosen: SourceKind = source or ("dataverse" if settings.dataverse_url else "postgres")
        return cls(
            source=chosen,
            database_url=settings.database_url,
            settings=settings,
            token=settings.panel_token,
            host=host,
            port=port,
            root_path=settings.panel_root_path or "",
            forwarded_allow_ips=settings.panel_forwarded_allow_ips,
        )


def docs_csp() -> str:
    """A CSP for /docs that allows Swagger UI's CDN files and exactly its one inline script."""
    page = bytes(get_swagger_ui_html(openapi_url="/openapi.json", title="apex-metrics panel").body)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in re.findall(r"<script>(.*?)</script>", page.decode(), re.S)
    )
    cdn = "https://cdn.jsdelivr.net"
    return (
        f"default-src 'self'; script-src 'self' {cdn} {hashes}; style-src 'self' {cdn}; "
        "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )


async def open_source(
    config: PanelConfig, stack: contextlib.AsyncExitStack
) -> tuple[Source, SyncHealthReader | None]:
    """Open the configured source (closed by ``stack``) and, when PostgreSQL is configured,
    the sync-health reader."""
    from apex_metrics.db import open_pool

    pool = None
    if config.database_url:
        try:
            # wrap_errors: a statement failing in a source raises DriverError (database_error)
            pool = await stack.enter_async_context(
                open_pool(
                    panel_conninfo(config.database_url), min_size=1, max_size=8, wrap_errors=True
                )
            )
        except ApexMetricsError:
            if config.source == "postgres":
                raise
            log.warning("panel: PostgreSQL unavailable; sync health will not be shown")
    sync_reader = SyncHealthReader(pool) if pool is not None else None
    if config.source == "postgres":
        if pool is None:
            raise ConfigError(
                "the postgres source needs APEX_DATABASE_URL",
                hint="set APEX_DATABASE_URL, or use --source dataverse",
            )
        return PostgresSource(pool, use_rollup=config.use_rollup), sync_reader
    from apex_metrics.panel.dataverse_source import open_dataverse_source

    if config.settings is None:
        raise ConfigError("the dataverse source needs settings")
    source = await stack.enter_async_context(
        open_dataverse_source(config.settings, **config.dataverse_options)
    )
    return source, sync_reader


def create_app(
    config: PanelConfig, *, opened: tuple[Source, SyncHealthReader | None] | None = None
) -> FastAPI:
    """The panel app for ``config``. Its lifespan opens the source, unless ``opened`` passes
    one that the caller opened (and closes) itself."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            source, sync_reader = opened or await open_source(config, stack)
            broadcaster = Broadcaster()
            panel = PanelState(
                source=source,
                sync=sync_reader,
                broadcaster=broadcaster,
                token=config.token,
            )
            app.state.panel = panel
            wake = asyncio.Event()
            watcher = Watcher(
                source.watermark,
                source.last_run_at,
                broadcaster,
                interval=config.watch_interval or (0.25 if config.source == "postgres" else 1.0),
                wake=wake,
            )
            tasks = [asyncio.create_task(watcher.run(), name="panel-watcher")]
            if config.source == "postgres" and config.database_url:
                # New and changed runs NOTIFY apex_metrics_pending while a sync engine sleeps
                # (the doorbell): an early wake; the watcher's polling covers the rest.
                tasks.append(
                    asyncio.create_task(
                        listen(config.database_url, "apex_metrics_pending", wake),
                        name="panel-listener",
                    )
                )
            if config.refresh_rollup and config.database_url and sync_reader is not None:
                # Whatever the source, a panel with PostgreSQL keeps the rollups folded, so that
                # the log of stale hours stays short (apex_metrics.rollup).
                tasks.append(
                    asyncio.create_task(
                        run_refresher(config.database_url), name="panel-rollup-refresher"
                    )
                )
            try:
                yield
            finally:
                panel.closing = True
                await cancel_and_wait(tasks)

    app = FastAPI(
        title="apex-metrics MetricsPanel",
        version=__version__,
        description="Live campaign KPIs: JSON API, CSV export and server-sent events.",
        lifespan=lifespan,
        redoc_url=None,
    )

    @app.get("/static/{name:path}", include_in_schema=False)
    async def static_asset(request: Request, name: str) -> Response:
        return assets.respond(request, name)  # hashed URLs, ETag, gzip once (assets.py)

    app.include_router(router)

    @app.exception_handler(BadParameter)
    async def bad_parameter(request: Request, exc: BadParameter) -> JSONResponse:
        return JSONResponse({"error": exc.message, "parameter": exc.name}, status_code=400)

    @app.exception_handler(ApexMetricsError)
    async def our_error(request: Request, exc: ApexMetricsError) -> JSONResponse:
        return JSONResponse({"error": exc.one_line()}, status_code=503)

    @app.exception_handler(DriverError)
    async def database_error(request: Request, exc: DriverError) -> JSONResponse:
        log.warning("panel: database error: %s", exc.__cause__ or exc)
        return JSONResponse({"error": "the database is unavailable; retrying"}, status_code=503)

    app.add_middleware(SecurityMiddleware, token=config.token, docs_csp=docs_csp())
    # Outermost last: forwarded headers, then the root path, then compression (JSON, CSV, the
    # page; event streams and the pre-compressed assets pass through untouched).
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    app.add_middleware(RootPathMiddleware, root_path=config.root_path)
    if config.forwarded_allow_ips.strip():
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=config.forwarded_allow_ips)
    return app


def end_streams(app: FastAPI) -> None:
    """End every open ``/api/events`` stream within a second (call before stopping uvicorn:
    it waits for open connections before it runs the lifespan shutdown)."""
    panel = getattr(app.state, "panel", None)
    if panel is not None:
        panel.closing = True


async def serve(config: PanelConfig) -> None:
    """Serve the panel until interrupted (``apex-metrics panel``)."""
    check_bind(config.host, config.token)
    async with contextlib.AsyncExitStack() as stack:
        # Open the source first: a bad URL or a missing schema fails with one line, not with
        # uvicorn's "Application startup failed" traceback.
        opened = await open_source(config, stack)
        await _serve(create_app(config, opened=opened), config)


async def _serve(app: FastAPI, config: PanelConfig) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            end_streams(app)  # so that shutdown does not wait for open event streams
            super().handle_exit(sig, frame)

    server = Server(
        uvicorn.Config(
            app, host=config.host, port=config.port, log_level="info", lifespan="on",
            proxy_headers=False, server_header=False, timeout_graceful_shutdown=5,
        )
    )  # fmt: skip
    await server.serve()


__all__ = ["CSP", "PanelConfig", "create_app", "end_streams", "serve"]
