"""The emulator's ASGI app: token authority, Web API, and the ``/_emulator/`` admin API."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from apex_metrics.emulator.api import WebApi
from apex_metrics.emulator.auth import Authority, TokenError, openid_configuration
from apex_metrics.emulator.config import EmulatorConfig
from apex_metrics.emulator.costs import Usage
from apex_metrics.emulator.errors import ApiError
from apex_metrics.emulator.faults import Decision, DropConnection, FaultInjector, Stats
from apex_metrics.emulator.limits import Limiter
from apex_metrics.emulator.messages import (
    JSON_TYPE,
    ApiRequest,
    ApiResponse,
    Caller,
    ascii_headers,
    dumps,
)
from apex_metrics.emulator.servers import COOKIE, WebServers
from apex_metrics.emulator.store import Store
from apex_metrics.formats import at_most
from apex_metrics.loopback import LoopbackHostGuard

log = logging.getLogger("apex_metrics.emulator")
API_PREFIX = "/api/data/v9.2"
MAX_BODY_BYTES = 128 * 1024 * 1024
MAX_TOKEN_BODY_BYTES = 1024 * 1024  # a client assertion is a few KB


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes (declared or streamed:
    chunked bodies have no Content-Length)."""
    length = request.headers.get("content-length")
    if length is not None and not at_most(length, limit):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _admin_refusal(request: Request) -> Response | None:
    """Changes through the admin API need a JSON content type: a cross-site page can send a
    form or text/plain without asking, never application/json (CORS preflight)."""
    if request.method == "GET":
        return None
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        return None
    message = "the admin API takes Content-Type: application/json (cross-site forms refused)"
    return JSONResponse({"error": {"code": "unsupported_media_type", "message": message}}, 415)


class _DropFilter(logging.Filter):
    """Keep the deliberate dropped connections out of uvicorn's error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DropConnection))


class DroppedResponse(Response):
    """Starts a response, then fails, so the server closes the connection mid-answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
        )
        raise DropConnection()


class Emulator:
    """State shared by the routes: store, authority, limiter, faults, statistics."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.store = Store(config.db_path)
        self.authority = Authority(config, self.store.signing_key)
        self.web = WebApi(config, self.store)
        self.limiter = Limiter(config.limits)
        self.servers = WebServers(config.limits.web_servers, self.store.signing_key)
        self.faults = FaultInjector(config.faults)
        self.stats = Stats()
        self.dop_hint = str(config.limits.dop_hint)

    @staticmethod
    def base(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}"

    # --- token authority ---------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await read_capped(request, MAX_TOKEN_BODY_BYTES)
        try:
            if body is None:
                raise TokenError(
                    413, "invalid_request", 900144,
                    f"The request body is larger than {MAX_TOKEN_BODY_BYTES} bytes.",
                )  # fmt: skip
            data = self.authority.issue(
                request.path_params["tenant"],
                body,
                request.headers.get("authorization"),
                self.base(request),
            )
            response = JSONResponse(data, headers={"Cache-Control": "no-store"})
        except TokenError as exc:
            response = JSONResponse(exc.body, status_code=exc.status)
        self.stats.record(
            "POST", request.url.path, response.status_code, time.perf_counter() - started, "token"
        )
        return response

    async def openid(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if tenant.lower() != self.config.tenant_id.lower():
            return JSONResponse(
                {
                    "error": "invalid_tenant",
                    "error_description": f"AADSTS90002: Tenant '{tenant[:100]}' not found.",
                },
                400,
            )
        return JSONResponse(openid_configuration(self.base(request), tenant))

    # --- Web API -----------------------------------------------------------------------------

    async def web_api(self, request: Request) -> Response:
        started = time.perf_counter()
        base = self.base(request)
        path = request.url.path[len(API_PREFIX) :]
        server, pinned = self.servers.route(request.cookies.get(COOKIE))
        decision = self.faults.decide()
        usage = Usage()
        response, caller, served = await self._answer(request, base, path, server, decision, usage)
        self.limiter.answered(server, caller.client_id if caller else None)
        if not pinned:
            secure = request.url.scheme == "https"
            response.headers["Set-Cookie"] = self.servers.cookie(server, secure=secure)
        seconds = time.perf_counter() - started
        kind = "batch" if path.strip("/") == "$batch" else "api"
        self.stats.record(
            request.method, request.url.path, response.status, seconds, kind,
            server=server, usage=usage if served else None,
            modeled=self.config.costs.seconds(usage) if served else 0.0,
        )  # fmt: skip
        if decision.drop:
            self.stats.counters["faults.dropped"] += 1
            return DroppedResponse()
        return Response(response.body, response.status, ascii_headers(response.headers))

    async def _answer(
        self, request: Request, base: str, path: str, server: int, decision: Decision,
        usage: Usage,
    ) -> tuple[ApiResponse, Caller | None, bool]:  # fmt: skip
        """The answer of web server ``server``, the caller when authenticated, and whether
        the request was admitted and served (what it did is then counted in ``usage``)."""
        try:
            caller = self.authority.check(request.headers.get("authorization"), base)
        except ApiError as exc:
            return ApiResponse.error(exc), None, False
        served = False
        fault = decision.error
        if fault is not None:
            if decision.delay:
                await asyncio.sleep(decision.delay)
            self.stats.counters[f"faults.{fault.status}"] += 1
            response = ApiResponse.error(fault)
        else:
            try:
                self.limiter.enter(caller.client_id, server)
            except ApiError as exc:
                self.stats.counters["throttled"] += 1
                response = ApiResponse.error(exc)
            else:
                served = True
                response = await self._served(request, base, path, caller, server, decision, usage)
        headers = response.headers
        headers.setdefault("x-ms-dop-hint", self.dop_hint)
        requests, seconds = self.limiter.remaining(caller.client_id, server)
        headers["x-ms-ratelimit-burst-remaining-xrm-requests"] = str(requests)
        headers["x-ms-ratelimit-time-remaining-xrm-requests"] = f"{seconds:.2f}"
        return response, caller, served

    async def _served(
        self, request: Request, base: str, path: str, caller: Caller, server: int,
        decision: Decision, usage: Usage,
    ) -> ApiResponse:  # fmt: skip
        """Answer an admitted request, taking at least its modeled time, and charge that
        time to the limiter when it ends.

        The emulator's own work counts inside the modeled time, not on top: ``work`` runs
        from just before handling to just after (injected latency and the upload excluded),
        then the request waits (not computes) until ``costs.seconds(usage)`` has passed, and
        ``max(work, modeled)`` is its execution time. Under the ``free`` profile, ``work``."""
        charged = 0.0
        try:
            if decision.delay:  # added latency counts as time in flight (concurrency limit)
                await asyncio.sleep(decision.delay)
            length = request.headers.get("content-length", "0")
            capped = await read_capped(request, MAX_BODY_BYTES)
            body = capped or b""
            if capped is None:
                length = "too large"
            work_started = time.perf_counter()
            response = self._handle(request, base, path, caller, length, body, usage)
            work = time.perf_counter() - work_started
            modeled = self.config.costs.seconds(usage)
            charged = max(work, modeled)
            if modeled > work:
                await asyncio.sleep(modeled - work)
            return response
        finally:
            self.limiter.leave(caller.client_id, server, charged)

    def _handle(
        self, request: Request, base: str, path: str, caller: Caller, length: str, body: bytes,
        usage: Usage,
    ) -> ApiResponse:  # fmt: skip
        if not at_most(length, MAX_BODY_BYTES):
            return ApiResponse.error(ApiError(413, "", "The request payload is too large."))
        headers = {k.lower(): v for k, v in request.headers.items()}
        query = _query_pairs(request.url.query)
        if query is None:
            return ApiResponse.error(
                ApiError(400, "0x80060888", "The query string is not valid URL-encoded UTF-8.")
            )
        api_request = ApiRequest(
            request.method, path, query, headers, body, base, caller, usage=usage
        )
        try:
            return self.web.handle(api_request)
        except Exception:  # a bug of ours: log it, answer like the service, no traceback
            log.exception("emulator failed on %s %s", request.method, request.url.path)
            return ApiResponse.error(ApiError(500, "0x80040216", "An unexpected error occurred."))

    # --- admin API ---------------------------------------------------------------------------

    async def admin_reset(self, request: Request) -> Response:
        refused = _admin_refusal(request)
        if refused is not None:
            return refused
        self.store.reset()
        self.web.solutions.reset()
        self.limiter.reset()
        self.servers.reset()
        self.stats.reset()
        self.store.counts.clear()
        self.faults.configure(self.faults.settings)
        return JSONResponse({"reset": True})

    async def admin_faults(self, request: Request) -> Response:
        refused = _admin_refusal(request)
        if refused is not None:
            return refused
        if request.method in ("PUT", "PATCH"):
            try:
                changes = json.loads(await request.body() or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object of fault settings")
                base = (
                    self.faults.settings
                    if request.method == "PATCH"
                    else type(self.faults.settings)()
                )
                self.faults.configure(base.updated(changes))
            except ValueError as exc:
                return JSONResponse(
                    {"error": {"code": "invalid_fault_settings", "message": str(exc)}}, 400
                )
        return JSONResponse(self.faults.settings.to_dict())

    async def admin_stats(self, request: Request) -> Response:
        data: dict[str, Any] = self.stats.to_dict()
        counts = self.store.counts
        data["rows"] = {k: v for k, v in counts.items() if k.startswith("rows.")}
        data["batch"] = {k: v for k, v in counts.items() if k.startswith("batch.")}
        data["tables"] = {
            e.entity_set_name: _count(self.store, e.table) for e in self.store.entities.values()
        }
        data["publishes"] = list(self.web.solutions.publishes)
        data["web_servers"] = self.limiter.stats()
        data["limits"] = self.config.limits.to_dict()
        data["costs"] = self.config.costs.to_dict()
        return JSONResponse(data)


def _count(store: Store, table: str) -> int:
    (count,) = store.conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()
    return int(count)


def _query_pairs(query: str) -> list[tuple[str, str]] | None:
    from urllib.parse import parse_qsl

    try:
        return parse_qsl(query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None


async def _not_found(request: Request, exc: Exception) -> Response:
    body = {
        "error": {
            "code": "0x80060888",
            "message": f"Resource not found for the segment '{request.url.path[:100]}'.",
        }
    }
    return Response(dumps(body), 404, media_type=JSON_TYPE)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    message = f"The HTTP method '{request.method}' is not allowed on '{request.url.path[:100]}'."
    body = {"error": {"code": "0x80060888", "message": message}}
    return Response(dumps(body), 405, media_type=JSON_TYPE)


async def _server_error(request: Request, exc: Exception) -> Response:
    body = {"error": {"code": "0x80040216", "message": "An unexpected error occurred."}}
    return Response(dumps(body), 500, media_type=JSON_TYPE)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The caller hung up before its request body arrived (a killed worker, a timeout): nothing
    to answer and nothing to log as an error; nothing was written."""
    log.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=499)


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    """The emulator as an ASGI app (state lives in ``app.state.emulator``)."""
    config = config or EmulatorConfig()
    emulator = Emulator(config)
    logging.getLogger("uvicorn.error").addFilter(_DropFilter())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        emulator.store.close()

    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    routes = [
        Route("/{tenant}/oauth2/v2.0/token", emulator.token, methods=["POST"]),
        Route("/{tenant}/v2.0/.well-known/openid-configuration", emulator.openid, methods=["GET"]),
        Route("/{tenant}/.well-known/openid-configuration", emulator.openid, methods=["GET"]),
        Route("/_emulator/reset", emulator.admin_reset, methods=["POST"]),
        Route("/_emulator/faults", emulator.admin_faults, methods=["GET", "PUT", "PATCH"]),
        Route("/_emulator/stats", emulator.admin_stats, methods=["GET"]),
        Route(API_PREFIX, emulator.web_api, methods=methods),
        Route(API_PREFIX + "/{path:path}", emulator.web_api, methods=methods),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            404: _not_found,
            405: _not_allowed,
            500: _server_error,
            ClientDisconnect: _client_gone,
        },
    )
    app.state.emulator = emulator
    app.add_middleware(LoopbackHostGuard)
    return app
