"""CreateMultiple, UpdateMultiple and UpsertMultiple answered as documented, all or nothing.

CreateMultiple: 200 with ``CreateMultipleResponse`` (``Ids``); UpdateMultiple and
UpsertMultiple: 204 with no body ("The UpsertMultipleResponse complex type is not returned").
On a standard table "any error ... causes the entire operation to roll back"."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from tests.emulator.conftest import SET, TABLE

ODATA_TYPE = f"Microsoft.Dynamics.CRM.{TABLE}"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def action(name: str) -> str:
    return f"{SET}/Microsoft.Dynamics.CRM.{name}"


def by_key(run: str, **values: Any) -> dict[str, Any]:
    return {"@odata.type": ODATA_TYPE, "@odata.id": f"{SET}(apex_runid='{run}')", **values}


def table_rows(client: httpx.Client) -> dict[str, int | None]:
    found = client.get(SET, params={"$select": "apex_runid,apex_tokensin"}).json()["value"]
    return {r["apex_runid"]: r["apex_tokensin"] for r in found}


def test_create_multiple_answers_200_with_the_ids(client: httpx.Client, table: str) -> None:
    targets = [
        {"@odata.type": ODATA_TYPE, "apex_runid": f"c{n}", "apex_tokensin": n} for n in range(3)
    ]
    answer = client.post(action("CreateMultiple"), json={"Targets": targets})
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"@odata.context", "Ids"}
    assert body["@odata.context"] == (
        f"{client.base_url}$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse"
    )
    assert len(body["Ids"]) == 3 and all(GUID.match(i) for i in body["Ids"])
    for n, row_id in enumerate(body["Ids"]):  # in the order of the targets
        assert client.get(f"{SET}({row_id})").json()["apex_runid"] == f"c{n}"


def test_update_and_upsert_multiple_answer_204_without_a_body(
    client: httpx.Client, table: str
) -> None:
    upserted = client.post(
        action("UpsertMultiple"),
        json={"Targets": [by_key("u1", apex_tokensin=1), by_key("u2", apex_tokensin=2)]},
    )
    assert upserted.status_code == 204
    assert upserted.content == b""
    assert "content-type" not in upserted.headers
    again = client.post(  # one update, one create
        action("UpsertMultiple"),
        json={"Targets": [by_key("u2", apex_tokensin=20), by_key("u3", apex_tokensin=3)]},
    )
    assert (again.status_code, again.content) == (204, b"")
    assert table_rows(client) == {"u1": 1, "u2": 20, "u3": 3}
    ids = {
        r["apex_runid"]: r["apex_campaignmetricsid"]
        for r in client.get(SET, params={"$select": "apex_runid"}).json()["value"]
    }
    targets = [
        {"@odata.type": ODATA_TYPE, "apex_campaignmetricsid": ids["u1"], "apex_tokensin": 10},
        {"@odata.type": ODATA_TYPE, "apex_campaignmetricsid": ids["u3"], "apex_tokensin": 30},
    ]
    updated = client.post(action("UpdateMultiple"), json={"Targets": targets})
    assert (updated.status_code, updated.content) == (204, b"")
    assert table_rows(client) == {"u1": 10, "u2": 20, "u3": 30}


MISSING = str(uuid.UUID(int=7))


@pytest.mark.parametrize(
    ("name", "bad", "status", "error"),
    [
        (
            "UpsertMultiple",
            by_key("b", apex_phase="x" * 17),
            400,
            {
                "code": "0x80044331",
                "message": "A validation error occurred. The length of the 'apex_phase' "
                "attribute of the 'apex_campaignmetrics' entity exceeded the maximum allowed "
                "length of '16'.",
            },
        ),
        (
            "CreateMultiple",
            {"@odata.type": ODATA_TYPE, "apex_runid": "b", "apex_nope": 1},
            400,
            {
                "code": "0x80060888",
                "message": "Could not find a property named 'apex_nope' on type "
                "'Microsoft.Dynamics.CRM.apex_campaignmetrics'.",
            },
        ),
        (
            "UpdateMultiple",
            {"@odata.type": ODATA_TYPE, "apex_campaignmetricsid": MISSING, "apex_tokensin": 5},
            404,
            {
                "code": "0x80040217",
                "message": f"apex_campaignmetrics With Id = {MISSING} Does Not Exist",
            },
        ),
    ],
)
def test_one_bad_target_rolls_back_the_whole_message(
    client: httpx.Client,
    table: str,
    name: str,
    bad: dict[str, Any],
    status: int,
    error: dict[str, str],
) -> None:
    assert client.patch(f"{SET}(apex_runid='kept')", json={"apex_tokensin": 1}).status_code == 204
    kept = client.get(f"{SET}(apex_runid='kept')").json()["apex_campaignmetricsid"]
    if name == "UpdateMultiple":
        good = {"@odata.type": ODATA_TYPE, "apex_campaignmetricsid": kept, "apex_tokensin": 2}
    elif name == "UpsertMultiple":
        good = by_key("kept", apex_tokensin=2)
    else:
        good = {"@odata.type": ODATA_TYPE, "apex_runid": "new", "apex_tokensin": 2}
    answer = client.post(action(name), json={"Targets": [good, bad]})
    assert answer.status_code == status
    assert answer.json()["error"] == error
    assert table_rows(client) == {"kept": 1}  # the good target before the bad one rolled back
    audits = client.get("audits").json()["value"]
    assert [a["operation"] for a in audits] == [1]  # only the create of "kept"
