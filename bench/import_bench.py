"""Import benchmark: ``apex-metrics import`` against a raw psycopg COPY of the same file.

    .venv/bin/python bench/import_bench.py            # 1,000,000 rows
    .venv/bin/python bench/import_bench.py --rows 100000

Creates a scratch database on the server of ``--admin-url`` (default: the local test server),
migrates it, generates a CSV of ``--rows`` runs, then times, in one run:

1. raw COPY of the file into a bare 13-column table (no constraints, indexes or triggers);
2. raw COPY of the file straight into the real ``campaign_metrics`` (what its indexes and
   triggers cost: a floor for any import into that table);
3. ``apex-metrics import FILE`` (a subprocess: validation, staging, upsert, commit);
4. ``Recorder.record`` one run at a time, and ``record_many`` in one call.

Prints rows/s of each and the import/raw ratio. The scratch database is dropped at the end.
Not a test: figures vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

from apex_metrics import db
from apex_metrics.metric import FIELD_NAMES
from apex_metrics.recorder import Recorder

BARE_TABLE = """
CREATE TABLE bench_bare (
    campaign_id varchar(64), run_id varchar(64), phase varchar(16), agents_total integer,
    agents_successful integer, assets_generated integer, tokens_in integer, tokens_out integer,
    cost_usd numeric(10,5), latency_p95_ms integer, latency_avg_ms integer,
    success_rate numeric(5,2), created_at timestamptz
)
"""
COLUMNS = ", ".join(FIELD_NAMES)


def generate(path: Path, rows: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with path.open("w", encoding="utf-8") as out:
        out.write(",".join(FIELD_NAMES) + "\n")
        for n in range(rows):
            total = rnd.randint(1, 50)
            ok = rnd.randint(0, total)
            avg = rnd.randint(50, 4000)
            stamp = (start + timedelta(seconds=n * 7)).isoformat().replace("+00:00", "Z")
            out.write(
                f"campaign-{n % 40},run-{n:09d},{rnd.randint(1, 4)}-{rnd.randint(1, 9)},"
                f"{total},{ok},{rnd.randint(0, 200)},{rnd.randint(0, 10**6)},"
                f"{rnd.randint(0, 10**6)},{rnd.randint(0, 10**8) / 10**5:.5f},"
                f"{avg + rnd.randint(0, 3000)},{avg},{ok * 100 / total:.2f},{stamp}\n"
            )


def copy_file(url: str, table: str, path: Path) -> float:
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        query = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(
            sql.Identifier(table), sql.SQL(COLUMNS)
        )
        with conn.cursor().copy(query) as copy, path.open("rb") as src:
            while block := src.read(1 << 20):
                copy.write(block)
        conn.commit()
        return time.perf_counter() - started


def execute(url: str, query: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query.encode())


async def record_rates(url: str, single: int, bulk: int) -> tuple[float, float]:
    async with Recorder(url, max_connections=1) as rec:
        started = time.perf_counter()
        for n in range(single):
            await rec.record({"campaign_id": "bench", "run_id": f"one-{n}", "tokens_in": n})
        one = single / (time.perf_counter() - started)
        rows = [
            {"campaign_id": "bench", "run_id": f"many-{n}", "tokens_in": n} for n in range(bulk)
        ]
        started = time.perf_counter()
        await rec.record_many(rows)
        many = bulk / (time.perf_counter() - started)
    return one, many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--single", type=int, default=2_000, help="record() calls to time")
    parser.add_argument("--bulk", type=int, default=100_000, help="rows for record_many")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "APEX_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()

    name = f"apex_bench_{uuid.uuid4().hex[:8]}"
    params = conninfo.conninfo_to_dict(args.admin_url)
    params["dbname"] = name
    url = conninfo.make_conninfo("", **{k: str(v) for k, v in params.items()})
    execute(args.admin_url, f'CREATE DATABASE "{name}"')
    try:
        asyncio.run(db.migrate(url))
        execute(url, BARE_TABLE)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "runs.csv"
            started = time.perf_counter()
            generate(path, args.rows)
            size = path.stat().st_size
            print(f"generated {args.rows:,} rows ({size / 2**20:.1f} MiB) in "
                  f"{time.perf_counter() - started:.1f} s")  # fmt: skip

            raw = copy_file(url, "bench_bare", path)
            table = copy_file(url, "campaign_metrics", path)
            execute(url, "TRUNCATE campaign_metrics")
            apex = str(Path(sys.executable).with_name("apex-metrics"))
            started = time.perf_counter()
            subprocess.run(
                [apex, "import", str(path), "--database-url", url],
                check=True, stdout=subprocess.DEVNULL, timeout=3600,
            )  # fmt: skip
            imported = time.perf_counter() - started
            started = time.perf_counter()
            subprocess.run(
                [apex, "import", str(path), "--database-url", url],
                check=True, stdout=subprocess.DEVNULL, timeout=3600,
            )  # fmt: skip
            reimported = time.perf_counter() - started
        one, many = asyncio.run(record_rates(url, args.single, args.bulk))
    finally:
        execute(args.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    n = args.rows
    print(f"raw COPY into a bare table          {n / raw:>12,.0f} rows/s  ({raw:.2f} s)")
    print(f"raw COPY into campaign_metrics      {n / table:>12,.0f} rows/s  ({table:.2f} s)")
    print(f"apex-metrics import (new rows)      {n / imported:>12,.0f} rows/s  ({imported:.2f} s)")
    print(
        f"apex-metrics import (all updates)   {n / reimported:>12,.0f} rows/s  ({reimported:.2f} s)"
    )
    print(f"ratio import / raw bare COPY        {raw / imported:>12.2f}   (goal >= 0.5)")
    print(f"ratio import / raw table COPY       {table / imported:>12.2f}")
    print(f"record() one at a time              {one:>12,.0f} rows/s")
    print(f"record_many ({args.bulk:,} rows)         {many:>12,.0f} rows/s")


if __name__ == "__main__":
    main()
