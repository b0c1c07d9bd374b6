"""Synthetic but realistic campaign traffic for the demo and the benchmarks.

Each campaign has its own agent fleet size, success probability, token appetite, model price and
latency profile; each run draws per-agent calls from those distributions and aggregates them the
same way :class:`~apex_metrics.recorder.RunTracker` does (exact average, p95 as PostgreSQL's
``percentile_cont(0.95)``). A small share of runs are "bad days" with many failures and slow agents.
The generator is seeded, so a seed always gives the same runs.

History and live traffic share one density, :func:`runs_per_hour_at`: a smooth daily curve
(busiest at 14:00 UTC, quietest at 02:00, ±35 % around the mean), so that the demo's last hour
looks like the hours before it rather than like an incident.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from apex_metrics.metric import Metric, parse_metric


@dataclass(frozen=True, slots=True)
class CampaignProfile:
    campaign_id: str
    phases: tuple[str, ...]
    agents: tuple[int, int]  # min, max agents per run
    success_p: float  # probability that one agent call succeeds
    tokens_in_median: int
    tokens_out_median: int
    usd_per_mtok_in: Decimal
    usd_per_mtok_out: Decimal
    latency_median_ms: int
    assets_per_success: tuple[int, int]


PROFILES: tuple[CampaignProfile, ...] = (
    CampaignProfile("spring-launch", ("1", "2", "2-3", "3"), (4, 16), 0.96, 3800, 1100,
                    Decimal("3"), Decimal("15"), 2100, (1, 3)),
    CampaignProfile("q4-retention", ("1", "2", "3"), (8, 32), 0.92, 5200, 1600,
                    Decimal("3"), Decimal("15"), 2900, (1, 2)),
    CampaignProfile("brand-refresh", ("1", "2-3", "4"), (2, 8), 0.98, 9000, 3000,
                    Decimal("15"), Decimal("75"), 6200, (2, 5)),
    CampaignProfile("partner-outreach", ("1", "2"), (6, 20), 0.88, 2400, 700,
                    Decimal("0.8"), Decimal("4"), 1200, (1, 1)),
    CampaignProfile("holiday-promo", ("1", "2", "3", "4"), (10, 40), 0.94, 3100, 950,
                    Decimal("3"), Decimal("15"), 1800, (1, 4)),
)  # fmt: skip


DAILY_SWING = 0.35  # ± share of the mean over a day
PEAK_HOUR_UTC = 14.0


def runs_per_hour_at(when: datetime, mean_per_hour: float) -> float:
    """The density of runs at ``when``: ``mean_per_hour`` shaped by a smooth daily curve (its
    mean over a day is ``mean_per_hour``; one hour differs from the next by at most ~14 %)."""
    hour = when.astimezone(UTC)
    h = hour.hour + hour.minute / 60 + hour.second / 3600
    return mean_per_hour * (1 + DAILY_SWING * math.cos(2 * math.pi * (h - PEAK_HOUR_UTC) / 24))


def percentile_cont(values: list[float], fraction: float) -> float:
    """PostgreSQL's ``percentile_cont``: linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    pos = fraction * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class TrafficGenerator:
    """Makes campaign runs; ``seed`` makes the sequence repeatable."""

    def __init__(self, seed: int | None = None) -> None:
        self.random = random.Random(seed)

    def run(self, at: datetime | None = None, profile: CampaignProfile | None = None) -> Metric:
        rnd = self.random
        prof = profile or rnd.choice(PROFILES)
        bad_day = rnd.random() < 0.05
        agents = rnd.randint(*prof.agents)
        success_p = prof.success_p * (0.55 if bad_day else 1.0)
        ok = 0
        tokens_in = tokens_out = 0
        latencies: list[float] = []
        for _ in range(agents):
            succeeded = rnd.random() < success_p
            ok += succeeded
            t_in = int(rnd.lognormvariate(math.log(prof.tokens_in_median), 0.45))
            t_out = int(rnd.lognormvariate(math.log(prof.tokens_out_median), 0.6))
            if not succeeded:
                t_out //= 4  # failed calls stop early
            tokens_in += t_in
            tokens_out += t_out
            slow = 2.5 if bad_day else 1.0
            latencies.append(rnd.lognormvariate(math.log(prof.latency_median_ms * slow), 0.5))
        cost = (
            Decimal(tokens_in) * prof.usd_per_mtok_in + Decimal(tokens_out) * prof.usd_per_mtok_out
        ) / Decimal(1_000_000)
        assets = sum(rnd.randint(*prof.assets_per_success) for _ in range(ok))
        when = at or datetime.now(UTC)
        return parse_metric(
            {
                "campaign_id": prof.campaign_id,
                "run_id": f"run-{uuid.UUID(int=rnd.getrandbits(128), version=4)}",
                "phase": rnd.choice(prof.phases),
                "agents_total": agents,
                "agents_successful": ok,
                "assets_generated": assets,
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "cost_usd": cost,
                "latency_p95_ms": round(percentile_cont(latencies, 0.95)),
                "latency_avg_ms": round(sum(latencies) / len(latencies)),
                "created_at": when,
            }
        )

    def backfill(
        self,
        days: float,
        *,
        per_hour: float = 12.0,
        now: datetime | None = None,
        after: datetime | None = None,
    ) -> Iterator[Metric]:
        """Runs spread over the last ``days`` days at the density of :func:`runs_per_hour_at`,
        oldest first; ``after`` starts later (a window already filled up to then)."""
        end = now or datetime.now(UTC)
        t = end - timedelta(days=days)
        if after is not None and after > t:
            t = after
        while True:
            t += timedelta(seconds=self.next_gap(t, per_hour))
            if t >= end:
                return
            yield self.run(at=t)

    def next_gap(self, when: datetime, per_hour: float) -> float:
        """Seconds until the next run after ``when`` (exponential, at the density then)."""
        return self.random.expovariate(runs_per_hour_at(when, per_hour) / 3600.0)
