"""Long reliability runs of the sync engine (the CI-sized versions are in tests/sync/).

1. faults: 20,000 rows, the emulator failing 10 % of requests with 5xx plus repeated 429 storms.
2. sigkill: `apex-metrics sync` worker processes killed with SIGKILL at random moments, again and
   again, restarted until everything is delivered.

Each ends with a full drain and prints lost / duplicated / stale (all must be 0).

    python bench/reliability_soak.py [--rows 20000] [--kill-rounds 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

from sync_harness import Bench, bench_stack

from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.emulator.config import FaultSettings
from apex_metrics.sync.checks import Verdict, execute, insert_rows, verdict
from apex_metrics.sync.commands import engine_config, run_sync


def line(name: str, v: Verdict, **figures: Any) -> str:
    extra = " ".join(f"{k}={val}" for k, val in figures.items())
    return f"{v.line(name)} {extra}"


def clean(v: Verdict) -> bool:
    return v.lost == v.duplicated == v.stale == v.extra == 0


async def undelivered(url: str) -> int:
    rows = await execute(
        url,
        "SELECT count(*) FROM campaign_metrics "
        "WHERE exported_version < version AND sync_dead_version <> version",
    )
    return int(rows[0][0])


async def soak_faults(rows: int) -> bool:
    config = EmulatorConfig(
        key_activation_delay_seconds=0,
        faults=FaultSettings(seed=21, latency_ms=5),
        costs=CostModel.free(),
    )
    async with bench_stack(config) as b:
        await insert_rows(b.url, rows)
        await b.set_faults(error_500_rate=0.05, error_503_rate=0.05)
        stop = asyncio.Event()

        async def storms() -> None:  # a 1.5 s storm of 429s every 4 s, the first at 0.5 s
            delay = 0.5
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    await b.set_faults(storm_seconds=1.5, storm_retry_after=1)
                delay = 4.0

        task = asyncio.create_task(storms())
        started = time.perf_counter()
        cfg = engine_config(b.settings, workers=4, once=True, batch_size=50)
        stats = await run_sync(b.settings, cfg, handle_signals=False)
        stop.set()
        await task
        seconds = time.perf_counter() - started
        await b.set_faults(error_500_rate=0, error_503_rate=0, storm_seconds=0)
        emu = await b.emulator_stats()
        v = await verdict(b.url, b.client)
    print(
        line(
            "faults",
            v,
            seconds=round(seconds, 1),
            requests=stats.requests,
            failed_attempts=stats.failed,
            throttled=stats.throttled,
            statuses=emu["statuses"],
        ),
        flush=True,
    )
    return clean(v) and stats.dead_lettered == 0


def worker(b: Bench, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("APEX_")} | {
        "APEX_DATABASE_URL": b.url,
        "APEX_DATAVERSE_URL": b.emulator.url,
        "APEX_SYNC_LEASE_SECONDS": "3",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "apex_metrics", "sync", "--poll-interval", "0.2", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def soak_sigkill(rows: int, rounds: int, processes: int) -> bool:
    # Slow batches (5 rows, 50 ms per request) so that kills land mid-flight all along.
    config = EmulatorConfig(
        key_activation_delay_seconds=0,
        faults=FaultSettings(seed=3, latency_ms=50),
        costs=CostModel.free(),
    )
    rng = random.Random(7)
    async with bench_stack(config) as b:
        await insert_rows(b.url, rows)
        kills = 0
        procs: list[tuple[float, subprocess.Popen[bytes]]] = []
        while kills < rounds:
            while len(procs) < processes:
                procs.append((time.monotonic(), worker(b, "--workers", "2", "--batch-size", "5")))
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            # Only processes that had time to start (about 1.5 s) and send are worth killing.
            ready = [i for i, (t, _) in enumerate(procs) if time.monotonic() - t > 1.5]
            if not ready:
                continue
            _, victim = procs.pop(rng.choice(ready))
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            kills += 1
            if not await undelivered(b.url):
                break
        left = await undelivered(b.url)
        while len(procs) < processes:
            procs.append((time.monotonic(), worker(b, "--workers", "2")))
        deadline = time.monotonic() + 600
        while await undelivered(b.url) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        youngest = max(started for started, _ in procs)
        await asyncio.sleep(max(0.0, youngest + 3 - time.monotonic()))  # handlers installed
        codes = []
        for _, p in procs:
            p.send_signal(signal.SIGTERM)
            codes.append(p.wait(30))
        leased = (
            await execute(b.url, "SELECT count(*) FROM sync_leases WHERE lease_owner IS NOT NULL")
        )[0][0]
        v = await verdict(b.url, b.client)
    print(
        line("sigkill", v, kills=kills, left_after_kills=left, exit_codes=codes, leased=leased),
        flush=True,
    )
    return clean(v) and leased == 0 and all(c == 0 for c in codes)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--kill-rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="2,000 rows, 5 kill rounds")
    args = parser.parse_args()
    rows, rounds = (2_000, 5) if args.quick else (args.rows, args.kill_rounds)
    ok = await soak_faults(rows)
    ok &= await soak_sigkill(max(2_000, rows // 2), rounds, processes=3)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
