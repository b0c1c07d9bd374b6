"""`apex-metrics demo` in a subprocess: the panel's KPIs grow, SIGINT stops everything; its
export lines make `verify` pass in another process; a second run is idempotent."""

from __future__ import annotations

import json
import os
import shlex
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
        [CLI, "demo", "--runs-per-hour", "3600", "--backfill-days", "0.01",
         "--panel-port", str(port), "--data-dir", str(data_dir), "--seed", "11", *extra],
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


def _exports(lines: list[str]) -> dict[str, str]:
    """The `export APEX_…=…` lines the demo printed, parsed as a shell would."""
    out = {}
    for line in lines:
        words = shlex.split(line.strip())
        if len(words) == 2 and words[0] == "export" and words[1].startswith("APEX_"):
            name, _, value = words[1].partition("=")
            out[name] = value
    return out


def _verify(exported: dict[str, str]) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")} | exported
    done = subprocess.run(
        [CLI, "verify", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    report: dict[str, object] = json.loads(done.stdout)
    failed = [g for g in report["gates"] if not g["ok"]]  # type: ignore[attr-defined]
    assert done.returncode == 0 and not failed, failed
    return report


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is not None:
        return ""
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_exports_make_verify_pass_and_a_second_run_is_idempotent(
    database_url: str, empty_database_url: str, data_dir: Path
) -> None:
    """A first demo prints exports with which `verify` passes its 11 gates elsewhere; a second
    over the same database backfills only the gap; a third over another database (the
    emulator keeping the first one's rows) deletes those extras, and verify passes again."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    port = free_port()
    first = _start(port, data_dir, {**base, "APEX_DATABASE_URL": database_url})
    try:
        lines = _wait_for_panel(first, port)
        exported = _exports(lines)
        assert {"APEX_DATABASE_URL", "APEX_DATAVERSE_URL", "APEX_PANEL_URL"} <= set(exported)
        env_file = data_dir / "demo.env"
        assert _exports(env_file.read_text().splitlines()) == exported
        deadline = time.monotonic() + 30
        while _runs(port) == 0 and time.monotonic() < deadline:  # the backfill is syncing
            time.sleep(0.5)
        _verify(exported)
    finally:
        out = _stop(first)
    assert not env_file.exists(), "demo.env outlived the demo"
    assert "backfill: " in "\n".join(lines) and " over 0.01 day(s)" in "\n".join(lines)

    second = _start(port, data_dir, {**base, "APEX_DATABASE_URL": database_url})
    try:
        lines = _wait_for_panel(second, port)
    finally:
        out = _stop(second)
    backfill = next(line for line in lines if line.startswith("backfill: "))
    assert "since the newest recorded run" in backfill, backfill
    assert int(backfill.split()[1]) < 200, backfill  # the minutes of gap, not 0.01 day again

    third = _start(port, data_dir, {**base, "APEX_DATABASE_URL": empty_database_url})
    try:
        lines = _wait_for_panel(third, port)
        reconciled = next(x for x in lines if x.startswith("reconcile: ") and "rows" in x)
        assert "deleted " in reconciled and "extra 0" in reconciled, reconciled
        deadline = time.monotonic() + 30
        while _runs(port) == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        _verify(_exports(lines))
    finally:
        out = _stop(third)
    assert "stopped cleanly" in out


def test_status_line_off_a_terminal_is_printed_on_change_not_every_second(
    database_url: str, data_dir: Path
) -> None:
    port = free_port()
    env = {**os.environ, "APEX_DATABASE_URL": database_url}
    proc = subprocess.Popen(
        [CLI, "demo", "--runs-per-hour", "0", "--panel-port", str(port), "--data-dir",
         str(data_dir), "--duration", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    status = [line for line in out.splitlines() if line.startswith("runs recorded")]
    assert 1 <= len(status) <= 2, out  # nothing changes: one line, not one a second
