"""Service protection limits, fault injection and the /_emulator/ admin API."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from apex_metrics.emulator import CostModel, EmulatorConfig, FaultSettings, ServiceLimits
from apex_metrics.emulator.limits import Limiter
from apex_metrics.testing import RunningEmulator, running_emulator
from tests.emulator.conftest import api_client, get_token


def test_limiter_counts_requests_in_a_sliding_window() -> None:
    limiter = Limiter(ServiceLimits(requests_per_window=3, window_seconds=10, penalty_seconds=1))
    for second in range(3):
        limiter.enter("app", 0, now=float(second))
        limiter.leave("app", 0, 0.01, now=float(second))
    with pytest.raises(Exception) as first:
        limiter.enter("app", 0, now=3.0)
    error = first.value
    assert getattr(error, "status", None) == 429
    assert getattr(error, "code", None) == "0x80072322"
    assert getattr(error, "headers", {})["Retry-After"] == "7"  # the oldest leaves at t=10
    retries = []
    for moment in (4.0, 4.5, 5.0):  # sending while throttled makes the wait longer
        with pytest.raises(Exception) as again:
            limiter.enter("app", 0, now=moment)
        retries.append(int(getattr(again.value, "headers", {})["Retry-After"]))
    assert retries[0] > 6 and retries == sorted(retries) and retries[-1] > retries[0]
    limiter.enter("other", 0, now=5.0)  # limits are per caller
    limiter.enter("app", 1, now=5.0)  # and per web server
    limiter.enter("app", 0, now=200.0)  # after the wait, admitted again


def test_concurrency_and_execution_time_limits() -> None:
    limiter = Limiter(ServiceLimits(concurrent_requests=2, execution_seconds_per_window=5))
    limiter.enter("app", 0, now=0)
    limiter.enter("app", 0, now=0)
    with pytest.raises(Exception) as busy:
        limiter.enter("app", 0, now=0)
    assert getattr(busy.value, "code", None) == "0x80072326"
    limiter.leave("app", 0, 3.0, now=3)
    limiter.leave("app", 0, 3.0, now=3)
    with pytest.raises(Exception) as slow:
        limiter.enter("app", 0, now=4)
    assert getattr(slow.value, "code", None) == "0x80072321"


def test_429_over_http_with_retry_after() -> None:
    config = EmulatorConfig(limits=ServiceLimits(requests_per_window=2), costs=CostModel.free())
    with running_emulator(config) as emu, api_client(emu) as client:
        assert client.get("WhoAmI").status_code == 200
        assert client.get("WhoAmI").status_code == 200
        throttled = client.get("WhoAmI")
        assert throttled.status_code == 429
        assert int(throttled.headers["Retry-After"]) >= 299
        assert throttled.json()["error"] == {
            "code": "0x80072322",
            "message": "Number of requests exceeded the limit of 2"
            " over time window of 300 seconds.",
        }
        stats = httpx.get(f"{emu.url}/_emulator/stats", timeout=10).json()
        assert stats["counters"]["throttled"] == 1
        assert stats["statuses"]["429"] == 1


def test_faults_are_set_read_and_seeded(emulator: RunningEmulator, client: httpx.Client) -> None:
    admin = f"{emulator.url}/_emulator/faults"
    assert httpx.get(admin, timeout=10).json()["error_500_rate"] == 0.0
    set_faults = httpx.patch(admin, json={"error_500_rate": 0.5, "seed": 7}, timeout=10)
    assert set_faults.status_code == 200
    first = [client.get("WhoAmI").status_code for _ in range(20)]
    httpx.patch(admin, json={"seed": 7}, timeout=10)  # same seed, same sequence
    second = [client.get("WhoAmI").status_code for _ in range(20)]
    assert first == second
    assert set(first) == {200, 500}
    failure = next(r for r in (client.get("WhoAmI") for _ in range(50)) if r.status_code == 500)
    assert failure.json()["error"]["code"] == "0x80040216"
    httpx.put(admin, json={"throttle_rate": 1.0, "storm_retry_after": 3}, timeout=10)
    storm = client.get("WhoAmI")
    assert storm.status_code == 429
    assert storm.headers["Retry-After"] == "3"
    httpx.put(admin, json={"error_503_rate": 1.0}, timeout=10)
    assert client.get("WhoAmI").status_code == 503
    httpx.put(admin, json={"storm_seconds": 30}, timeout=10)
    assert client.get("WhoAmI").status_code == 429
    assert httpx.put(admin, json={}, timeout=10).json()["storm_seconds"] == 0.0
    assert client.get("WhoAmI").status_code == 200


@pytest.mark.parametrize(
    "body", [{"error_500_rate": 2}, {"nope": 1}, {"seed": "x"}, [1], {"latency_ms": -1}]
)
def test_bad_fault_settings_are_400(emulator: RunningEmulator, body: object) -> None:
    response = httpx.patch(f"{emulator.url}/_emulator/faults", json=body, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_fault_settings"


def test_dropped_connection_after_the_work_is_done(
    emulator: RunningEmulator, client: httpx.Client, table: str
) -> None:
    httpx.put(f"{emulator.url}/_emulator/faults", json={"drop_rate": 1.0}, timeout=10)
    with pytest.raises(httpx.RemoteProtocolError):
        client.patch("apex_campaignmetricses(apex_runid='dropped')", json={})
    httpx.put(f"{emulator.url}/_emulator/faults", json={}, timeout=10)
    assert client.get("apex_campaignmetricses(apex_runid='dropped')").status_code == 200
    stats = httpx.get(f"{emulator.url}/_emulator/stats", timeout=10).json()
    assert stats["counters"]["faults.dropped"] == 1
    assert stats["rows"]["rows.created"] == 1
    assert stats["tables"]["apex_campaignmetricses"] == 1


def test_latency_is_added(emulator: RunningEmulator, client: httpx.Client) -> None:
    httpx.put(f"{emulator.url}/_emulator/faults", json={"latency_ms": 150}, timeout=10)
    client.get("WhoAmI")
    recent = httpx.get(f"{emulator.url}/_emulator/stats", timeout=10).json()["recent"]
    assert recent[-1]["path"].endswith("/WhoAmI")
    assert recent[-1]["ms"] >= 150


def test_reset_clears_tables_and_stats(
    emulator: RunningEmulator, client: httpx.Client, table: str
) -> None:
    client.patch("apex_campaignmetricses(apex_runid='r')", json={})
    reset = httpx.post(f"{emulator.url}/_emulator/reset", json={}, timeout=10)
    assert reset.json() == {"reset": True}
    stats = httpx.get(f"{emulator.url}/_emulator/stats", timeout=10).json()
    assert stats["tables"] == {}
    assert stats["counters"] == {}
    assert client.get("EntityDefinitions").json()["value"] == []
    assert client.get("apex_campaignmetricses").status_code == 404


def test_faults_from_the_config() -> None:
    config = EmulatorConfig(faults=FaultSettings(error_503_rate=1.0), costs=CostModel.free())
    with running_emulator(config) as emu, api_client(emu) as client:
        response = client.get("WhoAmI")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
    with pytest.raises(ValueError, match="throttle_rate"):
        FaultSettings(throttle_rate=1.5)


async def test_concurrent_requests_over_the_limit_get_429() -> None:
    config = EmulatorConfig(
        limits=ServiceLimits(concurrent_requests=2, web_servers=1),  # all on one server
        faults=FaultSettings(latency_ms=300),
        costs=CostModel.free(),
    )
    with running_emulator(config) as emu:
        token = get_token(emu)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=emu.api + "/", headers=headers, timeout=10) as client:
            answers = await asyncio.gather(*(client.get("WhoAmI") for _ in range(5)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 429, 429, 429]
    busy = next(a for a in answers if a.status_code == 429)
    assert busy.json()["error"]["code"] == "0x80072326"
    assert busy.headers["Retry-After"] == "1"
