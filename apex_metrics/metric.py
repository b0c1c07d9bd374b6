"""The campaign-run record: its 13 fields, their rules, and the PostgreSQL ↔ Dataverse column map.

This module is the single source of truth for the data contract in ``design.md``. Everything
that reads or writes a metric (recorder, import, sync, reconcile, panel, emulator provisioning)
takes names, types and limits from here.

Validation is plain Python (no per-row model construction) because bulk import pushes a million
rows through it; every rule failure is reported as ``FieldError(field, rule)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final, Literal

from apex_metrics.exceptions import FieldError, MetricValidationError

INT32_MAX: Final = 2_147_483_647
COST_QUANTUM: Final = Decimal("0.00001")
COST_MAX: Final = Decimal("99999.99999")
RATE_QUANTUM: Final = Decimal("0.01")
RATE_MAX: Final = Decimal("100")
RUN_ID_FORBIDDEN: Final = frozenset("/<>*%&:\\?+")
DATETIME_MIN: Final = datetime(1753, 1, 1, tzinfo=UTC)

Kind = Literal["string", "integer", "decimal", "datetime"]


@dataclass(frozen=True, slots=True)
class Column:
    """One field of the contract and how it looks on each side."""

    name: str  # PostgreSQL column and Python attribute
    dataverse: str  # Dataverse logical name
    kind: Kind
    pg_type: str
    required: bool = False
    max_length: int | None = None  # strings
    min_value: int | Decimal | None = None  # numbers
    max_value: int | Decimal | None = None
    precision: int | None = None  # decimals: digits after the point


COLUMNS: Final[tuple[Column, ...]] = (
    Column("campaign_id", "apex_campaignid", "string", "varchar(64)", True, max_length=64),
    Column("run_id", "apex_runid", "string", "varchar(64)", True, max_length=64),
    Column("phase", "apex_phase", "string", "varchar(16)", max_length=16),
    Column(
        "agents_total", "apex_agentstotal", "integer", "integer", min_value=0, max_value=INT32_MAX
    ),
    Column(
        "agents_successful", "apex_agentssuccessful", "integer", "integer",
        min_value=0, max_value=INT32_MAX,
    ),
    Column(
        "assets_generated", "apex_assetsgenerated", "integer", "integer",
        min_value=0, max_value=INT32_MAX,
    ),
    Column("tokens_in", "apex_tokensin", "integer", "integer", min_value=0, max_value=INT32_MAX),
    Column("tokens_out", "apex_tokensout", "integer", "integer", min_value=0, max_value=INT32_MAX),
    Column(
        "cost_usd", "apex_costusd", "decimal", "numeric(10,5)",
        min_value=Decimal(0), max_value=COST_MAX, precision=5,
    ),
    Column(
        "latency_p95_ms", "apex_latencyp95ms", "integer", "integer",
        min_value=0, max_value=INT32_MAX,
    ),
    Column(
        "latency_avg_ms", "apex_latencyavgms", "integer", "integer",
        min_value=0, max_value=INT32_MAX,
    ),
    Column(
        "success_rate", "apex_successrate", "decimal", "numeric(5,2)",
        min_value=Decimal(0), max_value=RATE_MAX, precision=2,
    ),
    Column("created_at", "apex_createdat", "datetime", "timestamptz"),
)  # fmt: skip

FIELD_NAMES: Final = tuple(c.name for c in COLUMNS)
BY_NAME: Final = {c.name: c for c in COLUMNS}
PG_TO_DATAVERSE: Final = {c.name: c.dataverse for c in COLUMNS}
DATAVERSE_TO_PG: Final = {c.dataverse: c.name for c in COLUMNS}

# The Dataverse table (design.md, "Data contract").
TABLE_SCHEMA_NAME: Final = "apex_CampaignMetrics"
TABLE_LOGICAL_NAME: Final = "apex_campaignmetrics"
ENTITY_SET: Final = "apex_campaignmetricses"
PRIMARY_KEY: Final = "apex_campaignmetricsid"
PRIMARY_NAME: Final = "apex_name"
ALTERNATE_KEY_SCHEMA_NAME: Final = "apex_RunIdKey"
ALTERNATE_KEY_COLUMN: Final = "apex_runid"
PUBLISHER_PREFIX: Final = "apex_"


@dataclass(frozen=True, slots=True)
class Metric:
    """One campaign run, validated. Build it with :func:`parse_metric` (or ``Metric.parse``)."""

    campaign_id: str
    run_id: str
    phase: str | None = None
    agents_total: int | None = None
    agents_successful: int | None = None
    assets_generated: int | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: Decimal | None = None
    latency_p95_ms: int | None = None
    latency_avg_ms: int | None = None
    success_rate: Decimal | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, line: int | None = None) -> Metric:
        return parse_metric(data, line=line)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def pg_values(self) -> tuple[Any, ...]:
        """Values in ``FIELD_NAMES`` order, for INSERT and COPY."""
        return tuple(getattr(self, n) for n in FIELD_NAMES)

    def to_dataverse(self) -> dict[str, Any]:
        """The Dataverse body of an upsert: every column but the key, plus the primary name."""
        body: dict[str, Any] = {PRIMARY_NAME: self.run_id}
        for col in COLUMNS:
            if col.dataverse == ALTERNATE_KEY_COLUMN:
                continue
            body[col.dataverse] = to_json_value(getattr(self, col.name))
        return body


def to_json_value(value: Any) -> Any:
    """A metric value as Dataverse JSON: decimals as numbers, datetimes as UTC ISO 8601 with Z."""
    if isinstance(value, Decimal):
        return float(value)  # shortest repr round-trips exactly for ≤ 15 significant digits
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def dataverse_datetime(value: datetime) -> datetime:
    """A timestamp as Dataverse keeps it: UTC, whole seconds."""
    return value.astimezone(UTC).replace(microsecond=0)


# ------------------------------------------------------------------------------------------------
# Validation


def parse_metric(data: Mapping[str, Any], *, line: int | None = None) -> Metric:
    """Validate a mapping of field name → value (Python values or strings from CSV/JSON).

    Unknown keys, missing required fields and every broken rule are collected and raised
    together as one :class:`MetricValidationError`.
    """
    errors: list[FieldError] = []
    values: dict[str, Any] = {}
    for key in data:
        if key not in BY_NAME:
            errors.append(FieldError(str(key), "unknown field", line))
    for col in COLUMNS:
        raw = data.get(col.name)
        if _is_blank(raw):
            if col.required:
                errors.append(FieldError(col.name, "is required and must not be empty", line))
            continue
        try:
            values[col.name] = _convert(col, raw)
        except _RuleBroken as broken:
            errors.append(FieldError(col.name, broken.rule, line))
    _check_cross_field(values, errors, line)
    if errors:
        raise MetricValidationError(errors)
    if "success_rate" not in values:
        values["success_rate"] = derive_success_rate(
            values.get("agents_total"), values.get("agents_successful")
        )
    return Metric(**values)


def derive_success_rate(total: int | None, successful: int | None) -> Decimal | None:
    """successful ÷ total × 100, rounded half-even to 2 places; None when it cannot be known."""
    if total is None or successful is None or total == 0:
        return None
    return (Decimal(successful) * 100 / Decimal(total)).quantize(RATE_QUANTUM, ROUND_HALF_EVEN)


class _RuleBroken(Exception):
    def __init__(self, rule: str) -> None:
        self.rule = rule


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _convert(col: Column, raw: Any) -> Any:
    if col.kind == "string":
        return _to_string(col, raw)
    if col.kind == "integer":
        return _to_integer(col, raw)
    if col.kind == "decimal":
        return _to_decimal(col, raw)
    return _to_datetime(raw)


def _to_string(col: Column, raw: Any) -> str:
    if not isinstance(raw, str):
        raise _RuleBroken("must be a string")
    if "\x00" in raw:
        raise _RuleBroken("must not contain NUL characters")
    control = next((c for c in raw if c < " " or "\x7f" <= c <= "\x9f"), None)
    if control is not None:
        raise _RuleBroken(f"must not contain control characters (found U+{ord(control):04X})")
    if not raw.isascii():
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise _RuleBroken("must be valid Unicode text (no lone surrogates)") from None
    assert col.max_length is not None
    if len(raw) > col.max_length:
        raise _RuleBroken(f"must be at most {col.max_length} characters (got {len(raw)})")
    if col.name == "run_id":
        bad = sorted(set(raw) & RUN_ID_FORBIDDEN)
        if bad:
            listed = " ".join(bad)
            raise _RuleBroken(f"must not contain {listed} (they break Dataverse key URLs)")
        if raw != raw.strip():
            raise _RuleBroken("must not start or end with spaces")
    return raw


def _to_integer(col: Column, raw: Any) -> int:
    if isinstance(raw, bool):
        raise _RuleBroken("must be a whole number")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float):
        if not math.isfinite(raw) or not raw.is_integer():
            raise _RuleBroken("must be a whole number")
        value = int(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        body = text[1:] if text[:1] in "+-" else text
        if not body.isascii() or not body.isdigit() or len(body) > 20:
            raise _RuleBroken("must be a whole number")
        value = int(text)
    else:
        raise _RuleBroken("must be a whole number")
    _check_range(col, value)
    return value


def _to_decimal(col: Column, raw: Any) -> Decimal:
    if isinstance(raw, bool):
        raise _RuleBroken("must be a number")
    try:
        if isinstance(raw, Decimal):
            value = raw
        elif isinstance(raw, int):
            value = Decimal(raw)
        elif isinstance(raw, float):
            value = Decimal(repr(raw))
        elif isinstance(raw, str) and len(raw) <= 64:
            value = Decimal(raw.strip())
        else:
            raise _RuleBroken("must be a number")
    except InvalidOperation:
        raise _RuleBroken("must be a number") from None
    if not value.is_finite():
        raise _RuleBroken("must be a finite number")
    assert col.precision is not None
    try:
        value = value.quantize(Decimal(1).scaleb(-col.precision), ROUND_HALF_EVEN)
    except InvalidOperation:  # more digits than the context holds (1e23 to 5 places)
        _check_range(col, value)
        raise _RuleBroken("must be a number") from None
    _check_range(col, value)
    return value


def _check_range(col: Column, value: int | Decimal) -> None:
    # A 5,000-digit integer cannot even be printed (int max_str_digits): name its size instead.
    if isinstance(value, int) and value.bit_length() > 128:
        shown = f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    else:
        shown = str(value) if len(str(value)) <= 40 else f"{str(value)[:20]}… (long)"
    if col.min_value is not None and value < col.min_value:
        raise _RuleBroken(f"must be ≥ {col.min_value} (got {shown})")
    if col.max_value is not None and value > col.max_value:
        raise _RuleBroken(f"must be ≤ {col.max_value} (got {shown})")


def _to_datetime(raw: Any) -> datetime:
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise _RuleBroken("must be an ISO 8601 timestamp with a time zone") from None
    else:
        raise _RuleBroken("must be an ISO 8601 timestamp with a time zone")
    if value.tzinfo is None or value.utcoffset() is None:
        raise _RuleBroken("must carry a time zone (naive timestamps are ambiguous)")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise _RuleBroken("must be between 1753 and 9999 (UTC)") from None
    if value < DATETIME_MIN:  # Dataverse's DateTime floor
        raise _RuleBroken("must be in the year 1753 or later (UTC)")
    return value


def _check_cross_field(values: dict[str, Any], errors: list[FieldError], line: int | None) -> None:
    total, ok = values.get("agents_total"), values.get("agents_successful")
    if total is not None and ok is not None and ok > total:
        errors.append(
            FieldError("agents_successful", f"must be ≤ agents_total ({ok} > {total})", line)
        )


# ------------------------------------------------------------------------------------------------
# Fast path for rows of strings (CSV import): COPY text lines without building Metric objects.
#
# ``RowParser.copy_line`` accepts only plainly canonical strings (ASCII digits, at most 5
# decimals, ISO 8601 with Z or ±HH:MM, text with nothing to escape) and passes them through as
# PostgreSQL COPY text, which PostgreSQL reads to exactly the values ``parse_metric`` would give.
# Anything else goes through ``parse_metric``, the reference, for its value or its errors.
# tests/foundation/test_rows.py checks the two agree.

_INT_TEXT = re.compile(r"[0-9]{1,10}")
_COST_TEXT = re.compile(r"[0-9]{1,5}(?:\.[0-9]{1,5})?")
_RATE_TEXT = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,2})?")
_TIME_TEXT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
_PLAIN_TEXT = re.compile(r"[^\x00-\x1f\x7f\\]*")  # no control characters: see _to_string
_RUN_ID_TEXT = re.compile(r"[^\x00-\x1f\x7f\\/<>*%&:?+]{1,64}")
_INT_COLUMNS = frozenset(c.name for c in COLUMNS if c.kind == "integer")


class _Slow(Exception):
    """This value needs the reference path."""


# What RowParser._fast checks per column.
_K_INT, _K_COST, _K_RATE, _K_TIME, _K_RUN_ID, _K_TEXT = range(6)


def _kind_of(col: Column) -> int:
    if col.name in _INT_COLUMNS:
        return _K_INT
    kinds = {"cost_usd": _K_COST, "success_rate": _K_RATE, "created_at": _K_TIME}
    if col.name in kinds:
        return kinds[col.name]
    if col.name == "run_id":
        return _K_RUN_ID
    return _K_TEXT


def copy_text(values: tuple[Any, ...]) -> str:
    """One row of PostgreSQL COPY text format (tab-separated, ``\\N`` for NULL, newline)."""
    out: list[str] = []
    for value in values:
        if value is None:
            out.append("\\N")
        elif isinstance(value, str):
            out.append(
                value.replace("\\", "\\\\")
                .replace("\t", "\\t")
                .replace("\n", "\\n")
                .replace("\r", "\\r")
            )
        elif isinstance(value, Decimal):
            out.append(format(value, "f"))
        elif isinstance(value, datetime):
            out.append(value.isoformat())
        else:
            out.append(str(value))
    return "\t".join(out) + "\n"


class RowParser:
    """Turns rows of strings under a checked header into COPY text lines (``FIELD_NAMES`` order)."""

    def __init__(self, header: list[str], *, now: datetime | None = None) -> None:
        unknown = [name for name in header if name not in BY_NAME]
        if unknown:
            raise ValueError(f"unknown columns: {unknown}")
        self.header = header
        self.index = {name: i for i, name in enumerate(header)}
        self.now = now or datetime.now(UTC)  # created_at of rows that leave it blank
        self.now_text = self.now.isoformat()
        # Per column, in FIELD_NAMES order: (index in the row or -1, kind, name, max length,
        # required).
        self._plan = [
            (self.index.get(c.name, -1), _kind_of(c), c.name, c.max_length or 0, c.required)
            for c in COLUMNS
        ]

    def parse(self, row: list[str], line: int | None = None) -> tuple[str, str]:
        """``(run_id, copy line)`` of a row, or ``MetricValidationError`` naming what is wrong."""
        try:
            return self._fast(row)
        except _Slow:
            data: dict[str, Any] = dict(zip(self.header, row, strict=True))
            if _is_blank(data.get("created_at")):
                data["created_at"] = self.now
            metric = parse_metric(data, line=line)
            return metric.run_id, copy_text(metric.pg_values())

    def _fast(self, row: list[str]) -> tuple[str, str]:
        """The common case at C speed where possible; anything unusual raises ``_Slow`` and
        takes the reference path (``parse_metric``), which gives the same result or the error."""
        out: list[str] = []
        total: int | None = None
        ok: int | None = None
        for i, kind, name, limit, required in self._plan:
            raw = row[i] if i >= 0 else ""
            if raw == "":
                if required:
                    raise _Slow
                if kind == _K_TIME:
                    out.append(self.now_text)
                elif kind == _K_RATE:
                    rate = derive_success_rate(total, ok)
                    out.append("\\N" if rate is None else format(rate, "f"))
                else:
                    out.append("\\N")
                continue
            if kind == _K_INT:
                # [0-9]{1,10} and at most INT32_MAX
                if not (len(raw) <= 10 and raw.isascii() and raw.isdigit()):
                    raise _Slow
                if len(raw) == 10 and int(raw) > INT32_MAX:
                    raise _Slow
                if name == "agents_total":
                    total = int(raw)
                elif name == "agents_successful":
                    ok = int(raw)
            elif kind == _K_COST:
                if not _COST_TEXT.fullmatch(raw):
                    raise _Slow
            elif kind == _K_RATE:
                if not _RATE_TEXT.fullmatch(raw) or Decimal(raw) > RATE_MAX:
                    raise _Slow
            elif kind == _K_TIME:
                if not _TIME_TEXT.fullmatch(raw):
                    raise _Slow
                try:
                    stamp = datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone(UTC)
                except (ValueError, OverflowError):
                    raise _Slow from None
                if stamp < DATETIME_MIN:
                    raise _Slow
            elif kind == _K_RUN_ID:
                if not _RUN_ID_TEXT.fullmatch(raw) or raw != raw.strip() or not raw.isascii():
                    raise _Slow
            elif (  # campaign_id (required), phase
                len(raw) > limit
                or not _PLAIN_TEXT.fullmatch(raw)
                or not raw.strip()  # blank: required (error) or NULL (phase); reference decides
                or not raw.isascii()
            ):
                raise _Slow
            out.append(raw)
        if total is not None and ok is not None and ok > total:
            raise _Slow
        return out[1], "\t".join(out) + "\n"
