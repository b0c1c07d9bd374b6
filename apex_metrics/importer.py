"""Bulk import of campaign runs from CSV (header = column names) or JSON Lines.

Every row is validated before anything is committed: rows stream through COPY inside one
transaction, and the transaction commits only when the whole file is valid (or, with
``skip_invalid``, after setting the bad rows aside). New runs go straight into
``campaign_metrics``; when some run is already recorded, the rows go through a temporary staging
table and one upsert in run_id order instead (see ``bulk.load``). A run id repeated in the file is
an error naming both lines. Errors list the line, the field and the rule.

CSV details: a UTF-8 byte order mark is ignored; blank lines are skipped (line numbers still count
them); the header must name only known columns and include ``campaign_id`` and ``run_id`` (the
other columns are optional); no field may be longer than ``MAX_FIELD`` characters.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal, cast

import psycopg
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from apex_metrics.bulk import load
from apex_metrics.db import connect, database_url, describe, ensure_migrated, wrap_query_error
from apex_metrics.exceptions import (
    ApexMetricsError,
    FieldError,
    MetricValidationError,
    first_line,
)
from apex_metrics.metric import BY_NAME, COLUMNS, RowParser, copy_text, parse_metric

Format = Literal["csv", "jsonl"]
MAX_FIELD = 1 << 20  # 1 MiB: far above any valid value, far below a runaway line
BATCH_ROWS = 5_000  # COPY lines sent per write
REQUIRED = tuple(c.name for c in COLUMNS if c.required)


class ImportFileError(ApexMetricsError):
    """The input file cannot be read as CSV or JSON Lines."""


@dataclass
class ImportReport:
    """What an import did."""

    source: str
    format: Format
    rows: int = 0  # data rows read (blank lines excluded)
    inserted: int = 0
    updated: int = 0
    rejected: int = 0
    rejects_file: str | None = None
    errors: list[FieldError] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.format,
            "rows": self.rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "rejected": self.rejected,
            "rejects_file": self.rejects_file,
            "errors": [
                {"line": e.line, "field": e.field, "rule": e.rule} for e in self.errors[:50]
            ],
        }

    def summary(self) -> str:
        text = (
            f"imported {self.inserted + self.updated} of {self.rows} rows from {self.source} "
            f"({self.inserted} new, {self.updated} updated)"
        )
        if self.rejected:
            text += f"; {self.rejected} rejected, reasons in {self.rejects_file}"
        return text


@dataclass(slots=True)
class Row:
    """One record of the input: where it starts, and its COPY line or its errors."""

    line: int
    run_id: str | None = None
    text: str | None = None  # COPY text line of the 13 values
    errors: list[FieldError] = field(default_factory=list)
    raw: dict[str, Any] | None = None  # kept for rejected rows only


# ------------------------------------------------------------------------------------------------
# Reading


def detect_format(path: str, first_bytes: bytes) -> Format:
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "jsonl" if first_bytes.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "csv"


def read_csv(text: IO[str]) -> Iterator[Row]:
    csv.field_size_limit(MAX_FIELD)
    reader = csv.reader(text, strict=True)
    header: list[str] | None = None
    parser: RowParser
    last_line = 0
    try:
        for record in reader:
            line, last_line = last_line + 1, reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if header is None:
                header = check_header(record, line)
                parser = RowParser(header)
                continue
            if len(record) != len(header):
                rule = f"has {len(record)} values but the header names {len(header)} columns"
                raw = {"values": record}
                yield Row(line, errors=[FieldError("(row)", rule, line)], raw=raw)
                continue
            try:
                run_id, copy_line = parser.parse(record, line)
            except MetricValidationError as exc:
                yield Row(line, errors=exc.errors, raw=dict(zip(header, record, strict=True)))
                continue
            yield Row(line, run_id, copy_line)
    except csv.Error as exc:
        line = reader.line_num
        detail = str(exc)
        if "field larger than field limit" in detail:
            detail = f"a field is longer than {MAX_FIELD} characters"
        raise MetricValidationError(
            [FieldError("(file)", f"unreadable CSV: {detail}", line)]
        ) from None
    if header is None:
        raise ImportFileError("the CSV input is empty: expected a header line of column names")


def check_header(record: list[str], line: int) -> list[str]:
    names = [name.strip() for name in record]
    errors: list[FieldError] = []
    for name in names:
        if name not in BY_NAME:
            errors.append(FieldError(name or "(empty)", "unknown column", line))
    seen: set[str] = set()
    for name in names:
        if name in seen:
            errors.append(FieldError(name, "column appears twice in the header", line))
        seen.add(name)
    for name in REQUIRED:
        if name not in names:
            errors.append(FieldError(name, "required column is missing from the header", line))
    if errors:
        known = ", ".join(BY_NAME)
        errors.append(FieldError("(header)", f"known columns: {known}", line))
        raise MetricValidationError(errors)
    return names


def read_jsonl(text: IO[str]) -> Iterator[Row]:
    for line, content in enumerate(text, start=1):
        if not content.strip():
            continue
        if len(content) > MAX_FIELD:
            rule = f"longer than {MAX_FIELD} characters"
            yield Row(line, errors=[FieldError("(line)", rule, line)], raw={})
            continue
        try:
            data = json.loads(content, parse_float=Decimal)
        except (ValueError, RecursionError) as exc:  # also: 5,000 digits, nested too deeply
            rule = f"not valid JSON: {json_problem(exc)}"
            yield Row(line, errors=[FieldError("(line)", rule, line)], raw={"text": content})
            continue
        if not isinstance(data, dict):
            rule = "must be a JSON object"
            yield Row(line, errors=[FieldError("(line)", rule, line)], raw={"text": content})
            continue
        yield parse_row(line, data)


def json_problem(exc: ValueError | RecursionError) -> str:
    """What is wrong with a text ``json.loads`` refused, in a few words."""
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if "digits" in str(exc):  # int() refuses more than sys.get_int_max_str_digits() digits
        return "a number has too many digits"
    return first_line(exc)[:200]


def parse_row(line: int, raw: dict[str, Any]) -> Row:
    try:
        metric = parse_metric(raw, line=line)
    except MetricValidationError as exc:
        return Row(line, errors=exc.errors, raw=raw)
    return Row(line, metric.run_id, copy_text(metric.pg_values()))


# ------------------------------------------------------------------------------------------------
# Importing


def open_source(source: str) -> tuple[io.BufferedReader, int | None]:
    if source == "-":
        stdin = sys.stdin.buffer
        if isinstance(stdin, io.BufferedReader):
            return stdin, None
        return io.BufferedReader(cast(io.RawIOBase, stdin)), None
    path = Path(source)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ImportFileError(f"cannot read {source}: {exc.strerror or exc}") from None
    return handle, path.stat().st_size


def make_progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rows]} rows"),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=True,
        disable=console is None or not console.is_terminal,
    )


class _Rejects:
    """Rejected rows, written as they come (never kept in memory) to ``path + ".partial"``,
    renamed to ``path`` when the import commits, removed when it fails."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self._out: IO[str] | None = None

    def add(self, row: Row) -> None:
        if self._out is None:
            self._out = open(self.path + ".partial", "w", encoding="utf-8")
        self._out.write(reject_line(row))
        self.count += 1

    def close(self, keep: bool) -> str | None:
        if self._out is None:
            return None
        self._out.close()
        if not keep:
            Path(self.path + ".partial").unlink(missing_ok=True)
            return None
        os.replace(self.path + ".partial", self.path)
        return self.path


class _Stager:
    """Feeds valid rows to COPY, sets invalid ones aside, and finds repeated run ids."""

    def __init__(self, report: ImportReport, rejects: _Rejects | None) -> None:
        self.report = report
        self.skip_invalid = rejects is not None
        self.rejects = rejects
        self.seen: dict[str, int] = {}

    def check(self, row: Row) -> str | None:
        """The row's COPY line when it should be written, else None (its errors are kept)."""
        self.report.rows += 1
        run_id = row.run_id
        if run_id is not None:
            first = self.seen.setdefault(run_id, row.line)
            if first != row.line:
                rule = f"run id {run_id!r} is also on line {first}"
                row.errors.append(FieldError("run_id", rule, row.line))
                row.raw = {"run_id": run_id}
        if row.errors:
            if self.rejects is not None:
                if len(self.report.errors) < 50:  # what the report shows; the file has all
                    self.report.errors.extend(row.errors)
                self.rejects.add(row)
            else:
                self.report.errors.extend(row.errors)
            return None
        if self.report.errors and not self.skip_invalid:
            return None  # keep validating; nothing will be written
        return row.text


async def import_file(
    source: str,
    *,
    url: str | None = None,
    skip_invalid: bool = False,
    rejects: str | None = None,
    fmt: Format | None = None,
    console: Console | None = None,
) -> ImportReport:
    """Import ``source`` (a path, or ``-`` for stdin); see the module docstring."""
    url = database_url(url)
    handle, size = open_source(source)
    fmt = fmt or detect_format(source, handle.peek(64)[:64])
    report = ImportReport(source="stdin" if source == "-" else source, format=fmt)
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="strict", newline="")
    rows = read_csv(text) if fmt == "csv" else read_jsonl(text)
    rejected = _Rejects(rejects or default_rejects_path(source)) if skip_invalid else None
    stager = _Stager(report, rejected)
    committed = False
    try:
        async with await connect(url) as conn:
            await ensure_migrated(conn)
            with make_progress(console) as progress:
                task = progress.add_task("reading and validating", total=size, rows=0)

                def batches() -> Iterator[str]:
                    batch: list[str] = []
                    for row in rows:
                        copy_line = stager.check(row)
                        if copy_line is not None:
                            batch.append(copy_line)
                        if len(batch) >= BATCH_ROWS:
                            yield "".join(batch)
                            batch.clear()
                            progress.update(task, completed=_tell(handle), rows=report.rows)
                    if batch:
                        yield "".join(batch)

                async with conn.transaction():
                    inserted, updated = await load(
                        conn,
                        batches(),
                        lambda: list(stager.seen),
                        lambda: _raise_if_invalid(stager, skip_invalid),
                    )
                    progress.update(task, description="analyzing", rows=report.rows)
                    # Fresh statistics, so the sync engine's claim plans for the new rows.
                    await conn.execute("ANALYZE campaign_metrics")
        committed = True
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            f"{report.source} is not UTF-8 text (bad byte at offset {exc.start} of a block)",
            hint="save the file as UTF-8",
        ) from None
    except psycopg.Error as exc:
        raise wrap_query_error(exc, describe(url)) from exc
    finally:
        if source != "-":
            handle.close()
        if rejected is not None:
            report.rejects_file = rejected.close(keep=committed)
    report.inserted, report.updated = inserted, updated
    report.rejected = rejected.count if rejected is not None else 0
    return report


def _raise_if_invalid(stager: _Stager, skip_invalid: bool) -> None:
    if stager.report.errors and not skip_invalid:
        raise MetricValidationError(stager.report.errors)


def _tell(handle: IO[bytes]) -> int | None:
    try:
        return handle.tell()
    except (OSError, ValueError):
        return None


def default_rejects_path(source: str) -> str:
    return "rejects.jsonl" if source == "-" else f"{source}.rejects.jsonl"


def reject_line(row: Row) -> str:
    """One JSON object per rejected row: its line, every broken rule, and the raw values."""
    entry = {
        "line": row.line,
        "errors": [{"field": e.field, "rule": e.rule} for e in row.errors],
        "record": row.raw,
    }
    return json.dumps(entry, default=str, ensure_ascii=False) + "\n"
