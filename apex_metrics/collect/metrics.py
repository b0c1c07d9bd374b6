"""Prometheus metrics of ``collect`` (served at ``GET /metrics``), one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

MAX_UNPRICED_LABELS = 200  # distinct model labels; further unknown models count as "other"


class CollectMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "apex_collect_requests", "OTLP export requests answered", ["code"], registry=r
        )
        self.spans_accepted = Counter(
            "apex_collect_spans_accepted", "Spans counted into runs", registry=r
        )
        self.spans_duplicate = Counter(
            "apex_collect_spans_duplicate",
            "Spans received again (exporter retries): not counted twice",
            registry=r,
        )
        self.spans_rejected = Counter(
            "apex_collect_spans_rejected", "Spans rejected (partial success)", registry=r
        )
        self.unpriced_calls = Counter(
            "apex_collect_unpriced_calls",
            "Model calls without apex.cost_usd whose model genai-prices does not know "
            "(counted at cost 0)",
            ["model"],
            registry=r,
        )
        self.runs_written = Counter(
            "apex_collect_runs_written", "Run upserts committed", registry=r
        )
        self.write_failures = Counter(
            "apex_collect_write_failures", "Batches of runs PostgreSQL did not take", registry=r
        )
        self.traces_held = Gauge("apex_collect_traces_held", "Traces in memory", registry=r)
        self.spans_held = Gauge("apex_collect_spans_held", "Span ids in memory", registry=r)
        self._unpriced_labels: set[str] = set()

    def unpriced(self, label: str) -> None:
        if label not in self._unpriced_labels:
            if len(self._unpriced_labels) >= MAX_UNPRICED_LABELS:
                label = "other"
            else:
                self._unpriced_labels.add(label)
        self.unpriced_calls.labels(model=label).inc()
