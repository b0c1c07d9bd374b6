"""The Starlette app of ``apex-metrics collect``: ``POST /v1/traces`` (OTLP/HTTP, protobuf or
JSON), ``GET /metrics`` (Prometheus) and ``GET /healthz``.

Its lifespan opens the PostgreSQL pool and runs the writer and the idle sweeper; at shutdown
every run held is finalised and written before the pool closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apex_metrics.aio import cancel_and_wait
from apex_metrics.collect import wire
from apex_metrics.collect.errors import CollectError, Unauthorized, Unavailable
from apex_metrics.collect.metrics import CollectMetrics
from apex_metrics.collect.pricing import Pricer
from apex_metrics.collect.spans import request_facts
from apex_metrics.collect.store import Limits, TraceStore
from apex_metrics.collect.writer import RunWriter
from apex_metrics.db import open_pool
from apex_metrics.loopback import LoopbackHostGuard

log = logging.getLogger("apex_metrics.collect")
SHOW_REASONS = 5  # rejected spans named in partial_success.error_message; the rest are counted
SWEEP_SECONDS = 1.0


@dataclass(frozen=True)
class CollectConfig:
    database_url: str
    host: str = "127.0.0.1"
    port: int = 4318
    token: SecretStr | None = None
    limits: Limits = field(default_factory=Limits)


class Collector:
    """What the routes share: the store, the writer, the pricer and the metrics."""

    def __init__(self, config: CollectConfig, writer: RunWriter, store: TraceStore) -> None:
        self.config = config
        self.writer = writer
        self.store = store
        self.metrics = writer.metrics
        self.pricer = Pricer()
        self.seen_unpriced: set[str] = set()

    def authorised(self, request: Request) -> bool:
        token = self.config.token
        if token is None or not token.get_secret_value():
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)

    async def export(self, request: Request, kind: str) -> Response:
        if not self.authorised(request):
            raise Unauthorized(
                "missing or wrong bearer token",
                hint="send Authorization: Bearer $APEX_INGEST_TOKEN",
            )
        gzipped = wire.check_encoding(request.headers.get("content-encoding"))
        body = await wire.read_body(
            request.stream(),
            gzipped=gzipped,
            limit=self.config.limits.max_body_bytes,
            declared=request.headers.get("content-length"),
        )
        decoded = wire.decode_request(body, kind)
        facts, rejected = request_facts(decoded, self.pricer)
        admission = self.store.admit(facts)
        rejected += admission.rejected
        self._count(admission.accepted, admission.duplicates, rejected, admission.unpriced)
        if admission.dirty:
            if not await self.writer.flush():
                raise Unavailable(
                    f"PostgreSQL did not take the runs ({self.writer.last_error}); the spans "
                    "are held: retry",
                )
        message = "; ".join(str(r) for r in rejected[:SHOW_REASONS])
        if len(rejected) > SHOW_REASONS:
            message += f"; and {len(rejected) - SHOW_REASONS} more spans rejected"
        if admission.unpriced:
            models = ", ".join(sorted(set(admission.unpriced))[:SHOW_REASONS])
            note = f"no price for model {models}: counted at cost 0 (set apex.cost_usd)"
            message = f"{message}; {note}" if message else note
        return Response(
            wire.response_body(len(rejected), message, kind), media_type=kind, status_code=200
        )

    def _count(
        self, accepted: int, duplicates: int, rejected: list[Any], unpriced: list[str]
    ) -> None:
        m = self.metrics
        m.spans_accepted.inc(accepted)
        if duplicates:
            m.spans_duplicate.inc(duplicates)
        if rejected:
            m.spans_rejected.inc(len(rejected))
            log.info("rejected %d spans; first: %s", len(rejected), rejected[0])
        for label in unpriced:
            m.unpriced(label)
            if label not in self.seen_unpriced and len(self.seen_unpriced) < 1000:
                self.seen_unpriced.add(label)
                log.warning("no price for model %s: its calls count at cost 0", label)
        m.traces_held.set(len(self.store.traces))
        m.spans_held.set(self.store.spans_held)


def _collector(request: Request) -> Collector:
    collector: Collector | None = getattr(request.app.state, "collector", None)
    if collector is None:
        raise Unavailable("the collector is starting or stopping")
    return collector


async def traces(request: Request) -> Response:
    kind = wire.PROTOBUF
    try:
        kind = wire.media_type(request.headers.get("content-type"))
        collector = _collector(request)
        response = await collector.export(request, kind)
    except CollectError as exc:
        headers: dict[str, str] = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="apex-metrics collect"'
        response = Response(
            wire.status_body(exc.one_line(), kind), exc.status, headers, media_type=kind
        )
    collector_or_none: Collector | None = getattr(request.app.state, "collector", None)
    if collector_or_none is not None:
        collector_or_none.metrics.requests.labels(code=str(response.status_code)).inc()
    return response


async def metrics(request: Request) -> Response:
    collector = getattr(request.app.state, "collector", None)
    if collector is None:
        return Response("starting\n", 503)
    if not collector.authorised(request):
        return Response("bearer token required\n", 401, {"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(collector.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    collector: Collector | None = getattr(request.app.state, "collector", None)
    if collector is None:
        return JSONResponse({"status": "starting"}, 503)
    error = collector.writer.last_error
    return JSONResponse(
        {
            "status": "degraded" if error else "ok",
            "database_error": error,
            "traces_held": len(collector.store.traces),
            "spans_held": collector.store.spans_held,
        },
        503 if error else 200,
    )


async def _sweep(store: TraceStore, writer: RunWriter) -> None:
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        store.sweep()
        if store.dirty:
            writer.flush()
        writer.metrics.traces_held.set(len(store.traces))
        writer.metrics.spans_held.set(store.spans_held)


@contextlib.asynccontextmanager
async def running(app: Starlette, config: CollectConfig) -> AsyncIterator[Collector]:
    """Open the pool, start the writer and the sweeper; at exit write every run held."""
    async with open_pool(config.database_url, min_size=1, max_size=2) as pool:
        store = TraceStore(config.limits)
        writer = RunWriter(store, pool, CollectMetrics())
        collector = Collector(config, writer, store)
        tasks = [
            asyncio.create_task(writer.run(), name="collect-writer"),
            asyncio.create_task(_sweep(store, writer), name="collect-sweeper"),
        ]
        app.state.collector = collector
        try:
            yield collector
        finally:
            app.state.collector = None
            await cancel_and_wait(tasks)
            store.finalise_all()
            for _ in range(3):
                if not store.dirty or await writer.write_once():
                    break
            if store.dirty:
                log.error(
                    "stopping with %d runs not written: %s", len(store.dirty), writer.last_error
                )


def create_app(config: CollectConfig) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running(app, config):
            yield

    return Starlette(
        routes=[
            Route("/v1/traces", traces, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
        middleware=[Middleware(LoopbackHostGuard)],  # DNS rebinding (apex_metrics.loopback)
    )
