"""The fast CSV row path agrees with parse_metric, the reference, on every input."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apex_metrics.exceptions import MetricValidationError
from apex_metrics.metric import FIELD_NAMES, RowParser, copy_text, parse_metric

from .strategies import BAD_VALUES, valid_inputs

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TRICKY = [
    "", " ", "0", "007", "+1", "-0", "1.0", "1e3", "2147483647", "2147483648", "99999.99999",
    "100000", "0.000005", "100", "100.00", "100.01", "12.345", " 5", "５", "a\\b", "a\tb",
    "x\ny", "\\N", "naïve", "\u00a0", "2026-01-01T00:00:00Z", "2026-01-01 00:00:00+05:30",
    "2026-01-01T00:00:00", "2026-02-30T00:00:00Z", "1753-01-01T00:30:00+01:00",
    "9999-12-31T23:59:59-01:00", "2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00z", "r/1",
]  # fmt: skip


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        connection.execute(
            "CREATE TEMP TABLE t AS SELECT "
            + ", ".join(FIELD_NAMES)
            + " FROM campaign_metrics WITH NO DATA"
        )
        yield connection


def load(conn: psycopg.Connection[Any], line: str) -> tuple[Any, ...]:
    conn.execute("TRUNCATE t")
    with conn.cursor().copy("COPY t FROM STDIN") as copy:
        copy.write(line)
    row = conn.execute("SELECT * FROM t").fetchone()
    assert row is not None
    return tuple(row)


def as_strings(data: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in data.items():
        if value is None:
            out[key] = ""
        elif isinstance(value, datetime):
            out[key] = value.isoformat()
        else:
            out[key] = str(value)
    return out


def check(conn: psycopg.Connection[Any], data: dict[str, str]) -> None:
    header = list(data)
    row = [data[k] for k in header]
    reference_data: dict[str, Any] = dict(data)
    if reference_data.get("created_at", "").strip() == "":
        reference_data["created_at"] = NOW
    try:
        expected = parse_metric(reference_data)
    except MetricValidationError as exc:
        with pytest.raises(MetricValidationError) as info:
            RowParser(header, now=NOW).parse(row)
        assert {e.field for e in info.value.errors} == {e.field for e in exc.errors}
        return
    run_id, line = RowParser(header, now=NOW).parse(row)
    assert run_id == expected.run_id
    assert load(conn, line) == expected.pg_values()
    assert load(conn, copy_text(expected.pg_values())) == expected.pg_values()


SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(data=valid_inputs())
def test_valid_rows_agree(data: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    check(conn, as_strings(data))


@SETTINGS
@given(
    data=valid_inputs(),
    field=st.sampled_from(FIELD_NAMES),
    value=st.sampled_from(TRICKY) | st.text(max_size=8),
)
@example(data={"campaign_id": "c", "run_id": "r"}, field="agents_total", value="3")
@example(data={"campaign_id": "c", "run_id": "\x80"}, field="created_at", value="")
def test_tricky_values_agree(
    data: dict[str, Any], field: str, value: str, conn: psycopg.Connection[Any]
) -> None:
    strings = as_strings(data)
    strings[field] = value.replace("\x00", "")
    check(conn, strings)


@SETTINGS
@given(
    bad=st.sampled_from(
        sorted((f, v) for f, vs in BAD_VALUES.items() for v in vs if isinstance(v, str))
    )
)
def test_bad_values_agree(bad: tuple[str, str], conn: psycopg.Connection[Any]) -> None:
    field, value = bad
    check(conn, {"campaign_id": "c", "run_id": "r", field: value})


def test_missing_columns_get_defaults(conn: psycopg.Connection[Any]) -> None:
    run_id, line = RowParser(
        ["run_id", "campaign_id", "agents_total", "agents_successful"], now=NOW
    ).parse(["r-1", "c", "8", "1"])
    stored = load(conn, line)
    assert run_id == "r-1"
    assert (
        stored
        == parse_metric(
            {
                "campaign_id": "c",
                "run_id": "r-1",
                "agents_total": 8,
                "agents_successful": 1,
                "created_at": NOW,
            }
        ).pg_values()
    )
