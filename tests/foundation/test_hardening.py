"""Issue 18 hardening of input handling: ids, huge numbers, deep JSON, rejects, URL secrets."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apex_metrics.db import redact
from apex_metrics.exceptions import MetricValidationError
from apex_metrics.importer import import_file
from apex_metrics.metric import RowParser, parse_metric

from .test_cli import run

CONTROL = ["\t", "\n", "\r", "\x01", "\x1b", "\x7f", "\x85", "\x9f"]


@pytest.mark.unit
@pytest.mark.parametrize("field", ["campaign_id", "run_id", "phase"])
@pytest.mark.parametrize("char", CONTROL)
def test_control_characters_in_ids_are_rejected_naming_field_and_rule(
    field: str, char: str
) -> None:
    data = {"campaign_id": "c", "run_id": "r", "phase": "p", field: f"a{char}b"}
    with pytest.raises(MetricValidationError) as info:
        parse_metric(data)
    ((error),) = info.value.errors
    assert error.field == field
    assert error.rule == f"must not contain control characters (found U+{ord(char):04X})"
    parser = RowParser(["campaign_id", "run_id", "phase"])  # the import's fast path too
    with pytest.raises(MetricValidationError) as fast:
        parser.parse([data["campaign_id"], data["run_id"], data["phase"]], line=7)
    assert [(e.field, e.rule, e.line) for e in fast.value.errors] == [(field, error.rule, 7)]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("cost_usd", "1e23", "must be ≤ 99999.99999 (got 1E+23)"),
        ("cost_usd", 1e23, "must be ≤ 99999.99999 (got 1E+23)"),
        ("cost_usd", "-1e999999", "must be ≥ 0 (got -1E+999999)"),
        ("success_rate", "1e40", "must be ≤ 100 (got 1E+40)"),
        ("agents_total", 10**5000, "must be ≤ 2147483647 (got a number of about 5001 digits)"),
        ("tokens_in", -(10**5000), "must be ≥ 0 (got a number of about 5001 digits)"),
        ("tokens_in", "9" * 5000, "must be a whole number"),
    ],
    ids=["cost-text", "cost-float", "cost-tiny", "rate", "huge-int", "huge-neg", "digits-text"],
)
def test_huge_numbers_break_a_rule_not_the_program(field: str, value: Any, rule: str) -> None:
    with pytest.raises(MetricValidationError) as info:
        parse_metric({"campaign_id": "c", "run_id": "r", field: value})
    assert [(e.field, e.rule) for e in info.value.errors] == [(field, rule)]


def _error_line(result: Any, *needles: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in first, (needle, first)


def test_record_gives_one_line_errors_for_huge_and_deep_values(database_url: str) -> None:
    base = ("record", "--campaign-id", "c", "--run-id", "r-1")
    _error_line(run(*base, "--cost-usd", "1e23", url=database_url), "cost_usd", "≤ 99999.99999")
    _error_line(run(*base, "--agents-total", "7" * 5000, url=database_url), "agents_total")
    digits = '{"campaign_id": "c", "run_id": "r-1", "tokens_in": ' + "7" * 5000 + "}"
    _error_line(run("record", "--json", digits, url=database_url), "--json", "too many digits")
    deep = "[" * 100_000
    _error_line(run("record", "--json", deep, url=database_url), "--json", "nested too deeply")
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM campaign_metrics").fetchone() == (0,)


async def test_skip_invalid_rejects_such_rows_and_keeps_the_rest(
    database_url: str, tmp_path: Path
) -> None:
    lines = [
        '{"campaign_id": "c", "run_id": "ok-1"}',
        '{"campaign_id": "c", "run_id": "huge", "cost_usd": 1e23}',
        '{"campaign_id": "c", "run_id": "digits", "tokens_in": ' + "9" * 5000 + "}",
        "[" * 100_000,
        '{"campaign_id": "tab\\there", "run_id": "ctl"}',
        '{"campaign_id": "c", "run_id": "ok-2"}',
    ]
    source = tmp_path / "runs.jsonl"
    source.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    report = await import_file(
        str(source), url=database_url, skip_invalid=True, rejects=str(rejects)
    )
    assert (report.inserted, report.rejected) == (2, 4)
    entries = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [e["line"] for e in entries] == [2, 3, 4, 5]
    rules = [e["errors"][0]["rule"] for e in entries]
    assert rules == [
        "must be ≤ 99999.99999 (got 1E+23)",
        "not valid JSON: a number has too many digits",
        "not valid JSON: nested too deeply",
        "must not contain control characters (found U+0009)",
    ]
    csv_source = tmp_path / "runs.csv"
    csv_source.write_text("campaign_id,run_id,cost_usd\nc,ok-3,1\nc,big,1e23\n")
    report = await import_file(str(csv_source), url=database_url, skip_invalid=True)
    assert (report.inserted, report.rejected) == (1, 1)
    with pytest.raises(MetricValidationError, match="line 3: cost_usd"):
        await import_file(str(csv_source), url=database_url)  # without: all or nothing


async def test_skip_invalid_streams_rejects_instead_of_keeping_them(
    database_url: str, tmp_path: Path
) -> None:
    """15k bad rows (each with a 4 KB value): the old code kept every row, its values and
    its errors in memory until the end (over 60 MB here; 806 MB for 1M rows)."""
    rows = 15_000
    source = tmp_path / "bad.csv"
    with source.open("w") as out:
        out.write("campaign_id,run_id,phase,tokens_in\n")
        for i in range(rows):
            out.write(f"c,bad-{i},{'p' * 4000},-1\n")
        out.write("c,good,p,1\n")
    rejects = tmp_path / "bad.csv.rejects.jsonl"
    tracemalloc.start()
    try:
        report = await import_file(str(source), url=database_url, skip_invalid=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (report.inserted, report.rejected) == (1, rows)
    assert report.rejects_file == str(rejects)
    assert len(rejects.read_text().splitlines()) == rows
    assert len(report.errors) <= 51  # the report shows the first 50; the file has them all
    assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"
    assert not Path(f"{rejects}.partial").exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cretpw@[bad/db",
        "postgresql://u:s3cret%zzpw@127.0.0.1/db",
        "postgresql://u:s3cr%40etpw@[bad/db",
        "host=127.0.0.1 password=s3cretpw port=x",
        "host=x password='s3cret pw' port=",
        "postgresql://u@h/db?password=s3cretpw&port=x",
    ],
)
def test_redact_hides_the_password_of_a_malformed_url(url: str) -> None:
    text = f'invalid connection option in "{url}"; password=s3cretpw'
    assert "s3cr" not in redact(text, url)


@pytest.mark.parametrize(
    "url", ["postgresql://u:s3cretpw@[bad/db", "postgresql://u:s3cret%zzpw@127.0.0.1/db"]
)
def test_debug_traceback_of_a_malformed_url_hides_the_password(url: str) -> None:
    result = run("--debug", "db", "migrate", "--database-url", url)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ProgrammingError" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
