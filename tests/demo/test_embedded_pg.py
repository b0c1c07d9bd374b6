from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from apex_metrics.ops.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "zombie" not in state


@pytest.fixture
def base_dir() -> Iterator[Path]:
    # Under /var/tmp: as root the server runs as a system account that must reach the folder.
    path = Path("/var/tmp") / f"apex-embedded-test-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_server_starts_serves_and_stops(base_dir: Path) -> None:
    notices: list[str] = []
    pg = EmbeddedPostgres(base_dir, announce=notices.append)
    with pg:
        with psycopg.connect(pg.url, connect_timeout=5) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        pid = int((pg.pgdata / "postmaster.pid").read_text().splitlines()[0])
        assert _alive(pid)
    assert not _alive(pid)  # stopped: no process left behind
    if os.geteuid() == 0:
        assert (base_dir / "pginstall" / "bin" / "pg_ctl").exists()
    # A second start reuses the data folder.
    with EmbeddedPostgres(base_dir, announce=notices.append) as again:
        with psycopg.connect(again.url, connect_timeout=5) as conn:
            assert conn.execute("select current_user").fetchone() == ("postgres",)


def test_system_account_is_only_used_with_permission(base_dir: Path) -> None:
    pg = EmbeddedPostgres(base_dir, allow_system_user=False)
    if os.geteuid() == 0:
        with pytest.raises(EmbeddedPostgresError, match="refuses to run as root"):
            pg.start()
        assert not (base_dir / "pgdata").exists()  # nothing written
    else:
        with pg:  # an ordinary user needs no system account
            assert pg.port > 0
