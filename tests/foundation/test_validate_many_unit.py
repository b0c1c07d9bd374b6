"""validate_many and record_many's streaming check share one loop: every invalid item and every
repeated run id is reported, numbered from 1."""

from __future__ import annotations

import pytest

from apex_metrics.exceptions import MetricValidationError
from apex_metrics.recorder import validate_many

pytestmark = pytest.mark.unit


def test_every_problem_is_listed_with_its_item_number() -> None:
    items = [
        {"campaign_id": "c", "run_id": "a"},
        {"campaign_id": "c", "run_id": "b", "tokens_in": -1},
        {"campaign_id": "c", "run_id": "a"},
        {"campaign_id": "c", "run_id": "d"},
    ]
    with pytest.raises(MetricValidationError) as info:
        validate_many(items)
    assert [(e.line, e.field, e.rule) for e in info.value.errors] == [
        (2, "tokens_in", "must be ≥ 0 (got -1)"),
        (3, "run_id", "repeats the run id of item 1"),
    ]


def test_valid_items_come_back_in_order() -> None:
    metrics = validate_many([{"campaign_id": "c", "run_id": r} for r in ("x", "y")])
    assert [m.run_id for m in metrics] == ["x", "y"]
