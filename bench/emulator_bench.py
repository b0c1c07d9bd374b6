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
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apex_metrics.dataverse.multipart import (
    BatchPart,
    decode_batch_response,
    encode_batch_request,
    flatten_responses,
)
from apex_metrics.emulator import EmulatorConfig
from apex_metrics.testing import RunningEmulator, free_port, running_emulator
from tests.emulator.conftest import SET, api_client, create_metrics_table

BATCH_SIZE = 1000
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


def run_batches(client: httpx.Client, bodies: list[tuple[bytes, str]]) -> float:
    answers = []
    started = time.perf_counter()
    for body, content_type in bodies:
        answers.append(
            client.post(
                "$batch",
                content=body,
                headers={"Content-Type": content_type, "Prefer": "odata.continue-on-error"},
            )
        )
    elapsed = time.perf_counter() - started
    for response in answers:  # checked after the clock stops
        if response.status_code != 200:
            raise SystemExit(f"batch failed: {response.status_code} {response.text[:300]}")
        items = flatten_responses(
            decode_batch_response(response.content, response.headers["content-type"])
        )
        if len(items) != BATCH_SIZE or any(item.status not in (200, 201) for item in items):
            raise SystemExit("batch answered with failures")
    return len(bodies) * BATCH_SIZE / elapsed


def run_singles(client: httpx.Client, count: int, prefix: str) -> float:
    payloads = [
        (f"{SET}(apex_runid='{prefix}-{i}')", json.dumps(row(f"{prefix}-{i}", i)).encode())
        for i in range(count)
    ]
    headers = {"Content-Type": "application/json"}
    started = time.perf_counter()
    for url, body in payloads:
        response = client.patch(url, content=body, headers=headers)
        if response.status_code != 204:
            raise SystemExit(f"upsert failed: {response.status_code} {response.text[:300]}")
    return count / (time.perf_counter() - started)


@contextmanager
def emulator_process(db: Path | None) -> Iterator[RunningEmulator]:
    """``apex-metrics emulator`` in a subprocess, on a free port."""
    port = free_port()
    command = [sys.executable, "-m", "apex_metrics", "emulator", "--port", str(port)]
    command += ["--key-activation-delay", "0", "--json"]
    if db is not None:
        command += ["--db", str(db)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        deadline = time.monotonic() + 15
        while True:  # the URL is announced just before uvicorn binds
            try:
                httpx.get(f"{info['url']}/_emulator/stats", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield RunningEmulator(info["url"], None, EmulatorConfig())
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="batches of 1,000 per pass")
    parser.add_argument("--singles", type=int, default=2000, help="single upserts per pass")
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: memory)")
    parser.add_argument("--in-process", action="store_true", help="serve from a thread")
    args = parser.parse_args()
    if args.in_process:
        server = running_emulator(EmulatorConfig(key_activation_delay_seconds=0, db_path=args.db))
    else:
        server = emulator_process(args.db)
    with server as emu, api_client(emu) as client:
        create_metrics_table(client)
        prefix = uuid.uuid4().hex[:8]
        bodies = batch_bodies(args.batches, prefix)
        created = run_batches(client, bodies)
        updated = run_batches(client, bodies)
        single_created = run_singles(client, args.singles, prefix + "-s")
        single_updated = run_singles(client, args.singles, prefix + "-s")
    where = "a thread of the client process" if args.in_process else "its own process"
    storage = str(args.db) if args.db else "memory"
    total = args.batches * BATCH_SIZE
    print(f"emulator upserts over loopback HTTP (emulator in {where}, SQLite: {storage})")
    print(f"  $batch of {BATCH_SIZE}, {total} rows, creating: {created:10,.0f} rows/s")
    print(f"  $batch of {BATCH_SIZE}, {total} rows, updating: {updated:10,.0f} rows/s")
    print(f"  one by one, {args.singles} rows, creating:     {single_created:10,.0f} rows/s")
    print(f"  one by one, {args.singles} rows, updating:     {single_updated:10,.0f} rows/s")
    ratio = min(created, updated) / max(single_created, single_updated)
    print(f"  ratio $batch / one by one: {ratio:.1f}x (goal: $batch >= 10,000 rows/s)")


if __name__ == "__main__":
    main()
