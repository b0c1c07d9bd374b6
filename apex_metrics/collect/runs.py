"""One trace's aggregate and the run it makes (docs/ingest.md, "Mapping"). Pure: no I/O.

The aggregate does not depend on the order spans arrive in: sums are sums, and every value
taken "from a span" comes from the span that started first (ties: the lower span id). Sums
saturate at the column's maximum (clip rule) instead of failing the run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from apex_metrics.collect.spans import NS_PER_MS, SpanFacts
from apex_metrics.metric import COST_MAX, INT32_MAX, Metric, parse_metric
from apex_metrics.recorder import P95, mean_rounded, percentile_cont

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_Pick = tuple[int, bytes, str]  # (start ns, span id, value): the smallest wins


def _earlier(current: _Pick | None, facts: SpanFacts, value: str | None) -> _Pick | None:
    if value is None:
        return current
    candidate = (facts.start_ns, facts.span_id, value)
    return candidate if current is None or candidate < current else current


class TraceRun:
    """The spans of one trace seen so far (deduplicated by span id), summed up."""

    __slots__ = (
        "_campaign",
        "_phase",
        "_resource_campaign",
        "_run_id",
        "_service",
        "agents",
        "agents_failed",
        "assets",
        "changes",
        "cost",
        "durations",
        "finalising",
        "last_seen",
        "model_errors",
        "relevant",
        "root_seen",
        "span_ids",
        "start_ns",
        "tokens_in",
        "tokens_out",
        "trace_id",
        "unpriced",
        "written_changes",
        "written_run_id",
    )

    def __init__(self, trace_id: bytes, now: float = 0.0) -> None:
        self.trace_id = trace_id
        self.span_ids: set[bytes] = set()
        self.relevant = False
        self.root_seen = False
        self.start_ns: int | None = None
        self.agents = 0
        self.agents_failed = 0
        self.model_errors = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost = Decimal(0)
        self.assets = 0
        self.unpriced = 0
        self.durations: list[int] = []  # model calls, in ns
        self._run_id: _Pick | None = None
        self._campaign: _Pick | None = None
        self._resource_campaign: _Pick | None = None
        self._service: _Pick | None = None
        self._phase: _Pick | None = None
        # Bookkeeping of the store and the writer.
        self.last_seen = now
        self.changes = 0
        self.written_changes = 0
        self.written_run_id: str | None = None  # once written, a run keeps its id
        self.finalising = False

    def __len__(self) -> int:
        return len(self.span_ids)

    def add(self, facts: SpanFacts) -> bool:
        """Count one span; False when this span id was already counted (an exporter retry)."""
        if facts.span_id in self.span_ids:
            return False
        self.span_ids.add(facts.span_id)
        self.changes += 1
        self.relevant = self.relevant or facts.relevant
        self.root_seen = self.root_seen or facts.is_root
        if self.start_ns is None or facts.start_ns < self.start_ns:
            self.start_ns = facts.start_ns
        if facts.is_agent:
            self.agents += 1
            self.agents_failed += facts.error
        if facts.is_model:
            self.durations.append(facts.duration_ns)
            self.model_errors += facts.error
            self.tokens_in += facts.tokens_in
            self.tokens_out += facts.tokens_out
            self.cost += facts.cost
            self.unpriced += facts.unpriced is not None
        self.assets += facts.assets
        self._run_id = _earlier(self._run_id, facts, facts.run_id)
        self._campaign = _earlier(self._campaign, facts, facts.campaign_id)
        self._resource_campaign = _earlier(self._resource_campaign, facts, facts.resource_campaign)
        self._service = _earlier(self._service, facts, facts.service_name)
        self._phase = _earlier(self._phase, facts, facts.phase)
        return True

    @property
    def run_id(self) -> str:
        """``apex.run_id`` of the earliest span carrying it, else the trace id (32 hex digits);
        fixed once the run was written."""
        if self.written_run_id is not None:
            return self.written_run_id
        return self._run_id[2] if self._run_id else self.trace_id.hex()

    @property
    def writable(self) -> bool:
        """A run may be written once its id is settled: a span named it, the root span came
        (children end, and are exported, before their parents), or the trace went idle."""
        return self.relevant and (
            self._run_id is not None
            or self.root_seen
            or self.finalising
            or self.written_run_id is not None
        )

    @property
    def dirty(self) -> bool:
        return self.writable and self.changes != self.written_changes

    def values(self) -> dict[str, Any]:
        """The run's 13 fields (success_rate derived), before validation."""
        if self.agents:
            total, ok = self.agents, self.agents - self.agents_failed
        elif self.durations:  # model calls without an agent span: one implicit agent
            total, ok = 1, 0 if self.model_errors else 1
        else:
            total, ok = 0, 0
        campaign = self._campaign or self._resource_campaign or self._service
        latencies = [Fraction(ns, NS_PER_MS) for ns in self.durations]
        start = self.start_ns or 0
        return {
            "campaign_id": campaign[2] if campaign else "unknown_service",
            "run_id": self.run_id,
            "phase": self._phase[2] if self._phase else None,
            "agents_total": total,
            "agents_successful": ok,
            "assets_generated": min(self.assets, INT32_MAX),
            "tokens_in": min(self.tokens_in, INT32_MAX),
            "tokens_out": min(self.tokens_out, INT32_MAX),
            "cost_usd": min(self.cost, COST_MAX),
            "latency_avg_ms": mean_rounded(latencies) if latencies else None,
            "latency_p95_ms": round(percentile_cont(latencies, P95)) if latencies else None,
            "created_at": EPOCH + timedelta(microseconds=start // 1000),
        }

    def metric(self) -> Metric:
        """The run, validated against the contract (``MetricValidationError`` if it breaks it)."""
        return parse_metric(self.values())
