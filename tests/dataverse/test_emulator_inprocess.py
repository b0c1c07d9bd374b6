"""The client and provisioning against the emulator in process (httpx.ASGITransport)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from apex_metrics import metric
from apex_metrics.dataverse import errors as e
from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.dataverse.provision import (
    TABLE_PATH,
    attribute_body,
    contract_columns,
    provision,
    table_body,
)
from apex_metrics.emulator import CostModel, EmulatorConfig, create_app

from .conftest import fast_flow, local_settings

SET = metric.ENTITY_SET
KEY = metric.ALTERNATE_KEY_COLUMN


def row(run: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "campaign_id": "camp-1",
        "run_id": run,
        "phase": "2-3",
        "agents_total": 10,
        "agents_successful": 9,
        "tokens_in": 1000,
        "tokens_out": 500,
        "cost_usd": "1.23456",
        "created_at": "2026-01-01T12:00:00Z",
    }
    values.update(overrides)
    return metric.parse_metric(values).to_dataverse()


async def test_whoami_reads_ids_and_parallelism_hint(dataverse: DataverseClient) -> None:
    me = await dataverse.whoami()
    assert me.user_id and me.organization_id and me.business_unit_id
    assert me.dop_hint is not None and me.dop_hint >= 1
    assert dataverse.flow.pacer.concurrency == me.dop_hint


async def test_provision_from_nothing_then_rerun_changes_nothing(
    dataverse: DataverseClient,
) -> None:
    progress: list[str] = []
    first = await provision(dataverse, progress=progress.append, poll_interval=0.05)
    assert first.ok and first.changed, first.lines()
    actions = [s.action for s in first.steps]
    assert actions[0] == "create table"
    assert actions.count("create column") == 13
    assert "create key" in actions and actions[-1] == "wait for key"
    assert first.key_status == "Active"
    assert any("Active" in line for line in progress), progress

    definition = await dataverse.get_json(TABLE_PATH)
    assert definition["EntitySetName"] == SET
    assert definition["PrimaryNameAttribute"] == "apex_name"
    assert definition["ChangeTrackingEnabled"] is True
    assert definition["IsAuditEnabled"]["Value"] is True
    assert definition["IsDuplicateDetectionEnabled"]["Value"] is True
    attributes = (await dataverse.get_json(f"{TABLE_PATH}/Attributes"))["value"]
    by_name = {a["LogicalName"]: a for a in attributes}
    assert by_name["apex_costusd"]["Precision"] == 5
    assert by_name["apex_phase"]["MaxLength"] == 16

    second = await provision(dataverse, poll_interval=0.05)
    assert second.ok and not second.changed and second.steps == []
    assert second.lines()[0].startswith("nothing to change")


async def test_dry_run_plans_and_writes_nothing(dataverse: DataverseClient) -> None:
    plan = await provision(dataverse, dry_run=True)
    assert plan.dry_run and not plan.changed
    assert [s.action for s in plan.steps][:2] == ["create table", "create column"]
    assert len(plan.steps) == 1 + 13 + 3  # table, columns, key, publish, wait for the key
    listing = await dataverse.get_json(
        "EntityDefinitions", {"$filter": f"LogicalName eq '{metric.TABLE_LOGICAL_NAME}'"}
    )
    assert listing["value"] == []


async def _table_with(dataverse: DataverseClient, columns: list[dict[str, Any]]) -> None:
    await dataverse.request("POST", "EntityDefinitions", json_body=table_body())
    for body in columns:
        await dataverse.request("POST", f"{TABLE_PATH}/Attributes", json_body=body)


async def test_drift_is_reported_column_by_column(dataverse: DataverseClient) -> None:
    specs = {s.logical: s for s in contract_columns()}
    wrong_type = attribute_body(specs["apex_tokensin"]) | {
        "@odata.type": "Microsoft.Dynamics.CRM.DecimalAttributeMetadata",
        "AttributeType": "Decimal",
        "AttributeTypeName": {"Value": "DecimalType"},
        "Precision": 2,
        "MinValue": 0,
        "MaxValue": 1000,
    }
    wrong_length = attribute_body(specs["apex_phase"]) | {"MaxLength": 100}
    wrong_precision = attribute_body(specs["apex_costusd"]) | {"Precision": 2}
    await _table_with(dataverse, [wrong_type, wrong_length, wrong_precision])
    report = await provision(dataverse, poll_interval=0.05)
    found = {(p.target, p.kind) for p in report.problems}
    assert found == {
        ("apex_tokensin", "wrong type"),
        ("apex_phase", "wrong length"),
        ("apex_costusd", "wrong precision"),
    }
    assert not report.ok
    created = [s.target for s in report.steps if s.action == "create column"]
    assert len(created) == 10, "the missing columns are still created"
    again = await provision(dataverse, poll_interval=0.05)
    assert not again.changed and len(again.problems) == 3


async def test_double_prefix_is_recognised(dataverse: DataverseClient) -> None:
    spec = next(s for s in contract_columns() if s.logical == "apex_costusd")
    doubled = attribute_body(spec) | {"SchemaName": "apex_apex_CostUsd"}
    await _table_with(dataverse, [doubled])
    report = await provision(dataverse, poll_interval=0.05)
    (problem,) = report.problems
    assert problem.kind == "double prefix" and problem.target == "apex_apex_costusd"
    assert "maker portal" in problem.fix
    assert any(s.target == "apex_costusd" for s in report.steps)


async def test_upsert_modes_get_query_delete(dataverse: DataverseClient) -> None:
    await provision(dataverse, poll_interval=0.05)
    first = await dataverse.upsert(SET, {KEY: "run-1"}, row("run-1"))
    assert (first.outcome, first.status) == ("upserted", 204), "no representation asked"
    again = await dataverse.upsert(SET, {KEY: "run-1"}, row("run-1", tokens_in=7))
    assert again.outcome == "upserted"
    with pytest.raises(e.PreconditionFailed):
        await dataverse.upsert(SET, {KEY: "run-1"}, row("run-1"), mode="create")
    with pytest.raises(e.NotFound):
        await dataverse.upsert(SET, {KEY: "nope"}, row("nope"), mode="update")
    assert (
        await dataverse.upsert(SET, {KEY: "it's"}, row("it's"), mode="create")
    ).outcome == "upserted"

    got = await dataverse.get_by_key(SET, {KEY: "run-1"}, select=["apex_tokensin", "apex_name"])
    assert got is not None and got["apex_tokensin"] == 7 and got["apex_name"] == "run-1"
    quoted = await dataverse.get_by_key(SET, {KEY: "it's"})
    assert quoted is not None and quoted[KEY] == "it's"
    assert await dataverse.get_by_key(SET, {KEY: "missing"}) is None

    for i in range(5):
        await dataverse.upsert(SET, {KEY: f"page-{i}"}, row(f"page-{i}"))
    rows = [
        r
        async for r in dataverse.query(
            SET, select=[KEY], filter="startswith(apex_runid,'page-')", orderby=KEY, page_size=2
        )
    ]
    assert [r[KEY] for r in rows] == [f"page-{i}" for i in range(5)]

    assert await dataverse.delete(SET, {KEY: "run-1"}) is True
    assert await dataverse.delete(SET, {KEY: "run-1"}) is False


async def test_validation_errors_name_the_column(dataverse: DataverseClient) -> None:
    await provision(dataverse, poll_interval=0.05)
    with pytest.raises(e.DataverseValidationError) as caught:
        await dataverse.upsert(SET, {KEY: "r"}, {"apex_phase": "x" * 17})
    assert caught.value.column == "apex_phase" and caught.value.code == "0x80044331"
    with pytest.raises(e.DataverseValidationError) as unknown:
        await dataverse.upsert(SET, {KEY: "r"}, {"apex_nope": 1})
    assert unknown.value.column == "apex_nope"


async def test_upsert_many_maps_partial_failures_to_rows(dataverse: DataverseClient) -> None:
    await provision(dataverse, poll_interval=0.05)
    await dataverse.upsert(SET, {KEY: "exists"}, row("exists"))
    items = [(f"b-{i}", row(f"b-{i}")) for i in range(5)]
    items.insert(2, ("bad-phase", row("bad-phase") | {"apex_phase": "p" * 17}))
    items.insert(4, ("bad-column", row("bad-column") | {"apex_unknown": 1}))
    items.append(("exists", row("exists", tokens_in=1)))
    outcomes = await dataverse.upsert_many(SET, KEY, items)
    assert [o.key for o in outcomes] == [k for k, _ in items]
    by_key = {o.key: o for o in outcomes}
    assert by_key["bad-phase"].outcome == "failed" and by_key["bad-phase"].code == "0x80044331"
    assert by_key["bad-phase"].status == 400 and not by_key["bad-phase"].transient
    assert by_key["bad-column"].outcome == "failed" and by_key["bad-column"].code == "0x80060888"
    assert by_key["exists"].outcome == "upserted"
    assert all(by_key[f"b-{i}"].outcome == "upserted" for i in range(5))
    count = len([r async for r in dataverse.query(SET, select=[KEY])])
    assert count == 6


async def test_upsert_multiple_writes_all_and_finds_a_poison_row(
    dataverse: DataverseClient,
) -> None:
    await provision(dataverse, poll_interval=0.05)
    items = [(f"m-{i}", row(f"m-{i}")) for i in range(50)]
    outcomes = await dataverse.upsert_multiple(SET, metric.TABLE_LOGICAL_NAME, KEY, items)
    assert [o.outcome for o in outcomes] == ["upserted"] * 50
    changed = [(f"m-{i}", row(f"m-{i}", tokens_in=i)) for i in range(50)]
    poison = ("m-poison", row("m-poison") | {"apex_phase": "p" * 17})
    changed.insert(17, poison)
    changed.insert(3, ("bad key/", row("m-0")))  # never sent: breaks key URLs
    outcomes = await dataverse.upsert_multiple(SET, metric.TABLE_LOGICAL_NAME, KEY, changed)
    assert [o.key for o in outcomes] == [k for k, _ in changed]
    by_key = {o.key: o for o in outcomes}
    assert by_key["m-poison"].outcome == "failed" and by_key["m-poison"].code == "0x80044331"
    assert "apex_phase" in by_key["m-poison"].message and not by_key["m-poison"].transient
    assert by_key["bad key/"].code == "invalid_key"
    assert sum(o.ok for o in outcomes) == 50, "every good row of the failed chunk went through"
    stored = {
        r[KEY]: r["apex_tokensin"]
        async for r in dataverse.query(SET, select=[KEY, "apex_tokensin"])
    }
    assert stored == {f"m-{i}": i for i in range(50)}, "the good rows hold the new values"


async def test_aggregate_splits_when_over_the_record_limit() -> None:
    config = EmulatorConfig(
        costs=CostModel.free(), key_activation_delay_seconds=0.0, max_aggregate_records=8
    )
    transport = httpx.ASGITransport(app=create_app(config))
    async with open_dataverse(local_settings(), transport=transport, flow=fast_flow()) as client:
        await provision(client, poll_interval=0.05)
        start = datetime(2026, 1, 1, tzinfo=UTC)
        items = [
            (
                f"agg-{i}",
                row(
                    f"agg-{i}",
                    campaign_id=f"c{i % 2}",
                    tokens_in=i,
                    cost_usd="0.5",
                    created_at=(start + timedelta(hours=i)).isoformat(),
                ),
            )
            for i in range(30)
        ]
        assert all(o.ok for o in await client.upsert_many(SET, KEY, items))
        apply = (
            "groupby((apex_campaignid),aggregate(apex_tokensin with sum as tokens,"
            "$count as n,apex_tokensin with max as top,apex_costusd with sum as cost))"
        )
        with pytest.raises(e.AggregateLimitExceeded):
            await client.aggregate(SET, apply)
        rows = await client.aggregate(
            SET, apply, time_column="apex_createdat", start=start, end=start + timedelta(days=2)
        )
    by = {r["apex_campaignid"]: r for r in rows}
    assert by["c0"]["tokens"] == sum(range(0, 30, 2)) and by["c0"]["n"] == 15
    assert by["c1"]["tokens"] == sum(range(1, 30, 2)) and by["c1"]["top"] == 29
    assert by["c0"]["cost"] == pytest.approx(7.5)


async def test_app_not_application_user_and_wrong_secret() -> None:
    config = EmulatorConfig(
        costs=CostModel.free(),
        extra_clients={"outsider": "outsider-secret"},
        application_users=frozenset({"apex-local-client"}),
    )
    app = create_app(config)
    outsider = local_settings(client_id="outsider", client_secret="outsider-secret")
    async with open_dataverse(outsider, transport=httpx.ASGITransport(app=app)) as client:
        with pytest.raises(e.NotApplicationUser) as caught:
            await client.whoami()
    assert "application user" in (caught.value.hint or "")
    wrong = local_settings(client_secret="wrong")
    async with open_dataverse(wrong, transport=httpx.ASGITransport(app=app)) as client:
        with pytest.raises(e.InvalidClientSecret):
            await client.whoami()
    unknown = local_settings(client_id="who", client_secret="x")
    async with open_dataverse(unknown, transport=httpx.ASGITransport(app=app)) as client:
        with pytest.raises(e.UnknownClient) as caught_client:
            await client.whoami()
    assert "APEX_CLIENT_ID" in (caught_client.value.hint or "")
    tenant = local_settings(tenant_id="elsewhere")
    async with open_dataverse(tenant, transport=httpx.ASGITransport(app=app)) as client:
        with pytest.raises(e.UnknownClient) as caught_tenant:
            await client.whoami()
    assert "APEX_TENANT_ID" in (caught_tenant.value.hint or "")


async def test_flags_switched_off_are_enabled(dataverse: DataverseClient) -> None:
    body = table_body()
    for name in ("ChangeTrackingEnabled", "IsAuditEnabled", "IsDuplicateDetectionEnabled"):
        del body[name]
    await dataverse.request("POST", "EntityDefinitions", json_body=body)
    before = await dataverse.get_json(TABLE_PATH)
    assert before["ChangeTrackingEnabled"] is False
    report = await provision(dataverse, poll_interval=0.05)
    (enable,) = [s for s in report.steps if s.action == "enable"]
    assert enable.done
    assert enable.detail == "change tracking, auditing, duplicate detection"
    after = await dataverse.get_json(TABLE_PATH)
    assert after["ChangeTrackingEnabled"] is True
    assert after["IsAuditEnabled"]["Value"] and after["IsDuplicateDetectionEnabled"]["Value"]
    assert not (await provision(dataverse, poll_interval=0.05)).changed
