"""Unit tests of the client against httpx.MockTransport: headers, retries, throttling, paging."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from apex_metrics.dataverse import errors as e
from apex_metrics.dataverse.client import DataverseClient

from .conftest import ENV, fast_flow

MakeClient = Callable[..., DataverseClient]


def dv_error(
    status: int, code: str = "", message: str = "failed", **headers: str
) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message}}, headers=headers
    )


async def test_standard_headers_token_and_upsert_url(mock_client: MakeClient) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    client = mock_client(handler)
    outcome = await client.upsert(
        "apex_campaignmetricses",
        {"apex_runid": "O'Neil run"},
        {"apex_runid": "x", "apex_phase": "2-3"},
    )
    assert outcome.outcome == "upserted" and outcome.status == 204
    request = seen[0]
    assert request.method == "PATCH"
    assert request.url.raw_path.startswith(
        b"/api/data/v9.2/apex_campaignmetricses(apex_runid='O''Neil%20run')"
    )
    assert request.headers["Authorization"] == "Bearer tok-123"
    assert (
        request.headers["OData-Version"] == "4.0" and request.headers["OData-MaxVersion"] == "4.0"
    )
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/json"
    assert "Prefer" not in request.headers, "no return=representation: no extra Retrieve"
    assert "$select" not in request.url.params
    assert "If-Match" not in request.headers and "If-None-Match" not in request.headers
    assert json.loads(request.content) == {"apex_phase": "2-3"}, (
        "the key column never goes in the body"
    )


async def test_decimals_and_datetimes_are_sent_as_dataverse_json(mock_client: MakeClient) -> None:
    from decimal import Decimal

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    when = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    await mock_client(handler).upsert("s", {"k": "a"}, {"c": Decimal("1.50000"), "t": when})
    assert json.loads(seen[0].content) == {"c": 1.5, "t": "2026-01-02T03:04:05Z"}


async def test_create_and_update_only_modes(mock_client: MakeClient) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers.get("If-None-Match") == "*":
            return dv_error(412, "", "A record with matching key values already exists.")
        return dv_error(404, "0x80040217", "apex_campaignmetrics With Id = x Does Not Exist")

    client = mock_client(handler)
    with pytest.raises(e.PreconditionFailed):
        await client.upsert("s", {"k": "a"}, {}, mode="create")
    with pytest.raises(e.NotFound):
        await client.upsert("s", {"k": "a"}, {}, mode="update")
    assert seen[1].headers["If-Match"] == "*"
    assert len(seen) == 2, "4xx answers are not retried"


async def test_get_sends_if_none_match_null_and_missing_row_is_none(
    mock_client: MakeClient,
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return dv_error(404, "0x80040217", "Does Not Exist")

    client = mock_client(handler)
    assert await client.get_by_key("s", {"k": "a"}, select=["k", "v"]) is None
    assert seen[0].headers["If-None-Match"] == "null"
    assert seen[0].url.params["$select"] == "k,v"
    assert await client.delete("s", {"k": "a"}) is False


async def test_5xx_and_dropped_connections_are_retried_for_idempotent_calls(
    mock_client: MakeClient,
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return dv_error(503, "", "Service Unavailable")
        if calls == 2:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if calls == 3:
            raise httpx.ReadTimeout("timed out")
        return httpx.Response(204)

    client = mock_client(handler)
    outcome = await client.upsert("s", {"k": "a"}, {"v": 1})
    assert calls == 4 and outcome.outcome == "upserted"
    assert client.flow.stats.retries == 3


async def test_retries_give_up_after_max_attempts(mock_client: MakeClient) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return dv_error(502)

    client = mock_client(handler)
    with pytest.raises(e.TransientError):
        await client.get_json("WhoAmI")
    assert calls == client.flow.retry.max_attempts


async def test_post_create_is_never_retried_blind(mock_client: MakeClient) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ReadTimeout("the create may have run")

    client = mock_client(handler)
    with pytest.raises(e.TransientError) as caught:
        await client.create("s", {"v": 1})
    assert calls == 1
    assert "not retried automatically" in (caught.value.hint or "")

    calls = 0

    def handler_503(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return dv_error(503)

    with pytest.raises(e.TransientError):
        await mock_client(handler_503).create("s", {"v": 1})
    assert calls == 1


async def test_an_undecodable_answer_is_a_transient_error(mock_client: MakeClient) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204, content=b"not gzip", headers={"Content-Encoding": "gzip"})

    with pytest.raises(e.TransientError, match="cannot be decoded") as caught:
        await mock_client(handler).create("s", {"v": 1})
    assert isinstance(caught.value.__cause__, httpx.DecodingError)


async def test_post_is_retried_when_it_provably_never_left(mock_client: MakeClient) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("connection refused")
        if calls == 2:
            return dv_error(
                429, "0x80072322", "Number of requests exceeded", **{"Retry-After": "0"}
            )
        return httpx.Response(204, headers={"OData-EntityId": f"{ENV}/api/data/v9.2/s(1)"})

    client = mock_client(handler)
    assert await client.create("s", {"v": 1}) == f"{ENV}/api/data/v9.2/s(1)"
    assert calls == 3


async def test_429_pauses_every_request_of_the_client_for_retry_after(
    mock_client: MakeClient,
) -> None:
    starts: list[float] = []
    throttled_at: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        starts.append(now)
        if not throttled_at:
            throttled_at.append(now)
            return dv_error(
                429, "0x80072322", "Number of requests exceeded", **{"Retry-After": "1"}
            )
        await asyncio.sleep(0.01)
        return httpx.Response(204)

    client = mock_client(handler, flow=fast_flow(concurrency=1))
    tasks = [client.upsert("s", {"k": f"r{i}"}, {"v": i}) for i in range(6)]
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    assert all(o.ok for o in outcomes)
    assert len(starts) == 7, "six requests plus the one throttled attempt"
    later = [s for s in starts if s > throttled_at[0]]
    assert len(later) == 6
    assert min(later) >= throttled_at[0] + 1.0, "nothing was sent during the Retry-After pause"
    assert min(later) < throttled_at[0] + 1.3, "the pause is Retry-After, not longer"
    assert client.flow.stats.throttled == 1


async def test_429_pause_applies_to_requests_already_queued_in_parallel(
    mock_client: MakeClient,
) -> None:
    starts: list[tuple[float, str]] = []
    throttled_at: list[float] = []
    first_wave = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        starts.append((now, request.url.path))
        if request.url.path.endswith("(k='r0')") and not throttled_at:
            await first_wave.wait()
            throttled_at.append(time.monotonic())
            return dv_error(429, "0x80072326", "concurrent", **{"Retry-After": "1"})
        if len(starts) >= 4:
            first_wave.set()
        await asyncio.sleep(0.05)
        return httpx.Response(204)

    client = mock_client(handler, flow=fast_flow(concurrency=4))
    tasks = [client.upsert("s", {"k": f"r{i}"}, {"v": i}) for i in range(12)]
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    assert all(o.ok for o in outcomes)
    after = [t for t, _ in starts if t > throttled_at[0]]
    assert after, "work continued after the pause"
    assert min(after) >= throttled_at[0] + 1.0
    assert client.flow.stats.throttled == 1


async def test_dop_hint_caps_concurrency(mock_client: MakeClient) -> None:
    running = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        if request.url.path.endswith("WhoAmI"):
            return httpx.Response(
                200,
                json={"UserId": "u", "BusinessUnitId": "b", "OrganizationId": "o"},
                headers={"x-ms-dop-hint": "2"},
            )
        return httpx.Response(204)

    client = mock_client(handler, flow=fast_flow(concurrency=8))
    me = await client.whoami()
    assert me.dop_hint == 2 and me.organization_id == "o"
    await asyncio.wait_for(
        asyncio.gather(*(client.upsert("s", {"k": f"r{i}"}, {}) for i in range(10))), 30
    )
    assert peak == 2


async def test_expired_token_is_refreshed_once(mock_client: MakeClient) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return dv_error(401, "0x8005F101", "The access token is expired")
        return httpx.Response(200, json={"UserId": "u"})

    client = mock_client(handler)
    await client.whoami()
    assert client.tokens.invalidations == 1  # type: ignore[attr-defined]

    def always_401(request: httpx.Request) -> httpx.Response:
        return dv_error(401)

    with pytest.raises(e.TokenRejected):
        await mock_client(always_401).whoami()


async def test_paging_follows_next_link_and_refuses_other_hosts(mock_client: MakeClient) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        token = request.url.params.get("$skiptoken")
        if token is None:
            return httpx.Response(
                200,
                json={
                    "value": [{"n": 1}, {"n": 2}],
                    "@odata.nextLink": f"{ENV}/api/data/v9.2/s?$skiptoken=p2",
                },
            )
        return httpx.Response(200, json={"value": [{"n": 3}]})

    client = mock_client(handler)
    rows = [r async for r in client.query("s", select=["n"], filter="n gt 0", page_size=2)]
    assert [r["n"] for r in rows] == [1, 2, 3]
    assert seen[0].headers["Prefer"] == "odata.maxpagesize=2"
    assert seen[1].headers["Prefer"] == "odata.maxpagesize=2"
    assert seen[0].url.params["$filter"] == "n gt 0"

    hosts: list[str] = []

    def evil(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(
            200,
            json={
                "value": [{"n": 1}],
                "@odata.nextLink": "https://collector.evil.test/steal?$skiptoken=1",
            },
        )

    with pytest.raises(e.InsecureTransport):
        _ = [r async for r in mock_client(evil).query("s")]
    assert hosts == ["org.example.test"], "the token never went to the other host"


async def test_token_is_never_logged(
    mock_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return dv_error(503)
        return httpx.Response(200, json={"UserId": "u"})

    await mock_client(handler).whoami()
    assert caplog.records, "the client logs its requests"
    assert "tok-123" not in caplog.text


async def test_aggregate_splits_range_on_record_limit_and_combines(mock_client: MakeClient) -> None:
    applies: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        apply = request.url.params["$apply"]
        applies.append(apply)
        if "2026-01-01T00:00:00Z" in apply and "2026-01-03T00:00:00Z" in apply:
            return dv_error(400, "0x8004E023", "The maximum record limit is exceeded.")
        day = 1 if "lt 2026-01-02" in apply else 2
        return httpx.Response(
            200,
            json={
                "value": [
                    {
                        "apex_campaignid": "c1",
                        "cost": 1.5 * day,
                        "n": 10 * day,
                        "lo": day,
                        "hi": day,
                    },
                    {"apex_campaignid": f"only{day}", "cost": 1.0, "n": 1, "lo": 5, "hi": 5},
                ]
            },
        )

    client = mock_client(handler)
    apply = (
        "groupby((apex_campaignid),aggregate(apex_costusd with sum as cost,$count as n,"
        "apex_tokensin with min as lo,apex_tokensin with max as hi))"
    )
    rows = await client.aggregate(
        "s",
        apply,
        time_column="apex_createdat",
        start=datetime(2026, 1, 1, tzinfo=UTC),
        end=datetime(2026, 1, 3, tzinfo=UTC),
    )
    assert len(applies) == 3
    by = {r["apex_campaignid"]: r for r in rows}
    assert by["c1"] == {"apex_campaignid": "c1", "cost": 4.5, "n": 30, "lo": 1, "hi": 2}
    assert set(by) == {"c1", "only1", "only2"}
    assert applies[1].startswith(
        "filter(apex_createdat ge 2026-01-01T00:00:00Z and apex_createdat lt 2026-01-02T00:00:00Z)/"
    )

    with pytest.raises(e.AggregateLimitExceeded):
        await client.aggregate(
            "s",
            "aggregate(apex_costusd with average as avg)",
            time_column="apex_createdat",
            start=datetime(2026, 1, 1, tzinfo=UTC),
            end=datetime(2026, 1, 3, tzinfo=UTC),
        )


async def test_token_never_goes_to_another_host(mock_client: MakeClient) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    client = mock_client(handler)
    for url in (
        "https://evil.example/api/data/v9.2/WhoAmI",
        "http://org.example.test/x",
        "https://org.example.test:8443/x",
    ):
        with pytest.raises(e.InsecureTransport):
            await client.request("GET", url)
    assert seen == []
