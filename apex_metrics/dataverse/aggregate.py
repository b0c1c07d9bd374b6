"""``$apply`` aggregates that outgrow the 50,000-record limit: split the time range, combine.

Dataverse refuses an aggregate over more than 50,000 records (0x8004E023). The remedy it
documents is to narrow the filter and combine on the client: :func:`split_range` halves a
``[start, end)`` range and :func:`combine` merges the per-range rows. ``sum``, ``min``, ``max``
and ``$count`` combine exactly; ``average`` cannot be combined without its weights, so an
average over a range that needs splitting is refused with a hint to use sum and ``$count``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal

from apex_metrics.dataverse.errors import AggregateLimitExceeded
from apex_metrics.formats import utc_z

Combine = Literal["sum", "min", "max", "count", "average", "countdistinct"]

_WITH = re.compile(
    r"([A-Za-z_][A-Za-z0-9_/]*)\s+with\s+([A-Za-z]+)\s+as\s+([A-Za-z_][A-Za-z0-9_]*)"
)
_COUNT = re.compile(r"\$count\s+as\s+([A-Za-z_][A-Za-z0-9_]*)")
MIN_SPAN = timedelta(seconds=1)


def aliases(apply: str) -> dict[str, Combine]:
    """Alias → how to combine it, from every ``aggregate(...)`` of an ``$apply`` expression."""
    found: dict[str, Combine] = {}
    for _column, method, alias in _WITH.findall(apply):
        method = method.lower()
        if method in ("sum", "min", "max", "average", "countdistinct"):
            found[alias] = method
    for alias in _COUNT.findall(apply):
        found[alias] = "count"
    return found


def check_combinable(apply: str) -> None:
    """Refuse expressions whose per-range results cannot be merged exactly."""
    bad = [a for a, how in aliases(apply).items() if how in ("average", "countdistinct")]
    if bad:
        raise AggregateLimitExceeded(
            f"the aggregate reads more than 50,000 records and {', '.join(bad)} "
            "(average/countdistinct) cannot be combined across time ranges",
            hint="aggregate sum and $count instead and divide, or narrow the filter",
        )


odata_datetime: Final = utc_z  # a DateTimeOffset literal (verify.py imports it by this name)


def with_time_range(apply: str, column: str, start: datetime, end: datetime) -> str:
    """``filter(column ge start and column lt end)/<apply>``."""
    where = f"{column} ge {utc_z(start)} and {column} lt {utc_z(end)}"
    return f"filter({where})/{apply}"


def split_range(start: datetime, end: datetime) -> tuple[tuple[datetime, datetime], ...]:
    """Two halves of ``[start, end)``, cut on a whole second."""
    if end - start < 2 * MIN_SPAN:
        raise AggregateLimitExceeded(
            f"more than 50,000 records between {utc_z(start)} and {utc_z(end)}"
            " (cannot split a range shorter than 2 seconds)",
        )
    middle = start + (end - start) / 2
    middle = middle.replace(microsecond=0)
    if middle <= start:
        middle = start + MIN_SPAN
    return (start, middle), (middle, end)


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, float) or isinstance(b, float):
        return float(Decimal(str(a)) + Decimal(str(b)))
    return a + b


def _pick(a: Any, b: Any, how: str) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b) if how == "min" else max(a, b)


def combine(apply: str, parts: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge the rows of several ranges: same group keys → one row, aggregates combined."""
    how = aliases(apply)
    merged: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
    for rows in parts:
        for row in rows:
            group = tuple(
                sorted((k, v) for k, v in row.items() if k not in how and not k.startswith("@"))
            )
            if group not in merged:
                merged[group] = {k: v for k, v in row.items() if not k.startswith("@")}
                continue
            target = merged[group]
            for alias, method in how.items():
                if alias not in row:
                    continue
                if method in ("sum", "count"):
                    target[alias] = _add(target.get(alias), row[alias])
                elif method in ("min", "max"):
                    target[alias] = _pick(target.get(alias), row[alias], method)
    return list(merged.values())
