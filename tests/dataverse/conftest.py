"""Fixtures of the Dataverse client tests: mock-transport clients now, emulator servers below."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from apex_metrics.dataverse.auth import StaticTokenProvider
from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.dataverse.flow import Flow
from apex_metrics.dataverse.pacing import Pacer
from apex_metrics.dataverse.retry import RetryPolicy
from apex_metrics.emulator import CostModel, EmulatorConfig, create_app
from apex_metrics.settings import Settings
from apex_metrics.testing import running_emulator

ENV = "https://org.example.test"
FAST_RETRY = RetryPolicy(base_wait=0.01, max_wait=0.05)


def fast_flow(concurrency: int = 16, retry: RetryPolicy = FAST_RETRY, **pacer: Any) -> Flow:
    """A flow for tests of other things than pacing: short back-off, no rest between requests."""
    options: dict[str, Any] = {"utilization": 1.0, "seconds_per_request": 0.0, **pacer}
    return Flow(Pacer(concurrency=concurrency, **options), retry)


Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
async def mock_client() -> AsyncIterator[Callable[..., DataverseClient]]:
    """Build a DataverseClient whose HTTP answers come from a handler function."""
    opened: list[httpx.AsyncClient] = []

    def make(handler: Handler, **kw: object) -> DataverseClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        opened.append(http)
        kw.setdefault("flow", fast_flow())
        return DataverseClient(http, ENV, StaticTokenProvider("tok-123"), **kw)  # type: ignore[arg-type]

    yield make
    for http in opened:
        await http.aclose()


# --- the emulator, in process (ASGI) and over real HTTP -------------------------------------------

LOCAL_URL = "http://127.0.0.1:8765"  # any loopback URL works in process


def local_settings(url: str = LOCAL_URL, **values: object) -> Settings:
    """Settings that read no .env file and no environment: only what the test gives."""
    return Settings(_env_file=None, dataverse_url=url, **values)  # type: ignore[call-arg]


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """A fast emulator: keys turn Active after 0.2 s."""
    return EmulatorConfig(costs=CostModel.free(), key_activation_delay_seconds=0.2)


@pytest.fixture
async def dataverse(emulator_config: EmulatorConfig) -> AsyncIterator[DataverseClient]:
    """A client talking to the emulator in process through httpx.ASGITransport."""
    transport = httpx.ASGITransport(app=create_app(emulator_config))
    async with open_dataverse(local_settings(), transport=transport, flow=fast_flow()) as client:
        yield client


@pytest.fixture
def http_emulator(emulator_config: EmulatorConfig) -> Iterator[Any]:
    """The emulator served by uvicorn on a free loopback port."""
    with running_emulator(emulator_config) as server:
        yield server


@pytest.fixture
def tls_emulator(emulator_config: EmulatorConfig) -> Iterator[Any]:
    """The emulator over https with a test CA (``.ca_file``)."""
    with running_emulator(emulator_config, tls=True) as server:
        yield server
