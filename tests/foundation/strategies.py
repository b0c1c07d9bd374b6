"""Hypothesis strategies: valid metric inputs, and one-field corruptions of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from apex_metrics.metric import RUN_ID_FORBIDDEN

INT32 = 2_147_483_647
# Ids hold no control characters (Cc: C0, DEL, C1); metric.py rejects them.
text_chars = st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"])
run_id_chars = st.characters(
    codec="utf-8", exclude_categories=["Cc", "Cs"], exclude_characters="".join(RUN_ID_FORBIDDEN)
)


def non_blank(chars: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[str]:
    return st.text(chars, min_size=1, max_size=max_size).filter(lambda s: s.strip() != "")


run_ids = non_blank(run_id_chars, 64).filter(lambda s: s == s.strip())
counts = st.integers(0, INT32)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
timestamps = st.datetimes(
    min_value=datetime(1753, 1, 2), max_value=datetime(9998, 12, 31), timezones=zones
)


@st.composite
def valid_inputs(draw: st.DrawFn) -> dict[str, Any]:
    total = draw(st.none() | counts)
    successful = draw(st.none() | (st.integers(0, total) if total is not None else counts))
    data: dict[str, Any] = {
        "campaign_id": draw(non_blank(text_chars, 64)),
        "run_id": draw(run_ids),
        "phase": draw(st.none() | non_blank(text_chars, 16)),
        "agents_total": total,
        "agents_successful": successful,
        "assets_generated": draw(st.none() | counts),
        "tokens_in": draw(st.none() | counts),
        "tokens_out": draw(st.none() | counts),
        "cost_usd": draw(st.none() | st.decimals(Decimal(0), Decimal("99999.99999"), places=5)),
        "latency_p95_ms": draw(st.none() | counts),
        "latency_avg_ms": draw(st.none() | counts),
        "success_rate": draw(st.none() | st.decimals(Decimal(0), Decimal(100), places=2)),
        "created_at": draw(timestamps),
    }
    # Sometimes hand the values over as strings, as CSV does.
    if draw(st.booleans()):
        data = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in data.items()}
        data = {k: (str(v) if isinstance(v, int | Decimal) else v) for k, v in data.items()}
    return data


# field -> values that break that field's rule (and no other)
BAD_VALUES: dict[str, list[Any]] = {
    "campaign_id": ["", "  ", "x" * 65, 42, "tab\there", "bell\x07"],
    "run_id": ["", "a/b", "a?b", "a+b", "r" * 65, " lead", None, "r\n1", "r\x851"],
    "phase": ["p" * 17, 3, "2\r3", "\x1b[31m"],
    "agents_total": [-1, "abc", 2**31, 1.5],
    "assets_generated": [-1, "1e3", 2**31],
    "tokens_in": [-1, 2**31, "many"],
    "tokens_out": [-7, 2**40, True],
    "cost_usd": ["100000", "-1", "abc", "NaN"],
    "latency_p95_ms": [-1, "fast"],
    "latency_avg_ms": [-2, "1.25"],
    "success_rate": ["100.01", "-1", "x"],
    "created_at": ["2026-01-01T00:00:00", "not a time", "1700-01-01T00:00:00Z"],
}


@st.composite
def invalid_inputs(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    data = draw(valid_inputs())
    field = draw(st.sampled_from(sorted(BAD_VALUES)))
    data[field] = draw(st.sampled_from(BAD_VALUES[field]))
    if field == "agents_total":
        data["agents_successful"] = None  # keep the cross-field rule out of it
    return data, field
