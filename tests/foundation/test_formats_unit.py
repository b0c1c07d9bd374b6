"""The shared helpers of issue 17: ASCII whole numbers, the UTC Z format, an error's first line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from apex_metrics import metric
from apex_metrics.exceptions import first_line
from apex_metrics.formats import ascii_int, at_most, utc_z
from apex_metrics.panel.params import BadParameter, parse_limit

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("42", 42),
        ("007", 7),
        ("0" * 5000, 0),  # int("0" * 5000) raises: more than 4,300 digits
        ("123456789", 123456789),
        ("1234567890", None),  # 10 digits > 9
        ("9" * 5000, None),
        ("\u00b2", None),  # "²".isdigit() is True
        ("1\u00b9", None),
        ("\u0663", None),  # ARABIC-INDIC DIGIT THREE
        ("", None),
        (" 1", None),
        ("+1", None),
        ("-1", None),
        ("1.0", None),
    ],
)
def test_ascii_int_reads_only_ascii_digits(text: str, expected: int | None) -> None:
    assert ascii_int(text, 9) == expected


def test_at_most_is_a_cap_on_a_declared_length() -> None:
    assert at_most("1024", 1024) and at_most("0001024", 1024) and at_most("0", 1024)
    assert not at_most("1025", 1024)
    assert not at_most("9" * 5000, 1024)
    assert not at_most("\u00b2", 1024)
    assert not at_most("", 1024)


@pytest.mark.parametrize("limit", ["\u00b2", "0" * 5000, "9" * 5000, "0", "501", "-1"])
def test_parse_limit_refuses_what_is_not_1_to_maximum(limit: str) -> None:
    with pytest.raises(BadParameter):
        parse_limit({"limit": limit}, 50, 500)
    assert parse_limit({"limit": "0500"}, 50, 500) == 500


def test_utc_z_is_the_dataverse_datetime_format() -> None:
    moment = datetime(2026, 1, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-2)))
    assert utc_z(moment) == "2026-02-01T01:59:59Z"
    assert metric.to_json_value(moment) == utc_z(moment)
    assert utc_z(datetime(1753, 1, 1, tzinfo=UTC)) == "1753-01-01T00:00:00Z"


def test_one_body_builder_for_rows_and_metrics() -> None:
    run = metric.parse_metric(
        {"campaign_id": "c", "run_id": "r-1", "cost_usd": "1.5", "agents_total": 4,
         "agents_successful": 3, "created_at": "2026-01-01T00:00:00.5+01:00"}
    )  # fmt: skip
    body = metric.dataverse_body(run.as_dict())
    assert run.to_dataverse() == body
    assert list(body) == [metric.PRIMARY_NAME, *(c.dataverse for c in metric.BODY_COLUMNS)]
    assert body[metric.PRIMARY_NAME] == "r-1" and metric.ALTERNATE_KEY_COLUMN not in body
    assert body["apex_costusd"] == 1.5 and body["apex_successrate"] == 75.0
    assert body["apex_createdat"] == "2025-12-31T23:00:00Z"
    assert metric.to_json_value(Decimal("0.00001")) == 0.00001


def test_first_line_of_an_error() -> None:
    assert first_line(ValueError("\n  relation x does not exist\nLINE 1: SELECT")) == (
        "relation x does not exist"
    )
    assert first_line(TimeoutError()) == "TimeoutError"
    assert first_line(OSError("   ")) == "OSError"
