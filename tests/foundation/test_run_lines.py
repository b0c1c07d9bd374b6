"""The fast path of record_many (RunLines) agrees with parse_metric, the reference, on every
mapping: the same values once PostgreSQL reads the line, or the same fields in error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apex_metrics.exceptions import MetricValidationError
from apex_metrics.metric import FIELD_NAMES, parse_metric
from apex_metrics.run_lines import RunLines

from .strategies import BAD_VALUES, valid_inputs
from .test_rows import conn, load  # noqa: F401  (the fixture and the COPY loader)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
# Python values of every type a caller may hand over, the awkward ones above all.
TRICKY: list[Any] = [
    None, 0, 1, -1, 2**31 - 1, 2**31, 2**70, True, False, 0.0, -0.0, 0.1, 1.5, 0.0123, 1e-05,
    1e23, float("nan"), float("inf"), 100.0, 99999.99999, Decimal("0.000005"), Decimal("1E+2"),
    Decimal("-0"), Decimal("NaN"), Decimal("12.345678"), Decimal("100.00"), "", " ", "7", " 7",
    "+1", "1e3", "0.5", "abc", "r/1", "a\tb", "x\ny", "\\N", "naïve", "\u00a0",
    datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1), datetime(1753, 1, 1, tzinfo=UTC),
    datetime(2026, 1, 1, 5, 30, 0, 250000, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 1, 1, tzinfo=timezone(timedelta(seconds=30))), "2026-01-01T00:00:00Z",
    [1], {"a": 1},
]  # fmt: skip


def check(conn: psycopg.Connection[Any], data: dict[str, Any]) -> None:  # noqa: F811
    reference_data = dict(data)
    stamp = reference_data.get("created_at")
    if stamp is None or (isinstance(stamp, str) and not stamp.strip()):
        reference_data["created_at"] = NOW  # what both paths default to, fixed for the test
        data = {**data, "created_at": NOW}
    try:
        expected = parse_metric(reference_data)
    except MetricValidationError as exc:
        with pytest.raises(MetricValidationError) as info:
            RunLines().parse(data)
        assert {e.field for e in info.value.errors} == {e.field for e in exc.errors}
        return
    run_id, line = RunLines().parse(data)
    assert run_id == expected.run_id
    assert load(conn, line) == expected.pg_values()


SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(data=valid_inputs())
def test_valid_mappings_agree(data: dict[str, Any], conn: psycopg.Connection[Any]) -> None:  # noqa: F811
    check(conn, data)


@SETTINGS
@given(data=valid_inputs(), field=st.sampled_from(FIELD_NAMES), value=st.sampled_from(TRICKY))
@example(data={"campaign_id": "c", "run_id": "r"}, field="cost_usd", value=0.0123)
@example(data={"campaign_id": "c", "run_id": "r"}, field="tokens_in", value=True)
def test_tricky_values_agree(
    data: dict[str, Any],
    field: str,
    value: Any,
    conn: psycopg.Connection[Any],  # noqa: F811
) -> None:
    check(conn, {**data, field: value})


@SETTINGS
@given(bad=st.sampled_from(sorted(((f, v) for f, vs in BAD_VALUES.items() for v in vs), key=repr)))
def test_bad_values_agree(bad: tuple[str, Any], conn: psycopg.Connection[Any]) -> None:  # noqa: F811
    field, value = bad
    check(conn, {"campaign_id": "c", "run_id": "r", field: value})


def test_an_unknown_key_is_the_reference_error() -> None:
    with pytest.raises(MetricValidationError) as info:
        RunLines().parse({"campaign_id": "c", "run_id": "r", "tokenz": 1}, 4)
    assert [(e.field, e.rule, e.line) for e in info.value.errors] == [
        ("tokenz", "unknown field", 4)
    ]


def test_typical_runs_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ints, floats, Decimals, aware datetimes and plain text never reach the reference."""

    def reference(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("took the reference path")

    monkeypatch.setattr("apex_metrics.run_lines.parse_metric", reference)
    run_id, line = RunLines().parse(
        {
            "campaign_id": "spring", "run_id": "r-1", "phase": "2-3", "agents_total": 4,
            "agents_successful": 3, "tokens_in": 1200, "cost_usd": 0.0123,
            "latency_p95_ms": 900, "success_rate": Decimal("75.00"), "created_at": NOW,
        }
    )  # fmt: skip
    assert run_id == "r-1"
    assert line.split("\t")[8] == "0.0123" and line.endswith("2026-05-01T12:00:00+00:00\n")
