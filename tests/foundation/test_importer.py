"""import_file against real PostgreSQL: formats, bad inputs, all-or-nothing, --skip-invalid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apex_metrics.exceptions import MetricValidationError
from apex_metrics.importer import ImportFileError, import_file

HEADER = "campaign_id,run_id,phase,agents_total,agents_successful,cost_usd,created_at"


def good_line(n: int) -> str:
    return f"spring,run-{n},2-3,4,3,0.12345,2026-01-0{1 + n % 9}T10:00:00Z"


def count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM campaign_metrics").fetchone()
    assert row is not None
    return int(row[0])


def fetch(url: str, run_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        cur = conn.execute("SELECT * FROM campaign_metrics WHERE run_id = %s", (run_id,))
        names = [d.name for d in cur.description or []]
        row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


def write(tmp_path: Path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


async def expect_errors(url: str, source: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(MetricValidationError) as info:
        await import_file(source, url=url)
    assert count(url) == 0, "nothing may be written"
    return [(e.line, e.field, e.rule) for e in info.value.errors]


async def test_csv_import(database_url: str, tmp_path: Path) -> None:
    lines = [HEADER] + [good_line(n) for n in range(25)]
    source = write(tmp_path, "runs.csv", "\n".join(lines) + "\n")
    report = await import_file(source, url=database_url)
    assert (report.rows, report.inserted, report.updated, report.rejected) == (25, 25, 0, 0)
    stored = fetch(database_url, "run-3")
    assert str(stored["cost_usd"]) == "0.12345" and str(stored["success_rate"]) == "75.00"
    again = await import_file(source, url=database_url)
    assert (again.inserted, again.updated) == (0, 25)
    assert fetch(database_url, "run-3")["version"] == 2


async def test_jsonl_import_keeps_decimals_exact(database_url: str, tmp_path: Path) -> None:
    rows = [
        '{"campaign_id": "c", "run_id": "j-1", "cost_usd": 0.000015, "tokens_in": 7}',
        "",
        '{"campaign_id": "c", "run_id": "j-2", "created_at": "2026-02-01T00:00:00+01:00"}',
    ]
    source = write(tmp_path, "runs.jsonl", "\n".join(rows))
    report = await import_file(source, url=database_url)
    assert report.format == "jsonl" and report.inserted == 2
    assert str(fetch(database_url, "j-1")["cost_usd"]) == "0.00002"


async def test_format_is_sniffed_without_extension(database_url: str, tmp_path: Path) -> None:
    source = write(tmp_path, "runs.txt", '{"campaign_id": "c", "run_id": "s-1"}\n')
    assert (await import_file(source, url=database_url)).format == "jsonl"


async def test_bom_and_blank_lines_are_handled(database_url: str, tmp_path: Path) -> None:
    text = "\ufeff" + HEADER + "\n\n" + good_line(1) + "\n   \n\n" + good_line(2) + "\n\n"
    source = write(tmp_path, "bom.csv", text)
    assert (await import_file(source, url=database_url)).inserted == 2


async def test_blank_lines_keep_line_numbers_true(database_url: str, tmp_path: Path) -> None:
    text = (
        HEADER + "\n\n" + good_line(1) + "\n\n" + "spring,run-x,2-3,-4,0,1,2026-01-01T00:00:00Z\n"
    )
    errors = await expect_errors(database_url, write(tmp_path, "b.csv", text))
    assert [(line, field) for line, field, _ in errors] == [(5, "agents_total")]


async def test_issue_bad_inputs_write_nothing(database_url: str, tmp_path: Path) -> None:
    bad = [
        "spring,neg,2-3,-1,0,1,2026-01-01T00:00:00Z",
        "spring,over,2-3,2,3,1,2026-01-01T00:00:00Z",
        "spring,cost,2-3,2,1,100000,2026-01-01T00:00:00Z",
        "spring,phase,12345678901234567,2,1,1,2026-01-01T00:00:00Z",
        "spring,a/b,2-3,2,1,1,2026-01-01T00:00:00Z",
        ",empty,2-3,2,1,1,2026-01-01T00:00:00Z",
        "spring,nan,2-3,two,1,1,2026-01-01T00:00:00Z",
        "spring,naive,2-3,2,1,1,2026-01-01T00:00:00",
        "spring,malformed,2-3,2,1,1,2026-02-30T00:00:00Z",
    ]
    lines = [HEADER, good_line(1), *bad]
    errors = await expect_errors(database_url, write(tmp_path, "bad.csv", "\n".join(lines)))
    assert [(line, field) for line, field, _ in errors] == [
        (3, "agents_total"), (4, "agents_successful"), (5, "cost_usd"), (6, "phase"),
        (7, "run_id"), (8, "campaign_id"), (9, "agents_total"), (10, "created_at"),
        (11, "created_at"),
    ]  # fmt: skip


async def test_success_rate_and_tokens_limits(database_url: str, tmp_path: Path) -> None:
    text = "campaign_id,run_id,success_rate,tokens_in\nc,r1,100.01,1\nc,r2,50,2147483648\n"
    errors = await expect_errors(database_url, write(tmp_path, "x.csv", text))
    assert [(line, field) for line, field, _ in errors] == [(2, "success_rate"), (3, "tokens_in")]


async def test_unknown_and_missing_columns(database_url: str, tmp_path: Path) -> None:
    text = "campaign_id,colour,phase\nc,red,1\n"
    errors = await expect_errors(database_url, write(tmp_path, "h.csv", text))
    fields = {field for _, field, _ in errors}
    assert {"colour", "run_id"} <= fields
    assert all(line == 1 for line, _, _ in errors)


async def test_row_with_wrong_number_of_values(database_url: str, tmp_path: Path) -> None:
    text = HEADER + "\n" + good_line(1) + ",extra\n"
    errors = await expect_errors(database_url, write(tmp_path, "n.csv", text))
    assert errors[0][0] == 2 and "8 values" in errors[0][2]


async def test_ten_megabyte_line(database_url: str, tmp_path: Path) -> None:
    text = HEADER + "\n" + good_line(1) + "\nspring," + "x" * 10_000_000 + ",2-3,1,1,1,\n"
    errors = await expect_errors(database_url, write(tmp_path, "big.csv", text))
    assert errors[-1][0] == 3 and "longer than" in errors[-1][2]
    jsonl = '{"campaign_id": "c", "run_id": "' + "y" * 10_000_000 + '"}\n'
    errors = await expect_errors(database_url, write(tmp_path, "big.jsonl", jsonl))
    assert errors == [(1, "(line)", "longer than 1048576 characters")]


async def test_repeated_run_id_names_both_lines(database_url: str, tmp_path: Path) -> None:
    text = "\n".join([HEADER, good_line(1), good_line(2), good_line(1)])
    errors = await expect_errors(database_url, write(tmp_path, "d.csv", text))
    assert errors == [(4, "run_id", "run id 'run-1' is also on line 2")]


async def test_first_fifty_errors_then_a_count(database_url: str, tmp_path: Path) -> None:
    lines = [HEADER] + [f"c,r{n},,-1,,," for n in range(120)]
    with pytest.raises(MetricValidationError) as info:
        await import_file(write(tmp_path, "many.csv", "\n".join(lines)), url=database_url)
    message = str(info.value)
    assert "line 51:" in message and "line 52:" not in message
    assert message.endswith("and 70 more")


async def test_skip_invalid_loads_good_rows_and_writes_rejects(
    database_url: str, tmp_path: Path
) -> None:
    lines = [HEADER, good_line(1), "spring,bad,2-3,-1,0,1,2026-01-01T00:00:00Z", good_line(2)]
    lines.append(good_line(1))  # a repeat: the second one is rejected
    rejects = tmp_path / "rejects.jsonl"
    report = await import_file(
        write(tmp_path, "mixed.csv", "\n".join(lines)),
        url=database_url,
        skip_invalid=True,
        rejects=str(rejects),
    )
    assert (report.inserted, report.rejected, report.rejects_file) == (2, 2, str(rejects))
    assert count(database_url) == 2
    entries = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [e["line"] for e in entries] == [3, 5]
    assert entries[0]["errors"] == [{"field": "agents_total", "rule": "must be ≥ 0 (got -1)"}]
    assert entries[0]["record"]["run_id"] == "bad"


async def test_sql_and_copy_looking_strings_are_stored_verbatim(
    database_url: str, tmp_path: Path
) -> None:
    text = (
        'campaign_id,run_id,phase\n"x\'); DROP TABLE campaign_metrics; --",r1,"\\N"\n'
        '"back\\slash ""quoted""",r2,\\.\n'
    )
    await import_file(write(tmp_path, "sql.csv", text), url=database_url)
    assert fetch(database_url, "r1")["campaign_id"] == "x'); DROP TABLE campaign_metrics; --"
    assert fetch(database_url, "r1")["phase"] == "\\N"
    assert fetch(database_url, "r2")["campaign_id"] == 'back\\slash "quoted"'
    assert fetch(database_url, "r2")["phase"] == "\\."


async def test_not_utf8(database_url: str, tmp_path: Path) -> None:
    source = write(tmp_path, "latin.csv", HEADER.encode() + b"\ncaf\xe9,r1,,,,,\n")
    with pytest.raises(ImportFileError, match="not UTF-8"):
        await import_file(source, url=database_url)
    assert count(database_url) == 0


async def test_empty_and_missing_files(database_url: str, tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="empty"):
        await import_file(write(tmp_path, "empty.csv", "\n\n"), url=database_url)
    with pytest.raises(ImportFileError, match="cannot read"):
        await import_file(str(tmp_path / "absent.csv"), url=database_url)
