"""Audit changedata is stored compact and rendered when read: the text readers see, after a
restart of a file-backed emulator, after a rolled-back change set, and inside ``$filter``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx

from apex_metrics.dataverse.multipart_encode import encode_batch_request
from apex_metrics.dataverse.multipart_parts import BatchPart, ChangeSet
from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.testing import running_emulator
from tests.emulator.conftest import SET, api_client, create_metrics_table

HEADERS = {"Content-Type": "application/json; type=entry"}


def upsert(key: str, body: dict[str, object]) -> BatchPart:
    return BatchPart("PATCH", f"{SET}(apex_runid='{key}')", HEADERS, json.dumps(body).encode())


def audit_texts(client: httpx.Client) -> list[tuple[int, str]]:
    answer = client.get("audits")  # in time order (audit ids sort by time)
    assert answer.status_code == 200, answer.text
    return [(e["action"], e["changedata"]) for e in answer.json()["value"]]


def test_changedata_reads_the_same_after_a_restart(tmp_path: Path) -> None:
    config = EmulatorConfig(
        key_activation_delay_seconds=0, db_path=tmp_path / "emu.sqlite3", costs=CostModel.free()
    )
    with running_emulator(config) as emu, api_client(emu) as client:
        create_metrics_table(client)
        first = {"apex_costusd": 1.23457, "apex_createdat": "2026-01-02T03:04:05Z"}
        created = client.patch(f"{SET}(apex_runid='r1')", json=first)
        assert created.status_code == 204, created.text
        # a change set that fails: its audit records, and the list of names it used, roll back
        failing = ChangeSet([upsert("r2", {"apex_agentstotal": 3}), upsert("r3", {"nope": 1})])
        body, content_type = encode_batch_request([failing])
        assert client.post("$batch", content=body, headers={"Content-Type": content_type})
        # the same names again, now committed; then an update with a null and non-ASCII text
        body, content_type = encode_batch_request([upsert("r2", {"apex_agentstotal": 3})])
        answer = client.post("$batch", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 200
        second = {"apex_costusd": None, "apex_phase": 'é"\\', "apex_tokensin": 7}
        assert client.patch(f"{SET}(apex_runid='r1')", json=second).status_code == 204
        before = audit_texts(client)
        stored = sqlite3.connect(config.db_path).execute("SELECT changedata FROM emu_audit")
        compact = [text for (text,) in stored]
    assert len(before) == 3 and all(text.startswith("@") for text in compact), compact
    assert before == [
        (
            1,
            '{"changedAttributes": [{"logicalName": "apex_costusd", "oldValue": null, '
            '"newValue": 1.23457}, {"logicalName": "apex_createdat", "oldValue": null, '
            '"newValue": "2026-01-02T03:04:05Z"}, {"logicalName": "apex_runid", '
            '"oldValue": null, "newValue": "r1"}]}',
        ),
        (
            1,
            '{"changedAttributes": [{"logicalName": "apex_agentstotal", "oldValue": null, '
            '"newValue": 3}, {"logicalName": "apex_runid", "oldValue": null, "newValue": "r2"}]}',
        ),
        (
            2,
            '{"changedAttributes": [{"logicalName": "apex_costusd", "oldValue": 1.23457, '
            '"newValue": null}, {"logicalName": "apex_phase", "oldValue": null, '
            '"newValue": "\\u00e9\\"\\\\"}, {"logicalName": "apex_tokensin", "oldValue": null, '
            '"newValue": 7}]}',
        ),
    ]
    with running_emulator(config) as emu, api_client(emu) as client:
        assert audit_texts(client) == before
        found = client.get("audits", params={"$filter": "contains(changedata, 'apex_phase')"})
        assert found.status_code == 200, found.text
        assert [e["action"] for e in found.json()["value"]] == [2]


def test_a_reset_forgets_the_lists_of_names(tmp_path: Path) -> None:
    config = EmulatorConfig(
        key_activation_delay_seconds=0, db_path=tmp_path / "emu.sqlite3", costs=CostModel.free()
    )
    with running_emulator(config) as emu, api_client(emu) as client:
        create_metrics_table(client)
        assert client.patch(f"{SET}(apex_runid='a')", json={"apex_tokensin": 1}).is_success
        assert httpx.post(f"{emu.url}/_emulator/reset", json={}, timeout=10).status_code == 200
        create_metrics_table(client)
        answer = client.patch(f"{SET}(apex_runid='b')", json={"apex_agentstotal": 2})
        assert answer.is_success, answer.text
        texts = audit_texts(client)
    assert texts == [
        (
            1,
            '{"changedAttributes": [{"logicalName": "apex_agentstotal", "oldValue": null, '
            '"newValue": 2}, {"logicalName": "apex_runid", "oldValue": null, "newValue": "b"}]}',
        )
    ]
    plans = sqlite3.connect(config.db_path).execute("SELECT entity, names FROM emu_audit_plans")
    assert [(entity, json.loads(names)) for entity, names in plans] == [
        ("apex_campaignmetrics", ["apex_agentstotal", "apex_runid"])
    ]


def test_a_rows_history_is_read_through_an_index(tmp_path: Path) -> None:
    """``audits?$filter=_objectid_value eq ...`` searches an index on the row id (the index of
    older files led with the table name, which that filter does not give: it is dropped)."""
    from apex_metrics.emulator.store import Store

    path = tmp_path / "emulator.db"
    store = Store(path)
    store.conn.execute("CREATE INDEX emu_audit_object ON emu_audit (objecttypecode, objectid)")
    store.close()
    store = Store(path)
    try:
        indexes = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master")}
        assert "emu_audit_object" not in indexes and "emu_audit_row" in indexes
        sql = 'SELECT * FROM "e_audit" WHERE "_objectid_value" = ? ORDER BY "auditid" LIMIT 5001'
        plan = " ".join(r[3] for r in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}", ("x",)))
        assert "SEARCH emu_audit USING INDEX emu_audit_row (objectid=?)" in plan, plan
    finally:
        store.close()
