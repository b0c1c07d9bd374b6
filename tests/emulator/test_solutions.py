"""Solutions in the emulator: publishers, solutions, solution components, the
MSCRM.SolutionUniqueName header, PublishXml / PublishAllXml, the organization's auditing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.testing import RunningEmulator, running_emulator
from tests.emulator.conftest import SET, TABLE, api_client, emulator_stats, label

IN_SOLUTION = {"MSCRM.SolutionUniqueName": "apexmetrics"}
NAME_COLUMN = {
    "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
    "SchemaName": "apex_Name",
    "IsPrimaryName": True,
    "MaxLength": 100,
    "DisplayName": label("Name"),
}
TABLE_BODY = {
    "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
    "SchemaName": "apex_CampaignMetrics",
    "DisplayName": label("Campaign metrics"),
    "OwnershipType": "UserOwned",
    "IsAuditEnabled": {"Value": True},
    "Attributes": [NAME_COLUMN],
}
RUN_ID = {
    "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
    "SchemaName": "apex_RunId",
    "MaxLength": 64,
    "DisplayName": label("Run id"),
}
PATH = f"EntityDefinitions(LogicalName='{TABLE}')"


@pytest.fixture(scope="module")
def served() -> Iterator[RunningEmulator]:
    config = EmulatorConfig(
        costs=CostModel.free(),
        key_activation_delay_seconds=0,
        solutions=(("apexmetrics", "apex"), ("contosocrm", "cont")),
    )
    with running_emulator(config) as server:
        yield server


@pytest.fixture
def client(served: RunningEmulator) -> Iterator[httpx.Client]:
    assert httpx.post(f"{served.url}/_emulator/reset", json={}, timeout=10).status_code == 200
    with api_client(served) as http:
        yield http


def solution_id(client: httpx.Client, name: str) -> str:
    found = client.get("solutions", params={"$filter": f"uniquename eq '{name}'"}).json()
    return str(found["value"][0]["solutionid"])


def test_solutions_and_publishers_are_entity_sets(client: httpx.Client) -> None:
    solutions = client.get(
        "solutions", params={"$select": "uniquename,ismanaged,_publisherid_value"}
    ).json()["value"]
    names = {s["uniquename"]: s for s in solutions}
    assert set(names) == {"Default", "apexmetrics", "contosocrm"}
    assert not any(s["ismanaged"] for s in solutions)
    publisher = client.get(f"publishers({names['contosocrm']['_publisherid_value']})").json()
    assert publisher["customizationprefix"] == "cont"
    assert publisher["publisherid"] == names["contosocrm"]["_publisherid_value"]
    prefixes = client.get("publishers", params={"$filter": "customizationprefix eq 'apex'"}).json()[
        "value"
    ]
    assert [p["uniquename"] for p in prefixes] == ["apexpublisher"]
    assert client.get("solutions/$count").text == "3"
    refused = client.post("solutions", json={"uniquename": "x"})
    assert refused.status_code == 405


def test_created_metadata_becomes_components_queryable_with_filter(client: httpx.Client) -> None:
    assert client.post("EntityDefinitions", json=TABLE_BODY, headers=IN_SOLUTION).status_code == 204
    column = client.post(f"{PATH}/Attributes", json=RUN_ID, headers=IN_SOLUTION)
    assert column.status_code == 204
    key = {"SchemaName": "apex_RunIdKey", "KeyAttributes": ["apex_runid"]}
    assert client.post(f"{PATH}/Keys", json=key, headers=IN_SOLUTION).status_code == 204
    outside = {**RUN_ID, "SchemaName": "apex_Phase"}  # no header: the Default solution only
    assert client.post(f"{PATH}/Attributes", json=outside).status_code == 204

    table_id = client.get(PATH, params={"$select": "MetadataId"}).json()["MetadataId"]
    column_id = client.get(f"{PATH}/Attributes(LogicalName='apex_runid')").json()["MetadataId"]
    key_id = client.get(f"{PATH}/Keys").json()["value"][0]["MetadataId"]
    ours = solution_id(client, "apexmetrics")
    found = client.get(
        "solutioncomponents",
        params={
            "$filter": f"_solutionid_value eq {ours}",
            "$select": "objectid,componenttype,_solutionid_value",
            "$orderby": "componenttype",
        },
    ).json()["value"]
    assert [(c["componenttype"], c["objectid"]) for c in found] == [
        (1, table_id),
        (2, column_id),
        (14, key_id),
    ]
    attributes = client.get(
        "solutioncomponents",
        params={"$filter": f"componenttype eq 2 and _solutionid_value eq {ours}"},
    ).json()["value"]
    assert [a["objectid"] for a in attributes] == [column_id]
    default = solution_id(client, "Default")
    everything = client.get(
        "solutioncomponents/$count", params={"$filter": f"_solutionid_value eq {default}"}
    )
    assert everything.text == "4", "every component is also in the Default solution"
    one = client.get(f"solutioncomponents({found[0]['solutioncomponentid']})").json()
    assert one["objectid"] == table_id and one["_solutionid_value"] == ours


def test_an_unknown_solution_creates_nothing(client: httpx.Client) -> None:
    unknown = {"MSCRM.SolutionUniqueName": "nosuchsolution"}
    answer = client.post("EntityDefinitions", json=TABLE_BODY, headers=unknown)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == "0x80040217" and "nosuchsolution" in error["message"]
    assert client.get("EntityDefinitions").json()["value"] == []
    assert client.get("solutioncomponents/$count").text == "0"


def test_an_update_with_the_header_adds_the_table(client: httpx.Client) -> None:
    assert client.post("EntityDefinitions", json=TABLE_BODY).status_code == 204
    theirs = solution_id(client, "contosocrm")
    filter_ = {"$filter": f"_solutionid_value eq {theirs}"}
    assert client.get("solutioncomponents", params=filter_).json()["value"] == []
    flags = {"ChangeTrackingEnabled": True}
    headers = {"MSCRM.SolutionUniqueName": "contosocrm", "MSCRM.MergeLabels": "true"}
    assert client.put(PATH, json=flags, headers=headers).status_code == 204
    assert len(client.get("solutioncomponents", params=filter_).json()["value"]) == 1


def test_publish_is_accepted_and_recorded(served: RunningEmulator, client: httpx.Client) -> None:
    entities = "<entities><entity>apex_campaignmetrics</entity></entities>"
    xml = f"<importexportxml>{entities}</importexportxml>"
    assert client.post("PublishXml", json={"ParameterXml": xml}).status_code == 204
    assert client.post("PublishAllXml").status_code == 204
    missing = client.post("PublishXml", json={})
    assert missing.status_code == 400 and "ParameterXml" in missing.json()["error"]["message"]
    broken = client.post("PublishXml", json={"ParameterXml": "<importexportxml>"})
    assert broken.status_code == 400
    assert emulator_stats(served)["publishes"] == [
        {"action": "PublishXml", "entities": ["apex_campaignmetrics"]},
        {"action": "PublishAllXml", "entities": []},
    ]
    httpx.post(f"{served.url}/_emulator/reset", json={}, timeout=10)
    assert emulator_stats(served)["publishes"] == []


def test_reset_keeps_the_seeded_solutions_and_forgets_components(
    served: RunningEmulator, client: httpx.Client
) -> None:
    assert client.post("EntityDefinitions", json=TABLE_BODY, headers=IN_SOLUTION).status_code == 204
    assert client.get("solutioncomponents/$count").text == "2"
    assert httpx.post(f"{served.url}/_emulator/reset", json={}, timeout=10).status_code == 200
    assert client.get("solutioncomponents/$count").text == "0"
    assert client.get("solutions/$count").text == "3"


@pytest.mark.parametrize("auditing", [True, False])
def test_organization_auditing(auditing: bool) -> None:
    config = EmulatorConfig(
        costs=CostModel.free(), key_activation_delay_seconds=0, org_auditing=auditing
    )
    with running_emulator(config) as served, api_client(served) as client:
        organizations = client.get("organizations", params={"$select": "isauditenabled"})
        assert [o["isauditenabled"] for o in organizations.json()["value"]] == [auditing]
        who = client.get("WhoAmI").json()
        org = client.get(f"organizations({who['OrganizationId']})").json()
        assert org["isauditenabled"] is auditing
        assert client.post("EntityDefinitions", json=TABLE_BODY).status_code == 204
        assert client.post(f"{PATH}/Attributes", json=RUN_ID).status_code == 204
        assert client.post(SET, json={"apex_runid": "r-1"}).status_code == 204
        audits = client.get("audits").json()["value"]
        assert len(audits) == (1 if auditing else 0), "no audit records while it is off"
