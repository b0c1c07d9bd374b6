"""The panel's routes: page, login, JSON API, CSV export, SSE, health."""

from __future__ import annotations

import asyncio
import csv
import html
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import SecretStr
from sse_starlette import EventSourceResponse, ServerSentEvent

from apex_metrics.panel import assets
from apex_metrics.panel.kpis import Totals, bucket_starts, bucket_width, jsonable, kpi_payload
from apex_metrics.panel.live import Broadcaster, sse_payload
from apex_metrics.panel.login import (
    SESSION_SECONDS,
    LoginRefused,
    read_form,
    safe_next,
    same_origin,
)
from apex_metrics.panel.params import (
    FILTER_PARAMS,
    Filters,
    check_known,
    parse_filters,
    parse_limit,
)
from apex_metrics.panel.security import COOKIE, gate_of
from apex_metrics.panel.sources import RUN_FIELDS, Source, SyncHealthReader

PANEL_DIR: Final = Path(str(resources.files("apex_metrics.panel")))
TEMPLATES: Final = PANEL_DIR / "templates"
SSE_PING_SECONDS: Final = 15
FORMULA_STARTS: Final = frozenset("=+-@\t\r")

router = APIRouter()


@dataclass
class PanelState:
    """What the routes share (built by the app's lifespan)."""

    source: Source
    sync: SyncHealthReader | None
    broadcaster: Broadcaster
    token: SecretStr | None = None
    secure_cookie: bool = False
    closing: bool = False  # set on server shutdown: open event streams end cleanly


def state(request: Request) -> PanelState:
    panel: PanelState = request.app.state.panel
    return panel


def filters_of(request: Request, extra: frozenset[str] = frozenset()) -> Filters:
    params = dict(request.query_params)
    check_known(params, FILTER_PARAMS | extra)
    return parse_filters(params)


def window_json(filters: Filters) -> dict[str, Any]:
    return {
        "name": filters.window_name,
        "start": filters.window.start.isoformat(),
        "end": filters.window.end.isoformat(),
    }


def figures_json(totals: Totals) -> dict[str, Any]:
    return {key: jsonable(value) for key, value in totals.figures().items()}


# ------------------------------------------------------------------------------------------------
# Page, login, health


@router.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    """The page, its assets linked by content hash (``assets.py``: cached for a year)."""
    text = assets.render(TEMPLATES / "index.html")
    return HTMLResponse(text, headers={"Cache-Control": "no-store"})


def _login_page(
    message: str = "",
    status: int = 200,
    next_path: str = "/",
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    text = (TEMPLATES / "login.html").read_text(encoding="utf-8")
    text = text.replace("{{error}}", html.escape(message)).replace(
        "{{next}}", html.escape(next_path, quote=True)
    )
    return HTMLResponse(
        text, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )


@router.get("/login", include_in_schema=False)
async def login_page(request: Request) -> HTMLResponse:
    return _login_page(next_path=safe_next(request.query_params.get("next")))


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    """Sign in (see :mod:`apex_metrics.panel.login` for every check, in this order)."""
    gate = gate_of(request)
    client = request.client.host if request.client else "unknown"
    try:
        if gate is not None and not same_origin(request):
            raise LoginRefused(403, "Sign in from the panel's own page.")
        wait = gate.failures.retry_after(client) if gate is not None else 0
        if wait:
            raise LoginRefused(429, f"Too many wrong tokens: try again in {wait} s.", wait)
        token_text, next_path = await read_form(request)
    except LoginRefused as exc:
        retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return _login_page(exc.message, status=exc.status, headers=retry)
    if gate is None:
        return Response(status_code=303, headers={"Location": next_path})
    if not gate.token_matches(token_text):
        gate.failures.failed(client)
        return _login_page("Wrong token.", status=401, next_path=next_path)
    old = request.cookies.get(COOKIE)
    if old:
        gate.sessions.end(old)
    response = Response(status_code=303, headers={"Location": next_path})
    response.set_cookie(
        COOKIE,
        gate.sessions.start(),
        httponly=True,
        samesite="strict",
        secure=state(request).secure_cookie or request.url.scheme == "https",
        max_age=SESSION_SECONDS,
        path="/",
    )
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    """End the session (its cookie no longer works, even if kept) and drop the cookie."""
    gate = gate_of(request)
    if gate is not None and not same_origin(request):
        return _login_page("Sign out from the panel's own page.", status=403)
    cookie = request.cookies.get(COOKIE)
    if gate is not None and cookie:
        gate.sessions.end(cookie)
    response = Response(status_code=303, headers={"Location": "/login"})
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/healthz", tags=["health"])
async def healthz(request: Request) -> JSONResponse:
    """Liveness and source reachability (no authentication, no details)."""
    panel = state(request)
    try:
        await asyncio.wait_for(panel.source.last_run_at(), timeout=5)
    except Exception:
        return JSONResponse({"status": "degraded", "source": panel.source.name}, status_code=503)
    return JSONResponse({"status": "ok", "source": panel.source.name})


# ------------------------------------------------------------------------------------------------
# JSON API


@router.get("/api/kpis", tags=["api"])
async def kpis(request: Request) -> dict[str, Any]:
    """KPI tiles for the window, each with its change against the previous window.

    Query: window=1h|24h|7d|30d|custom (default 24h), from & to (ISO 8601, custom only),
    campaign, phase."""
    panel = state(request)
    filters = filters_of(request)
    previous = filters.window.previous()
    current, before = await asyncio.gather(
        panel.source.totals(filters, filters.window), panel.source.totals(filters, previous)
    )
    return {
        "source": panel.source.name,
        "window": window_json(filters),
        "previous": {"start": previous.start.isoformat(), "end": previous.end.isoformat()},
        "filters": filters.query_args(),
        "tiles": kpi_payload(current, before),
    }


@router.get("/api/series", tags=["api"])
async def series(request: Request) -> dict[str, Any]:
    """Figures per time bucket (cost, tokens, p95 of run p95s, success rate, …)."""
    panel = state(request)
    filters = filters_of(request)
    width = bucket_width(filters.window)
    points = dict(await panel.source.series(filters, width))
    out = []
    for start in bucket_starts(filters.window, width):
        totals = points.get(start, Totals())
        out.append({"t": start.isoformat(), **figures_json(totals)})
    return {
        "source": panel.source.name,
        "window": window_json(filters),
        "bucket_seconds": width,
        "points": out,
    }


@router.get("/api/campaigns", tags=["api"])
async def campaigns(request: Request) -> dict[str, Any]:
    """Per-campaign breakdown of the window, biggest cost first (limit 1–500, default 50)."""
    panel = state(request)
    filters = filters_of(request, frozenset({"limit"}))
    limit = parse_limit(request.query_params, 50, 500)
    rows = await panel.source.campaigns(filters, limit)
    return {
        "source": panel.source.name,
        "window": window_json(filters),
        "campaigns": [{"campaign_id": cid, **figures_json(t)} for cid, t in rows],
    }


def run_json(run: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in RUN_FIELDS:
        value = run.get(key)
        if isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat()
        out[key] = value
    return out


@router.get("/api/runs", tags=["api"])
async def runs(request: Request) -> dict[str, Any]:
    """The newest runs of the window (limit 1–1000, default 50)."""
    panel = state(request)
    filters = filters_of(request, frozenset({"limit"}))
    limit = parse_limit(request.query_params, 50, 1000)
    rows = [run_json(r) async for r in panel.source.runs(filters, limit)]
    return {"source": panel.source.name, "window": window_json(filters), "runs": rows}


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs as a formula (OWASP, CSV injection): text that
    starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value
    return value


@router.get("/api/runs.csv", tags=["api"], response_class=StreamingResponse)
async def runs_csv(request: Request) -> StreamingResponse:
    """The window's runs as CSV, newest first (limit 1–1,000,000, default 100,000)."""
    panel = state(request)
    filters = filters_of(request, frozenset({"limit"}))
    limit = parse_limit(request.query_params, 100_000, 1_000_000)

    async def lines() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        # csv quotes "\n" (the line terminator) but not a bare "\r": rows with one are quoted
        # whole, since spreadsheets and csv readers alike split lines at a bare "\r".
        quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(RUN_FIELDS)
        count = 0
        async for run in panel.source.runs(filters, limit):
            cells = [csv_cell(v) for v in run_json(run).values()]
            if any(isinstance(c, str) and "\r" in c for c in cells):
                quoted.writerow(cells)
            else:
                writer.writerow(cells)
            count += 1
            if count % 500 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    stamp = filters.window.end.strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="apex-runs-{stamp}.csv"'},
    )


@router.get("/api/options", tags=["api"])
async def options(request: Request) -> dict[str, Any]:
    """Campaigns and phases seen recently (for the filter lists)."""
    check_known(dict(request.query_params), ())
    return {"source": state(request).source.name, **await state(request).source.options()}


@router.get("/api/sync", tags=["api"])
async def sync(request: Request) -> dict[str, Any]:
    """Freshness (last run N s ago) and sync health: pending, in flight, dead, retrying, lag
    (as ``sync status`` reads them: one definition, see docs/operations.md), last runs."""
    check_known(dict(request.query_params), ())
    panel = state(request)
    now = datetime.now(UTC)
    last = await panel.source.last_run_at()
    health: dict[str, Any]
    if panel.sync is None:
        health = {"sync_engine": None, "message": "PostgreSQL not configured: no sync health"}
    else:
        health = await panel.sync.read()
        for run in health.get("runs", []):
            for key in ("started_at", "ended_at"):
                if isinstance(run.get(key), datetime):
                    run[key] = run[key].astimezone(UTC).isoformat()
    return {
        "source": panel.source.name,
        "now": now.isoformat(),
        "last_run_at": last.astimezone(UTC).isoformat() if last else None,
        "last_run_seconds_ago": round((now - last).total_seconds(), 1) if last else None,
        **health,
    }


@router.get("/api/events", tags=["api"])
async def events(request: Request) -> EventSourceResponse:
    """Server-sent events: ``hello`` on connect, then ``change`` whenever the source changes."""
    check_known(dict(request.query_params), ())
    panel = state(request)

    async def stream() -> AsyncIterator[ServerSentEvent | dict[str, str]]:
        async with panel.broadcaster.subscribe() as queue:
            yield ServerSentEvent(
                data='{"type": "hello"}', event="hello", retry=1000
            )  # the page refetches on (re)connect
            while not panel.closing:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=1.0)
                except TimeoutError:
                    continue
                yield sse_payload(event)

    return EventSourceResponse(
        stream(), ping=SSE_PING_SECONDS, send_timeout=10, headers={"Cache-Control": "no-store"}
    )
