"""`apex-metrics demo` in a subprocess: the panel's KPIs grow, SIGINT stops everything."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from apex_metrics.testing import free_port

CLI = str(Path(sys.executable).parent / "apex-metrics")


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in next(x for x in status.splitlines() if x.startswith("State:"))


def _descendants(pid: int) -> set[int]:
    """Every process whose parent chain leads to ``pid``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("PPid:"):
                        parents[int(entry.name)] = int(line.split()[1])
            except OSError:
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _runs(port: int) -> int:
    answer = httpx.get(f"http://127.0.0.1:{port}/api/kpis", params={"window": "24h"}, timeout=10)
    answer.raise_for_status()
    tiles = {t["key"]: t for t in answer.json()["tiles"]}
    return int(tiles["runs"]["value"])


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path("/var/tmp") / f"apex-demo-test-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start(port: int, data_dir: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CLI, "demo", "--rate", "6", "--backfill-days", "0.5", "--panel-port", str(port),
         "--data-dir", str(data_dir), "--seed", "11", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def _wait_for_panel(proc: subprocess.Popen[str], port: int, timeout: float = 60) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("panel: "):
            return lines
    proc.kill()
    raise AssertionError("demo did not print the panel URL:\n" + "\n".join(lines))


def _run_and_stop(proc: subprocess.Popen[str], port: int) -> tuple[int, int, str]:
    try:
        lines = _wait_for_panel(proc, port)
        assert f"panel: http://127.0.0.1:{port}/" in lines
        deadline = time.monotonic() + 30
        first = _runs(port)
        while first == 0 and time.monotonic() < deadline:  # the backfill is still syncing
            time.sleep(0.5)
            first = _runs(port)
        later = first
        while later <= first and time.monotonic() < deadline:
            time.sleep(0.5)
            later = _runs(port)
        children = _descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    for child in children:
        assert not _alive(child), f"process {child} outlived the demo"
    return first, later, "\n".join(lines) + out


def test_demo_serves_growing_kpis_and_stops_cleanly(database_url: str, data_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "APEX_DATABASE_URL": database_url}
    proc = _start(port, data_dir, env)
    first, later, output = _run_and_stop(proc, port)
    assert proc.returncode == 0, output
    assert first > 0  # the backfill reached Dataverse and the panel shows it
    assert later > first, f"KPIs did not grow: {first} → {later}\n{output}"
    assert "provision: table, columns, key and flags are in place" in output
    assert "stopped cleanly" in output


def test_demo_on_embedded_postgres_leaves_no_server(data_dir: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    proc = _start(port, data_dir, env, "--embedded-postgres")
    first, later, output = _run_and_stop(proc, port)
    assert proc.returncode == 0, output
    assert "embedded server" in output
    assert later > first
    pidfile = data_dir / "postgres" / "pgdata" / "postmaster.pid"
    assert not pidfile.exists(), "the embedded PostgreSQL is still running"
