"""Web servers over real HTTP: round robin and the ARRAffinity cookie, service protection limits
per (application user, web server) with each 429 and its Retry-After, x-ms-dop-hint, and the
per-server statistics.

The emulator runs in a thread of this process, so ``time.monotonic()`` here is the clock its
limiter reads: the tests bound each expected Retry-After by the times around the requests."""

from __future__ import annotations

import asyncio
import math
import re
import ssl
import time
from typing import Any

import httpx
import pytest

from apex_metrics.emulator import CostModel, EmulatorConfig, ServiceLimits
from apex_metrics.testing import RunningEmulator, running_emulator
from tests.emulator.conftest import api_client, emulator_stats, get_token

PUBLISH = {"ParameterXml": "<importexportxml/>"}  # PublishXml's required parameter

COOKIE = re.compile(r"^ARRAffinity=([0-9a-f]{64}); Path=/; HttpOnly$")
SERVER_KEYS = {
    "server",
    "requests",
    "requests_in_window",
    "execution_seconds_in_window",
    "execution_seconds_total",
    "in_flight",
    "concurrent_peak",
    "throttled",
    "callers",
}
NO_THROTTLING = {"0x80072322": 0, "0x80072321": 0, "0x80072326": 0}


def affinity(response: httpx.Response) -> str:
    """The server token of an answer's Set-Cookie."""
    match = COOKIE.match(response.headers["set-cookie"])
    assert match is not None, response.headers["set-cookie"]
    return match.group(1)


def served_by(stats: dict[str, Any]) -> list[int]:
    """The web server of each recent Web API request (token requests have none)."""
    return [r["server"] for r in stats["recent"] if "server" in r]


def bearer(emu: RunningEmulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {get_token(emu)}"}


def servers(emu: RunningEmulator) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = emulator_stats(emu)["web_servers"]
    return found


def retry_bounds(free_from: tuple[float, float], asked: tuple[float, float]) -> range:
    """The Retry-After values possible when the window frees between ``free_from`` and the
    request was answered between ``asked`` (monotonic times)."""
    low = max(1, math.ceil(free_from[0] - asked[1]))
    high = max(1, math.ceil(free_from[1] - asked[0]))
    return range(low, high + 1)


def timed(send: Any) -> tuple[httpx.Response, tuple[float, float]]:
    before = time.monotonic()
    response = send()
    return response, (before, time.monotonic())


# --- routing ---------------------------------------------------------------------------------


def test_round_robin_without_a_cookie(emulator: RunningEmulator) -> None:
    headers = bearer(emulator)
    answers = [httpx.get(f"{emulator.api}/WhoAmI", headers=headers) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    tokens = [affinity(a) for a in answers]
    assert tokens[0] != tokens[1]
    assert tokens == [tokens[0], tokens[1]] * 3  # alternating, each server its own token
    stats = emulator_stats(emulator)
    assert served_by(stats) == [0, 1, 0, 1, 0, 1]
    assert [s["requests"] for s in stats["web_servers"]] == [3, 3]


def test_the_affinity_cookie_keeps_a_client_on_its_server(emulator: RunningEmulator) -> None:
    with api_client(emulator) as first, api_client(emulator) as second:  # both keep cookies
        answers = [first.get("WhoAmI") for _ in range(4)]
        assert "set-cookie" in answers[0].headers
        assert all("set-cookie" not in a.headers for a in answers[1:])  # already pinned
        others = [second.get("WhoAmI") for _ in range(3)]
        assert affinity(others[0]) != affinity(answers[0])  # the next server in turn
        assert all("set-cookie" not in a.headers for a in others[1:])
    stats = emulator_stats(emulator)
    assert served_by(stats) == [0] * 4 + [1] * 3
    assert [s["requests"] for s in stats["web_servers"]] == [4, 3]
    client_id = emulator.config.client_id
    assert [s["callers"][client_id]["requests"] for s in stats["web_servers"]] == [4, 3]
    stranger = httpx.get(  # a token this emulator never gave: ignored, round robin
        f"{emulator.api}/WhoAmI",
        headers=bearer(emulator) | {"Cookie": "ARRAffinity=" + "0" * 64},
    )
    assert affinity(stranger) == affinity(answers[0])  # server 0's turn again
    assert httpx.post(f"{emulator.url}/_emulator/reset", json={}, timeout=10).status_code == 200
    again = httpx.get(f"{emulator.api}/WhoAmI", headers=bearer(emulator))
    assert affinity(again) == affinity(answers[0])  # tokens are stable; round robin restarts


def test_the_cookie_is_secure_over_https() -> None:
    with running_emulator(EmulatorConfig(costs=CostModel.free()), tls=True) as emu:
        verify = ssl.create_default_context(cafile=str(emu.ca_file))
        answer = httpx.get(f"{emu.api}/WhoAmI", headers=bearer(emu), verify=verify, timeout=10)
    assert answer.status_code == 200
    secure = re.compile(r"^ARRAffinity=[0-9a-f]{64}; Path=/; HttpOnly; Secure$")
    assert secure.match(answer.headers["set-cookie"])


def test_token_endpoint_and_admin_api_are_not_web_servers(emulator: RunningEmulator) -> None:
    token = httpx.post(
        emulator.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": emulator.config.client_id,
            "client_secret": emulator.config.client_secret,
            "scope": f"{emulator.url}/.default",
        },
        timeout=10,
    )
    assert token.status_code == 200
    assert "set-cookie" not in token.headers
    assert "set-cookie" not in httpx.get(f"{emulator.url}/_emulator/stats", timeout=10).headers
    assert [s["requests"] for s in servers(emulator)] == [0, 0]


def test_dop_hint_follows_the_formula(emulator: RunningEmulator) -> None:
    with api_client(emulator) as client:
        assert client.get("WhoAmI").headers["x-ms-dop-hint"] == "8"  # 2 x 1,200 s / 300 s
    limits = ServiceLimits(web_servers=3, execution_seconds_per_window=20, window_seconds=6)
    config = EmulatorConfig(limits=limits, costs=CostModel.free())
    with running_emulator(config) as emu, api_client(emu) as client:
        assert client.get("WhoAmI").headers["x-ms-dop-hint"] == "10"  # round(3 x 20 / 6)
        missing = client.get("nothere")
        assert missing.status_code == 404
        assert missing.headers["x-ms-dop-hint"] == "10"
        anonymous = httpx.get(f"{emu.api}/WhoAmI")
        assert anonymous.status_code == 401
        assert "x-ms-dop-hint" not in anonymous.headers  # only for authenticated answers


# --- service protection limits ---------------------------------------------------------------


def test_request_limit_per_user_and_server() -> None:
    limits = ServiceLimits(requests_per_window=3, window_seconds=300)
    config = EmulatorConfig(limits=limits, costs=CostModel.free())
    with running_emulator(config) as emu, api_client(emu) as client, api_client(emu) as other:
        first, first_at = timed(lambda: client.get("WhoAmI"))
        assert first.headers["x-ms-ratelimit-burst-remaining-xrm-requests"] == "2"
        assert client.get("WhoAmI").headers["x-ms-ratelimit-burst-remaining-xrm-requests"] == "1"
        assert client.get("WhoAmI").headers["x-ms-ratelimit-burst-remaining-xrm-requests"] == "0"
        refused, refused_at = timed(lambda: client.get("WhoAmI"))
        assert refused.status_code == 429
        assert refused.json()["error"] == {
            "code": "0x80072322",
            "message": "Number of requests exceeded the limit of 3 over time window of 300"
            " seconds.",
        }
        # free again when the first request leaves the window
        free_from = (first_at[0] + 300, first_at[1] + 300)
        assert int(refused.headers["Retry-After"]) in retry_bounds(free_from, refused_at)
        assert other.get("WhoAmI").status_code == 200  # server 1: its own window
        stats = servers(emu)
    assert [s["throttled"]["0x80072322"] for s in stats] == [1, 0]
    assert [s["requests_in_window"] for s in stats] == [3, 1]  # refused ones do not count
    assert [s["requests"] for s in stats] == [4, 1]


def test_execution_time_limit_waits_until_enough_time_has_left() -> None:
    """Durations 0.1, 0.1 and 0.5 s against a 0.55 s budget: the oldest leaving the window is
    not enough (0.6 s stay), the second one is. The other server still answers."""
    costs = CostModel(request_ms=100, write_ms=400, multiple_row_ms=0, retrieve_ms=0)
    limits = ServiceLimits(window_seconds=5, execution_seconds_per_window=0.55)
    config = EmulatorConfig(limits=limits, costs=costs)
    with running_emulator(config) as emu, api_client(emu) as client, api_client(emu) as other:
        assert client.get("WhoAmI").status_code == 200  # server 0: 0.1 s
        assert other.get("WhoAmI").status_code == 200  # server 1: 0.1 s
        time.sleep(1.5)
        second, second_at = timed(lambda: client.get("WhoAmI"))  # 0.1 s, ends at second_at
        assert second.status_code == 200
        assert client.post("PublishXml", json=PUBLISH).status_code == 204  # a write: 0.5 s
        refused, refused_at = timed(lambda: client.get("WhoAmI"))
        assert refused.status_code == 429
        assert refused.json()["error"] == {
            "code": "0x80072321",
            "message": "Combined execution time of incoming requests exceeded limit of 550  "
            "milliseconds over time window of 5 seconds. Decrease number of concurrent "
            "requests or reduce the duration of requests and try again later.",
        }
        free_from = (second_at[0] + 0.1 + 5, second_at[1] + 5)
        assert int(refused.headers["Retry-After"]) in retry_bounds(free_from, refused_at)
        assert other.get("WhoAmI").status_code == 200  # server 1 is not throttled
        stats = servers(emu)
    assert [s["throttled"]["0x80072321"] for s in stats] == [1, 0]
    assert stats[0]["execution_seconds_in_window"] == pytest.approx(0.7, abs=0.01)
    assert stats[1]["execution_seconds_in_window"] == pytest.approx(0.2, abs=0.01)


def test_the_default_execution_time_message_has_the_thousands_separator() -> None:
    from apex_metrics.emulator.limits import throttled

    error = throttled("0x80072321", 12.2, ServiceLimits())
    assert error.message.startswith(
        "Combined execution time of incoming requests exceeded limit of 1,200,000  milliseconds"
        " over time window of 300 seconds."
    )
    assert error.headers == {"Retry-After": "13"}


async def test_concurrency_limit_per_user_and_server() -> None:
    """Requests modeled at 0.5 s stay in flight that long: two of four at once pass."""
    costs = CostModel(request_ms=500, write_ms=0, multiple_row_ms=0, retrieve_ms=0)
    limits = ServiceLimits(concurrent_requests=2)
    with running_emulator(EmulatorConfig(limits=limits, costs=costs)) as emu:
        headers = bearer(emu)
        async with httpx.AsyncClient(base_url=emu.api + "/", headers=headers, timeout=10) as client:
            assert (await client.get("WhoAmI")).status_code == 200  # pinned to server 0
            answers = await asyncio.gather(*(client.get("WhoAmI") for _ in range(4)))
        stats = servers(emu)
    assert sorted(a.status_code for a in answers) == [200, 200, 429, 429]
    for busy in (a for a in answers if a.status_code == 429):
        assert busy.json()["error"] == {
            "code": "0x80072326",
            "message": "Number of concurrent requests exceeded the limit of 2.",
        }
        assert busy.headers["Retry-After"] == "1"
    assert stats[0]["throttled"] == {**NO_THROTTLING, "0x80072326": 2}
    assert stats[0]["concurrent_peak"] == 2
    assert stats[0]["in_flight"] == 0
    assert stats[1]["requests"] == 0


# --- statistics ------------------------------------------------------------------------------


def test_stats_shape_and_reset(emulator: RunningEmulator) -> None:
    with api_client(emulator) as client:
        assert client.get("WhoAmI").status_code == 200
    data = emulator_stats(emulator)
    for key in ("counters", "statuses", "rows", "batch", "tables", "recent"):
        assert key in data
    assert data["costs"] == CostModel.free().to_dict()
    assert data["limits"] == {
        "requests_per_window": 6000,
        "window_seconds": 300.0,
        "execution_seconds_per_window": 1200.0,
        "concurrent_requests": 52,
        "penalty_seconds": 1.0,
        "max_retry_after": 300.0,
        "web_servers": 2,
        "dop_hint": 8,
    }
    first, second = data["web_servers"]
    assert set(first) == SERVER_KEYS and set(second) == SERVER_KEYS
    assert (first["server"], second["server"]) == (0, 1)
    assert first["requests"] == first["requests_in_window"] == 1
    assert first["execution_seconds_total"] == first["execution_seconds_in_window"] > 0
    assert (first["in_flight"], first["concurrent_peak"]) == (0, 1)
    assert first["throttled"] == NO_THROTTLING
    assert set(first["callers"]) == {emulator.config.client_id}
    assert set(first["callers"][emulator.config.client_id]) == SERVER_KEYS - {"server", "callers"}
    assert second["requests"] == 0 and second["callers"] == {}
    assert httpx.post(f"{emulator.url}/_emulator/reset", json={}, timeout=10).status_code == 200
    cleared = emulator_stats(emulator)["web_servers"]
    assert [s["requests"] for s in cleared] == [0, 0]
    assert [s["execution_seconds_total"] for s in cleared] == [0, 0]
    assert [s["callers"] for s in cleared] == [{}, {}]
