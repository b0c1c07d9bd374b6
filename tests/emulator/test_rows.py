"""Rows over real HTTP: create, retrieve, upsert by alternate key, conditional writes, delete."""

from __future__ import annotations

import httpx

from tests.emulator.conftest import SET


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
