"""An embedded PostgreSQL for the demo, from the server binaries bundled in the ``pgserver`` wheel.

We use only pgserver's bundled binaries (``initdb``, ``pg_ctl``, ``postgres``), not its
``PostgresServer`` class: run as root, that class silently creates a login user and adds
group/other read+execute permissions to every parent folder of the data directory, up to ``/``.

What this module does instead:

* As an ordinary user: the data folder lives under the demo's own folder and the server runs as
  that user. Nothing else is touched.
* As root (PostgreSQL refuses to run as root): it needs an unprivileged system account. It says
  so before doing anything, creates (once) the system account ``apex-metrics-pg`` with no login
  shell and no home, copies the server binaries into the demo's folder (so no folder outside it
  needs its permissions changed), and gives that account the data folder only. ``allow_system_user
  =False`` refuses instead, with the reason.

The server listens on 127.0.0.1 on a free port, with trust authentication, and is stopped with
``pg_ctl stop -m fast`` by :meth:`EmbeddedPostgres.stop` (also on context-manager exit).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from apex_metrics.exceptions import ApexMetricsError
from apex_metrics.ports import free_port

SYSTEM_USER = "apex-metrics-pg"


class EmbeddedPostgresError(ApexMetricsError):
    """The embedded PostgreSQL could not be started."""


def _bundled_install() -> Path:
    """The wheel's ``pginstall/`` folder, found without importing pgserver (its import has side
    effects: runtime folders, lock files)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the pgserver package is not installed", hint="pip install pgserver"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (root / "bin" / "pg_ctl").exists():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries in {root}")
    return root


def _bundled_libs(install: Path) -> Path:
    """The shared libraries the wheel's binaries load (``$ORIGIN/../../../pgserver.libs``)."""
    return install.parent.parent / "pgserver.libs"


class EmbeddedPostgres:
    """A private PostgreSQL server in ``base_dir`` (``pgdata/``, ``run/``, ``server.log``)."""

    def __init__(
        self,
        base_dir: Path,
        *,
        allow_system_user: bool = True,
        announce: Callable[[str], None] = print,
    ) -> None:
        self.base_dir = base_dir
        self.allow_system_user = allow_system_user
        self.announce = announce
        self.port = 0
        self._user: str | None = None
        self._bin: Path | None = None
        self._libs: Path | None = None
        self._started = False

    @property
    def pgdata(self) -> Path:
        return self.base_dir / "pgdata"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        """Initialise the data folder if needed, start the server, return its URL."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        install = _bundled_install()
        self._libs = _bundled_libs(install)
        if os.geteuid() == 0:
            install = self._prepare_for_root(install)
            self._libs = install / "pgserver.libs"
        self._bin = install / "bin"
        run_dir = self.base_dir / "run"
        run_dir.mkdir(exist_ok=True)
        self._give(run_dir)
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            self._give(self.pgdata)
            self._run(
                "initdb",
                ["-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8"],
            )
        self.port = free_port()
        log = self.base_dir / "server.log"
        log.touch()
        self._give(log)
        options = f"-h 127.0.0.1 -p {self.port} -k {run_dir}"
        self._run(
            "pg_ctl",
            ["-D", str(self.pgdata), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
        )
        self._started = True
        return self.url

    def stop(self) -> None:
        """Stop the server (fast shutdown) if this object started it."""
        if not self._started:
            return
        self._started = False
        self._run("pg_ctl", ["-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60", "stop"])

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------------

    def _prepare_for_root(self, install: Path) -> Path:
        if not self.allow_system_user:
            raise EmbeddedPostgresError(
                "PostgreSQL refuses to run as root, and creating the system account "
                f"'{SYSTEM_USER}' was not allowed",
                hint="run as an ordinary user, set APEX_DATABASE_URL, or allow the system account",
            )
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            self.announce(
                f"notice: running as root; PostgreSQL must run as an unprivileged account, so "
                f"creating the system account '{SYSTEM_USER}' (no login shell, no home)"
            )
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 SYSTEM_USER],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
        self._user = SYSTEM_USER
        blocked = [p for p in self.base_dir.resolve().parents if not p.stat().st_mode & 0o001]
        if blocked:
            raise EmbeddedPostgresError(
                f"the account '{SYSTEM_USER}' cannot reach {self.base_dir} ({blocked[0]} is "
                "not searchable by others); the demo changes no permissions outside its folder",
                hint="use a folder under a searchable path, e.g. --data-dir /var/tmp/apex-demo",
            )
        self.base_dir.chmod(0o755)
        local = self.base_dir / "pginstall"
        if not (local / "bin" / "pg_ctl").exists():
            self.announce(f"notice: copying the PostgreSQL server binaries into {local}")
            shutil.copytree(install, local, dirs_exist_ok=True)
            shutil.copytree(_bundled_libs(install), local / "pgserver.libs", dirs_exist_ok=True)
            for path in [local, *local.rglob("*")]:
                if path.is_dir():
                    path.chmod(0o755)
        return local

    def _give(self, path: Path) -> None:
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, exe: str, args: list[str]) -> None:
        assert self._bin is not None
        env = dict(os.environ)
        if self._libs is not None:
            env["LD_LIBRARY_PATH"] = str(self._libs)
        try:
            subprocess.run(
                [str(self._bin / exe), *args],
                check=True,
                capture_output=True,
                text=True,
                user=self._user,
                timeout=120,
                cwd=self.base_dir,
                env=env,
            )
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.stdout or "").strip().splitlines()
            last = detail[-1] if detail else f"exit status {exc.returncode}"
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL {exe} failed: {last}",
                hint=f"see {self.base_dir / 'server.log'}",
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(f"embedded PostgreSQL {exe} timed out") from exc
