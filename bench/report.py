"""Run every benchmark of the project and write one Markdown report.

    .venv/bin/python bench/report.py                 # full sizes (tens of minutes)
    .venv/bin/python bench/report.py --quick         # small sizes (a few minutes)
    .venv/bin/python bench/report.py --only sync --only panel

Each benchmark runs in its own process, one after the other (they would skew each other on a
small machine), and its printed figures go into the report verbatim, with the command, the wall
time, the exit status and when it ran. The report starts with the machine it ran on. With
``--only``, the sections of the benchmarks not run are kept from the existing report. Default
output: ``docs/benchmarks.md`` (linked from the README).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@dataclass(frozen=True)
class Bench:
    name: str
    title: str
    goal: str
    full: tuple[str, ...]
    quick: tuple[str, ...]


BENCHES = (
    Bench(
        "import", "Write path (issues: Foundation; 16, rollups off the write path)",
        "against the data contract's floor table: `apex-metrics import` ≥ 0.5 × a raw COPY of "
        "the same file; `record()` one at a time ≥ 0.5 × a bare single-row `INSERT … ON "
        "CONFLICT`; `record_many` ≥ 0.5 × a raw COPY",
        ("bench/import_bench.py",),
        ("bench/import_bench.py", "--rows", "100000", "--bulk", "20000", "--single", "500"),
    ),
    Bench(
        "emulator", "Emulator (issue: Emulator)",
        "≥ 10,000 rows/s through `$batch` of 1,000",
        ("bench/emulator_bench.py",),
        ("bench/emulator_bench.py", "--batches", "5", "--singles", "500"),
    ),
    Bench(
        "sync", "Sync engine at Dataverse's ceiling (issue: Dataverse's real costs)",
        "steady-state rows/s ≥ 0.9 of the cost model's ceiling with one process and with "
        "three, no execution-time 429 after the first two windows, lost = duplicated = stale "
        "= 0; end-to-end p95 < 250 ms at 50 runs/s under the default dataverse profile",
        ("bench/sync_bench.py",),
        ("bench/sync_bench.py", "--quick"),
    ),
    Bench(
        "collect", "OTLP ingest: `collect` (issue 15)",
        "≥ 10,000 spans/s through `collect` (protobuf, 10 model calls per trace), judged on "
        "requests encoded ahead so that the exporters' CPU is not the bound; the SDK exporter's "
        "own rate and the co-located run alongside",
        ("bench/collect_bench.py",),
        ("bench/collect_bench.py", "--traces", "500"),
    ),
    Bench(
        "reliability", "Reliability soak (issue: Sync engine)",
        "lost = duplicated = stale = 0 after faults and SIGKILLs",
        ("bench/reliability_soak.py",),
        ("bench/reliability_soak.py", "--quick"),
    ),
    Bench(
        "writers", "Concurrent writers (issue 16)",
        "8 writers on one (hour, campaign) ≥ 4 × one writer, or the machine's bound shown "
        "(the floor table alongside) with writers not waiting on locks",
        ("bench/writers_bench.py",),
        ("bench/writers_bench.py", "--seconds", "3"),
    ),
    Bench(
        "panel", "MetricsPanel (issues: MetricsPanel; 16)",
        "KPI API p95 < 100 ms at 10,000,000 rows for every window; a new run on the panel "
        "within 1 s",
        ("bench/panel_bench.py", "--rows", "1000000", "--rows", "10000000"),
        ("bench/panel_bench.py", "--rows", "200000"),
    ),
)  # fmt: skip


def machine() -> list[str]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    pg = "unknown"
    try:
        import psycopg

        url = os.environ.get(
            "APEX_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        )
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            pg = str(row[0]) if row else pg
            settings = []
            for name in ("autovacuum", "jit", "fsync", "synchronous_commit"):
                value = conn.execute(f"SHOW {name}").fetchone()
                settings.append(f"{name} {value[0] if value else '?'}")
            pg += f" ({', '.join(settings)})"
    except Exception as exc:  # a report without the version is still a report
        pg = f"unavailable ({type(exc).__name__})"
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores",
        f"- Memory: {mem}",
        f"- OS: {platform.system()} {platform.release()} ({platform.machine()})",
        f"- Python: {platform.python_version()}",
        f"- PostgreSQL server: {pg}",
    ]


def run(bench: Bench, quick: bool, timeout: float) -> tuple[str, int, float]:
    args = bench.quick if quick else bench.full
    started = time.monotonic()
    print(f"== {bench.name}: {' '.join(args)}", flush=True)
    try:
        proc = subprocess.run(
            [PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
        output = proc.stdout + (("\n" + proc.stderr) if proc.stderr.strip() else "")
        code = proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        output = out + f"\n(stopped after {timeout:g} s)"
        code = -1
    elapsed = time.monotonic() - started
    print(output.rstrip(), flush=True)
    return output, code, elapsed


def kept_sections(path: Path) -> dict[str, list[str]]:
    """The sections of an existing report, by title (what ``--only`` leaves as they were)."""
    if not path.exists():
        return {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        elif line.startswith("# "):
            current = None
        if current is not None:
            current.append(line)
    sections.pop("Machine", None)
    return sections


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--only", action="append", choices=[b.name for b in BENCHES])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark report",
        "",
        f"Generated {stamp} by `python bench/report.py{' --quick' if args.quick else ''}"
        f"{''.join(f' --only {name}' for name in args.only or ())}`"
        f"{' (quick sizes)' if args.quick else ''}"
        f"{'; the other sections are kept from an earlier run' if args.only else ''}."
        " Each benchmark ran alone, in its own process;",
        "ratios compare runs made in the same process and moment, so they travel better than the",
        "absolute figures. Re-run the command to refresh this file.",
        "",
        "## Machine",
        "",
        *machine(),
        "",
    ]
    kept = kept_sections(args.output) if args.only else {}
    failures = 0
    for bench in BENCHES:
        if bench not in chosen:
            lines += kept.get(bench.title, [])
            continue
        output, code, elapsed = run(bench, args.quick, args.timeout)
        failures += code != 0
        args_used = bench.quick if args.quick else bench.full
        lines += [
            f"## {bench.title}",
            "",
            f"Goal: {bench.goal}.",
            "",
            f"Command: `python {' '.join(args_used)}` — {elapsed:.0f} s, exit status {code}, "
            f"run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
            "",
            "```text",
            output.strip(),
            "```",
            "",
        ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output} ({len(chosen)} benchmark(s), {failures} failed)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
