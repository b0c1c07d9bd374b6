"""Benchmarks of the sync engine against the emulator charging Dataverse's costs (prints figures).

1. The ceiling. The emulator runs in its own process under the ``dataverse`` cost profile with
   a scaled window: every limit is scaled by the same factor (``--window-s W``, requests
   6,000·W/300, execution 1,200·W/300 s per web server), so the budget per second is
   Dataverse's and the windows pass quicker. ``apex-metrics sync`` processes deliver a backlog
   while the emulator's statistics are sampled every second. The steady state is what comes
   after the first two windows: rows/s, the engine's mean batch size B, and the fraction of the
   model's ceiling,

       ceiling = web servers × (execution budget / window) ÷ per-row cost at B,
       per-row cost = (request cost + B × row cost) / B,

   with the row cost of the message the engine sends (UpsertMultiple: ``multiple_row_ms``;
   ``$batch``: ``write_ms`` a part). Runs: UpsertMultiple with one process and with three (they
   share the budget through PostgreSQL), ``$batch`` with one, and the old per-row flow (a POST
   create per row, one at a time, as the Power Automate flow did) under the same profile. Each
   engine run drains completely and is checked: lost, duplicated and stale must be 0, and no
   0x80072321 (execution time) 429 may come after the first two windows.
2. End-to-end latency under the default ``dataverse`` profile (300 s window): one row every
   20 ms (50 runs/s) with an engine running; latency = the row's ``exported_at`` (set when the
   engine's acknowledgement commits, after Dataverse answered the write) minus its
   ``created_at`` (the INSERT's commit): an upper bound of when the row was readable.
3. reconcile at 1,000,000 rows: time and peak memory growth (bounded: pages + one cursor).

    python bench/sync_bench.py            # window 60 s, 3 steady windows per run
    python bench/sync_bench.py --quick    # window 30 s, 2 steady windows, smaller batches
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from sync_harness import Bench, bench_stack, percentile, scratch_database

from apex_metrics.metric import ALTERNATE_KEY_COLUMN, ENTITY_SET
from apex_metrics.sync.checks import Verdict, execute, insert_rows, verdict
from apex_metrics.sync.reconcile import reconcile
from apex_metrics.sync.sink import dataverse_body

EXECUTION_TIME = "0x80072321"
TOO_MANY_REQUESTS = "0x80072322"
CONCURRENCY = "0x80072326"


def say(text: str) -> None:
    print(text, flush=True)


def scaled_limits(window: float) -> tuple[str, ...]:
    """Emulator options: the dataverse profile, every limit scaled to a ``window`` s window."""
    scale = window / 300
    return (
        "--cost-profile", "dataverse",
        "--window-s", f"{window:g}",
        "--requests-per-window", str(round(6000 * scale)),
        "--execution-time-per-window-s", f"{1200 * scale:g}",
    )  # fmt: skip


@dataclass
class Sample:
    at: float  # seconds since the run started
    rows: int  # rows created or updated in the emulator so far
    requests: int  # Web API requests answered so far (throttled ones included)
    throttled: dict[str, int]  # 429s so far, by code
    busiest: float = 0.0  # the busiest web server's execution seconds in its window now


def sample_of(stats: dict[str, Any], at: float) -> Sample:
    rows = stats.get("rows", {})
    throttled: dict[str, int] = {}
    servers = stats.get("web_servers", [])
    for server in servers:
        for code, count in server.get("throttled", {}).items():
            throttled[code] = throttled.get(code, 0) + int(count)
    return Sample(
        at,
        int(rows.get("rows.created", 0)) + int(rows.get("rows.updated", 0)),
        int(stats.get("counters", {}).get("requests", 0)),
        throttled,
        max((float(s.get("execution_seconds_in_window", 0.0)) for s in servers), default=0.0),
    )


@dataclass
class Run:
    """One ceiling run: what the emulator saw over time, and the check at the end."""

    name: str
    window: float
    samples: list[Sample] = field(default_factory=list)
    costs: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    check: Verdict | None = None
    drained_at: float | None = None

    def steady(self) -> tuple[Sample, Sample]:
        """The first sample at or after two windows, and the last before the backlog ran
        out (the end of the steady state)."""
        start = next(s for s in self.samples if s.at >= 2 * self.window)
        last = self.samples[-1]
        if self.drained_at is not None:
            last = max(
                (s for s in self.samples if s.at <= self.drained_at - 1.0), key=lambda s: s.at
            )
        return start, last

    def figures(self, row_cost_ms: float) -> dict[str, float]:
        start, end = self.steady()
        seconds = end.at - start.at
        rows = end.rows - start.rows
        requests = max(1, end.requests - start.requests)
        batch = rows / requests
        per_row = (self.costs["request_ms"] + batch * row_cost_ms) / batch / 1000
        budget = self.limits["execution_seconds_per_window"] / self.limits["window_seconds"]
        ceiling = self.limits["web_servers"] * budget / per_row
        late = {
            code: end.throttled.get(code, 0) - start.throttled.get(code, 0)
            for code in (EXECUTION_TIME, TOO_MANY_REQUESTS, CONCURRENCY)
        }
        total = self.samples[-1].throttled
        steady = [s for s in self.samples if start.at <= s.at <= end.at]
        busiest = max(s.busiest for s in steady) / self.limits["execution_seconds_per_window"]
        return {
            "busiest": busiest,
            "seconds": seconds,
            "rate": rows / seconds,
            "batch": batch,
            "ceiling": ceiling,
            "fraction": rows / seconds / ceiling,
            "late_exec_429": late[EXECUTION_TIME],
            "late_other_429": late[TOO_MANY_REQUESTS] + late[CONCURRENCY],
            "total_429": sum(total.values()),
        }


async def pending(url: str) -> int:
    rows = await execute(
        url, "SELECT count(*) FROM campaign_metrics WHERE exported_version < version"
    )
    return int(rows[0][0])


def start_engines(b: Bench, processes: int, write: str, batch_size: int, log: Path) -> list[Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")} | {
        "APEX_DATABASE_URL": b.url,
        "APEX_DATAVERSE_URL": b.emulator.url,
        "APEX_SYNC_WRITE": write,
        "APEX_SYNC_BATCH_SIZE": str(batch_size),
        "APEX_LOG_FORMAT": "json",
    }
    with log.open("ab") as out:
        return [
            subprocess.Popen(
                [sys.executable, "-m", "apex_metrics", "sync"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
            for _ in range(processes)
        ]


async def ceiling_run(
    name: str,
    *,
    processes: int,
    write: str,
    window: float,
    steady_windows: int,
    batch_size: int,
    expected_rate: float,
) -> Run:
    """Deliver a backlog sized for ``2 + steady_windows`` windows at ``expected_rate``."""
    run = Run(name, window)
    duration = (2 + steady_windows) * window
    async with bench_stack(separate=True, emulator_options=scaled_limits(window)) as b:
        await insert_rows(b.url, int(expected_rate * duration), prefix="run-")
        first = await b.emulator_stats()
        run.costs, run.limits = first["costs"], first["limits"]
        base = sample_of(first, 0.0)
        with tempfile.TemporaryDirectory() as tmp:
            engines = start_engines(b, processes, write, batch_size, Path(tmp) / "engine.log")
            started = time.monotonic()
            try:
                while True:
                    await asyncio.sleep(1.0)
                    now = time.monotonic() - started
                    s = sample_of(await b.emulator_stats(), now)
                    run.samples.append(
                        Sample(
                            now,
                            s.rows - base.rows,
                            s.requests - base.requests,
                            {k: v - base.throttled.get(k, 0) for k, v in s.throttled.items()},
                            s.busiest,
                        )
                    )
                    if run.drained_at is None and not await pending(b.url):
                        run.drained_at = now
                        break
                    if now > duration * 3:
                        raise RuntimeError(f"{name}: not drained after {now:.0f} s")
            finally:
                for engine in engines:
                    engine.send_signal(signal.SIGTERM)
                for engine in engines:
                    engine.wait(60)
                log_text = (Path(tmp) / "engine.log").read_text(errors="replace")
            if any(engine.returncode for engine in engines):
                say(log_text[-3000:])
                raise RuntimeError(f"{name}: an engine failed")
        run.check = await verdict(b.url, b.client)
    return run


async def old_flow(seconds: float, window: float) -> dict[str, float]:
    """The replaced design under the same profile: per row, one POST create, then one UPDATE
    of exported_at, one row at a time, for ``seconds``."""
    async with bench_stack(separate=True, emulator_options=scaled_limits(window)) as b:
        await insert_rows(b.url, int(seconds * 100), prefix="old-")
        stats = await b.emulator_stats()
        costs, limits = stats["costs"], stats["limits"]
        done = 0
        started = time.perf_counter()
        async with await psycopg.AsyncConnection.connect(b.url, autocommit=True) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("SELECT * FROM campaign_metrics ORDER BY id")
            for row in await cur.fetchall():
                if time.perf_counter() - started >= seconds:
                    break
                body = dataverse_body(row) | {ALTERNATE_KEY_COLUMN: row["run_id"]}
                await b.client.create(ENTITY_SET, body)
                await conn.execute(
                    "UPDATE campaign_metrics SET exported_at = now() WHERE id = %s", (row["id"],)
                )
                done += 1
        elapsed = time.perf_counter() - started
    per_row = (costs["request_ms"] + costs["write_ms"]) / 1000
    servers = limits["web_servers"]
    by_time = servers * limits["execution_seconds_per_window"] / limits["window_seconds"] / per_row
    by_requests = servers * limits["requests_per_window"] / limits["window_seconds"]
    return {"rows": done, "rate": done / elapsed, "ceiling": min(by_time, by_requests)}


INSERT_ONE = """
INSERT INTO campaign_metrics (campaign_id, run_id, phase, agents_total, agents_successful,
    tokens_in, tokens_out, cost_usd, latency_p95_ms, latency_avg_ms)
VALUES ('camp-lat', %s, '1', 4, 3, 100, 200, 0.5, 120, 80)
"""


async def bench_latency(count: int, rate: float) -> dict[str, Any]:
    """Inserts at ``rate`` a second under the default dataverse profile, an engine running."""
    async with bench_stack(separate=True, emulator_options=("--cost-profile", "dataverse")) as b:
        with tempfile.TemporaryDirectory() as tmp:
            (engine,) = start_engines(b, 1, "upsert-multiple", 1000, Path(tmp) / "engine.log")
            try:
                await asyncio.sleep(3.0)  # connected and listening
                async with await psycopg.AsyncConnection.connect(b.url, autocommit=True) as conn:
                    start = time.perf_counter()
                    for i in range(count):
                        delay = start + i / rate - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        await conn.execute(INSERT_ONE, (f"lat-{i}",))
                deadline = time.monotonic() + 60
                while await pending(b.url) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
            finally:
                engine.send_signal(signal.SIGTERM)
                engine.wait(60)
        rows = await execute(
            b.url,
            "SELECT extract(epoch FROM exported_at - created_at) * 1000 FROM campaign_metrics "
            "WHERE exported_at IS NOT NULL",
        )
        stats = await b.emulator_stats()
        check = await verdict(b.url, b.client)
    ms = [float(r[0]) for r in rows]
    throttled = sum(sum(s["throttled"].values()) for s in stats.get("web_servers", []))
    return {
        "count": count,
        "delivered": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
        "requests": int(stats["counters"].get("requests", 0)),
        "throttled": throttled,
        "check": check,
    }


class PgSource:
    """A Dataverse stand-in that streams every row from PostgreSQL itself (server-side cursor),
    so that the reconcile under test, not the source, is what holds memory. One row in
    100,000 is altered, so that the comparison has something to find."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def query(self, entity_set: str, **_: Any) -> Any:
        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            cur = conn.cursor("bench_source", row_factory=dict_row)
            await cur.execute("SELECT * FROM campaign_metrics")
            while rows := await cur.fetchmany(5000):
                for row in rows:
                    body = dataverse_body(row) | {ALTERNATE_KEY_COLUMN: row["run_id"]}
                    if row["id"] % 100_000 == 7:  # one row in 100,000 differs
                        body["apex_tokensin"] = -1
                    yield body


async def bench_reconcile(rows: int) -> dict[str, Any]:
    async with scratch_database() as url:
        await insert_rows(url, rows)
        await execute(url, "UPDATE campaign_metrics SET exported_version = version")
        before = rss_mb()
        peak = before
        done = asyncio.Event()

        async def sample() -> None:  # the high-water mark of this run, not of the process
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_mb())
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        report = await reconcile(url, PgSource(url))
        seconds = time.perf_counter() - started
        done.set()
        await sampler
    return {
        "rows": rows,
        "seconds": seconds,
        "rss_before": before,
        "peak_growth_mb": peak - before,
        "report": report,
    }


def rss_mb() -> float:
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def check_line(check: Any) -> str:
    return f"lost={check.lost} duplicated={check.duplicated} stale={check.stale}"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Shorter windows and runs.")
    parser.add_argument("--window", type=float, help="Scaled window in seconds.")
    parser.add_argument(
        "--only", action="append", choices=("ceiling", "latency", "reconcile"), help="Run part."
    )
    parser.add_argument(
        "--run",
        action="append",
        choices=("multiple-1", "multiple-3", "batch-1", "old"),
        help="Ceiling runs to make (repeatable; all by default).",
    )
    args = parser.parse_args()
    chosen = set(args.run or ("multiple-1", "multiple-3", "batch-1", "old"))
    window = args.window or (30.0 if args.quick else 60.0)
    steady = 2 if args.quick else 3
    # Requests well under a window, so that each lands in the sliding window as a small share.
    batch = 500 if args.quick else 1000
    parts = set(args.only or ("ceiling", "latency", "reconcile"))
    ok = True

    if "ceiling" in parts:
        say(
            f"== 1. the ceiling: dataverse profile, window scaled to {window:g} s (every limit "
            f"x{window / 300:g}), steady state after two windows, engine batches up to {batch}"
        )
        runs = (
            ("multiple-1", "UpsertMultiple, 1 process", 1, "upsert-multiple", "multiple_row_ms"),
            ("multiple-3", "UpsertMultiple, 3 processes", 3, "upsert-multiple", "multiple_row_ms"),
            ("batch-1", "$batch, 1 process", 1, "batch", "write_ms"),
        )
        for key, name, processes, write, row_cost in runs:
            if key not in chosen:
                continue
            expected = 1000.0 if write == "upsert-multiple" else 200.0
            run = await ceiling_run(
                name, processes=processes, write=write, window=window,
                steady_windows=steady, batch_size=batch, expected_rate=expected,
            )  # fmt: skip
            f = run.figures(float(run.costs[row_cost]))
            assert run.check is not None
            say(
                f"{name:28} {f['rate']:7.0f} rows/s over {f['seconds']:4.0f} s, batch "
                f"{f['batch']:5.0f}, ceiling {f['ceiling']:5.0f} rows/s: {f['fraction']:.2f} of it "
                f"(goal >= 0.9); busiest server's window at most {f['busiest']:.2f} of its "
                f"budget; 429s after two windows: execution time {f['late_exec_429']}, "
                f"other {f['late_other_429']} (all run: {f['total_429']}); "
                f"{check_line(run.check)}"
            )
            clean = run.check.lost == run.check.duplicated == run.check.stale == 0
            ok &= clean and f["late_exec_429"] == 0
            if write == "upsert-multiple":
                ok &= f["fraction"] >= 0.9
    if "ceiling" in parts and "old" in chosen:
        old = await old_flow(min(60.0, 2 * window), window)
        say(
            f"{'old per-row flow':28} {old['rate']:7.1f} rows/s ({old['rows']} rows, one POST "
            f"create at a time); its own ceiling {old['ceiling']:.0f} rows/s (requests limit, "
            f"at any parallelism)"
        )

    if "latency" in parts:
        count = 200 if args.quick else 1000
        say(f"== 2. end-to-end latency: {count:,} inserts at 50/s, default dataverse profile")
        lat = await bench_latency(count, 50.0)
        say(
            f"p50 {lat['p50_ms']:.1f} ms  p95 {lat['p95_ms']:.1f} ms  p99 {lat['p99_ms']:.1f} ms  "
            f"max {lat['max_ms']:.1f} ms  ({lat['delivered']} rows in {lat['requests']} "
            f"requests, 429s {lat['throttled']}; goal p95 < 250 ms; {check_line(lat['check'])})"
        )
        ok &= lat["p95_ms"] < 250 and lat["check"].lost == lat["check"].stale == 0

    if "reconcile" in parts:
        big = 100_000 if args.quick else 1_000_000
        say(f"== 3. reconcile memory: {big:,} rows streamed from a source into the comparison")
        rec = await bench_reconcile(big)
        r = rec["report"]
        say(
            f"{rec['rows']:,} rows compared in {rec['seconds']:.1f} s, RSS "
            f"{rec['rss_before']:.0f} MB before, peak "
            f"{rec['rss_before'] + rec['peak_growth_mb']:.0f} MB (matching {r.matching:,}, "
            f"different {r.different}, missing {r.missing}, extra {r.extra})"
        )
        ok &= r.different == big // 100_000 and not (r.missing or r.extra)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
