"""KPI math of the panel: windows, time buckets, sums and what is derived from them.

Sources return *sums* (:class:`Totals`); every rate is derived here from sums, never averaged:

- success rate = Σ agents_successful ÷ Σ agents_total (weighted by agents, not a mean of the
  runs' ``success_rate``);
- average latency = Σ latency_avg_ms ÷ runs that report one (a mean of the runs' averages);
- "p95 of run p95s" = the 95th percentile of the runs' ``latency_p95_ms`` values, read from a
  log-linear histogram (:func:`latency_bucket`): it is *not* the p95 of the underlying calls, and
  it is reported as the upper edge of its bucket (at most 1/32 ≈ 3 % above the exact value);
- cost per asset = Σ cost ÷ Σ assets; cost per successful agent = Σ cost ÷ Σ agents_successful.

Money stays ``Decimal`` from the database to the JSON (as a string).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

from apex_metrics.metric import BY_NAME

HOUR: Final = timedelta(hours=1)
DAY: Final = timedelta(days=1)
EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)  # bucket origin, as in panel.sql
WINDOWS: Final[dict[str, timedelta]] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
# Candidate bucket widths (seconds), smallest first; at most MAX_POINTS buckets per chart.
BUCKET_WIDTHS: Final = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
MAX_POINTS: Final = 200
MONEY: Final = Decimal("0.00001")
RATE: Final = Decimal("0.01")


# ------------------------------------------------------------------------------------------------
# Windows and buckets


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open time range [start, end) in UTC."""

    start: datetime
    end: datetime

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def previous(self) -> Window:
        """The window of the same length that ends where this one starts."""
        return Window(self.start - self.length, self.start)

    def tiers(self, *, days: bool = True) -> Tiers:
        """How panel.sql reads the window: full UTC days [d1, d2) from the daily rollup, the
        other full hours [h1, d1) and [d2, h2) from the hourly one, the rest from raw rows."""
        h1 = ceil_time(self.start, HOUR)
        h2 = floor_time(self.end, HOUR)
        if h1 >= h2:
            return Tiers(self.end, self.end, self.end, self.end)
        d1 = ceil_time(self.start, DAY)
        d2 = floor_time(self.end, DAY)
        if not days or d1 >= d2:
            return Tiers(h1, h2, h2, h2)
        return Tiers(h1, h2, d1, d2)

    def raw_only(self) -> Tiers:
        return Tiers(self.end, self.end, self.end, self.end)


@dataclass(frozen=True, slots=True)
class Tiers:
    """Bounds of the three tiers of a window (see :meth:`Window.tiers`)."""

    h1: datetime
    h2: datetime
    d1: datetime
    d2: datetime


def floor_time(t: datetime, step: timedelta) -> datetime:
    """``t`` rounded down to a multiple of ``step`` since 2000-01-01 UTC (PostgreSQL date_bin)."""
    return EPOCH + ((t - EPOCH) // step) * step


def ceil_time(t: datetime, step: timedelta) -> datetime:
    down = floor_time(t, step)
    return down if down == t else down + step


def bucket_width(window: Window) -> int:
    """Seconds per chart bucket: the smallest width giving at most MAX_POINTS buckets; whole
    hours once the window is longer than 6 hours and whole days past 8 days (so the hourly or
    daily rollup can serve every bucket)."""
    seconds = window.length.total_seconds()
    for width in BUCKET_WIDTHS:
        if seconds > 6 * 3600 and width < 3600:
            continue
        if seconds > 8 * 86400 and width < 86400:
            continue
        if seconds / width <= MAX_POINTS:
            return width
    return BUCKET_WIDTHS[-1]


def bucket_starts(window: Window, width: int) -> list[datetime]:
    """Every bucket start (aligned like date_bin) that overlaps the window."""
    step = timedelta(seconds=width)
    t = floor_time(window.start, step)
    out: list[datetime] = []
    while t < window.end:
        out.append(t)
        t += step
    return out


# ------------------------------------------------------------------------------------------------
# Latency histogram (mirrors apex_metrics_latency_bucket in 0003_panel_rollup.sql)


def latency_bucket(v: int) -> int:
    """Exact below 64 ms; above, 32 buckets per power of two (integer arithmetic only)."""
    if v < 64:
        return v
    e = v.bit_length() - 1
    return 64 + (e - 6) * 32 + ((v >> (e - 5)) - 32)


def latency_bucket_upper(b: int) -> int:
    """The largest latency that falls in bucket ``b``."""
    if b < 64:
        return b
    e = 6 + (b - 64) // 32
    m = 32 + (b - 64) % 32
    return ((m + 1) << (e - 5)) - 1


def p95_from_histogram(hist: Mapping[int, int]) -> int | None:
    """p95 over a {bucket: runs} histogram, as ``latency_p95`` in panel.sql computes it."""
    total = sum(hist.values())
    if total <= 0:
        return None
    below = 0
    for bucket in sorted(hist):
        below += hist[bucket]
        if below * 100 >= total * 95:
            return latency_bucket_upper(bucket)
    return None  # pragma: no cover - unreachable when total > 0


def histogram(values: Iterable[tuple[int, int]]) -> dict[int, int]:
    """{bucket: runs} from (latency value, runs with it) pairs."""
    out: dict[int, int] = {}
    for value, runs in values:
        b = latency_bucket(value)
        out[b] = out.get(b, 0) + runs
    return out


# ------------------------------------------------------------------------------------------------
# Sums and derived figures


# The sums of Totals: each field and the data column (apex_metrics.metric.COLUMNS) it adds up.
SUMMED: Final = (
    ("cost_usd", "cost_usd"),
    ("tokens_in", "tokens_in"),
    ("tokens_out", "tokens_out"),
    ("agents_total", "agents_total"),
    ("agents_successful", "agents_successful"),
    ("assets_generated", "assets_generated"),
    ("latency_avg_sum", "latency_avg_ms"),
)
assert all(column in BY_NAME for _, column in SUMMED)


@dataclass(slots=True)
class Totals:
    """Sums over a set of runs, and the p95 of their p95s."""

    runs: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    tokens_in: int = 0
    tokens_out: int = 0
    agents_total: int = 0
    agents_successful: int = 0
    assets_generated: int = 0
    latency_avg_sum: int = 0
    latency_avg_runs: int = 0
    latency_p95_ms: int | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...], p95: int | None = None) -> Totals:
        """From the 9 columns of the ``totals`` query (runs, cost, …, latency_avg_runs)."""
        return cls(
            int(row[0]), Decimal(row[1] or 0), int(row[2]), int(row[3]), int(row[4]),
            int(row[5]), int(row[6]), int(row[7]), int(row[8]), p95,
        )  # fmt: skip

    def add(self, other: Totals) -> None:
        """Add another set's sums (the p95 is not additive and is left alone)."""
        self.runs += other.runs
        self.cost_usd += other.cost_usd
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.agents_total += other.agents_total
        self.agents_successful += other.agents_successful
        self.assets_generated += other.assets_generated
        self.latency_avg_sum += other.latency_avg_sum
        self.latency_avg_runs += other.latency_avg_runs

    # Derived figures (None when the denominator is 0).
    @property
    def success_rate(self) -> Decimal | None:
        return ratio(Decimal(self.agents_successful) * 100, self.agents_total, RATE)

    @property
    def latency_avg_ms(self) -> Decimal | None:
        return ratio(Decimal(self.latency_avg_sum), self.latency_avg_runs, RATE)

    @property
    def cost_per_asset(self) -> Decimal | None:
        return ratio(self.cost_usd, self.assets_generated, MONEY)

    @property
    def cost_per_successful_agent(self) -> Decimal | None:
        return ratio(self.cost_usd, self.agents_successful, MONEY)

    def figures(self) -> dict[str, Decimal | int | None]:
        """Every KPI tile's value."""
        return {
            "cost_usd": self.cost_usd.quantize(MONEY, ROUND_HALF_UP),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_avg_ms": self.latency_avg_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "success_rate": self.success_rate,
            "agents_total": self.agents_total,
            "agents_successful": self.agents_successful,
            "assets_generated": self.assets_generated,
            "runs": self.runs,
            "cost_per_asset": self.cost_per_asset,
            "cost_per_successful_agent": self.cost_per_successful_agent,
        }


def ratio(numerator: Decimal, denominator: int, quantum: Decimal) -> Decimal | None:
    if denominator == 0:
        return None
    return (numerator / Decimal(denominator)).quantize(quantum, ROUND_HALF_UP)


def change(current: Decimal | int | None, previous: Decimal | int | None) -> Decimal | None:
    """Relative change in percent against the previous window (None when undefined)."""
    if current is None or previous is None or previous == 0:
        return None
    return ((Decimal(current) - Decimal(previous)) * 100 / Decimal(previous)).quantize(RATE)


def jsonable(value: Decimal | int | None) -> str | int | None:
    """Decimals travel as strings (no float rounding), integers as integers."""
    if isinstance(value, Decimal):
        return str(value)
    return value


# Tile definitions: key, label, unit, and a note shown under the label.
TILES: Final = (
    ("cost_usd", "Total cost", "usd", ""),
    ("tokens_in", "Tokens in", "count", ""),
    ("tokens_out", "Tokens out", "count", ""),
    ("latency_avg_ms", "Average latency", "ms", "mean of the runs' average latency"),
    (
        "latency_p95_ms",
        "p95 of run p95s",
        "ms",
        "95th percentile of the runs' p95 latency (not a p95 of calls; ≤3 % bucket error)",
    ),
    ("success_rate", "Success rate", "percent", "Σ successful agents ÷ Σ agents"),
    ("agents_total", "Agents", "count", ""),
    ("agents_successful", "Successful agents", "count", ""),
    ("assets_generated", "Assets generated", "count", ""),
    ("runs", "Runs", "count", ""),
    ("cost_per_asset", "Cost per asset", "usd", "Σ cost ÷ Σ assets"),
    ("cost_per_successful_agent", "Cost per successful agent", "usd", "Σ cost ÷ Σ successful"),
)


def kpi_payload(current: Totals, previous: Totals) -> list[dict[str, Any]]:
    """The tiles: value, previous value and change, in display order."""
    now_figures = current.figures()
    before = previous.figures()
    return [
        {
            "key": key,
            "label": label,
            "unit": unit,
            "note": note,
            "value": jsonable(now_figures[key]),
            "previous": jsonable(before[key]),
            "change_pct": jsonable(change(now_figures[key], before[key])),
        }
        for key, label, unit, note in TILES
    ]
