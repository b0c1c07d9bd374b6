"""The client against the emulator over real HTTP (uvicorn on loopback), https + MSAL, faults."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from apex_metrics import metric
from apex_metrics.dataverse import errors as e
from apex_metrics.dataverse.auth import MsalTokenProvider
from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.dataverse.provision import provision
from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.testing import running_emulator

from .conftest import fast_flow, local_settings

SET = metric.ENTITY_SET
KEY = metric.ALTERNATE_KEY_COLUMN


def body(i: int) -> dict[str, Any]:
    values = {"campaign_id": "c", "run_id": f"r-{i}", "tokens_in": i}
    return metric.parse_metric(values).to_dataverse()


async def set_faults(client: Any, server: Any, **changes: float) -> None:
    """Change the emulator's fault settings at run time (admin API, no token needed)."""
    response = await client.http.patch(f"{server.url}/_emulator/faults", json=changes)
    assert response.status_code == 200, response.text


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    return subprocess.run(
        [sys.executable, "-m", "apex_metrics", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_whoami_provision_and_batch_over_http(http_emulator: Any) -> None:
    async with open_dataverse(local_settings(http_emulator.url), flow=fast_flow()) as client:
        me = await client.whoami()
        assert me.dop_hint and me.environment_url == http_emulator.url
        report = await provision(client, poll_interval=0.05)
        assert report.ok and report.key_status == "Active"
        outcomes = await client.upsert_many(SET, KEY, [(f"r-{i}", body(i)) for i in range(1000)])
        assert {o.outcome for o in outcomes} == {"upserted"}
        outcomes = await client.upsert_many(SET, KEY, [(f"r-{i}", body(i)) for i in range(10)])
        assert {o.outcome for o in outcomes} == {"upserted"}
        rows = [r async for r in client.query(SET, select=[KEY], page_size=300)]
        assert len(rows) == 1000


def test_cli_whoami_and_provision(http_emulator: Any) -> None:
    env = {"APEX_DATAVERSE_URL": http_emulator.url}
    who = cli("dataverse", "whoami", "--json", env=env)
    assert who.returncode == 0, who.stderr
    data = json.loads(who.stdout)
    assert data["organization_id"] and data["user_id"] and data["dop_hint"] >= 1
    plan = cli("dataverse", "provision", "--dry-run", "--json", env=env)
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["changed"] is False
    first = cli("dataverse", "provision", env=env)
    assert first.returncode == 0, first.stderr
    assert "Active" in first.stderr, "progress while waiting for the key"
    second = cli("dataverse", "provision", "--json", env=env)
    assert second.returncode == 0 and json.loads(second.stdout)["steps"] == []
    human = cli("dataverse", "provision", env=env)
    assert human.stdout.startswith("nothing to change")

    bad = cli("dataverse", "whoami", env={**env, "APEX_CLIENT_SECRET": "wrong"})
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "AADSTS7000215" in lines[0] and "APEX_CLIENT_SECRET" in lines[0]
    assert "Traceback" not in bad.stderr and "wrong" not in bad.stdout


async def test_msal_over_https_with_test_ca(tls_emulator: Any) -> None:
    settings = local_settings(tls_emulator.url, ca_bundle=tls_emulator.ca_file)
    async with open_dataverse(settings) as client:
        assert isinstance(client.tokens, MsalTokenProvider)
        me = await client.whoami()
        await client.whoami()
        assert me.user_id
        assert client.tokens.fetches == 1, "the token is cached"
    async with open_dataverse(
        local_settings(tls_emulator.url, client_secret="nope", ca_bundle=tls_emulator.ca_file)
    ) as client:
        with pytest.raises(e.InvalidClientSecret):
            await client.whoami()
    other_tenant = local_settings(
        tls_emulator.url, tenant_id="elsewhere", ca_bundle=tls_emulator.ca_file
    )
    async with open_dataverse(other_tenant) as client:
        with pytest.raises(e.UnknownClient):
            await client.whoami()
    async with open_dataverse(local_settings(tls_emulator.url)) as client:
        with pytest.raises(e.InsecureTransport) as caught:
            await client.whoami()
        assert "APEX_CA_BUNDLE" in (caught.value.hint or "")


async def test_throttling_storm_pauses_then_work_completes(http_emulator: Any) -> None:
    flow = fast_flow(concurrency=8)
    settings = local_settings(http_emulator.url)
    async with open_dataverse(settings, flow=flow) as client:
        await client.tokens.token()
        # From now on, for 1.5 s, every Web API request gets 429 with Retry-After: 1.
        await set_faults(client, http_emulator, storm_seconds=1.5, storm_retry_after=1)
        started = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(*(client.whoami() for _ in range(20))), timeout=60
        )
        assert len(results) == 20
        assert flow.stats.throttled >= 1
        assert all(wait == 1.0 for wait in flow.stats.retry_after)
        assert time.monotonic() - started >= 1.0, "the pause lasted Retry-After at least"
        assert flow.stats.paused_seconds >= 1.0


async def test_5xx_and_dropped_connections_are_retried_to_exactly_once() -> None:
    config = EmulatorConfig(costs=CostModel.free(), key_activation_delay_seconds=0.0)
    with running_emulator(config) as server:
        async with open_dataverse(local_settings(server.url), flow=fast_flow()) as client:
            await provision(client, poll_interval=0.05)
            await set_faults(client, server, error_503_rate=0.15, drop_rate=0.2, seed=7)
            for start in range(0, 200, 20):
                items = [(f"r-{i}", body(i)) for i in range(start, start + 20)]
                outcomes = await client.upsert_many(SET, KEY, items)
                assert all(o.ok for o in outcomes)
            assert client.flow.stats.retries > 0
            await set_faults(client, server, error_503_rate=0.0, drop_rate=0.0)
            rows = [r async for r in client.query(SET, select=[KEY])]
            assert sorted(r[KEY] for r in rows) == sorted(f"r-{i}" for i in range(200))


async def test_post_create_is_not_retried_after_a_dropped_connection() -> None:
    config = EmulatorConfig(costs=CostModel.free(), key_activation_delay_seconds=0.0)
    with running_emulator(config) as server:
        async with open_dataverse(local_settings(server.url), flow=fast_flow()) as client:
            await provision(client, poll_interval=0.05)
            await set_faults(client, server, drop_rate=1.0)
            with pytest.raises(e.TransientError) as caught:
                await client.create(SET, body(1) | {KEY: "r-1"})
            assert "not retried" in (caught.value.hint or "")
            await set_faults(client, server, drop_rate=0.0)
            rows = [r async for r in client.query(SET, select=[KEY])]
            assert [r[KEY] for r in rows] == ["r-1"], "executed once, never re-sent"


async def test_msal_token_is_renewed_before_it_expires() -> None:
    config = EmulatorConfig(costs=CostModel.free(), token_lifetime_seconds=4)
    with running_emulator(config, tls=True) as server:
        settings = local_settings(server.url, ca_bundle=server.ca_file)
        async with open_dataverse(settings) as client:
            tokens = client.tokens
            assert isinstance(tokens, MsalTokenProvider)
            first = await tokens.token()
            assert await tokens.token() == first and tokens.fetches == 1
            await asyncio.sleep(2.1)  # past half of the 4 s lifetime: renewed before expiry
            await client.whoami()
            assert tokens.fetches == 2


async def test_requests_spread_over_web_servers_unless_affinity_is_kept(
    http_emulator: Any,
) -> None:
    """The client refuses the ARRAffinity cookie, so its requests go round the two web servers
    (each with limits of its own); APEX_DATAVERSE_AFFINITY=true keeps the cookie and one server."""

    async def served() -> list[int]:
        async with httpx.AsyncClient() as http:
            stats = (await http.get(f"{http_emulator.url}/_emulator/stats")).json()
        return [int(s["requests"]) for s in stats["web_servers"]]

    async with open_dataverse(local_settings(http_emulator.url), flow=fast_flow()) as client:
        for _ in range(6):
            await client.whoami()
        assert not client.http.cookies, "no cookie kept"
    assert await served() == [3, 3]
    pinned = local_settings(http_emulator.url, dataverse_affinity=True)
    async with open_dataverse(pinned, flow=fast_flow()) as client:
        for _ in range(6):
            await client.whoami()
        assert "ARRAffinity" in client.http.cookies
    after = await served()
    assert sorted(after) == [3, 9], "the first answer's server, then always that one"
