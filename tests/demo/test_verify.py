"""Each `verify` gate shown failing for its cause, then passing once the cause is fixed.

Real PostgreSQL, the emulator over HTTP, the panel served by uvicorn, the sync engine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import uvicorn

from apex_metrics import db, metric
from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.dataverse.errors import DataverseError
from apex_metrics.dataverse.provision import provision
from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.ops.traffic import TrafficGenerator
from apex_metrics.ops.verify import Gate, VerifyOptions, run_verify
from apex_metrics.panel.app import PanelConfig, create_app
from apex_metrics.recorder import Recorder
from apex_metrics.settings import Settings
from apex_metrics.sync.commands import engine_config, run_sync
from apex_metrics.testing import RunningEmulator, free_port, running_emulator


def settings_for(database_url: str, emu: RunningEmulator, **values: object) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=database_url, dataverse_url=emu.url, **values
    )


def gate(gates: list[Gate], name: str) -> Gate:
    return next(g for g in gates if g.name == name)


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator(
        EmulatorConfig(costs=CostModel.free(), key_activation_delay_seconds=0)
    ) as emu:
        yield emu


async def _provision(settings: Settings) -> None:
    async with open_dataverse(settings) as client:
        report = await provision(client, poll_interval=0.1)
        assert report.ok


async def _record(url: str, n: int, seed: int = 1) -> list[metric.Metric]:
    gen = TrafficGenerator(seed)
    runs = [gen.run() for _ in range(n)]
    async with Recorder(url) as rec:
        await rec.record_many(runs)
    return runs


async def _sync_once(settings: Settings) -> None:
    config = engine_config(settings, workers=1, once=True)
    await run_sync(settings, config, handle_signals=False)


async def test_postgres_gate(empty_database_url: str, emulator: RunningEmulator) -> None:
    settings = settings_for(empty_database_url, emulator)
    g = gate(await run_verify(settings, VerifyOptions()), "postgres")
    assert not g.ok and "missing table campaign_metrics" in g.figure
    assert g.hint == "run `apex-metrics db migrate`"
    await db.migrate(empty_database_url)
    g = gate(await run_verify(settings, VerifyOptions()), "postgres")
    assert g.ok and "3/3 indexes" in g.figure


async def test_token_gate(database_url: str, emulator: RunningEmulator) -> None:
    wrong = settings_for(database_url, emulator, client_secret="not-the-secret")
    g = gate(await run_verify(wrong, VerifyOptions()), "token")
    assert not g.ok and "AADSTS7000215" in g.figure
    right = settings_for(database_url, emulator)
    g = gate(await run_verify(right, VerifyOptions()), "token")
    assert g.ok and "token acquired" in g.figure


async def test_contract_key_and_flags_gates(database_url: str) -> None:
    with running_emulator(
        EmulatorConfig(costs=CostModel.free(), key_activation_delay_seconds=1.5)
    ) as emu:
        settings = settings_for(database_url, emu)
        gates = await run_verify(settings, VerifyOptions())
        for name in ("contract", "key", "flags"):
            assert not gate(gates, name).ok, name
        assert "create table apex_campaignmetrics" in gate(gates, "contract").figure.lower()
        async with open_dataverse(settings) as client:
            with pytest.raises(DataverseError, match="still Pending"):
                await provision(client, key_timeout=0.2, poll_interval=0.05)
        gates = await run_verify(settings, VerifyOptions())
        assert gate(gates, "contract").ok and gate(gates, "flags").ok
        assert not gate(gates, "key").ok and "Pending" in gate(gates, "key").figure
        await asyncio.sleep(1.6)
        assert gate(await run_verify(settings, VerifyOptions()), "key").ok
        # Flags switched off in the environment (change tracking cannot be, once on).
        async with open_dataverse(settings) as client:
            path = f"EntityDefinitions(LogicalName='{metric.TABLE_LOGICAL_NAME}')"
            definition = await client.get_json(path)
            definition["IsAuditEnabled"] = {"Value": False}
            definition["IsDuplicateDetectionEnabled"] = {"Value": False}
            await client.request("PUT", path, json_body=definition)
        g = gate(await run_verify(settings, VerifyOptions()), "flags")
        assert not g.ok and "auditing" in g.figure and "duplicate detection" in g.figure
        await _provision(settings)
        assert gate(await run_verify(settings, VerifyOptions()), "flags").ok
        # The double-prefix mistake is named.
        async with open_dataverse(settings) as client:
            await client.request(
                "POST",
                f"EntityDefinitions(LogicalName='{metric.TABLE_LOGICAL_NAME}')/Attributes",
                json_body={
                    "@odata.type": "Microsoft.Dynamics.CRM.IntegerAttributeMetadata",
                    "SchemaName": "apex_apex_TokensIn",
                    "DisplayName": {"LocalizedLabels": [{"Label": "x", "LanguageCode": 1033}]},
                    "RequiredLevel": {"Value": "None"},
                },
            )
        g = gate(await run_verify(settings, VerifyOptions()), "contract")
        assert not g.ok and "apex_apex_tokensin" in g.figure.lower()


async def test_backlog_gate(database_url: str, emulator: RunningEmulator) -> None:
    settings = settings_for(database_url, emulator)
    await _provision(settings)
    await _record(database_url, 3)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("UPDATE campaign_metrics SET updated_at = now() - interval '10 min'")
        await conn.commit()
    g = gate(await run_verify(settings, VerifyOptions(backlog_threshold=300)), "backlog")
    assert not g.ok and "3 pending" in g.figure and "threshold 300 s" in g.figure
    await _sync_once(settings)
    g = gate(await run_verify(settings, VerifyOptions(backlog_threshold=300)), "backlog")
    assert g.ok and g.figure.startswith("0 pending")


async def test_reconcile_gate(database_url: str, emulator: RunningEmulator) -> None:
    settings = settings_for(database_url, emulator)
    await _provision(settings)
    runs = await _record(database_url, 20)
    await _sync_once(settings)
    assert gate(await run_verify(settings, VerifyOptions()), "reconcile").ok
    key = {metric.ALTERNATE_KEY_COLUMN: runs[0].run_id}
    async with open_dataverse(settings) as client:
        assert await client.delete(metric.ENTITY_SET, key)
    g = gate(await run_verify(settings, VerifyOptions()), "reconcile")
    assert not g.ok and "Dataverse holds 19" in g.figure
    # A changed value on the Dataverse side is caught by the sample.
    async with open_dataverse(settings) as client:
        await client.upsert(metric.ENTITY_SET, key, runs[0].to_dataverse())
        await client.upsert(
            metric.ENTITY_SET, {metric.ALTERNATE_KEY_COLUMN: runs[1].run_id}, {"apex_tokensin": 1}
        )
    g = gate(await run_verify(settings, VerifyOptions(sample=50)), "reconcile")
    assert not g.ok and "1 of 20 sampled rows differ" in g.figure
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("UPDATE campaign_metrics SET version = version + 1")
        await conn.commit()
    await _sync_once(settings)
    g = gate(await run_verify(settings, VerifyOptions(sample=50)), "reconcile")
    assert g.ok and "20 rows on both sides" in g.figure
    # A row Dataverse holds and PostgreSQL does not: the advice is the command that removes it.
    async with open_dataverse(settings) as client:
        ghost = {metric.ALTERNATE_KEY_COLUMN: "ghost-run"}
        await client.upsert(metric.ENTITY_SET, ghost, {**runs[2].to_dataverse(), **ghost})
    g = gate(await run_verify(settings, VerifyOptions()), "reconcile")
    assert not g.ok and "1 extra row(s)" in g.figure
    assert g.hint and "reconcile --repair --delete-extra" in g.hint


class _Panel:
    def __init__(self, database_url: str) -> None:
        self.port = free_port()
        config = PanelConfig(source="postgres", database_url=database_url, port=self.port)
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(config), port=self.port, log_level="warning")
        )
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Panel:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


async def test_panel_gate(database_url: str, emulator: RunningEmulator) -> None:
    settings = settings_for(database_url, emulator)
    port = free_port()
    options = VerifyOptions(panel_url=f"http://127.0.0.1:{port}")
    g = gate(await run_verify(settings, options), "panel")
    assert not g.ok and "does not answer" in g.figure
    await _provision(settings)
    await _record(database_url, 2)
    await _sync_once(settings)
    with _Panel(database_url) as panel:
        options = VerifyOptions(panel_url=f"http://127.0.0.1:{panel.port}")
        g = gate(await run_verify(settings, options), "panel")
    assert g.ok and "answers" in g.figure


def test_secrets_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from apex_metrics.ops.verify import _Failed, check_secrets

    monkeypatch.chdir(tmp_path)
    secret = "s3cr3t-value-for-the-test"
    (tmp_path / ".env").write_text(f"APEX_CLIENT_SECRET={secret}\n")
    settings = Settings()  # type: ignore[call-arg]
    options = VerifyOptions(project_dir=tmp_path)
    with pytest.raises(_Failed, match=r"APEX_CLIENT_SECRET is in \.env"):
        check_secrets(settings, options)
    (tmp_path / ".env").unlink()
    local = tmp_path / ".env.local"
    local.write_text(f"APEX_CLIENT_SECRET={secret}\n")
    local.chmod(0o644)
    settings = Settings()  # type: ignore[call-arg]
    with pytest.raises(_Failed, match=r"\.env\.local has mode 0o644"):
        check_secrets(settings, options)
    local.chmod(0o600)
    assert "APEX_CLIENT_SECRET from .env.local" in check_secrets(settings, options)
    # Leaked into a tracked file, or into a log.
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "notes.txt").write_text(f"the secret is {secret}\n")
    subprocess.run([*git, "add", "notes.txt"], check=True)
    with pytest.raises(_Failed, match=r"tracked file notes\.txt"):
        check_secrets(settings, options)
    subprocess.run([*git, "rm", "-q", "--cached", "notes.txt"], check=True)
    log = tmp_path / "sync.log"
    log.write_text(f"token request with {secret}\n")
    with pytest.raises(_Failed, match="appears in the log"):
        check_secrets(settings, VerifyOptions(project_dir=tmp_path, log_files=[log]))
    log.write_text("clean\n")
    figure = check_secrets(settings, VerifyOptions(project_dir=tmp_path, log_files=[log]))
    assert "1 log(s) clean" in figure
    assert os.environ.get("APEX_CLIENT_SECRET") is None


async def test_sync_gate(database_url: str, emulator: RunningEmulator) -> None:
    settings = settings_for(database_url, emulator, sync_poll_interval=0.2)
    await _provision(settings)
    g = gate(await run_verify(settings, VerifyOptions()), "sync")
    assert not g.ok and "last: never" in g.figure
    await _record(database_url, 3)
    config = engine_config(settings, workers=1, once=False)
    engine = asyncio.create_task(run_sync(settings, config, handle_signals=False))
    try:
        for _ in range(100):  # wait for the first heartbeat and delivery
            g = gate(await run_verify(settings, VerifyOptions()), "sync")
            if g.ok:
                break
            await asyncio.sleep(0.1)
        assert g.ok and "1 process(es)" in g.figure and "runs succeeded" in g.figure
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await conn.execute(
                "INSERT INTO sync_runs (worker, ended_at, error) VALUES ('w', now(), 'boom')"
            )
            await conn.commit()
        g = gate(await run_verify(settings, VerifyOptions()), "sync")
        assert not g.ok and "sync runs failed" in g.figure
    finally:
        engine.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await engine
    g = gate(await run_verify(settings, VerifyOptions()), "sync")
    assert not g.ok  # a stopped engine leaves no heartbeat
