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
from typing import Any, Final, Literal, TypeAlias

from apex_metrics.exceptions import FieldError, MetricValidationError
from apex_metrics.formats import utc_z

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

# Orders derived from COLUMNS. Every list of the data columns, in Python or in SQL, is one of
# these (tests/foundation/test_contract_sql.py parses the SQL files' lists to keep them so).
KEY_COLUMN: Final = next(c for c in COLUMNS if c.dataverse == ALTERNATE_KEY_COLUMN)  # run_id
BODY_COLUMNS: Final = tuple(c for c in COLUMNS if c is not KEY_COLUMN)  # an upsert body's
KEY_FIRST_NAMES: Final = (KEY_COLUMN.name, *(c.name for c in BODY_COLUMNS))  # key, then the rest


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
        """The Dataverse body of an upsert (:func:`dataverse_body`)."""
        return dataverse_body({name: getattr(self, name) for name in FIELD_NAMES})


def to_json_value(value: Any) -> Any:
    """A metric value as Dataverse JSON: decimals as numbers, datetimes as UTC ISO 8601 with Z."""
    if isinstance(value, Decimal):
        return float(value)  # shortest repr round-trips exactly for ≤ 15 significant digits
    if isinstance(value, datetime):
        return utc_z(value)
    return value


_BODY_PLAN: Final = tuple(
    (c.name, c.dataverse, c.kind in ("decimal", "datetime")) for c in BODY_COLUMNS
)


def dataverse_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """The upsert body of one run (a mapping of field name → value, e.g. a claimed row): every
    column but the key, plus the primary name. The only body builder: the sync runs it for
    every row of every batch, so it builds no Metric."""
    body: dict[str, Any] = {PRIMARY_NAME: row[KEY_COLUMN.name]}
    for name, dataverse, convert in _BODY_PLAN:
        value = row[name]
        if convert and value is not None:
            value = to_json_value(value)
        body[dataverse] = value
    return body


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
    if col is KEY_COLUMN:
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

_TIME_TEXT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
_PLAIN_TEXT = re.compile(r"[^\x00-\x1f\x7f\\]*")  # no control characters: see _to_string
_KEY_INDEX: Final = FIELD_NAMES.index(KEY_COLUMN.name)


class _Slow(Exception):
    """This value needs the reference path."""


# What RowParser._fast checks per column; _K_SLOW: any value takes the reference path.
_K_INT, _K_DECIMAL, _K_TIME, _K_KEY, _K_TEXT, _K_SLOW = range(6)

# One step of RowParser._fast: (index in the row or -1, kind, name, length limit, required,
# pattern, maximum to check).
_Step: TypeAlias = tuple[int, int, str, int, bool, re.Pattern[str] | None, int | Decimal | None]


def _fast_check(col: Column) -> tuple[int, int, re.Pattern[str] | None, int | Decimal | None]:
    """How the fast path checks a column, from its rules: (kind, length limit, pattern, maximum
    left to check after the pattern). Only non-negative numbers are read without the reference."""
    if col.kind == "datetime":
        return _K_TIME, 0, _TIME_TEXT, None
    if col.kind == "string":
        assert col.max_length is not None
        if col is KEY_COLUMN:
            forbidden = re.escape("".join(sorted(RUN_ID_FORBIDDEN)))
            text = rf"[^\x00-\x1f\x7f\\{forbidden}]{{1,{col.max_length}}}"
            return _K_KEY, col.max_length, re.compile(text), None
        return _K_TEXT, col.max_length, _PLAIN_TEXT, None
    if col.min_value != 0 or col.max_value is None:
        return _K_SLOW, 0, None, None
    if col.kind == "integer":  # [0-9]{1,digits}, and at most max_value when that long
        return _K_INT, len(str(col.max_value)), None, col.max_value
    assert col.precision is not None
    whole = len(str(int(col.max_value)))
    pattern = re.compile(rf"[0-9]{{1,{whole}}}(?:\.[0-9]{{1,{col.precision}}})?")
    largest = Decimal(10) ** whole - Decimal(1).scaleb(-col.precision)  # what the pattern allows
    return _K_DECIMAL, 0, pattern, col.max_value if largest > col.max_value else None


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
        # Per column, in FIELD_NAMES order: see _Step.
        self._plan: list[_Step] = []
        for c in COLUMNS:
            kind, limit, pattern, maximum = _fast_check(c)
            self._plan.append(
                (self.index.get(c.name, -1), kind, c.name, limit, c.required, pattern, maximum)
            )

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

    def fast_line(self, row: list[str]) -> tuple[str, str] | None:
        """``(run_id, copy line)`` by the fast path, or None when the reference must decide."""
        try:
            return self._fast(row)
        except _Slow:
            return None

    def _fast(self, row: list[str]) -> tuple[str, str]:
        """The common case at C speed where possible; anything unusual raises ``_Slow`` and
        takes the reference path (``parse_metric``), which gives the same result or the error."""
        out: list[str] = []
        total: int | None = None
        ok: int | None = None
        for i, kind, name, limit, required, pattern, maximum in self._plan:
            raw = row[i] if i >= 0 else ""
            if raw == "":
                if required:
                    raise _Slow
                if kind == _K_TIME:
                    out.append(self.now_text)
                elif name == "success_rate":  # derived when blank, as parse_metric does
                    rate = derive_success_rate(total, ok)
                    out.append("\\N" if rate is None else format(rate, "f"))
                else:
                    out.append("\\N")
                continue
            if kind == _K_INT:
                # [0-9]{1,limit} and at most the maximum
                if not (len(raw) <= limit and raw.isascii() and raw.isdigit()):
                    raise _Slow
                if len(raw) == limit and maximum is not None and int(raw) > maximum:
                    raise _Slow
                if name == "agents_total":
                    total = int(raw)
                elif name == "agents_successful":
                    ok = int(raw)
            elif kind == _K_DECIMAL:
                assert pattern is not None
                if not pattern.fullmatch(raw) or (maximum is not None and Decimal(raw) > maximum):
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
            elif kind == _K_KEY:
                assert pattern is not None
                if not pattern.fullmatch(raw) or raw != raw.strip() or not raw.isascii():
                    raise _Slow
            elif kind != _K_TEXT or (  # campaign_id (required), phase
                len(raw) > limit
                or not _PLAIN_TEXT.fullmatch(raw)
                or not raw.strip()  # blank: required (error) or NULL (phase); reference decides
                or not raw.isascii()
            ):
                raise _Slow
            out.append(raw)
        if total is not None and ok is not None and ok > total:
            raise _Slow
        return out[_KEY_INDEX], "\t".join(out) + "\n"
