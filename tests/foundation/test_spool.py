"""The recorder's spool on its own (no database): line format, order, bounds, torn lines, locks,
fsync, and a recorder with no database at all."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from apex_metrics import spool as spool_module
from apex_metrics.metric import Metric, parse_metric
from apex_metrics.problems import ProblemLog
from apex_metrics.recorder import Recorder, SyncRecorder
from apex_metrics.spool import (
    REJECTED,
    Spool,
    SpoolFull,
    decode_run,
    default_spool_dir,
    encode_run,
    read_segment,
)

pytestmark = pytest.mark.unit


def run(n: int, **values: object) -> Metric:
    return parse_metric({"campaign_id": "c", "run_id": f"r-{n}", "tokens_in": n, **values})


def spooled_runs(spool: Spool) -> list[Metric]:
    return [m for path in spool.segments() for m in read_segment(path).runs]


def test_a_line_round_trips_exactly() -> None:
    metric = parse_metric(
        {
            "campaign_id": "spring",
            "run_id": "r-ü",
            "phase": None,
            "agents_total": 3,
            "agents_successful": 2,
            "cost_usd": Decimal("0.00001"),
            "latency_p95_ms": 2_147_483_647,
            "created_at": datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        }
    )
    at = datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC)
    line = encode_run(metric, at=at)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    data = json.loads(line)
    assert data["v"] == 1 and data["run"]["cost_usd"] == "0.00001"
    assert decode_run(line) == (metric, at)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"{",
        b"[]",
        b'{"v": 2, "at": "x", "run": {}}',
        b'{"v": 1, "at": "2026-01-01", "run": {}}',
    ],
)
def test_bad_lines_are_value_errors(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode_run(line)


def test_runs_come_back_in_append_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=10**6, segment_bytes=400)
    for n in range(30):
        spool.append([run(n)])
    spool.append([run(30), run(31), run(32)])
    assert len(spool.segments()) > 5
    assert [m.run_id for m in spooled_runs(spool)] == [f"r-{n}" for n in range(33)]
    status = spool.status()
    assert (status.runs, status.segments, status.bytes) == (33, len(spool.segments()), status.bytes)
    assert status.bytes == sum(p.stat().st_size for p in spool.segments())


def test_a_full_spool_refuses_new_runs_and_keeps_the_old(tmp_path: Path) -> None:
    one = len(encode_run(run(1)))
    spool = Spool(tmp_path, max_bytes=3 * one + 10)
    spool.append([run(1)])
    spool.append([run(2), run(3)])
    before = [p.read_bytes() for p in spool.segments()]
    with pytest.raises(SpoolFull, match="full") as info:
        spool.append([run(4)])
    assert "APEX_SPOOL_MAX_BYTES" in info.value.one_line()
    with pytest.raises(SpoolFull):
        spool.append([run(5), run(6)])  # all or nothing
    assert [p.read_bytes() for p in spool.segments()] == before
    assert [m.run_id for m in spooled_runs(spool)] == ["r-1", "r-2", "r-3"]


def test_a_torn_line_is_kept_apart_and_the_next_append_starts_a_new_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([run(1)])
    tail = spool.segments()[-1]
    with tail.open("ab") as fh:  # a crash in the middle of an append
        fh.write(encode_run(run(2))[:25])
    status = spool.status()
    assert (status.runs, status.unreadable) == (1, 1)
    spool.append([run(3)])
    segment = read_segment(tail)
    assert [m.run_id for m in segment.runs] == ["r-1", "r-3"]
    assert len(segment.unreadable) == 1 and segment.unreadable[0][0].startswith(b'{"v":1')


def test_sealing_makes_writers_move_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([run(1)])
    first = spool.next_segment()
    assert first is not None and first == spool.segments()[0]
    spool.append([run(2)])
    assert len(spool.segments()) == 2
    assert [m.run_id for m in read_segment(first).runs] == ["r-1"]
    spool.remove(first)
    assert spool.next_segment() == spool.segments()[0] and spool.status().runs == 1


def test_every_append_and_removal_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(spool_module.os, "fsync", fsync)
    spool = Spool(tmp_path / "spool")
    spool.append([run(1)])
    segment = str(spool.segments()[0])
    assert synced.count(segment) >= 1  # the file
    assert str(spool.path) in synced and str(tmp_path) in synced  # its directory, and the new dir
    synced.clear()
    spool.append([run(2)])
    assert synced == [segment]
    synced.clear()
    spool.remove(spool.segments()[0])
    assert synced == [str(spool.path)]


def test_one_flusher_at_a_time_across_processes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    code = (
        "import sys; from apex_metrics.spool import Spool\n"
        "with Spool(sys.argv[1], max_bytes=1).flush_lock() as got: print(got)"
    )
    with spool.flush_lock() as got:
        assert got
        with Spool(tmp_path).flush_lock() as again:
            assert not again
        other = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
        )
        assert other.stdout.strip() == "False"
    other = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert other.stdout.strip() == "True"


def test_status_of_a_missing_spool_creates_nothing(tmp_path: Path) -> None:
    status = Spool(tmp_path / "nowhere").status()
    assert (status.runs, status.bytes, status.oldest) == (0, 0, None)
    assert not (tmp_path / "nowhere").exists()
    assert status.to_dict()["path"] == str(tmp_path / "nowhere")


def test_status_names_the_oldest_run(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=1)
    before = datetime.now(UTC)
    spool.append([run(1)])
    spool.append([run(2)])
    status = spool.status()
    assert status.oldest is not None and before <= status.oldest <= datetime.now(UTC)
    assert status.oldest - before < timedelta(seconds=5)
    assert "2 run(s) waiting" in status.lines()[0]


def test_settings_choose_the_spool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from apex_metrics.settings import get_settings

    assert Spool().path == default_spool_dir()
    assert str(default_spool_dir()).startswith(os.environ["XDG_STATE_HOME"])
    monkeypatch.setenv("APEX_SPOOL_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("APEX_SPOOL_MAX_BYTES", "1234")
    get_settings.cache_clear()
    spool = Spool()
    assert (spool.path, spool.max_bytes) == (tmp_path / "s", 1234)


def test_problems_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.problems")
    problems = ProblemLog(logger, interval=3600)
    with caplog.at_level(logging.WARNING, logger="test.problems"):
        for _ in range(5):
            problems.report("db", logging.WARNING, "database away")
        assert [r.getMessage() for r in caplog.records] == ["database away"]
        assert problems.clear("db") and not problems.clear("db")
        problems.report("db", logging.WARNING, "database away")
        problems.report("db", logging.WARNING, "database away", interval=0)
    assert [r.getMessage() for r in caplog.records] == ["database away"] * 3


# ------------------------------------------------------------------------------------------------
# A recorder with no database at all (no APEX_DATABASE_URL): runs go to the spool, nothing raises.


async def test_recorder_without_a_database_spools(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Recorder(spool=tmp_path) as rec:
        result = await rec.record({"campaign_id": "c", "run_id": "r-1"})
        bulk = await rec.record_many([{"campaign_id": "c", "run_id": "r-2"}])
        invalid = await rec.record({"campaign_id": "c", "run_id": "bad/id"})
        with pytest.raises(KeyError):
            async with rec.track("c", "r-3") as tracked:
                tracked.call(latency_ms=5)
                raise KeyError("agent")
    assert (result.status, result.id) == ("spooled", None)
    assert (bulk.spooled, invalid.status) == (1, "rejected")
    assert [m.run_id for m in spooled_runs(Spool(tmp_path))] == ["r-1", "r-2", "r-3"]
    assert rec.stats.spooled == 3 and rec.stats.rejected == 1
    text = caplog.text
    assert text.count("APEX_DATABASE_URL is not set") == 1 and "bad/id" not in text.split("\n")[0]


def test_sync_recorder_not_open_spools_from_the_calling_thread(tmp_path: Path) -> None:
    rec = SyncRecorder(spool=tmp_path)
    assert rec.record({"campaign_id": "c", "run_id": "r-1"}).status == "spooled"
    with pytest.raises(ZeroDivisionError):
        with rec.track("c", "r-2") as tracked:
            tracked.call(tokens_in=1)
            1 / 0  # noqa: B018
    assert [(m.run_id, m.agents_total) for m in spooled_runs(Spool(tmp_path))] == [
        ("r-1", None),
        ("r-2", 2),
    ]
    assert not (tmp_path / REJECTED).exists()
