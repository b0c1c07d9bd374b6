"""COPY text lines from runs given as mappings or Metrics (``record_many``), checked at C speed
where possible.

A value whose Python type the reference (:func:`~apex_metrics.metric.parse_metric`) would pass
through unchanged becomes the text the CSV import's fast path reads (``RowParser``): ``str``;
``int`` for integer and decimal columns; ``Decimal`` and ``float`` for decimals; ``datetime``.
Any other value, and a mapping with a key outside the contract, takes the reference path, for
its value or its errors. tests/foundation/test_run_lines.py checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from apex_metrics.metric import (
    BY_NAME,
    COLUMNS,
    FIELD_NAMES,
    Metric,
    RowParser,
    copy_text,
    parse_metric,
)

_NAMES: Final = frozenset(BY_NAME)


class _Slow(Exception):
    """This value needs the reference path."""


def _slow(value: Any) -> str:
    raise _Slow


def _string(value: Any) -> str:
    if type(value) is str:
        return value
    raise _Slow


def _integer(value: Any) -> str:
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    raise _Slow


def _decimal(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is Decimal:
        return format(value, "f")
    if kind is float:
        return repr(value)  # the text the reference reads a float as
    if kind is int:
        return str(value)
    raise _Slow


def _datetime(value: Any) -> str:
    kind = type(value)
    if kind is datetime:
        return value.isoformat()  # type: ignore[no-any-return]
    if kind is str:
        return value  # type: ignore[no-any-return]
    raise _Slow


_TEXT: Final[dict[str, Callable[[Any], str]]] = {
    "string": _string,
    "integer": _integer,
    "decimal": _decimal,
    "datetime": _datetime,
}


class RunLines:
    """``(run_id, COPY text line)`` of each run, or ``MetricValidationError`` naming what is
    wrong (the reference's errors, numbered by ``line``)."""

    def __init__(self) -> None:
        self._rows = RowParser(list(FIELD_NAMES))
        self._plan = tuple((c.name, _TEXT.get(c.kind, _slow)) for c in COLUMNS)

    def parse(self, item: Mapping[str, Any] | Metric, line: int | None = None) -> tuple[str, str]:
        if isinstance(item, Metric):
            return item.run_id, copy_text(item.pg_values())
        try:
            if not item.keys() <= _NAMES:
                raise _Slow
            row = []
            for name, text in self._plan:
                value = item.get(name)
                row.append("" if value is None else text(value))
            fast = self._rows.fast_line(row)
        except _Slow:
            fast = None
        if fast is not None:
            return fast
        metric = parse_metric(item, line=line)
        return metric.run_id, copy_text(metric.pg_values())
