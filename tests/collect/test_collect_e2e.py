"""The installed ``apex-metrics collect`` in a subprocess, fed by the SDK's OTLP/HTTP exporter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from .conftest import free_port, runs, sdk_campaign

CLI = [str(Path(sys.executable).with_name("apex-metrics"))]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("APEX_")}
    return {**base, **extra}


def test_collect_subprocess_writes_runs_and_flushes_on_sigint(database_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "collect", "--port", str(port), "--idle-seconds", "600"],
        env=env(APEX_DATABASE_URL=database_url, APEX_INGEST_TOKEN="tok"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.1)
        sdk = OTLPSpanExporter(
            endpoint=f"http://127.0.0.1:{port}/v1/traces", headers={"Authorization": "Bearer tok"}
        )
        named = sdk_campaign(calls=3, run_id="e2e-1")
        assert sdk.export(named) is SpanExportResult.SUCCESS
        assert runs(database_url)["e2e-1"]["tokens_in"] == 303
        orphans = [s for s in sdk_campaign(calls=2) if s.parent is not None]  # root never sent
        assert sdk.export(orphans) is SpanExportResult.SUCCESS
        assert len(runs(database_url)) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "/v1/traces" in out
    written = runs(database_url)
    assert len(written) == 2  # the unsettled trace was written at shutdown, under its trace id
    assert any(len(r) == 32 and row["tokens_in"] == 201 for r, row in written.items())


def test_refuses_non_loopback_without_token() -> None:
    done = subprocess.run(
        [*CLI, "collect", "--host", "0.0.0.0"],
        env=env(APEX_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "refusing to accept traces on 0.0.0.0 without APEX_INGEST_TOKEN" in done.stderr


def test_help_names_the_settings() -> None:
    done = subprocess.run(
        [*CLI, "collect", "--help"], env=env(COLUMNS="200"), capture_output=True, text=True
    )
    assert done.returncode == 0
    for text in ("APEX_INGEST_TOKEN", "APEX_COLLECT_IDLE_SECONDS", "/v1/traces", "--port"):
        assert text in done.stdout
