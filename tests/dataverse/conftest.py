"""Fixtures of the Dataverse client tests: mock-transport clients now, emulator servers below."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from apex_metrics.dataverse.auth import StaticTokenProvider
from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.flow import FlowControl, RetryPolicy

ENV = "https://org.example.test"
FAST_RETRY = RetryPolicy(base_wait=0.01, max_wait=0.05)

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
async def mock_client() -> AsyncIterator[Callable[..., DataverseClient]]:
    """Build a DataverseClient whose HTTP answers come from a handler function."""
    opened: list[httpx.AsyncClient] = []

    def make(handler: Handler, **kw: object) -> DataverseClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        opened.append(http)
        kw.setdefault("retry", FAST_RETRY)
        kw.setdefault("flow", FlowControl(max_concurrency=16, initial_concurrency=16))
        return DataverseClient(http, ENV, StaticTokenProvider("tok-123"), **kw)  # type: ignore[arg-type]

    yield make
    for http in opened:
        await http.aclose()
