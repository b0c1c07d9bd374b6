"""The installed ``apex-metrics`` command, run in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from apex_metrics.testing import free_port

APEX = str(Path(sys.executable).with_name("apex-metrics"))


def run(
    *args: str, url: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    if url is not None:
        env["APEX_DATABASE_URL"] = url
    return subprocess.run(
        [APEX, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_db_migrate_then_nothing_to_do(empty_database_url: str) -> None:
    first = run("db", "migrate", url=empty_database_url)
    assert first.returncode == 0 and "apply 0001_campaign_metrics" in first.stdout
    second = run("db", "migrate", "--json", "--database-url", empty_database_url)
    assert second.returncode == 0
    report = json.loads(second.stdout)
    assert report["applied"] == [] and "0001_campaign_metrics" in report["already_applied"]


def test_record_with_flags_and_json(database_url: str) -> None:
    result = run(
        "record", "--campaign-id", "spring", "--run-id", "cli-1", "--agents-total", "4",
        "--agents-successful", "3", "--cost-usd", "0.5", "--created-at", "2026-01-01T00:00:00Z",
        url=database_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "recorded run cli-1 (new" in result.stdout
    again = run(
        "record", "--json", '{"campaign_id": "spring", "run_id": "cli-1"}', url=database_url
    )
    assert again.returncode == 0 and "(updated" in again.stdout
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT agents_total, version FROM campaign_metrics").fetchone()
    assert row == (None, 2)


def test_record_bad_input_is_one_line_and_writes_nothing(database_url: str) -> None:
    result = run(
        "record", "--campaign-id", "c", "--run-id", "a/b", "--tokens-in", "-1", url=database_url
    )
    assert_one_line_error(result, "run_id", "tokens_in", "≥ 0")
    bad_json = run("record", "--json", "{not json", url=database_url)
    assert_one_line_error(bad_json, "--json", "not valid JSON")
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM campaign_metrics").fetchone() == (0,)


def test_import_file_and_stdin(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    path.write_text("campaign_id,run_id,tokens_in\nc,f-1,1\nc,f-2,2\n")
    result = run("import", str(path), "--json", url=database_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["inserted"] == 2
    piped = run("import", "-", url=database_url, stdin='{"campaign_id": "c", "run_id": "s-1"}\n')
    assert piped.returncode == 0, piped.stderr
    assert "imported 1 of 1 rows from stdin (1 new, 0 updated)" in piped.stdout


def test_import_bad_file_names_line_and_field(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("campaign_id,run_id,tokens_in\nc,f-1,1\nc,f-2,lots\n")
    assert_one_line_error(run("import", str(path), url=database_url), "line 3: tokens_in")


def test_import_skip_invalid(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("campaign_id,run_id,tokens_in\nc,f-1,1\nc,f-2,lots\n")
    rejects = tmp_path / "out.jsonl"
    result = run("import", str(path), "--skip-invalid", "--rejects", str(rejects), url=database_url)
    assert result.returncode == 0, result.stderr
    assert "1 rejected" in result.stdout and rejects.exists()


def test_unreachable_host_is_named() -> None:
    port = free_port()
    result = run("db", "migrate", url=f"postgresql://postgres@127.0.0.1:{port}/x")
    assert_one_line_error(result, f"127.0.0.1:{port}", "connection refused")


def test_missing_database_url_names_the_env_var() -> None:
    assert_one_line_error(run("db", "migrate"), "APEX_DATABASE_URL")


def test_not_migrated(empty_database_url: str) -> None:
    result = run("record", "--campaign-id", "c", "--run-id", "r", url=empty_database_url)
    assert_one_line_error(result, "apex-metrics db migrate")


def test_debug_shows_the_traceback() -> None:
    result = run("--debug", "db", "migrate")
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_help_names_the_env_var() -> None:
    result = run("import", "--help")
    assert result.returncode == 0 and "APEX_DATABASE_URL" in result.stdout


def test_a_usage_error_under_json_is_json_too() -> None:
    """Exit 2 as click says, its message on stderr, and under --json one JSON document on
    stdout like every other failure; without --json nothing on stdout."""
    result = run("sync", "status", "--json", "--no-such-flag")
    assert result.returncode == 2
    assert "No such option: --no-such-flag" in result.stderr
    report = json.loads(result.stdout)
    assert report == {
        "ok": False,
        "error": "No such option: --no-such-flag",
        "hint": "Usage: apex-metrics sync status [OPTIONS]; see --help",
        "exit_code": 2,
    }
    plain = run("sync", "status", "--no-such-flag")
    assert plain.returncode == 2 and plain.stdout == ""
    bad_value = run("sync", "--json", "--workers", "zero")
    assert bad_value.returncode == 2 and json.loads(bad_value.stdout)["exit_code"] == 2
    assert run("--version").returncode == 0
