"""Test helpers shipped with the package: serve the Dataverse emulator on a free loopback port.

    with running_emulator() as emu:
        httpx.get(f"{emu.url}/api/data/v9.2/WhoAmI", ...)

With ``tls=True`` it serves https with a certificate from a throw-away test CA (trustme) and
``emu.ca_file`` is the CA's PEM file, to give to clients (``verify=``, ``REQUESTS_CA_BUNDLE``).
``emulator_process`` runs ``apex-metrics emulator`` in a process of its own (benchmarks).
``free_port`` (``apex_metrics.ports``) and ``tls_files`` (``apex_metrics.emulator.serve``,
which ``emulator --tls`` uses) live with the code that needs them and are re-exported for tests.
The sync engine's fake sink is ``apex_metrics.sync.fakes``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from apex_metrics.emulator import CostModel, EmulatorConfig, create_app
from apex_metrics.emulator.serve import tls_files
from apex_metrics.ports import free_port

__all__ = ["RunningEmulator", "emulator_process", "free_port", "running_emulator", "tls_files"]

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A served emulator: ``url`` is the environment URL (no trailing slash)."""

    url: str
    ca_file: Path | None
    config: EmulatorConfig

    @property
    def api(self) -> str:
        """The Web API root, ``<url>/api/data/v9.2``."""
        return f"{self.url}/api/data/v9.2"

    @property
    def token_url(self) -> str:
        return f"{self.url}/{self.config.tenant_id}/oauth2/v2.0/token"


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the main thread keeps its own handlers
        pass


@contextmanager
def running_emulator(
    config: EmulatorConfig | None = None, *, tls: bool = False
) -> Iterator[RunningEmulator]:
    """Serve the emulator with uvicorn in a background thread until the block ends.

    Without ``config``, under the ``free`` cost profile: requests take only the time the
    emulator spends on them, so tests that do not look at costs run fast. Pass a config with
    ``costs=CostModel()`` to be charged Dataverse's modeled time."""
    config = config or EmulatorConfig(costs=CostModel.free())
    host, port = "127.0.0.1", free_port()
    with tempfile.TemporaryDirectory(prefix="apex-emulator-") as tmp:
        ssl: dict[str, str] = {}
        ca_file = None
        if tls:
            ca_file, cert_file, key_file = tls_files(Path(tmp), host)
            ssl = {"ssl_certfile": str(cert_file), "ssl_keyfile": str(key_file)}
        uv_config = uvicorn.Config(
            create_app(config), host=host, port=port, log_level="warning", lifespan="on",
            access_log=False, **ssl,  # type: ignore[arg-type]
        )  # fmt: skip
        server = _Server(uv_config)
        thread = threading.Thread(target=server.run, name=f"emulator-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise RuntimeError(f"the emulator did not start on {host}:{port}")
            time.sleep(0.02)
        scheme = "https" if tls else "http"
        try:
            yield RunningEmulator(f"{scheme}://{host}:{port}", ca_file, config)
        finally:
            server.should_exit = True
            thread.join(_GRACE)
            if thread.is_alive():  # idle keep-alive (TLS) connections can hold a graceful stop
                server.force_exit = True
                thread.join(_STOP_TIMEOUT)


@contextmanager
def emulator_process(*options: str) -> Iterator[tuple[RunningEmulator, int]]:
    """``apex-metrics emulator OPTIONS`` in its own process (its own core and GIL) on a free
    port, keys Active at once; yields the served emulator and the process id (benchmarks
    read its CPU time). Terminated when the block ends."""
    command = [sys.executable, "-m", "apex_metrics", "emulator", "--port", str(free_port())]
    command += ["--key-activation-delay", "0", "--json", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        deadline = time.monotonic() + _START_TIMEOUT
        while True:  # the URL is announced just before uvicorn binds
            try:
                httpx.get(f"{info['url']}/_emulator/stats", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield RunningEmulator(info["url"], None, EmulatorConfig()), process.pid
    finally:
        process.terminate()
        process.wait(_STOP_TIMEOUT)
