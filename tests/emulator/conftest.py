"""Fixtures: a real emulator served by uvicorn on a free loopback port, and an authorised client."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.testing import RunningEmulator, running_emulator

TABLE = "apex_campaignmetrics"
SET = "apex_campaignmetricses"


def get_token(emu: RunningEmulator, client_id: str | None = None, secret: str | None = None) -> str:
    response = httpx.post(
        emu.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": client_id or emu.config.client_id,
            "client_secret": secret or emu.config.client_secret,
            "scope": f"{emu.url}/.default",
        },
        verify=ssl.create_default_context(cafile=emu.ca_file) if emu.ca_file else True,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def api_client(emu: RunningEmulator, token: str | None = None) -> httpx.Client:
    headers = {
        "Authorization": f"Bearer {token or get_token(emu)}",
        "Accept": "application/json",
        "OData-MaxVersion": "4.0",
        "OData-Version": "4.0",
    }
    return httpx.Client(base_url=emu.api + "/", headers=headers, timeout=20)


def emulator_stats(emu: RunningEmulator) -> dict[str, Any]:
    """``GET /_emulator/stats``."""
    response = httpx.get(f"{emu.url}/_emulator/stats", timeout=10)
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


def label(text: str) -> dict[str, Any]:
    return {"LocalizedLabels": [{"Label": text, "LanguageCode": 1033}]}


def create_metrics_table(client: httpx.Client) -> None:
    """The apex_CampaignMetrics table of design.md, its columns and its alternate key."""
    body = {
        "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
        "SchemaName": "apex_CampaignMetrics",
        "DisplayName": label("Campaign metrics"),
        "DisplayCollectionName": label("Campaign metrics"),
        "OwnershipType": "OrganizationOwned",
        "IsActivity": False,
        "HasActivities": False,
        "HasNotes": False,
        "Attributes": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                "SchemaName": "apex_Name",
                "IsPrimaryName": True,
                "MaxLength": 100,
                "FormatName": {"Value": "Text"},
                "DisplayName": label("Name"),
            }
        ],
    }
    assert client.post("EntityDefinitions", json=body).status_code == 204
    columns = [
        ("String", "apex_CampaignId", {"MaxLength": 64}),
        ("String", "apex_RunId", {"MaxLength": 64}),
        ("String", "apex_Phase", {"MaxLength": 16}),
        ("Integer", "apex_AgentsTotal", {"MinValue": 0, "MaxValue": 2147483647}),
        ("Integer", "apex_TokensIn", {"MinValue": 0, "MaxValue": 2147483647}),
        ("Decimal", "apex_CostUsd", {"Precision": 5, "MinValue": 0, "MaxValue": 99999.99999}),
        ("Decimal", "apex_SuccessRate", {"Precision": 2, "MinValue": 0, "MaxValue": 100}),
        ("DateTime", "apex_CreatedAt", {"Format": "DateAndTime"}),
    ]
    for kind, schema, extra in columns:
        attribute = {
            "@odata.type": f"Microsoft.Dynamics.CRM.{kind}AttributeMetadata",
            "SchemaName": schema,
            "DisplayName": label(schema),
            **extra,
        }
        url = f"EntityDefinitions(LogicalName='{TABLE}')/Attributes"
        response = client.post(url, json=attribute)
        assert response.status_code == 204, response.text
    key = {
        "SchemaName": "apex_RunIdKey",
        "KeyAttributes": ["apex_runid"],
        "DisplayName": label("Run"),
    }
    response = client.post(f"EntityDefinitions(LogicalName='{TABLE}')/Keys", json=key)
    assert response.status_code == 204, response.text
    flags = {"ChangeTrackingEnabled": True, "IsAuditEnabled": {"Value": True}}
    response = client.put(f"EntityDefinitions(LogicalName='{TABLE}')", json=flags)
    assert response.status_code == 204, response.text


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[RunningEmulator]:
    """One server per test module; each test starts from an empty store (admin reset)."""
    with running_emulator(
        EmulatorConfig(key_activation_delay_seconds=0, costs=CostModel.free())
    ) as emu:
        yield emu


@pytest.fixture
def emulator(shared_emulator: RunningEmulator) -> RunningEmulator:
    reset = httpx.post(f"{shared_emulator.url}/_emulator/reset", json={}, timeout=10)
    assert reset.status_code == 200
    faults = httpx.put(f"{shared_emulator.url}/_emulator/faults", json={}, timeout=10)
    assert faults.status_code == 200
    return shared_emulator


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with api_client(emulator) as http:
        yield http


@pytest.fixture
def table(client: httpx.Client) -> str:
    create_metrics_table(client)
    return SET
