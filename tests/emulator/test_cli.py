"""``apex-metrics emulator`` as users run it, and storage that survives a restart."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from apex_metrics.emulator import CostModel, EmulatorConfig, ServiceLimits
from apex_metrics.testing import RunningEmulator, free_port, running_emulator
from tests.emulator.conftest import SET, api_client, create_metrics_table


@contextmanager
def cli_emulator(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[dict[str, str], subprocess.Popen[str]]]:
    command = [sys.executable, "-m", "apex_metrics", "emulator", *args]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        info = json.loads(line) if line.startswith("{") else {"line": line}
        deadline = time.monotonic() + 15
        while "url" in info:
            try:
                httpx.get(f"{info['url']}/_emulator/stats", timeout=1, verify=False)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.05)
        yield info, process
    finally:
        process.terminate()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_cli_prints_the_urls_and_serves(tmp_path: Path) -> None:
    port = free_port()
    env = {"APEX_CLIENT_ID": "cli-client", "APEX_CLIENT_SECRET": "cli-secret-value"}
    with cli_emulator("--port", str(port), "--json", "--tenant-id", "t1", env=env) as (info, _):
        url = f"http://127.0.0.1:{port}"
        assert info["APEX_DATAVERSE_URL"] == url
        assert info["APEX_AUTHORITY_HOST"] == url
        assert info["APEX_CLIENT_ID"] == "cli-client"
        assert "cli-secret-value" not in json.dumps(info)
        emu = RunningEmulator(url, None, EmulatorConfig("t1", "cli-client", "cli-secret-value"))
        with api_client(emu) as client:
            assert client.get("WhoAmI").status_code == 200


def test_cli_text_output_never_shows_the_secret() -> None:
    port = free_port()
    env = {"APEX_CLIENT_SECRET": "very-secret-value"}
    with cli_emulator("--port", str(port), env=env) as (_, process):
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(8)]  # after the first
    text = "".join(lines)
    assert f"APEX_DATAVERSE_URL=http://127.0.0.1:{port}" in text
    assert f"APEX_AUTHORITY_HOST=http://127.0.0.1:{port}" in text
    assert "very-secret-value" not in text
    assert lines[-1].startswith("Costs: dataverse profile (Dataverse's modeled server time")
    assert "; 2 web servers, " in lines[-1]
    assert lines[-1].rstrip().endswith("parallelism hint (x-ms-dop-hint) 8")


def test_cli_tls_prints_the_ca_file() -> None:
    port = free_port()
    with cli_emulator("--port", str(port), "--tls", "--json") as (info, _):
        ca_file = info["APEX_CA_BUNDLE"]
        assert Path(ca_file).is_file()
        response = httpx.get(
            f"https://127.0.0.1:{port}/_emulator/stats",
            verify=ssl.create_default_context(cafile=ca_file),
            timeout=10,
        )
        assert response.status_code == 200


def test_cli_port_in_use_is_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "apex_metrics", "emulator", "--port", str(port)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"error: port {port} on 127.0.0.1 is already in use (pick another with --port)"
    )
    assert "Traceback" not in result.stderr


def test_sqlite_file_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "emulator.db"
    config = EmulatorConfig(key_activation_delay_seconds=0, db_path=db, costs=CostModel.free())
    with running_emulator(config) as emu, api_client(emu) as client:
        create_metrics_table(client)
        client.patch(f"{SET}(apex_runid='kept')", json={"apex_tokensin": 42})
    with running_emulator(config) as emu, api_client(emu) as again:
        row = again.get(f"{SET}(apex_runid='kept')")
        assert row.status_code == 200
        assert row.json()["apex_tokensin"] == 42
        again.patch(f"{SET}(apex_runid='next')", json={})
        versions = [r["versionnumber"] for r in again.get(SET).json()["value"]]
        assert len(set(versions)) == 2  # the version counter went on from where it was
        keys = again.get("EntityDefinitions(LogicalName='apex_campaignmetrics')/Keys").json()
        assert keys["value"][0]["EntityKeyIndexStatus"] == "Active"


def test_cli_fault_flags() -> None:
    port = free_port()
    args = ("--port", str(port), "--json", "--fail-503", "1", "--requests-per-window", "5")
    with cli_emulator(*args) as (info, _):
        emu = RunningEmulator(info["url"], None, EmulatorConfig())
        with api_client(emu) as client:
            answer = client.get("WhoAmI")
            assert answer.status_code == 503
            faults = httpx.get(f"{info['url']}/_emulator/faults", timeout=10).json()
            assert faults["error_503_rate"] == 1.0
            httpx.put(f"{info['url']}/_emulator/faults", json={}, timeout=10)
            statuses = [client.get("WhoAmI").status_code for _ in range(6)]
            assert statuses == [200] * 5 + [429]


def test_cli_cost_and_limit_flags() -> None:
    args = (
        "--port", str(free_port()), "--json", "--cost-profile", "free", "--cost-request-ms", "1",
        "--cost-write-ms", "2", "--cost-multiple-row-ms", "3", "--cost-retrieve-ms", "4",
        "--window-s", "6", "--requests-per-window", "7", "--execution-time-per-window-s", "20",
        "--concurrent-requests", "9", "--web-servers", "3",
    )  # fmt: skip
    with cli_emulator(*args) as (info, _):
        assert (info["cost_profile"], info["web_servers"], info["dop_hint"]) == ("free", 3, 10)
        stats = httpx.get(f"{info['url']}/_emulator/stats", timeout=10).json()
        assert stats["costs"] == {
            "profile": "free", "request_ms": 1.0, "write_ms": 2.0, "multiple_row_ms": 3.0,
            "retrieve_ms": 4.0,
        }  # fmt: skip
        assert stats["limits"] | {"penalty_seconds": 0, "max_retry_after": 0} == {
            "requests_per_window": 7, "window_seconds": 6.0,
            "execution_seconds_per_window": 20.0, "concurrent_requests": 9, "web_servers": 3,
            "dop_hint": 10, "penalty_seconds": 0, "max_retry_after": 0,
        }  # fmt: skip
        assert len(stats["web_servers"]) == 3
        emu = RunningEmulator(info["url"], None, EmulatorConfig())
        with api_client(emu) as client:
            assert client.get("WhoAmI").headers["x-ms-dop-hint"] == "10"


def test_cli_defaults_are_the_models_defaults() -> None:
    """The emulator command's defaults are CostModel's and ServiceLimits' (no second source)."""
    import typer.main

    from apex_metrics.ops.cli import app

    group = typer.main.get_command(app)
    command = group.commands["emulator"]  # type: ignore[attr-defined]
    defaults = {p.name: p.default for p in command.params}
    model, limits = CostModel(), ServiceLimits()
    assert defaults["cost_profile"] == model.profile
    assert defaults["cost_request_ms"] == model.request_ms
    assert defaults["cost_write_ms"] == model.write_ms
    assert defaults["cost_multiple_row_ms"] == model.multiple_row_ms
    assert defaults["cost_retrieve_ms"] == model.retrieve_ms
    assert defaults["window_s"] == limits.window_seconds
    assert defaults["requests_per_window"] == limits.requests_per_window
    assert defaults["execution_time_per_window_s"] == limits.execution_seconds_per_window
    assert defaults["concurrent_requests"] == limits.concurrent_requests
    assert defaults["web_servers"] == limits.web_servers


def test_cli_rejects_an_unknown_cost_profile() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apex_metrics", "emulator", "--cost-profile", "cheap"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--cost-profile" in result.stderr and "must be dataverse or free" in result.stderr
