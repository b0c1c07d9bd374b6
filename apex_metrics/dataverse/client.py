"""The Dataverse Web API client: the operations apex-metrics needs, over an injected httpx client.

The client is transport: :meth:`DataverseClient.send` makes one attempt (token, OData headers,
the HTTP exchange, the answer turned into an error of :mod:`apex_metrics.dataverse.errors`), and
:meth:`DataverseClient.request` hands that attempt to the client's
:class:`~apex_metrics.dataverse.flow.Flow`, the one place that paces, pauses on 429 and retries.
The bearer token goes only to the environment's own origin. Nothing here logs a header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx

from apex_metrics.dataverse import aggregate as agg
from apex_metrics.dataverse import bulk
from apex_metrics.dataverse.auth import TokenProvider
from apex_metrics.dataverse.batching import (
    Outcome,
    UpsertOutcome,
    decode_upserts,
    dumps,
    encode_upserts,
    outcome_of,
    without_keys,
)
from apex_metrics.dataverse.errors import (
    AggregateLimitExceeded,
    DataverseError,
    InsecureTransport,
    NotFound,
    TokenRejected,
    error_from_response,
    error_from_transport,
)
from apex_metrics.dataverse.flow import Flow
from apex_metrics.dataverse.urls import (
    API_PATH,
    check_identifier,
    check_url,
    key_path,
    same_origin,
)

log = logging.getLogger(__name__)
__all__ = ["DataverseClient", "Outcome", "UpsertMode", "UpsertOutcome", "WhoAmI"]

UpsertMode = Literal["upsert", "create", "update"]
MAX_BATCH = 1000
MAX_PAGE_SIZE = 5000
ODATA_HEADERS = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
}


@dataclass(frozen=True, slots=True)
class WhoAmI:
    user_id: str
    business_unit_id: str
    organization_id: str
    dop_hint: int | None
    environment_url: str


class DataverseClient:
    """Web API v9.2 of one environment. ``http`` is owned by the caller."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        environment_url: str,
        tokens: TokenProvider,
        *,
        flow: Flow | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.http = http
        self.environment_url = check_url(
            environment_url, what="APEX_DATAVERSE_URL", allow_path=False
        )
        self.api_url = self.environment_url + API_PATH
        self.tokens = tokens
        self.flow = flow or Flow()
        self.timeout = timeout
        self.dop_hint: int | None = None

    # -- the one request path ----------------------------------------------------------------

    def url(self, path: str) -> str:
        """An absolute URL for a path relative to ``/api/data/v9.2/``."""
        return path if path.startswith(("http://", "https://")) else self.api_url + path

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        what: str | None = None,
        rows: int = 0,
        max_throttled: int | None = None,
    ) -> httpx.Response:
        """Send one request through the flow (paced, retried as it says); return the 2xx/3xx
        answer or raise a DataverseError. ``rows``: rows it carries (for the pacer)."""
        method = method.upper()
        url = self.url(path)
        if not same_origin(url, self.environment_url):
            raise InsecureTransport(
                f"refused to send the token to {httpx.URL(url).host}: not the environment's host",
                hint="only APEX_DATAVERSE_URL's host receives the bearer token",
            )
        if idempotent is None:
            idempotent = method != "POST"
        what = what or f"{method} {httpx.URL(url).path}"
        send_headers = dict(ODATA_HEADERS)
        if method == "GET":
            send_headers["If-None-Match"] = "null"
        if json_body is not None:
            content = dumps(json_body)
            send_headers["Content-Type"] = "application/json"
        send_headers.update(headers or {})

        async def attempt() -> httpx.Response:
            return await self.send(method, url, params, content, send_headers, what)

        return await self.flow.call(
            attempt, idempotent=idempotent, what=what, rows=rows, max_throttled=max_throttled
        )

    async def send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        content: bytes | None,
        headers: dict[str, str],
        what: str,
    ) -> httpx.Response:
        """One attempt: token, HTTP exchange, answer or classified error. A 401 with a cached
        token gets one fresh token and one more exchange (that is authentication, not retry)."""
        refreshed = False
        while True:
            token = await self.tokens.token()
            headers["Authorization"] = f"Bearer {token}"
            started = time.monotonic()
            try:
                response = await self.http.request(
                    method, url, params=params, content=content, headers=headers,
                    timeout=self.timeout,
                )  # fmt: skip
            except httpx.RequestError as exc:  # transport errors, and an undecodable body
                raise error_from_transport(exc, what=what) from exc
            self._observe(response)
            log.debug(
                "%s %s -> %s in %.0f ms",
                method,
                httpx.URL(url).path,
                response.status_code,
                (time.monotonic() - started) * 1000,
            )
            if not response.is_error:
                return response
            error = error_from_response(response, what=what)
            invalidate = getattr(self.tokens, "invalidate", None)
            if isinstance(error, TokenRejected) and not refreshed and callable(invalidate):
                invalidate()
                refreshed = True
                continue
            raise error

    def _observe(self, response: httpx.Response) -> None:
        hint = response.headers.get("x-ms-dop-hint")
        if hint and hint.strip().isdigit():
            self.dop_hint = int(hint)
            self.flow.pacer.hint(self.dop_hint)

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET and parse the JSON answer."""
        response = await self.request("GET", path, params=params)
        try:
            return response.json()
        except ValueError:
            raise DataverseError(
                f"GET {response.url.path}: the answer is not JSON "
                f"({response.headers.get('Content-Type', 'no Content-Type')})",
                status=response.status_code,
                hint="check that APEX_DATAVERSE_URL is the environment URL, not a portal page",
            ) from None

    # -- operations --------------------------------------------------------------------------

    async def whoami(self) -> WhoAmI:
        """``GET WhoAmI``: proves the token and the application user; reads ``x-ms-dop-hint``."""
        data = await self.get_json("WhoAmI")
        return WhoAmI(
            user_id=str(data.get("UserId", "")),
            business_unit_id=str(data.get("BusinessUnitId", "")),
            organization_id=str(data.get("OrganizationId", "")),
            dop_hint=self.dop_hint,
            environment_url=self.environment_url,
        )

    async def create(self, entity_set: str, body: Mapping[str, Any]) -> str:
        """POST a new row; returns its ``OData-EntityId``. Never retried once possibly sent."""
        response = await self.request("POST", entity_set, json_body=dict(body), idempotent=False)
        return str(response.headers.get("OData-EntityId", ""))

    async def upsert(
        self,
        entity_set: str,
        key: Mapping[str, str],
        body: Mapping[str, Any],
        mode: UpsertMode = "upsert",
    ) -> UpsertOutcome:
        """PATCH by alternate key: ``upsert`` (create or update), ``create`` only, ``update`` only.

        No ``return=representation``: that costs the server an extra Retrieve, so the answer
        is a 204 that does not say whether the row was created (outcome ``upserted``).
        Raises :class:`PreconditionFailed` when ``create`` finds the row, :class:`NotFound`
        when ``update`` does not. Create-only is not retried after an unknown outcome (a
        re-send would answer 412 for the row it created itself).
        """
        path = key_path(entity_set, key)
        headers: dict[str, str] = {}
        if mode == "create":
            headers["If-None-Match"] = "*"
        elif mode == "update":
            headers["If-Match"] = "*"
        response = await self.request(
            "PATCH",
            path,
            json_body=without_keys(body, key),
            headers=headers,
            idempotent=mode != "create",
            rows=1,
        )
        return UpsertOutcome(_key_text(key), response.status_code, outcome_of(response.status_code))

    async def get_by_key(
        self,
        entity_set: str,
        key: Mapping[str, str],
        *,
        select: Sequence[str] | None = None,
    ) -> dict[str, Any] | None:
        """One row by (alternate) key, or None when it does not exist."""
        params = {"$select": ",".join(select)} if select else None
        try:
            data = await self.get_json(key_path(entity_set, key), params)
        except NotFound:
            return None
        return dict(data)

    async def delete(self, entity_set: str, key: Mapping[str, str]) -> bool:
        """Delete by key; False when there was no such row."""
        try:
            await self.request("DELETE", key_path(entity_set, key))
        except NotFound:
            return False
        return True

    async def query(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every matching row, page by page (``odata.maxpagesize``, ``@odata.nextLink``)."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1…{MAX_PAGE_SIZE}")
        params: dict[str, str] = {}
        if select:
            params["$select"] = ",".join(select)
        if filter:
            params["$filter"] = filter
        if orderby:
            params["$orderby"] = orderby
        headers = {"Prefer": f"odata.maxpagesize={page_size}"}
        url: str | None = self.url(entity_set)
        seen: set[str] = set()
        first = True
        while url is not None:
            response = await self.request(
                "GET", url, params=params if first else None, headers=headers
            )
            first = False
            try:
                data = response.json()
            except ValueError:
                raise DataverseError(f"{entity_set}: a page of the answer is not JSON") from None
            for row in data.get("value", []):
                yield row
            url = data.get("@odata.nextLink")
            if url is None:
                return
            if not same_origin(url, self.environment_url):
                raise InsecureTransport(
                    f"@odata.nextLink points to another host ({httpx.URL(url).host}); refused",
                    hint="the bearer token is only sent to APEX_DATAVERSE_URL's host",
                )
            if url in seen:
                raise DataverseError(f"{entity_set}: the server repeated a nextLink; stopped")
            seen.add(url)

    async def aggregate(
        self,
        entity_set: str,
        apply: str,
        *,
        time_column: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """``$apply`` rows. With a time range, a 0x8004E023 answer splits it and combines."""
        if time_column is None or start is None or end is None:
            data = await self.get_json(entity_set, {"$apply": apply})
            return list(data.get("value", []))
        return await self._aggregate_range(entity_set, apply, time_column, start, end, 0)

    async def _aggregate_range(
        self, entity_set: str, apply: str, column: str, start: datetime, end: datetime, depth: int
    ) -> list[dict[str, Any]]:
        try:
            data = await self.get_json(
                entity_set, {"$apply": agg.with_time_range(apply, column, start, end)}
            )
            return list(data.get("value", []))
        except AggregateLimitExceeded:
            agg.check_combinable(apply)
            if depth >= 24:
                raise
        parts = []
        for low, high in agg.split_range(start, end):
            parts.append(
                await self._aggregate_range(entity_set, apply, column, low, high, depth + 1)
            )
        return agg.combine(apply, parts)

    async def upsert_many(
        self,
        entity_set: str,
        key_column: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        max_throttled: int | None = None,
    ) -> list[UpsertOutcome]:
        """Upsert rows by alternate key through ``$batch`` (≤ 1,000 per batch, continue-on-error).

        Returns one outcome per item, in order. Rows that fail carry the Dataverse code and
        message; a batch as a whole only raises when no row could be attempted.
        """

        async def send_batch(sendable: list[tuple[str, Mapping[str, Any]]]) -> list[UpsertOutcome]:
            return await self._upsert_batch(entity_set, key_column, sendable, max_throttled)

        return await self._in_chunks(entity_set, key_column, items, MAX_BATCH, send_batch)

    async def upsert_multiple(
        self,
        entity_set: str,
        logical_name: str,
        key_column: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        max_throttled: int | None = None,
    ) -> list[UpsertOutcome]:
        """Upsert rows by alternate key with ``UpsertMultiple`` (≤ 1,000 rows per request).

        All or nothing on a standard table: when a chunk fails because of a row (400, 412,
        409, duplicate detection), the same chunk goes again as one ``$batch`` with
        continue-on-error, which writes every good row and answers for each bad one with
        Dataverse's code and message. Successful rows are ``upserted`` (the 204 does not say
        created or updated). Raises what concerns the request as a whole (429, 5xx after the
        flow's retries, 401, 403, 404).
        """
        check_identifier(logical_name, what="table logical name")

        async def send_multiple(
            sendable: list[tuple[str, Mapping[str, Any]]],
        ) -> list[UpsertOutcome]:
            return await self._upsert_multiple(
                entity_set, logical_name, key_column, sendable, max_throttled
            )

        return await self._in_chunks(entity_set, key_column, items, bulk.MAX_ROWS, send_multiple)

    async def _in_chunks(
        self,
        entity_set: str,
        key_column: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        size: int,
        send: Callable[[list[tuple[str, Mapping[str, Any]]]], Awaitable[list[UpsertOutcome]]],
    ) -> list[UpsertOutcome]:
        """One outcome per item, in order: ``send`` takes chunks of up to ``size`` rows."""
        check_identifier(entity_set, what="entity set")
        check_identifier(key_column, what="key column")
        outcomes: list[UpsertOutcome] = []
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            outcomes.extend(await self._per_key(entity_set, key_column, chunk, send))
        return outcomes

    async def _per_key(
        self,
        entity_set: str,
        key_column: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        send: Callable[[list[tuple[str, Mapping[str, Any]]]], Awaitable[list[UpsertOutcome]]],
    ) -> list[UpsertOutcome]:
        """``send`` the rows whose key Dataverse can address; a key it cannot (a character
        that breaks key URLs) fails alone and never blocks the other rows."""
        refused: dict[int, UpsertOutcome] = {}
        sendable: list[tuple[str, Mapping[str, Any]]] = []
        for index, (key_value, body) in enumerate(items):
            try:
                key_path(entity_set, {key_column: key_value})
            except ValueError as exc:
                refused[index] = UpsertOutcome(key_value, 0, "failed", "invalid_key", str(exc))
            else:
                sendable.append((key_value, body))
        answered = await send(sendable) if sendable else []
        sent = iter(answered)
        return [refused[i] if i in refused else next(sent) for i in range(len(items))]

    async def _upsert_batch(
        self,
        entity_set: str,
        key_column: str,
        items: list[tuple[str, Mapping[str, Any]]],
        max_throttled: int | None,
    ) -> list[UpsertOutcome]:
        content, content_type = encode_upserts(self.api_url, entity_set, key_column, items)
        response = await self.request(
            "POST",
            "$batch",
            content=content,
            headers={"Content-Type": content_type, "Prefer": "odata.continue-on-error"},
            idempotent=True,  # every part is a PATCH upsert: re-sending converges
            what=f"$batch of {len(items)} upserts to {entity_set}",
            rows=len(items),
            max_throttled=max_throttled,
        )
        return decode_upserts(response, key_column, items)

    async def _upsert_multiple(
        self,
        entity_set: str,
        logical_name: str,
        key_column: str,
        items: list[tuple[str, Mapping[str, Any]]],
        max_throttled: int | None,
    ) -> list[UpsertOutcome]:
        content = bulk.encode_upsert_multiple(entity_set, logical_name, key_column, items)
        try:
            await self.request(
                "POST",
                f"{entity_set}/{bulk.ACTION}",
                content=content,
                headers={"Content-Type": "application/json"},
                idempotent=True,  # upserts: sending the same rows again converges
                what=f"UpsertMultiple of {len(items)} rows to {entity_set}",
                rows=len(items),
                max_throttled=max_throttled,
            )
        except DataverseError as exc:
            if not bulk.blames_a_row(exc):
                raise
            if len(items) == 1:  # the error is this row's own
                return [_failed(items[0][0], exc)]
            log.info(
                "UpsertMultiple of %d rows failed (%s); sending them as $batch to find the row",
                len(items),
                exc.code or exc.status,
            )
            return await self._upsert_batch(entity_set, key_column, items, max_throttled)
        return [UpsertOutcome(key_value, 204, "upserted") for key_value, _body in items]


def _failed(key_value: str, error: DataverseError) -> UpsertOutcome:
    return UpsertOutcome(
        key_value,
        error.status or 0,
        "failed",
        error.code,
        error.server_message or error.message,
        error.transient,
    )


def _key_text(key: Mapping[str, str]) -> str:
    if len(key) == 1:
        return str(next(iter(key.values())))
    return ",".join(f"{k}={v}" for k, v in key.items())
