"""Property tests: valid records round-trip through PostgreSQL unchanged; invalid ones are
rejected naming the right field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings

from apex_metrics.exceptions import MetricValidationError
from apex_metrics.metric import FIELD_NAMES, Metric, parse_metric
from apex_metrics.recorder import SyncRecorder

from .strategies import invalid_inputs, valid_inputs

SHARED_DB = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def recorder(database_url: str) -> Iterator[SyncRecorder]:
    with SyncRecorder(database_url) as rec:
        yield rec


def read_back(url: str, run_id: str) -> Metric:
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            f"SELECT {', '.join(FIELD_NAMES)} FROM campaign_metrics WHERE run_id = %s", (run_id,)
        )
        row = cur.fetchone()
    assert row is not None
    return Metric(**dict(zip(FIELD_NAMES, row, strict=True)))


@SHARED_DB
@given(data=valid_inputs())
def test_valid_record_round_trips(
    data: dict[str, Any], recorder: SyncRecorder, database_url: str
) -> None:
    metric = parse_metric(data)
    recorder.record(metric)
    stored = read_back(database_url, metric.run_id)
    assert stored == metric
    for name in FIELD_NAMES[:-1]:  # also the same scale for decimals
        assert str(getattr(stored, name)) == str(getattr(metric, name))


@settings(max_examples=200, deadline=None)
@given(case=invalid_inputs())
def test_invalid_record_names_the_field(case: tuple[dict[str, Any], str]) -> None:
    data, field = case
    with pytest.raises(MetricValidationError) as info:
        parse_metric(data)
    assert {e.field for e in info.value.errors} == {field}
