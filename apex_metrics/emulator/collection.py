"""Collection reads: ``GET SET`` with query options, paging, ``$count``, ``$apply`` and change
tracking (``Prefer: odata.track-changes``, ``@odata.deltaLink``, deleted entries)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote as url_quote
from urllib.parse import urlencode

from apex_metrics.emulator.aggregate import parse_apply, run_apply
from apex_metrics.emulator.errors import bad_request
from apex_metrics.emulator.messages import ApiRequest, ApiResponse
from apex_metrics.emulator.metadata import Entity
from apex_metrics.emulator.query import (
    FilterSql,
    make_skiptoken,
    parse_orderby,
    parse_select,
    parse_top,
    read_skiptoken,
)
from apex_metrics.emulator.rows import render
from apex_metrics.emulator.store import Store, quote
from apex_metrics.formats import ascii_int

COUNT_LIMIT = 5000
_SUPPORTED = {
    "$select", "$filter", "$orderby", "$top", "$count", "$apply", "$skiptoken", "$deltatoken",
    "$expand",
}  # fmt: skip
_UNSUPPORTED_QUERIES = {"fetchXml", "sql", "savedQuery", "userQuery"}
_DELTA = re.compile(r"^(\d{1,18})(!.*)?$")


def _page_size(request: ApiRequest, maximum: int) -> int | None:
    raw = request.prefer().get("odata.maxpagesize")
    if raw is None:
        return None
    size = ascii_int(raw, 18)
    if size is None or size < 1:
        raise bad_request(f"Invalid odata.maxpagesize '{raw[:20]}': expected a positive integer.")
    return min(size, maximum)


def _check_options(request: ApiRequest) -> None:
    for name, _ in request.query:
        if name in _UNSUPPORTED_QUERIES:
            raise bad_request(f"The emulator does not support {name} queries; use OData options.")
        if name.startswith("$") and name not in _SUPPORTED:
            if name == "$skip":
                raise bad_request("The query parameter $skip is not supported")
            raise bad_request(f"The query parameter {name[:50]} is not supported")
    if request.option("$expand") is not None:
        raise bad_request("$expand is not supported by the emulator on data tables.")


def _encode(pairs: list[tuple[str, str]]) -> str:
    """A query string as Dataverse writes its links: ``$`` and ``,`` stay, ``<`` is %3C."""
    return urlencode(pairs, quote_via=url_quote, safe="$,'()=")


def _next_link(request: ApiRequest, entity: Entity, token: str) -> str:
    pairs = [(k, v) for k, v in request.query if k != "$skiptoken"]
    pairs.append(("$skiptoken", token))
    return f"{request.service_root}/{entity.entity_set_name}?{_encode(pairs)}"


def _context(request: ApiRequest, entity: Entity, select: list[str] | None, delta: bool) -> str:
    columns = f"({','.join(select)})" if select else ""
    suffix = "/$delta" if delta else ""
    return f"{request.service_root}/$metadata#{entity.entity_set_name}{columns}{suffix}"


def _annotations(request: ApiRequest) -> set[str]:
    raw = request.prefer().get("odata.include-annotations", "")
    return {item.strip() for item in raw.split(",") if item.strip()}


def list_rows(store: Store, entity: Entity, request: ApiRequest, limit: int) -> ApiResponse:
    """``GET SET``: a page of rows, or aggregates with ``$apply``."""
    _check_options(request)
    prefer = request.prefer()
    if "odata.track-changes" in prefer or request.option("$deltatoken") is not None:
        return _changes(store, entity, request)
    select = parse_select(entity, request.option("$select"))
    clauses: list[str] = []
    params: list[Any] = []
    text = request.option("$filter")
    if text is not None:
        compiler = FilterSql(entity)
        clauses.append(compiler.compile(text))
        params = compiler.params
    apply_text = request.option("$apply")
    if apply_text is not None:
        spec = parse_apply(entity, apply_text)
        parse_orderby(entity, request.option("$orderby"), spec.aliases)
        result = run_apply(store, entity, spec, clauses, params, limit)
        context = f"{request.service_root}/$metadata#{entity.entity_set_name}"
        return ApiResponse.json(200, {"@odata.context": context, "value": result})
    order = parse_orderby(entity, request.option("$orderby"))
    top = parse_top(request.option("$top"))
    page_size = _page_size(request, COUNT_LIMIT)
    if page_size is not None:
        top = None  # as on Dataverse: $top is ignored when odata.maxpagesize is set
    state = {"o": 0}
    page = 1
    token = request.option("$skiptoken")
    if token is not None:
        state = read_skiptoken(token)
        page = state.pop("page")
    size = page_size or COUNT_LIMIT
    offset = int(state["o"])
    take = size if top is None else max(0, min(size, top - offset))
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    order_sql = (
        f" ORDER BY {order}, {quote(entity.primary_id)}"
        if order
        else (f" ORDER BY {quote(entity.primary_id)}")
    )
    cursor = store.conn.execute(
        f"SELECT * FROM {quote(entity.table)}{where}{order_sql} LIMIT ? OFFSET ?",
        (*params, take + 1, offset),
    )
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    more = len(rows) > take and (top is None or offset + take < top)
    rows = rows[:take]
    body: dict[str, Any] = {"@odata.context": _context(request, entity, select, False)}
    headers: dict[str, str] = {}
    if page_size is not None:
        headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
    if (request.option("$count") or "").lower() == "true":
        body["@odata.count"] = _count(store, entity, where, params)
    wanted = _annotations(request)
    if wanted & {"*", "Microsoft.Dynamics.CRM.totalrecordcount", "Microsoft.Dynamics.CRM.*"}:
        total = _count(store, entity, where, params, COUNT_LIMIT + 1)
        body["@Microsoft.Dynamics.CRM.totalrecordcount"] = min(total, COUNT_LIMIT)
        body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = total > COUNT_LIMIT
    body["value"] = [render(entity, row, select) for row in rows]
    if more:
        next_state = {"o": offset + take}
        body["@odata.nextLink"] = _next_link(request, entity, make_skiptoken(next_state, page + 1))
    return ApiResponse.json(200, body, headers)


def _count(
    store: Store, entity: Entity, where: str, params: list[Any], cap: int = COUNT_LIMIT
) -> int:
    (count,) = store.conn.execute(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {quote(entity.table)}{where} LIMIT ?)",
        (*params, cap),
    ).fetchone()
    return int(count)


def count_rows(store: Store, entity: Entity, request: ApiRequest) -> ApiResponse:
    """``GET SET/$count``: a plain-text number (capped at 5,000 like ``$count``); with
    ``$deltatoken``, the number of changes since that token."""
    raw = request.option("$deltatoken")
    if raw is not None:
        since = _since(raw)
        (changed,) = store.conn.execute(
            f"SELECT COUNT(*) FROM {quote(entity.table)} WHERE versionnumber > ?", (since,)
        ).fetchone()
        (deleted,) = store.conn.execute(
            "SELECT COUNT(*) FROM emu_deleted WHERE entity = ? AND versionnumber > ?",
            (entity.logical_name, since),
        ).fetchone()
        total = str(int(changed) + int(deleted)).encode()
        return ApiResponse(200, {"Content-Type": "text/plain", "OData-Version": "4.0"}, total)
    where, params = "", []
    text = request.option("$filter")
    if text is not None:
        compiler = FilterSql(entity)
        where = f" WHERE {compiler.compile(text)}"
        params = compiler.params
    count = _count(store, entity, where, params)
    return ApiResponse(
        200, {"Content-Type": "text/plain", "OData-Version": "4.0"}, str(count).encode()
    )


def _since(token: str) -> int:
    match = _DELTA.match(token)
    if match is None:
        raise bad_request("The $deltatoken is not valid: use @odata.deltaLink as it is.")
    return int(match.group(1))


def _delta_token(version: int) -> str:
    return f"{version}!{datetime.now(UTC).strftime('%m/%d/%Y %H:%M:%S')}"


def _changes(store: Store, entity: Entity, request: ApiRequest) -> ApiResponse:
    if not entity.change_tracking:
        raise bad_request(
            f"Change tracking is not enabled for entity '{entity.logical_name}'.", "0x80040203"
        )
    for name in ("$filter", "$orderby", "$expand", "$top", "$apply"):
        if request.option(name) is not None:
            raise bad_request(
                f'The "{name}" query parameter isn\'t supported when Change Tracking is enabled.'
            )
    select = parse_select(entity, request.option("$select"))
    raw = request.option("$deltatoken")
    since = 0 if raw is None else _since(raw)
    size = _page_size(request, COUNT_LIMIT) or COUNT_LIMIT
    token = request.option("$skiptoken")
    state: dict[str, Any] = {"o": 0, "v": store.version}
    page = 1
    if token is not None:
        state = read_skiptoken(token)
        page = state.pop("page")
    offset, upto = int(state["o"]), int(state.get("v", store.version))
    table = quote(entity.table)
    cursor = store.conn.execute(
        f"SELECT * FROM {table} WHERE versionnumber > ? AND versionnumber <= ?"
        " ORDER BY versionnumber LIMIT ? OFFSET ?",
        (since, upto, size + 1, offset),
    )
    names = [d[0] for d in cursor.description]
    changed = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    more = len(changed) > size
    value: list[dict[str, Any]] = [render(entity, row, select) for row in changed[:size]]
    if not more:
        (n_changed,) = store.conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE versionnumber > ? AND versionnumber <= ?",
            (since, upto),
        ).fetchone()
        room = size - len(value)
        deleted = store.conn.execute(
            "SELECT id FROM emu_deleted WHERE entity = ? AND versionnumber > ?"
            " AND versionnumber <= ? ORDER BY versionnumber LIMIT ? OFFSET ?",
            (entity.logical_name, since, upto, room + 1, max(0, offset - n_changed)),
        ).fetchall()
        more = len(deleted) > room
        context = f"{request.service_root}/$metadata#{entity.entity_set_name}/$deletedEntity"
        for (row_id,) in deleted[:room]:
            value.append({"@odata.context": context, "id": row_id, "reason": "deleted"})
    body: dict[str, Any] = {"@odata.context": _context(request, entity, select, raw is not None)}
    body["value"] = value
    if more:
        next_state = {"o": offset + size, "v": upto}
        body["@odata.nextLink"] = _next_link(request, entity, make_skiptoken(next_state, page + 1))
    else:
        pairs = [(k, v) for k, v in request.query if k not in ("$skiptoken", "$deltatoken")]
        pairs.append(("$deltatoken", _delta_token(upto)))
        body["@odata.deltaLink"] = (
            f"{request.service_root}/{entity.entity_set_name}?{_encode(pairs)}"
        )
    return ApiResponse.json(200, body, {"Preference-Applied": "odata.track-changes"})
