"""Prometheus metrics of the sync engine (served by ``sync --metrics-port``).

Counters move as batches settle; the queue gauges (pending, in flight, dead, lag) are refreshed
from PostgreSQL every few seconds by the engine, so every process reports the shared queue. They
are the sync health figures of ``status.read_health`` (one definition: ``v_sync_health``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SyncMetrics:
    """One registry per engine, so tests and several engines in a process never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.pending = Gauge(
            "apex_sync_pending_rows", "Rows waiting to be sent (not in flight or dead)", registry=r
        )
        self.in_flight = Gauge("apex_sync_in_flight_rows", "Rows leased by a worker", registry=r)
        self.dead = Gauge("apex_sync_dead_rows", "Dead-lettered rows", registry=r)
        self.lag = Gauge("apex_sync_lag_seconds", "Age of the oldest pending change", registry=r)
        self.delivered = Counter(
            "apex_sync_delivered_rows", "Rows upserted into Dataverse", ["outcome"], registry=r
        )
        self.failed = Counter(
            "apex_sync_failed_rows", "Row deliveries that failed (will be retried)", registry=r
        )
        self.dead_lettered = Counter(
            "apex_sync_dead_lettered_rows", "Rows dead-lettered", registry=r
        )
        self.throttled = Counter(
            "apex_sync_throttled_responses", "429 answers from Dataverse", registry=r
        )
        self.requests = Counter(
            "apex_sync_batch_requests",
            "Write requests sent to Dataverse (UpsertMultiple or $batch)",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "apex_sync_batch_seconds",
            "Claim-to-ack time of one batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
