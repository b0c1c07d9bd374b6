"""Emulator throughput: upserts per second through ``$batch`` (1,000 per batch) and one by one,
over HTTP on loopback (uvicorn in a thread, SQLite in memory or in a file).

    .venv/bin/python bench/emulator_bench.py [--batches 20] [--singles 2000] [--db FILE]
                                             [--in-process]

The emulator runs as ``apex-metrics emulator`` in its own process (``--in-process``: in a thread
of this one, sharing its GIL with the client). Request bodies are encoded before the clock starts
and answers are checked after it stops, so the figures measure the emulator plus loopback HTTP.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sync_harness import process_cpu_seconds

from apex_metrics import testing
from apex_metrics.dataverse.multipart_decode import decode_batch_response
from apex_metrics.dataverse.multipart_encode import encode_batch_request
from apex_metrics.dataverse.multipart_parts import BatchPart, flatten_responses
from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.testing import RunningEmulator, running_emulator
from tests.emulator.conftest import SET, api_client, create_metrics_table

BATCH_SIZE = 1000
GOAL_ROWS_PER_S = 10_000  # through $batch, creating and updating (docs/benchmarks.md)
PREFER = "return=representation"


def row(run_id: str, n: int) -> dict[str, object]:
    return {
        "apex_name": run_id,
        "apex_campaignid": f"campaign-{n % 17}",
        "apex_phase": "2-3",
        "apex_agentstotal": 10,
        "apex_tokensin": 1000 + n,
        "apex_costusd": round(0.001 * n, 5),
        "apex_successrate": 90.5,
        "apex_createdat": "2026-01-01T00:00:00Z",
    }


def batch_bodies(batches: int, prefix: str) -> list[tuple[bytes, str]]:
    bodies = []
    for b in range(batches):
        parts = []
        for i in range(BATCH_SIZE):
            run_id = f"{prefix}-{b}-{i}"
            parts.append(  # as the sync client sends them: 201/200 tell created from updated
                BatchPart(
                    "PATCH",
                    f"/api/data/v9.2/{SET}(apex_runid='{run_id}')?$select=apex_runid",
                    {"Content-Type": "application/json; type=entry", "Prefer": PREFER},
                    json.dumps(row(run_id, i)).encode(),
                )
            )
        bodies.append(encode_batch_request(parts))
    return bodies


CpuClock = Callable[[], float]


@dataclass(frozen=True)
class Rate:
    wall: float  # rows per second of wall-clock time
    cpu: float | None  # rows per CPU-second of the emulator process (robust on a busy machine)

    def __str__(self) -> str:
        cpu = f"  ({self.cpu:,.0f} per emulator CPU-second)" if self.cpu else ""
        return f"{self.wall:10,.0f} rows/s{cpu}"


def measured(rows: int, run: Callable[[], None], cpu: CpuClock | None) -> Rate:
    cpu_start = cpu() if cpu else 0.0
    started = time.perf_counter()
    run()
    elapsed = time.perf_counter() - started
    used = (cpu() - cpu_start) if cpu else 0.0
    return Rate(rows / elapsed, rows / used if used > 0 else None)


def run_batches(
    client: httpx.Client, bodies: list[tuple[bytes, str]], cpu: CpuClock | None
) -> Rate:
    answers: list[httpx.Response] = []

    def send() -> None:
        for body, content_type in bodies:
            headers = {"Content-Type": content_type, "Prefer": "odata.continue-on-error"}
            answers.append(client.post("$batch", content=body, headers=headers))

    rate = measured(len(bodies) * BATCH_SIZE, send, cpu)
    for response in answers:  # checked after the clock stops
        if response.status_code != 200:
            raise SystemExit(f"batch failed: {response.status_code} {response.text[:300]}")
        items = flatten_responses(
            decode_batch_response(response.content, response.headers["content-type"])
        )
        if len(items) != BATCH_SIZE or any(item.status not in (200, 201) for item in items):
            raise SystemExit("batch answered with failures")
    return rate


def run_singles(client: httpx.Client, count: int, prefix: str, cpu: CpuClock | None) -> Rate:
    payloads = [
        (f"{SET}(apex_runid='{prefix}-{i}')", json.dumps(row(f"{prefix}-{i}", i)).encode())
        for i in range(count)
    ]
    headers = {"Content-Type": "application/json"}

    def send() -> None:
        for url, body in payloads:
            response = client.patch(url, content=body, headers=headers)
            if response.status_code != 204:
                raise SystemExit(f"upsert failed: {response.status_code} {response.text[:300]}")

    return measured(count, send, cpu)


@contextmanager
def emulator_process(db: Path | None) -> Iterator[tuple[RunningEmulator, CpuClock | None]]:
    """``apex-metrics emulator`` in a subprocess, with the clock of its CPU time."""
    options = ["--cost-profile", "free", *(["--db", str(db)] if db is not None else [])]
    with testing.emulator_process(*options) as (emu, pid):
        clock = partial(process_cpu_seconds, pid) if Path(f"/proc/{pid}/stat").exists() else None
        yield emu, clock


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="batches of 1,000 per pass")
    parser.add_argument("--singles", type=int, default=2000, help="single upserts per pass")
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: memory)")
    parser.add_argument("--in-process", action="store_true", help="serve from a thread")
    args = parser.parse_args()
    with ExitStack() as stack:
        cpu: CpuClock | None = None
        if args.in_process:
            config = EmulatorConfig(
                key_activation_delay_seconds=0, db_path=args.db, costs=CostModel.free()
            )
            emu = stack.enter_context(running_emulator(config))
        else:
            emu, cpu = stack.enter_context(emulator_process(args.db))
        client = stack.enter_context(api_client(emu))
        create_metrics_table(client)
        prefix = uuid.uuid4().hex[:8]
        bodies = batch_bodies(args.batches, prefix)
        created = run_batches(client, bodies, cpu)
        updated = run_batches(client, bodies, cpu)
        single_created = run_singles(client, args.singles, prefix + "-s", cpu)
        single_updated = run_singles(client, args.singles, prefix + "-s", cpu)
    where = "a thread of the client process" if args.in_process else "its own process"
    storage = str(args.db) if args.db else "memory"
    total = args.batches * BATCH_SIZE
    print(f"emulator upserts over loopback HTTP (emulator in {where}, SQLite: {storage})")
    print(f"  $batch of {BATCH_SIZE}, {total} rows, creating: {created}")
    print(f"  $batch of {BATCH_SIZE}, {total} rows, updating: {updated}")
    print(f"  one by one, {args.singles} rows, creating:     {single_created}")
    print(f"  one by one, {args.singles} rows, updating:     {single_updated}")
    ratio = min(created.wall, updated.wall) / max(single_created.wall, single_updated.wall)
    print(f"  ratio $batch / one by one (wall): {ratio:.1f}x (goal: $batch >= 10,000 rows/s)")
    slowest = min(created.wall, updated.wall)
    if slowest < GOAL_ROWS_PER_S:
        print(f"  goal missed: $batch at {slowest:,.0f} rows/s < {GOAL_ROWS_PER_S:,.0f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
