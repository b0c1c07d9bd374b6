"""The recorder's durable local spool: runs that could not reach PostgreSQL wait here, in order.

One directory (``APEX_SPOOL_DIR``, default ``<user state dir>/apex-metrics/spool``)::

    0000000000000001.jsonl   segments, oldest first, each one JSON line per run:
    0000000000000002.jsonl     {"v": 1, "at": "<when spooled, ISO 8601>", "run": {13 fields}}
    rejected.jsonl           runs the database refused, or lines that cannot be read, kept for
                             a human (never delivered, never dropped silently)
    .lock                    flock: appending, and sealing a segment (held for microseconds)
    .flush.lock              flock: one flusher at a time, across processes

Appends go to the newest segment (a new one past ``SEGMENT_BYTES``); each is written in one
``write`` and fsync'd, and the directory is fsync'd when a segment appears or goes. Nothing is
ever rewritten: a flusher first *seals* the newest segment (under ``.lock`` it starts the next
one, so no writer touches it again), delivers it in one transaction, and only after the commit
deletes it. A crash between the commit and the delete delivers that segment again: an upsert by
``run_id``, so no run is doubled. A torn last line (a crash mid-append) never reached the caller
as recorded; it is moved to ``rejected.jsonl`` like any unreadable line.

The spool is bounded (``APEX_SPOOL_MAX_BYTES``): when a run does not fit, the append fails with
``SpoolFull`` and the spool keeps what it has (oldest first); nothing is truncated.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from platformdirs import user_state_path

from apex_metrics.exceptions import ApexMetricsError, MetricValidationError
from apex_metrics.metric import FIELD_NAMES, Metric, parse_metric

FORMAT_VERSION = 1
SEGMENT_BYTES = 1_000_000  # a segment is delivered in one transaction: about 2,500 runs
DEFAULT_MAX_BYTES = 100_000_000
SEGMENT_SUFFIX = ".jsonl"
REJECTED = "rejected.jsonl"
APPEND_LOCK = ".lock"
FLUSH_LOCK = ".flush.lock"


class SpoolError(ApexMetricsError):
    """The recorder's spool failed."""


class SpoolFull(SpoolError):
    """The spool is full: the run was not recorded."""

    hint = (
        "start PostgreSQL (or fix APEX_DATABASE_URL) and run `apex-metrics spool flush`, "
        "or raise APEX_SPOOL_MAX_BYTES"
    )


def default_spool_dir() -> Path:
    """``<user state dir>/apex-metrics/spool`` (``~/.local/state/…`` on Linux)."""
    return user_state_path("apex-metrics") / "spool"


# ------------------------------------------------------------------------------------------------
# Line format


def encode_run(metric: Metric, *, at: datetime | None = None) -> bytes:
    """One spool line (with its newline): exact decimals and timestamps, as strings."""
    run = {name: _json_value(getattr(metric, name)) for name in FIELD_NAMES}
    when = (at or datetime.now(UTC)).isoformat()
    line = json.dumps({"v": FORMAT_VERSION, "at": when, "run": run}, separators=(",", ":"))
    return line.encode("utf-8") + b"\n"


def decode_run(line: bytes) -> tuple[Metric, datetime]:
    """The run and when it was spooled; ``ValueError`` when the line is not a valid spool line."""
    try:
        data = json.loads(line)
        if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION:
            raise ValueError(f"not a version {FORMAT_VERSION} spool line")
        return parse_metric(data["run"]), datetime.fromisoformat(data["at"])
    except (KeyError, TypeError, UnicodeDecodeError, MetricValidationError) as exc:
        raise ValueError(str(exc)) from exc


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@dataclass
class Segment:
    """What a sealed segment holds: its runs in order, and lines that could not be read."""

    path: Path
    runs: list[Metric] = field(default_factory=list)
    unreadable: list[tuple[bytes, str]] = field(default_factory=list)  # (line, why)
    oldest: datetime | None = None


def read_segment(path: Path) -> Segment:
    segment = Segment(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline, as every complete append does
    for line in lines:
        if not line.strip():
            continue
        try:
            metric, at = decode_run(line)
        except ValueError as exc:
            segment.unreadable.append((line, str(exc)))
            continue
        segment.runs.append(metric)
        if segment.oldest is None:
            segment.oldest = at
    if torn:
        segment.unreadable.append((torn, "torn line (the process stopped while appending it)"))
    return segment


# ------------------------------------------------------------------------------------------------
# Status


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """What waits in a spool."""

    path: Path
    runs: int
    bytes: int
    segments: int
    oldest: datetime | None
    max_bytes: int
    rejected: int
    unreadable: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "runs": self.runs,
            "bytes": self.bytes,
            "segments": self.segments,
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "max_bytes": self.max_bytes,
            "rejected": self.rejected,
            "unreadable": self.unreadable,
        }

    def lines(self) -> list[str]:
        used = f"{self.bytes:,} of {self.max_bytes:,} bytes"
        out = [f"spool {self.path}: {self.runs} run(s) waiting, {used}"]
        if self.oldest is not None:
            out.append(f"oldest spooled at {self.oldest.isoformat()}")
        if self.unreadable:
            out.append(f"{self.unreadable} unreadable line(s) (moved to {REJECTED} on flush)")
        if self.rejected:
            out.append(f"{self.rejected} entr(ies) kept aside in {REJECTED} (never delivered)")
        return out


# ------------------------------------------------------------------------------------------------
# The spool directory


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Spool:
    """A spool directory. Safe to share between threads and processes (file locks)."""

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        max_bytes: int | None = None,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        if path is None or max_bytes is None:
            from apex_metrics.settings import get_settings

            settings = get_settings()
            path = path if path is not None else settings.spool_dir
            max_bytes = max_bytes if max_bytes is not None else settings.spool_max_bytes
        self.path = Path(path).expanduser() if path is not None else default_spool_dir()
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r}, max_bytes={self.max_bytes})"

    # --- locks --------------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        if not self.path.is_dir():
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            _fsync_dir(self.path.parent)

    @contextmanager
    def _lock(self, name: str, *, blocking: bool = True) -> Iterator[bool]:
        self._ensure_dir()
        fd = os.open(self.path / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def flush_lock(self) -> Any:
        """``with spool.flush_lock() as got:`` — ``got`` is False when another flusher holds it."""
        return self._lock(FLUSH_LOCK, blocking=False)

    # --- segments -----------------------------------------------------------------------------

    def segments(self) -> list[Path]:
        """Segment files, oldest first."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        found = [n for n in names if n.endswith(SEGMENT_SUFFIX) and n[:-6].isdigit()]
        return [self.path / n for n in sorted(found)]

    def _new_segment(self, after: list[Path]) -> Path:
        seq = int(after[-1].name[:-6]) + 1 if after else 1
        path = self.path / f"{seq:016d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fsync(fd)
        os.close(fd)
        _fsync_dir(self.path)
        return path

    def used_bytes(self) -> int:
        total = 0
        for path in self.segments():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def has_runs(self) -> bool:
        """Whether any segment holds something (cheap: one listdir and a stat per segment)."""
        for path in self.segments():
            try:
                if path.stat().st_size > 0:
                    return True
            except FileNotFoundError:
                continue
        return False

    # --- writing ------------------------------------------------------------------------------

    def append(self, metrics: Iterable[Metric]) -> int:
        """Append runs durably, all or none; returns the bytes written. ``SpoolFull`` when they
        do not fit (what is spooled already is kept)."""
        data = b"".join(encode_run(m) for m in metrics)
        if not data:
            return 0
        with self._lock(APPEND_LOCK):
            segments = self.segments()
            used = sum(p.stat().st_size for p in segments)
            if used + len(data) > self.max_bytes:
                raise SpoolFull(
                    f"the spool {self.path} is full ({used:,} of {self.max_bytes:,} bytes): "
                    "run(s) not recorded"
                )
            tail = segments[-1] if segments else None
            size = tail.stat().st_size if tail is not None else 0
            if tail is None or (size > 0 and size + len(data) > self.segment_bytes):
                tail, size = self._new_segment(segments), 0
            fd = os.open(tail, os.O_RDWR | os.O_APPEND)
            try:
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # a torn line stays a line of its own
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        return len(data)

    def reject(self, entries: Iterable[dict[str, Any]]) -> None:
        """Append entries to ``rejected.jsonl`` (fsync'd)."""
        data = b"".join(
            json.dumps(e, separators=(",", ":"), default=str).encode() + b"\n" for e in entries
        )
        if not data:
            return
        with self._lock(APPEND_LOCK):
            path = self.path / REJECTED
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path)

    def reject_runs(self, refused: Iterable[tuple[Metric, str]]) -> None:
        """Keep runs the database refused, with why, in ``rejected.jsonl``."""
        now = datetime.now(UTC).isoformat()
        self.reject(
            {"at": now, "reason": why, "run": json.loads(encode_run(m))["run"]}
            for m, why in refused
        )

    def reject_lines(self, unreadable: Iterable[tuple[bytes, str]]) -> None:
        """Keep lines that cannot be read, with why, in ``rejected.jsonl``."""
        now = datetime.now(UTC).isoformat()
        self.reject(
            {"at": now, "reason": why, "line": line.decode("utf-8", "replace")}
            for line, why in unreadable
        )

    # --- flushing (the caller holds ``flush_lock``) ---------------------------------------------

    def next_segment(self) -> Path | None:
        """The oldest segment with runs, sealed (no writer appends to it again), or None."""
        with self._lock(APPEND_LOCK):
            segments = self.segments()
            for index, path in enumerate(segments):
                last = index == len(segments) - 1
                if path.stat().st_size == 0:
                    if not last:
                        self.remove(path)
                    continue
                if last:
                    self._new_segment(segments)
                return path
        return None

    def remove(self, path: Path) -> None:
        """Delete a delivered segment (after the commit), durably."""
        path.unlink(missing_ok=True)
        _fsync_dir(self.path)

    # --- status -------------------------------------------------------------------------------

    def status(self) -> SpoolStatus:
        runs = size = unreadable = segments = 0
        oldest: datetime | None = None
        for path in self.segments():
            try:
                segment = read_segment(path)
                size += path.stat().st_size
            except FileNotFoundError:  # delivered meanwhile
                continue
            segments += 1
            runs += len(segment.runs)
            unreadable += len(segment.unreadable)
            if oldest is None:
                oldest = segment.oldest
        rejected = 0
        try:
            with (self.path / REJECTED).open("rb") as fh:
                rejected = sum(1 for line in fh if line.strip())
        except FileNotFoundError:
            pass
        return SpoolStatus(
            self.path, runs, size, segments, oldest, self.max_bytes, rejected, unreadable
        )
