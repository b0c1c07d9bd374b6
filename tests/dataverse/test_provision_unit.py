"""Unit tests of the provisioning plan: contract columns, metadata bodies, drift detection."""

from __future__ import annotations

from decimal import Decimal

from apex_metrics import metric
from apex_metrics.dataverse.provision import (
    ProvisionReport,
    Step,
    attribute_body,
    compare_column,
    contract_columns,
    double_prefix_problem,
    table_body,
)


def by_name() -> dict[str, object]:
    return {c.logical: c for c in contract_columns()}


def test_contract_columns_follow_metric_columns_exactly() -> None:
    specs = contract_columns()
    assert [s.logical for s in specs] == [c.dataverse for c in metric.COLUMNS]
    assert len(specs) == 13
    for spec in specs:
        assert spec.schema.lower() == spec.logical
        assert spec.schema.count("apex_") == 1, "the prefix appears exactly once"
    cost = attribute_body(specs[8])
    assert cost["@odata.type"] == "Microsoft.Dynamics.CRM.DecimalAttributeMetadata"
    assert (cost["Precision"], cost["MinValue"], cost["MaxValue"]) == (5, 0.0, 99999.99999)
    rate = attribute_body(specs[11])
    assert (rate["Precision"], rate["MinValue"], rate["MaxValue"]) == (2, 0.0, 100.0)
    tokens = attribute_body(specs[6])
    assert tokens["AttributeType"] == "Integer" and tokens["MaxValue"] == 2_147_483_647
    run = attribute_body(specs[1])
    assert run["MaxLength"] == 64 and run["RequiredLevel"]["Value"] == "ApplicationRequired"
    phase = attribute_body(specs[2])
    assert phase["MaxLength"] == 16 and phase["RequiredLevel"]["Value"] == "None"
    created = attribute_body(specs[12])
    assert created["Format"] == "DateAndTime"


def test_table_body_has_one_primary_name_column_and_the_flags() -> None:
    body = table_body()
    assert body["SchemaName"] == "apex_CampaignMetrics"
    (primary,) = body["Attributes"]
    assert primary["IsPrimaryName"] is True and primary["SchemaName"].lower() == "apex_name"
    assert body["ChangeTrackingEnabled"] is True
    assert body["IsAuditEnabled"]["Value"] and body["IsDuplicateDetectionEnabled"]["Value"]


def test_matching_column_has_no_drift() -> None:
    for spec in contract_columns():
        assert compare_column(spec, attribute_body(spec)) == [], spec.logical


def test_drift_is_reported_property_by_property() -> None:
    specs = {s.logical: s for s in contract_columns()}
    cost = specs["apex_costusd"]
    wrong_type = compare_column(cost, {"AttributeType": "Integer", "MinValue": 0})
    assert [p.kind for p in wrong_type] == ["wrong type"]
    assert "Decimal, Precision 5" in wrong_type[0].expected and wrong_type[0].actual == "Integer"
    assert "delete column apex_costusd" in wrong_type[0].fix

    body = attribute_body(cost) | {"Precision": 2, "MaxValue": 1000}
    kinds = [p.kind for p in compare_column(cost, body)]
    assert kinds == ["wrong precision", "wrong range"]

    phase = attribute_body(specs["apex_phase"]) | {"MaxLength": 100}
    (problem,) = compare_column(specs["apex_phase"], phase)
    assert (problem.kind, problem.expected, problem.actual) == (
        "wrong length",
        "MaxLength 16",
        "MaxLength 100",
    )
    by_odata_type = {
        "@odata.type": "#Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "MaxLength": 64,
    }
    assert compare_column(specs["apex_runid"], by_odata_type) == []
    assert (
        compare_column(specs["apex_costusd"], attribute_body(cost) | {"MaxValue": "99999.99999"})
        == []
    )
    assert Decimal("99999.99999") == metric.COST_MAX


def test_double_prefix_is_explained_with_the_fix() -> None:
    problem = double_prefix_problem("apex_apex_costusd", "column")
    assert problem.kind == "double prefix" and problem.expected == "apex_costusd"
    assert "maker portal" in problem.fix and "type 'costusd'" in problem.fix
    assert "delete apex_apex_costusd" in problem.fix


def test_report_lines_and_json() -> None:
    clean = ProvisionReport("https://org.example", dry_run=False, key_status="Active")
    assert clean.lines()[0].startswith("nothing to change") and not clean.changed
    planned = ProvisionReport(
        "https://org.example",
        dry_run=True,
        steps=[Step("create key", "apex_RunIdKey", "on apex_runid")],
    )
    assert planned.lines()[0] == "[planned] create key apex_RunIdKey: on apex_runid"
    data = planned.to_dict()
    assert data["dry_run"] is True and data["changed"] is False and data["ok"] is True
