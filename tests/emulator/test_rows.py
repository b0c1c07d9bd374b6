"""Rows over real HTTP: create, retrieve, upsert by alternate key, conditional writes, delete."""

from __future__ import annotations

import http.client
import json
import uuid

import httpx
import pytest

from apex_metrics.testing import RunningEmulator
from tests.emulator.conftest import SET

ID = "apex_campaignmetricsid"


def test_create_answers_204_with_entity_id(client: httpx.Client, table: str) -> None:
    response = client.post(SET, json={"apex_runid": "r1", "apex_tokensin": 5})
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["OData-Version"] == "4.0"
    entity_id = response.headers["OData-EntityId"]
    assert entity_id.startswith(f"{client.base_url}{SET}(")
    row = client.get(entity_id).json()
    assert row["apex_runid"] == "r1"
    assert row["apex_tokensin"] == 5
    assert row["@odata.etag"].startswith('W/"')


def test_create_with_representation_answers_201(client: httpx.Client, table: str) -> None:
    response = client.post(
        f"{SET}?$select=apex_runid",
        json={"apex_runid": "r2"},
        headers={"Prefer": "return=representation"},
    )
    assert response.status_code == 201
    assert response.headers["Preference-Applied"] == "return=representation"
    body = response.json()
    assert body["apex_runid"] == "r2"
    assert "apex_tokensin" not in body
    assert response.headers["Content-Type"].startswith("application/json; odata.metadata=minimal")


def test_upsert_by_alternate_key_creates_then_updates(client: httpx.Client, table: str) -> None:
    url = f"{SET}(apex_runid='run-1')"
    created = client.patch(url, json={"apex_tokensin": 1})
    assert created.status_code == 204
    assert created.headers["OData-EntityId"].endswith(f"{SET}(apex_runid='run-1')")
    updated = client.patch(
        url, json={"apex_tokensin": 2}, headers={"Prefer": "return=representation"}
    )
    assert updated.status_code == 200
    assert updated.json()["apex_tokensin"] == 2
    again = client.patch(
        f"{SET}(apex_runid='run-2')", json={}, headers={"Prefer": "return=representation"}
    )
    assert again.status_code == 201
    assert again.json()["apex_runid"] == "run-2"
    rows = client.get(SET, params={"$select": "apex_runid"}).json()["value"]
    assert sorted(r["apex_runid"] for r in rows) == ["run-1", "run-2"]


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert set(body) == {"error"}
    return response.status_code, body["error"]["code"], body["error"]["message"]


def test_if_match_star_is_update_only(client: httpx.Client, table: str) -> None:
    response = client.patch(f"{SET}(apex_runid='none')", json={}, headers={"If-Match": "*"})
    status, code, message = error_of(response)
    assert (status, code) == (404, "0x80040217")
    assert "does not exist" in message
    assert client.get(SET).json()["value"] == []


def test_if_none_match_star_is_create_only(client: httpx.Client, table: str) -> None:
    url = f"{SET}(apex_runid='once')"
    assert client.patch(url, json={}, headers={"If-None-Match": "*"}).status_code == 204
    again = client.patch(url, json={"apex_tokensin": 9}, headers={"If-None-Match": "*"})
    status, _, message = error_of(again)
    assert status == 412
    assert message == "A record with matching key values already exists."
    assert client.get(url).json()["apex_tokensin"] is None


def test_duplicate_alternate_key_on_create(client: httpx.Client, table: str) -> None:
    assert client.post(SET, json={"apex_runid": "dup"}).status_code == 204
    status, code, message = error_of(client.post(SET, json={"apex_runid": "dup"}))
    assert (status, code) == (412, "0x80060892")
    assert message.startswith("Entity Key apex_RunIdKey violated.")


def test_etags_and_conditional_requests(client: httpx.Client, table: str) -> None:
    url = f"{SET}(apex_runid='e')"
    client.patch(url, json={"apex_tokensin": 1})
    first = client.get(url)
    etag = first.json()["@odata.etag"]
    assert first.headers["ETag"] == etag
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert (
        client.patch(url, json={"apex_tokensin": 2}, headers={"If-Match": etag}).status_code == 204
    )
    stale = client.patch(url, json={"apex_tokensin": 3}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert client.get(url).json()["apex_tokensin"] == 2
    assert client.get(url).json()["@odata.etag"] != etag


def test_delete_then_404(client: httpx.Client, table: str) -> None:
    url = f"{SET}(apex_runid='gone')"
    client.patch(url, json={})
    row_id = client.get(url).json()["apex_campaignmetricsid"]
    assert client.delete(f"{SET}({row_id})").status_code == 204
    status, code, message = error_of(client.get(f"{SET}({row_id})"))
    assert (status, code) == (404, "0x80040217")
    assert message == f"apex_campaignmetrics With Id = {row_id} Does Not Exist"
    assert client.delete(url).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        ({"apex_nope": 1}, 400, "0x80060888", "Could not find a property named 'apex_nope'"),
        (
            {"apex_phase": "x" * 17},
            400,
            "0x80044331",
            "exceeded the maximum allowed length of '16'",
        ),
        ({"apex_tokensin": -1}, 400, "0x80044331", "outside the valid range"),
        ({"apex_tokensin": 2**31}, 400, "0x80048d19", "System.Int64"),
        ({"apex_tokensin": "12"}, 400, "0x80048d19", "Edm.Int32"),
        ({"apex_costusd": 1.123456}, 400, "0x80044331", "more than 5 decimal places"),
        ({"apex_costusd": 100000}, 400, "0x80044331", "outside the valid range"),
        ({"apex_successrate": 100.001}, 400, "0x80044331", "outside the valid range"),
        ({"apex_createdat": "yesterday"}, 400, "0x80048d19", "Edm.DateTimeOffset"),
        ([1, 2], 400, "0x80048d19", "JSON object"),
    ],
)
def test_validation_errors(
    client: httpx.Client, table: str, body: object, status: int, code: str, fragment: str
) -> None:
    response = client.patch(f"{SET}(apex_runid='v')", json=body)
    got_status, got_code, message = error_of(response)
    assert (got_status, got_code) == (status, code)
    assert fragment in message
    assert client.get(SET).json()["value"] == []


def test_malformed_json_and_urls(client: httpx.Client, table: str) -> None:
    bad_json = client.post(SET, content=b"{not json", headers={"Content-Type": "application/json"})
    assert error_of(bad_json)[0] == 400
    nan = client.post(SET, content=b'{"apex_tokensin": NaN}')
    assert error_of(nan)[0] == 400
    for url in [
        f"{SET}(apex_runid='unterminated)",
        f"{SET}(apex_runid=bare)",
        f"{SET}(apex_nope='x')",
        f"{SET}(not-a-guid)",
    ]:
        assert error_of(client.get(url))[0] == 400, url
    assert error_of(client.get("apex_nothings"))[0] == 404
    assert client.put(SET, json={}).status_code == 405


def test_datetimes_are_utc_whole_seconds(client: httpx.Client, table: str) -> None:
    url = f"{SET}(apex_runid='t')"
    client.patch(url, json={"apex_createdat": "2024-05-01T10:00:00.987+02:00"})
    row = client.get(url).json()
    assert row["apex_createdat"] == "2024-05-01T08:00:00Z"
    assert row["createdon"].endswith("Z")
    assert len(row["createdon"]) == 20


def test_single_property_put_and_get(client: httpx.Client, table: str) -> None:
    url = f"{SET}(apex_runid='p')"
    client.patch(url, json={"apex_tokensin": 1})
    assert client.put(f"{url}/apex_tokensin", json={"value": 7}).status_code == 204
    assert client.get(f"{url}/apex_tokensin").json()["value"] == 7
    assert client.delete(f"{url}/apex_tokensin").status_code == 204
    assert client.get(url).json()["apex_tokensin"] is None


def test_key_columns_in_body_cannot_change_the_key(client: httpx.Client, table: str) -> None:
    url = f"{SET}(apex_runid='k1')"
    client.patch(url, json={})
    client.patch(url, json={"apex_runid": "k2", "apex_tokensin": 4})
    rows = client.get(SET, params={"$select": "apex_runid,apex_tokensin"}).json()["value"]
    assert [(r["apex_runid"], r["apex_tokensin"]) for r in rows] == [("k1", 4)]


def test_audit_history_is_readable(client: httpx.Client, table: str) -> None:
    url = f"{SET}(apex_runid='a1')"
    client.patch(url, json={"apex_tokensin": 1})
    client.patch(url, json={"apex_tokensin": 2})
    row_id = client.get(url).json()["apex_campaignmetricsid"]
    client.delete(url)
    audits = client.get(
        "audits",
        params={"$filter": f"_objectid_value eq '{row_id}'", "$orderby": "createdon"},
    )
    assert audits.status_code == 200, audits.text
    entries = audits.json()["value"]
    assert [e["action"] for e in entries] == [1, 2, 3]
    assert all(e["objecttypecode"] == "apex_campaignmetrics" for e in entries)
    assert all(e["_userid_value"] == entries[0]["_userid_value"] for e in entries)
    update = json.loads(entries[1]["changedata"])["changedAttributes"]
    assert {"logicalName": "apex_tokensin", "oldValue": 1, "newValue": 2} in update
    deleted = json.loads(entries[2]["changedata"])["changedAttributes"]
    assert {"logicalName": "apex_tokensin", "oldValue": 2, "newValue": None} in deleted


def test_upsert_by_id_creates_with_that_id(client: httpx.Client, table: str) -> None:
    row_id = "3f2b4c1a-0000-4000-8000-00000000abcd"
    created = client.patch(f"{SET}({row_id})", json={"apex_runid": "by-id"})
    assert created.status_code == 204
    assert created.headers["OData-EntityId"].endswith(f"{SET}({row_id})")
    updated = client.patch(
        f"{SET}({row_id})", json={"apex_tokensin": 3}, headers={"Prefer": "return=representation"}
    )
    assert updated.status_code == 200
    assert updated.json()["apex_campaignmetricsid"] == row_id
    assert client.get(f"{SET}(apex_runid='by-id')").json()["apex_tokensin"] == 3


def test_ids_the_service_assigns_are_sequential(client: httpx.Client, table: str) -> None:
    """Rows created without an id get GUIDs that sort in the order the rows were made, as the
    platform's sequential GUIDs do (single creates, key upserts and a $batch alike)."""
    made = []
    for n in range(5):
        answer = client.post(SET, json={"apex_runid": f"seq-{n}"})
        made.append(answer.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")"))
        answer = client.patch(f"{SET}(apex_runid='seq-key-{n}')", json={"apex_tokensin": n})
        assert answer.status_code == 204
        made.append(client.get(f"{SET}(apex_runid='seq-key-{n}')").json()[ID])
    assert all(str(uuid.UUID(made_id)) == made_id for made_id in made)
    assert made == sorted(made) and len(set(made)) == len(made)
    listed = client.get(SET, params={"$select": "apex_runid", "$orderby": ID}).json()
    assert [row["apex_runid"] for row in listed["value"]] == [
        name for n in range(5) for name in (f"seq-{n}", f"seq-key-{n}")
    ]


def test_oversized_payload_is_413(emulator: RunningEmulator, client: httpx.Client) -> None:
    host, port = emulator.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest("POST", "/api/data/v9.2/$batch")
        connection.putheader("Authorization", client.headers["Authorization"])
        connection.putheader("Content-Length", str(10**12))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert (
            json.loads(response.read())["error"]["message"] == "The request payload is too large."
        )
    finally:
        connection.close()


def test_duplicate_detection_when_asked_for(client: httpx.Client, table: str) -> None:
    flags = {"IsDuplicateDetectionEnabled": {"Value": True}}
    client.put("EntityDefinitions(LogicalName='apex_campaignmetrics')", json=flags)
    check = {"MSCRM.SuppressDuplicateDetection": "false"}
    assert client.post(SET, json={"apex_name": "Same", "apex_runid": "d1"}).status_code == 204
    twin = client.post(SET, json={"apex_name": "same", "apex_runid": "d2"}, headers=check)
    status, code, message = error_of(twin)
    assert (status, code) == (500, "0x80040333")
    assert message.startswith("A record was not created or updated because a duplicate")
    upsert = client.patch(f"{SET}(apex_runid='d3')", json={"apex_name": "SAME"}, headers=check)
    assert upsert.status_code == 500
    itself = client.patch(f"{SET}(apex_runid='d1')", json={"apex_name": "Same"}, headers=check)
    assert itself.status_code == 204  # a row is no duplicate of itself
    # Without the header, Web API writes are not checked (the default).
    assert client.post(SET, json={"apex_name": "Same", "apex_runid": "d4"}).status_code == 204
    assert len(client.get(SET).json()["value"]) == 2
