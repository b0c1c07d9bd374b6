"""Every rule of the metric model (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from apex_metrics.exceptions import MetricValidationError
from apex_metrics.metric import (
    COLUMNS,
    DATAVERSE_TO_PG,
    FIELD_NAMES,
    PG_TO_DATAVERSE,
    PRIMARY_NAME,
    RUN_ID_FORBIDDEN,
    Metric,
    derive_success_rate,
    parse_metric,
)

BASE: dict[str, Any] = {"campaign_id": "spring", "run_id": "run-1"}


def fields_of(data: dict[str, Any]) -> set[str]:
    with pytest.raises(MetricValidationError) as info:
        parse_metric(data)
    return {e.field for e in info.value.errors}


def rule_of(data: dict[str, Any], field: str) -> str:
    with pytest.raises(MetricValidationError) as info:
        parse_metric(data)
    rules = [e.rule for e in info.value.errors if e.field == field]
    assert rules, info.value.errors
    return rules[0]


def test_minimal_record_is_valid() -> None:
    metric = parse_metric(BASE)
    assert metric.campaign_id == "spring" and metric.run_id == "run-1"
    assert metric.created_at.tzinfo is not None
    assert metric.success_rate is None


def test_thirteen_fields_in_contract_order() -> None:
    assert FIELD_NAMES == (
        "campaign_id", "run_id", "phase", "agents_total", "agents_successful",
        "assets_generated", "tokens_in", "tokens_out", "cost_usd", "latency_p95_ms",
        "latency_avg_ms", "success_rate", "created_at",
    )  # fmt: skip
    assert [c.pg_type for c in COLUMNS].count("integer") == 7


def test_column_map_is_one_to_one_with_one_prefix() -> None:
    assert len(set(PG_TO_DATAVERSE.values())) == 13
    assert {v: k for k, v in PG_TO_DATAVERSE.items()} == DATAVERSE_TO_PG
    assert all(v.startswith("apex_") and v.count("apex_") == 1 for v in PG_TO_DATAVERSE.values())


@pytest.mark.parametrize(
    ("total", "ok", "expected"),
    [(4, 3, Decimal("75.00")), (3, 2, Decimal("66.67")), (3, 1, Decimal("33.33")),
     (8, 1, Decimal("12.50")), (0, 0, None), (None, 1, None), (5, None, None)],
)  # fmt: skip
def test_success_rate_derived_when_omitted(total: Any, ok: Any, expected: Any) -> None:
    assert derive_success_rate(total, ok) == expected
    data = {**BASE, "agents_total": total, "agents_successful": ok}
    assert parse_metric(data).success_rate == expected


def test_success_rate_derivation_rounds_half_even() -> None:
    # 1/16 = 6.25 %, 1/160 = 0.625 % -> 0.62 (half-even), 3/160 = 1.875 -> 1.88
    assert derive_success_rate(160, 1) == Decimal("0.62")
    assert derive_success_rate(160, 3) == Decimal("1.88")


def test_given_success_rate_wins_over_derivation() -> None:
    data = {**BASE, "agents_total": 4, "agents_successful": 3, "success_rate": "10"}
    assert parse_metric(data).success_rate == Decimal("10.00")


@pytest.mark.parametrize(
    ("raw", "stored"),
    [("0.000005", "0.00000"), ("0.000015", "0.00002"), ("0.000025", "0.00002"),
     ("1.234565", "1.23456"), (0.1, "0.10000"), (3, "3.00000"), ("99999.99999", "99999.99999")],
)  # fmt: skip
def test_cost_rounds_half_even_to_five_places(raw: Any, stored: str) -> None:
    value = parse_metric({**BASE, "cost_usd": raw}).cost_usd
    assert value == Decimal(stored) and value is not None and value.as_tuple().exponent == -5


@pytest.mark.parametrize("raw", ["100000", 100000, "99999.999995", "-0.00001", "1e6"])
def test_cost_that_does_not_fit_numeric_10_5_is_rejected(raw: Any) -> None:
    assert fields_of({**BASE, "cost_usd": raw}) == {"cost_usd"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("agents_total", -1), ("agents_successful", "-3"), ("assets_generated", -1),
     ("tokens_in", -5), ("tokens_out", 2**31), ("tokens_in", "2147483648"),
     ("latency_p95_ms", -1), ("latency_avg_ms", "-1"), ("success_rate", "100.01"),
     ("success_rate", "-0.01"), ("success_rate", "NaN"), ("cost_usd", "Infinity"),
     ("phase", "x" * 17), ("campaign_id", "c" * 65), ("run_id", "r" * 65),
     ("campaign_id", ""), ("campaign_id", "   "), ("run_id", ""),
     ("agents_total", "abc"), ("agents_total", "1.5"), ("agents_total", 1.5),
     ("agents_total", True), ("tokens_in", "1_000"), ("tokens_in", "١٢"),
     ("cost_usd", "ten"), ("cost_usd", [1]), ("phase", 17), ("campaign_id", "a\x00b"),
     ("run_id", "bad\ud800"), ("run_id", " padded"),
     ("created_at", "2026-01-01T10:00:00"), ("created_at", "yesterday"),
     ("created_at", "2026-13-01T00:00:00Z"), ("created_at", datetime(2026, 1, 1)),
     ("created_at", "1700-01-01T00:00:00Z"), ("created_at", 1700000000)],
)  # fmt: skip
def test_bad_value_names_its_field(field: str, value: Any) -> None:
    assert fields_of({**BASE, field: value}) == {field}


@pytest.mark.parametrize("char", sorted(RUN_ID_FORBIDDEN))
def test_run_id_rejects_key_breaking_characters(char: str) -> None:
    assert char in rule_of({**BASE, "run_id": f"a{char}b"}, "run_id")


def test_agents_successful_above_total_is_rejected() -> None:
    data = {**BASE, "agents_total": 2, "agents_successful": 3}
    assert "agents_total" in rule_of(data, "agents_successful")


def test_unknown_field_is_rejected_by_name() -> None:
    assert fields_of({**BASE, "colour": "red"}) == {"colour"}


def test_all_errors_are_reported_together() -> None:
    data = {"run_id": "a/b", "agents_total": -1, "tokens_in": "x"}
    assert fields_of(data) == {"campaign_id", "run_id", "agents_total", "tokens_in"}


def test_error_message_names_field_and_rule() -> None:
    with pytest.raises(MetricValidationError) as info:
        parse_metric({**BASE, "phase": "x" * 17}, line=7)
    assert str(info.value) == (
        "invalid input: line 7: phase: must be at most 16 characters (got 17)"
    )


def test_many_errors_are_cut_after_fifty() -> None:
    from apex_metrics.exceptions import FieldError

    error = MetricValidationError([FieldError("tokens_in", "bad", n) for n in range(1, 61)])
    assert "line 50:" in str(error) and "line 51:" not in str(error)
    assert str(error).endswith("and 10 more")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
     ("2026-03-01T12:00:00+02:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
     ("2026-03-01 10:00:00.123456+00:00", datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)),
     (datetime(2026, 3, 1, 5, tzinfo=timezone(timedelta(hours=-5))),
      datetime(2026, 3, 1, 10, tzinfo=UTC))],
)  # fmt: skip
def test_timestamps_are_stored_in_utc(raw: Any, expected: datetime) -> None:
    value = parse_metric({**BASE, "created_at": raw}).created_at
    assert value == expected and value.utcoffset() == timedelta(0)


def test_naive_timestamp_rule_says_time_zone() -> None:
    assert "time zone" in rule_of({**BASE, "created_at": "2026-01-01 10:00"}, "created_at")


def test_strings_from_csv_are_converted() -> None:
    metric = parse_metric(
        {**BASE, "agents_total": " 4 ", "agents_successful": "+3", "tokens_in": "0",
         "cost_usd": "0.5", "phase": "", "latency_p95_ms": ""}
    )  # fmt: skip
    assert (metric.agents_total, metric.agents_successful, metric.tokens_in) == (4, 3, 0)
    assert metric.phase is None and metric.latency_p95_ms is None
    assert metric.success_rate == Decimal("75.00")


def test_to_dataverse_body() -> None:
    metric = parse_metric(
        {**BASE, "cost_usd": "1.5", "created_at": "2026-01-02T03:04:05.9+00:00", "phase": "2-3"}
    )
    body = metric.to_dataverse()
    assert body[PRIMARY_NAME] == "run-1" and "apex_runid" not in body
    assert body["apex_costusd"] == 1.5 and body["apex_phase"] == "2-3"
    assert body["apex_createdat"] == "2026-01-02T03:04:05Z"
    assert set(body) == {PRIMARY_NAME} | (set(PG_TO_DATAVERSE.values()) - {"apex_runid"})


def test_metric_is_frozen() -> None:
    metric = Metric.parse(BASE)
    with pytest.raises(AttributeError):
        metric.run_id = "other"  # type: ignore[misc]
