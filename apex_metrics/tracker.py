"""Aggregate one run's agent calls into its metrics: totals, exact mean and p95 latency.

``recorder.track(campaign_id, run_id)`` returns a :class:`RunTracker`; on exit it records the
run (also when the block raised, with that failure counted as one unsuccessful agent) and lets
the block's own exception propagate, unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Self

from apex_metrics.exceptions import MetricValidationError
from apex_metrics.metric import Metric, parse_metric
from apex_metrics.problems import one_line

if TYPE_CHECKING:
    from apex_metrics.recorder import Recorder, RecordResult

log = logging.getLogger("apex_metrics.recorder")


def mean_rounded(values: list[Fraction]) -> int:
    """The exact mean, rounded half-even to a whole number."""
    return round(sum(values, Fraction(0)) / len(values))


def percentile_cont(values: list[Fraction], fraction: Fraction) -> Fraction:
    """PostgreSQL's ``percentile_cont``: linear interpolation between the two nearest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)  # floor: position >= 0
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


P95 = Fraction(95, 100)


@dataclass
class AgentCall:
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: Fraction | None = None
    success: bool = True
    cost_usd: Decimal = Decimal(0)


@dataclass
class RunTracker:
    """Collects one run's agent calls; on exit records the run (also when the block raised, with
    that failure counted as one unsuccessful agent) and lets any exception propagate."""

    recorder: Recorder
    campaign_id: str
    run_id: str
    phase: str | None = None
    assets_generated: int = 0
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    calls: list[AgentCall] = field(default_factory=list)
    result: RecordResult | None = None

    def call(
        self,
        *,
        tokens_in: int = 0,
        tokens_out: int = 0,
        latency_ms: float | int | Decimal | None = None,
        success: bool = True,
        cost_usd: Decimal | float | int | str = 0,
    ) -> None:
        """One agent call of this run."""
        latency = None if latency_ms is None else Fraction(Decimal(str(latency_ms)))
        cost = Decimal(str(cost_usd))
        self.calls.append(AgentCall(tokens_in, tokens_out, latency, success, cost))

    def add_assets(self, count: int = 1) -> None:
        self.assets_generated += count

    def failed(self) -> None:
        """Count one failed agent (what an exception escaping the block does)."""
        self.calls.append(AgentCall(success=False))

    def metric(self) -> Metric:
        """The run as it would be recorded now (validated)."""
        latencies = [c.latency_ms for c in self.calls if c.latency_ms is not None]
        values: dict[str, Any] = {
            "campaign_id": self.campaign_id,
            "run_id": self.run_id,
            "phase": self.phase,
            "agents_total": len(self.calls),
            "agents_successful": sum(1 for c in self.calls if c.success),
            "assets_generated": self.assets_generated,
            "tokens_in": sum(c.tokens_in for c in self.calls),
            "tokens_out": sum(c.tokens_out for c in self.calls),
            "cost_usd": sum((c.cost_usd for c in self.calls), Decimal(0)),
            "latency_avg_ms": mean_rounded(latencies) if latencies else None,
            "latency_p95_ms": round(percentile_cont(latencies, P95)) if latencies else None,
            "created_at": self.created_at,
        }
        return parse_metric(values)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is not None:
            self.failed()
        await self.finish(exc)

    async def finish(self, exc: BaseException | None = None) -> None:
        """Record the run. Raises only when strict and the block itself did not raise: the
        block's own exception is never replaced."""
        try:
            metric = self.metric()
        except MetricValidationError as err:
            if self.recorder.strict and exc is None:
                raise
            self.recorder.report_invalid(err, 1)
            return
        try:
            self.result = await self.recorder.record(metric)
        except Exception as err:
            if exc is None:
                raise
            log.error(
                "apex-metrics recorder: run %s not recorded (%s); the block's exception follows",
                self.run_id,
                one_line(err),
            )
