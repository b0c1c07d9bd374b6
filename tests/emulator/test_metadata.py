"""EntityDefinitions: create table, columns, keys (Pending then Active), flags, names."""

from __future__ import annotations

import time

import httpx
import pytest

from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.emulator.metadata import pluralise
from apex_metrics.testing import running_emulator
from tests.emulator.conftest import SET, TABLE, api_client, create_metrics_table, label


@pytest.mark.parametrize(
    ("logical", "entity_set"),
    [
        ("apex_campaignmetrics", "apex_campaignmetricses"),
        ("account", "accounts"),
        ("opportunity", "opportunities"),
        ("new_box", "new_boxes"),
        ("new_day", "new_days"),
    ],
)
def test_entity_set_name_pluralisation(logical: str, entity_set: str) -> None:
    assert pluralise(logical) == entity_set


def test_table_definition_reads_back(client: httpx.Client, table: str) -> None:
    response = client.get(
        f"EntityDefinitions(LogicalName='{TABLE}')",
        params={"$select": "EntitySetName,PrimaryIdAttribute,PrimaryNameAttribute,SchemaName"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["EntitySetName"] == SET
    assert body["PrimaryIdAttribute"] == "apex_campaignmetricsid"
    assert body["PrimaryNameAttribute"] == "apex_name"
    assert body["SchemaName"] == "apex_CampaignMetrics"
    assert "DisplayName" not in body
    listing = client.get(
        "EntityDefinitions",
        params={"$select": "LogicalName,EntitySetName", "$filter": f"LogicalName eq '{TABLE}'"},
    ).json()
    assert [item["EntitySetName"] for item in listing["value"]] == [SET]
    none = client.get("EntityDefinitions", params={"$filter": "LogicalName eq 'nothing'"}).json()
    assert none["value"] == []


def test_flags_are_updated_by_put(client: httpx.Client, table: str) -> None:
    body = client.get(f"EntityDefinitions(LogicalName='{TABLE}')").json()
    assert body["ChangeTrackingEnabled"] is True
    assert body["IsAuditEnabled"]["Value"] is True
    assert body["IsDuplicateDetectionEnabled"]["Value"] is False
    update = {"IsDuplicateDetectionEnabled": {"Value": True}}
    put = client.put(
        f"EntityDefinitions(LogicalName='{TABLE}')",
        json=update,
        headers={"MSCRM.MergeLabels": "true"},
    )
    assert put.status_code == 204
    body = client.get(f"EntityDefinitions(LogicalName='{TABLE}')").json()
    assert body["IsDuplicateDetectionEnabled"]["Value"] is True
    off = client.put(
        f"EntityDefinitions(LogicalName='{TABLE}')", json={"ChangeTrackingEnabled": False}
    )
    assert off.status_code == 400


def test_columns_carry_their_limits(client: httpx.Client, table: str) -> None:
    attrs = client.get(
        f"EntityDefinitions(LogicalName='{TABLE}')/Attributes",
        params={"$select": "LogicalName,AttributeType,MaxLength,Precision,MinValue,MaxValue"},
    ).json()["value"]
    by_name = {a["LogicalName"]: a for a in attrs}
    assert by_name["apex_runid"]["MaxLength"] == 64
    assert by_name["apex_costusd"]["Precision"] == 5
    assert by_name["apex_costusd"]["MaxValue"] == 99999.99999
    assert by_name["apex_tokensin"]["AttributeType"] == "Integer"
    one = client.get(
        f"EntityDefinitions(LogicalName='{TABLE}')/Attributes(LogicalName='apex_phase')"
    ).json()
    assert one["MaxLength"] == 16
    picklists = client.get(
        f"EntityDefinitions(LogicalName='{TABLE}')/Attributes/"
        "Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
        params={"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
    )
    assert picklists.status_code == 200
    assert picklists.json()["value"] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"SchemaName": "CampaignMetrics"}, "prefix"),
        ({"SchemaName": "apex_Other", "Attributes": []}, "exactly one primary name"),
        (
            {
                "SchemaName": "apex_Other",
                "Attributes": [
                    {
                        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                        "SchemaName": "apex_A",
                        "IsPrimaryName": True,
                    },
                    {
                        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                        "SchemaName": "apex_B",
                        "IsPrimaryName": True,
                    },
                ],
            },
            "exactly one primary name",
        ),
        ([], "JSON object"),
    ],
)
def test_bad_table_definitions(client: httpx.Client, body: object, message: str) -> None:
    response = client.post("EntityDefinitions", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_duplicate_table_and_column_are_refused(client: httpx.Client, table: str) -> None:
    again = client.post(
        "EntityDefinitions",
        json={
            "SchemaName": "apex_CampaignMetrics",
            "Attributes": [
                {
                    "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                    "SchemaName": "apex_Name",
                    "IsPrimaryName": True,
                }
            ],
        },
    )
    assert again.status_code == 400
    column = {
        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "SchemaName": "apex_RunId",
    }
    dup = client.post(f"EntityDefinitions(LogicalName='{TABLE}')/Attributes", json=column)
    assert dup.status_code == 400
    unknown = client.get("EntityDefinitions(LogicalName='apex_missing')")
    assert unknown.status_code == 404


def test_key_is_pending_then_active() -> None:
    with running_emulator(
        EmulatorConfig(key_activation_delay_seconds=0.5, costs=CostModel.free())
    ) as emu:
        with api_client(emu) as client:
            create_metrics_table(client)
            keys = client.get(f"EntityDefinitions(LogicalName='{TABLE}')/Keys").json()["value"]
            assert [(k["SchemaName"], k["EntityKeyIndexStatus"]) for k in keys] == [
                ("apex_RunIdKey", "Pending")
            ]
            assert keys[0]["KeyAttributes"] == ["apex_runid"]
            early = client.patch(f"{SET}(apex_runid='r')", json={})
            assert early.status_code == 400
            assert early.json()["error"]["code"] == "0x80060890"
            deadline = time.monotonic() + 10
            while True:
                listing = client.get(
                    "EntityDefinitions",
                    params={
                        "$select": "SchemaName",
                        "$expand": "Keys($select=EntityKeyIndexStatus)",
                    },
                ).json()
                if listing["value"][0]["Keys"][0]["EntityKeyIndexStatus"] == "Active":
                    break
                assert time.monotonic() < deadline, "the key never became Active"
                time.sleep(0.05)
            assert client.patch(f"{SET}(apex_runid='r')", json={}).status_code == 204


def test_key_rules(client: httpx.Client, table: str) -> None:
    url = f"EntityDefinitions(LogicalName='{TABLE}')/Keys"
    same_columns = client.post(
        url, json={"SchemaName": "apex_Other", "KeyAttributes": ["apex_runid"]}
    )
    assert same_columns.json()["error"]["code"] == "0x80060894"
    same_name = client.post(
        url, json={"SchemaName": "apex_RunIdKey", "KeyAttributes": ["apex_phase"]}
    )
    assert same_name.json()["error"]["code"] == "0x80060893"
    missing = client.post(url, json={"SchemaName": "apex_K", "KeyAttributes": ["apex_nothing"]})
    assert missing.status_code == 400
    undefined = client.get(f"{SET}(apex_phase='x')")
    assert undefined.status_code == 400
    assert undefined.json()["error"]["code"] == "0x80060890"


def test_publish_is_accepted(client: httpx.Client, table: str) -> None:
    xml = f"<importexportxml><entities><entity>{TABLE}</entity></entities></importexportxml>"
    assert client.post("PublishXml", json={"ParameterXml": xml}).status_code == 204
    assert client.post("PublishAllXml").status_code == 204


def test_sdk_create_entities_action(client: httpx.Client) -> None:
    body = {
        "Entities": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.ComplexEntityMetadata",
                "SchemaName": "new_Thing",
                "DisplayName": label("Thing"),
                "Attributes": [
                    {
                        "@odata.type": "Microsoft.Dynamics.CRM.ComplexStringAttributeMetadata",
                        "SchemaName": "new_Name",
                        "IsPrimaryName": True,
                        "MaxLength": 200,
                    },
                    {
                        "@odata.type": "Microsoft.Dynamics.CRM.ComplexIntegerAttributeMetadata",
                        "SchemaName": "new_Count",
                    },
                ],
            }
        ]
    }
    assert client.post("CreateEntities", json=body).status_code == 200
    info = client.get("EntityDefinitions(LogicalName='new_thing')?$select=EntitySetName").json()
    assert info["EntitySetName"] == "new_things"
    assert client.post("new_things", json={"new_count": 3}).status_code == 204
