"""MetricsPanel benchmark: KPI API p95 latency, hourly rollup against raw aggregation.

For each ``--rows`` count: a fresh database (migrated), ``N`` runs generated server-side with
``generate_series`` in chunks of 1,000,000 (the write path only logs the hours it touched; the
refresher then folds them into the rollups, timed), 200 campaigns x 4 phases, spread evenly over
the last 60 days in time order (so both a 30-day window and its previous window hold data).
Then ``GET /api/kpis`` (in process, through the real app: current + previous window, sums + p95
of run p95s) is timed for the 24 h and 30 d windows, once with the rollups and once reading raw
rows only, and for 30 d windows filtered by phase and by campaign (rollups). Last, freshness:
20 new runs, each timed from its commit to the panel's change event and to ``/api/kpis``
counting it.

    .venv/bin/python bench/panel_bench.py --rows 1000000 --rows 10000000

Prints one table and the raw/rollup ratios; ``--json FILE`` also writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from typing import Any

import httpx
import psycopg
from psycopg import conninfo, sql

from apex_metrics import db
from apex_metrics.panel.app import PanelConfig, create_app
from apex_metrics.rollup import refresh_all

CHUNK = 1_000_000
GENERATE = """
INSERT INTO campaign_metrics (campaign_id, run_id, phase, agents_total, agents_successful,
    assets_generated, tokens_in, tokens_out, cost_usd, latency_p95_ms, latency_avg_ms,
    success_rate, created_at)
SELECT 'campaign-' || (g %% 200), %(prefix)s || g, (ARRAY['1', '2', '2-3', '3'])[1 + g %% 4],
       agents, ok, ok * 2 + (g %% 3), 1000 + (random() * 9000)::int, 200 + (random() * 3000)::int,
       round((random() * 4)::numeric, 5), p95, (p95 * (0.3 + random() * 0.5))::int,
       round(ok * 100.0 / agents, 2),
       now() - make_interval(secs => %(span)s * (1 - g::float8 / %(total)s))
FROM (
    SELECT g, agents, (random() * agents)::int AS ok,
           (400 + random() * random() * 20000)::int AS p95
    FROM (SELECT g, 1 + (random() * 40)::int AS agents
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g) a
) b
"""


def url_for(admin_url: str, dbname: str) -> str:
    params = conninfo.conninfo_to_dict(admin_url)
    params["dbname"] = dbname
    return conninfo.make_conninfo("", **{k: str(v) for k, v in params.items()})


def create_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return url_for(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def load(url: str, rows: int, days: int = 60) -> dict[str, float]:
    started = time.perf_counter()
    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    with psycopg.connect(url, autocommit=True) as conn:
        for lo in range(1, rows + 1, CHUNK):
            hi = min(lo + CHUNK - 1, rows)
            conn.execute(GENERATE, {"prefix": prefix, "lo": lo, "hi": hi, "total": rows,
                                    "span": days * 86400})  # fmt: skip
            print(f"  loaded {hi:,} rows ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        loaded = time.perf_counter() - started
        conn.execute("VACUUM (ANALYZE) campaign_metrics")
        started = time.perf_counter()
        folded = asyncio.run(refresh_all(url))
        refreshed = time.perf_counter() - started
        print(f"  rollups: folded {folded.hours:,} hours ({refreshed:.0f} s)", file=sys.stderr)
        conn.execute("VACUUM (ANALYZE) apex_metrics_rollup")
        conn.execute("VACUUM (ANALYZE) apex_metrics_rollup_hist")
        size = conn.execute("SELECT pg_total_relation_size('campaign_metrics')").fetchone()
        rollup = conn.execute(
            "SELECT count(*) FROM apex_metrics_rollup WHERE grain = '1 hour'"
        ).fetchone()
    return {
        "load_seconds": round(loaded, 1),
        "refresh_seconds": round(refreshed, 1),
        "table_mb": round((size[0] if size else 0) / 2**20),
        "rollup_rows": rollup[0] if rollup else 0,
    }


async def freshness(url: str, runs: int = 20) -> dict[str, float]:
    """Seconds from a new run's commit to the panel's change event, and to /api/kpis counting
    it (the app in process, its refresher and watcher running as in production)."""
    app = create_app(PanelConfig(source="postgres", database_url=url))
    to_event: list[float] = []
    to_kpis: list[float] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        ):
            for n in range(runs):
                # Filtered on the new runs' campaign: the window slides, and older runs leave it.
                params = {"window": "1h", "campaign": "fresh"}
                before = (await client.get("/api/kpis", params=params)).json()
                count = next(t["value"] for t in before["tiles"] if t["key"] == "runs")
                async with app.state.panel.broadcaster.subscribe() as queue:
                    await conn.execute(
                        "INSERT INTO campaign_metrics (campaign_id, run_id) VALUES (%s, %s)",
                        ("fresh", f"fresh-{uuid.uuid4().hex}"),
                    )
                    committed = time.perf_counter()
                    await asyncio.wait_for(queue.get(), 5)
                    to_event.append(time.perf_counter() - committed)
                while True:
                    body = (await client.get("/api/kpis", params=params)).json()
                    if next(t["value"] for t in body["tiles"] if t["key"] == "runs") > count:
                        break
                to_kpis.append(time.perf_counter() - committed)
                await asyncio.sleep(0.3 + (n % 5) * 0.1)  # commit at varied watcher phases
    return {
        "event_p50_s": round(statistics.median(to_event), 3),
        "event_max_s": round(max(to_event), 3),
        "kpis_max_s": round(max(to_kpis), 3),
    }


async def time_kpis(
    url: str, params: dict[str, str], use_rollup: bool, iterations: int
) -> list[float]:
    app = create_app(PanelConfig(source="postgres", database_url=url, use_rollup=use_rollup))
    timings: list[float] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for i in range(iterations + 2):  # two warm-up requests
                started = time.perf_counter()
                response = await client.get("/api/kpis", params=params)
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                if i >= 2:
                    timings.append(elapsed)
    return timings


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


# (label, query, modes): every window against raw rows; filtered month windows with the rollups.
CASES: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
    ("24h", {"window": "24h"}, ("rollup", "raw")),
    ("30d", {"window": "30d"}, ("rollup", "raw")),
    ("30d phase", {"window": "30d", "phase": "2"}, ("rollup",)),
    ("30d campaign", {"window": "30d", "campaign": "campaign-7"}, ("rollup",)),
]


async def bench(url: str, iterations: int, raw_iterations: int) -> list[dict[str, Any]]:
    results = []
    for label, params, modes in CASES:
        for mode in modes:
            n = iterations if mode == "rollup" else raw_iterations
            timings = await time_kpis(url, params, mode == "rollup", n)
            results.append({
                "window": label, "mode": mode, "n": n,
                "p50_ms": round(statistics.median(timings), 1),
                "p95_ms": round(p95(timings), 1), "max_ms": round(max(timings), 1),
            })  # fmt: skip
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, action="append", help="rows to generate (repeatable)")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--iterations", type=int, default=30, help="timed requests (rollup)")
    parser.add_argument("--raw-iterations", type=int, default=10, help="timed requests (raw)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    report = []
    for rows in args.rows or [1_000_000]:
        name = f"apex_panel_bench_{rows}"
        url = create_database(args.admin_url, name)
        try:
            asyncio.run(db.migrate(url))
            print(f"{rows:,} rows: generating…", file=sys.stderr)
            info = load(url, rows)
            results = asyncio.run(bench(url, args.iterations, args.raw_iterations))
            fresh = asyncio.run(freshness(url))
            report.append({"rows": rows, **info, "results": results, "freshness": fresh})
        finally:
            if not args.keep:
                drop_database(args.admin_url, name)

    print(f"{'rows':>12} {'window':>12} {'mode':>7} {'n':>4} {'p50 ms':>9} {'p95 ms':>9} "
          f"{'max ms':>9}")  # fmt: skip
    for entry in report:
        for r in entry["results"]:
            print(f"{entry['rows']:>12,} {r['window']:>12} {r['mode']:>7} {r['n']:>4} "
                  f"{r['p50_ms']:>9.1f} {r['p95_ms']:>9.1f} {r['max_ms']:>9.1f}")  # fmt: skip
        by = {(r["window"], r["mode"]): r["p95_ms"] for r in entry["results"]}
        ratios = ", ".join(
            f"{w}: raw/rollup p95 = {by[(w, 'raw')] / by[(w, 'rollup')]:.1f}x"
            for w in ("24h", "30d")
        )
        print(f"{'':>12} load {entry['load_seconds']} s, rollup refresh "
              f"{entry['refresh_seconds']} s, table {entry['table_mb']} MB, hourly rollup "
              f"{entry['rollup_rows']:,} rows; {ratios}")  # fmt: skip
        f = entry["freshness"]
        print(f"{'':>12} new run -> panel change event p50 {f['event_p50_s']} s, max "
              f"{f['event_max_s']} s; -> /api/kpis counts it, max {f['kpis_max_s']} s "
              "(goal < 1 s)")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    met = all(
        r["p95_ms"] < 100 for entry in report for r in entry["results"] if r["mode"] == "rollup"
    ) and all(float(entry["freshness"]["kpis_max_s"]) < 1.0 for entry in report)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
