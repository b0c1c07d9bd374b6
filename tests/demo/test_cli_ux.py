"""The commands around the demo as people meet them: help, a busy port, bad input, --json on
failure, exit statuses that tell differences and dead letters apart from errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from apex_metrics.dataverse.provision import ContractDrift
from apex_metrics.ops.output import EXIT_DEAD_LETTERED, EXIT_DIFFERENCES, EXIT_ERROR
from apex_metrics.sync.errors import SyncIncomplete


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    return subprocess.run(
        [sys.executable, "-m", "apex_metrics", *args],
        env={**clean, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_record_help_shows_types_units_and_what_is_required() -> None:
    out = run("record", "--help").stdout
    assert "--agents-total INTEGER" in out and "--cost-usd DECIMAL" in out
    assert "--created-at TIMESTAMP" in out and "--json JSON" in out
    assert "milliseconds" in out and "US dollars" in out and "Percent of agents" in out
    assert "--campaign-id and --run-id are required" in out


@pytest.mark.parametrize("command", ["panel", "verify", "sync", "reconcile", "collect"])
def test_commands_take_database_url_and_name_their_settings(command: str) -> None:
    out = run(command, "--help").stdout
    assert "--database-url" in out and "APEX_DATABASE_URL" in out


def test_production_flags_have_env_vars() -> None:
    panel = run("panel", "--help").stdout
    for var in ("APEX_PANEL_HOST", "APEX_PANEL_PORT", "APEX_PANEL_SOURCE", "APEX_PANEL_ROOT_PATH",
                "APEX_PANEL_FORWARDED_ALLOW_IPS"):  # fmt: skip
        assert var in panel, var
    assert "APEX_PANEL_URL" in run("verify", "--help").stdout
    collect = run("collect", "--help").stdout
    assert "APEX_COLLECT_HOST" in collect and "APEX_COLLECT_PORT" in collect
    sync = run("sync", "--help").stdout
    assert "APEX_SYNC_WORKERS" in sync and "APEX_SYNC_METRICS_PORT" in sync


@pytest.mark.parametrize("command", ["panel", "collect", "emulator"])
def test_a_busy_port_is_one_clear_line(command: str, busy_port: int, database_url: str) -> None:
    done = run(command, "--port", str(busy_port), APEX_DATABASE_URL=database_url)
    assert done.returncode == EXIT_ERROR, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: port {busy_port} on 127.0.0.1 is already in use")
    assert "Traceback" not in done.stderr and "ERROR:" not in done.stderr


def test_import_errors_one_problem_per_line_and_json_on_failure(
    database_url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("campaign_id,run_id,cost_usd,agents_total\nc,r1,-1,2\nc,,2,x\n")
    human = run("import", str(bad), APEX_DATABASE_URL=database_url)
    assert human.returncode == EXIT_ERROR
    lines = human.stderr.strip().splitlines()
    assert lines[0].startswith("error: invalid input, nothing was written (")
    assert any(line.strip().startswith("line 2: cost_usd:") for line in lines[1:]), lines
    assert any(line.strip().startswith("line 3: run_id:") for line in lines[1:]), lines
    machine = run("import", str(bad), "--json", APEX_DATABASE_URL=database_url)
    report = json.loads(machine.stdout)
    assert machine.returncode == EXIT_ERROR and report["ok"] is False
    assert report["exit_code"] == EXIT_ERROR and report["problems_total"] >= 3
    assert {"line": 2, "field": "cost_usd"}.items() <= report["problems"][0].items()
    missing = run("sync", "status", "--json")  # no APEX_DATABASE_URL: an error, as JSON
    assert missing.returncode == EXIT_ERROR
    assert json.loads(missing.stdout)["error"] == "APEX_DATABASE_URL is not set"


def test_exit_statuses_tell_findings_apart_from_errors() -> None:
    assert (EXIT_ERROR, EXIT_DIFFERENCES, EXIT_DEAD_LETTERED) == (1, 3, 4)
    assert SyncIncomplete().exit_code == EXIT_DEAD_LETTERED  # type: ignore[attr-defined]
    assert ContractDrift().exit_code == EXIT_DIFFERENCES  # type: ignore[attr-defined]
    failing = run("verify", "--json", "--panel-url", "http://127.0.0.1:9")
    assert failing.returncode == EXIT_DIFFERENCES  # gates ran and failed: a finding
    report = json.loads(failing.stdout)
    assert report["ok"] is False and len(report["gates"]) == 11


def test_error_lines_print_text_as_written_not_as_emoji() -> None:
    """rich turned ``:x:`` in an address or a value into an emoji; errors must read as sent."""
    done = run("db", "migrate", APEX_DATABASE_URL="postgresql://u@127.0.0.1:x:1/db")
    assert done.returncode == EXIT_ERROR
    assert "❌" not in done.stderr and ":x:" in done.stderr, done.stderr
