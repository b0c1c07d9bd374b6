"""Fixtures of the sync engine tests: the shared databases (tests/conftest.py), a fake sink, and
the emulator served over real HTTP with the Dataverse table provisioned."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.dataverse.provision import provision
from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.settings import Settings
from apex_metrics.sync.engine import Engine, EngineConfig
from apex_metrics.sync.fakes import FakeSink
from apex_metrics.sync.sink import DataverseSink
from apex_metrics.testing import RunningEmulator, running_emulator


@pytest.fixture
def fake_sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """Default limits and no faults; keys turn Active at once. Tests may override."""
    return EmulatorConfig(costs=CostModel.free(), key_activation_delay_seconds=0)


@pytest.fixture
def emulator(emulator_config: EmulatorConfig) -> Iterator[RunningEmulator]:
    with running_emulator(emulator_config) as emu:
        yield emu


def sync_settings(database_url: str, emulator: RunningEmulator, **values: object) -> Settings:
    """Settings from the test only (no .env, no environment)."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=database_url, dataverse_url=emulator.url, **values
    )


@dataclass
class Stack:
    """PostgreSQL + the emulator over HTTP with the table provisioned, and a client to read it."""

    database_url: str
    emulator: RunningEmulator
    settings: Settings
    client: DataverseClient

    async def set_faults(self, **faults: float) -> None:
        async with httpx.AsyncClient() as http:
            answer = await http.patch(f"{self.emulator.url}/_emulator/faults", json=faults)
            answer.raise_for_status()

    async def stats(self) -> dict[str, object]:
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{self.emulator.url}/_emulator/stats")
            answer.raise_for_status()
            data: dict[str, object] = answer.json()
            return data


@pytest.fixture
async def stack(database_url: str, emulator: RunningEmulator) -> AsyncIterator[Stack]:
    settings = sync_settings(database_url, emulator)
    async with open_dataverse(settings) as client:
        report = await provision(client, poll_interval=0.05, key_timeout=30)
        assert not report.problems
        yield Stack(database_url, emulator, settings, client)


def client_engine(config: EngineConfig, client: DataverseClient) -> Engine:
    """An engine that writes through ``client`` (UpsertMultiple), paced by its flow."""
    return Engine(config, DataverseSink(client), client.flow.pacer)
