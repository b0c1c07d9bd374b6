"""``apex-metrics collect``: OTLP/HTTP traces in, runs out (the collect extra)."""

from __future__ import annotations

from typing import Annotated

from apex_metrics.ops.options import DatabaseUrlOption, setting_option, settings_with
from apex_metrics.ops.output import console
from apex_metrics.ops.serving import serve_or_fail
from apex_metrics.ports import check_port


def collect_command(
    host: Annotated[
        str | None,
        setting_option(
            "collect_host",
            "--host",
            help="Address to bind; off loopback APEX_INGEST_TOKEN is required [default: "
            "127.0.0.1].",
        ),
    ] = None,
    port: Annotated[
        int | None,
        setting_option(
            "collect_port",
            "--port",
            min=1,
            max=65535,
            help="Port [default: 4318, OTLP/HTTP's].",
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    idle_seconds: Annotated[
        float | None,
        setting_option(
            "collect_idle_seconds",
            "--idle-seconds",
            min=0.01,
            help="Finalise a trace after this long without a new span [default: 30].",
        ),
    ] = None,
    max_spans: Annotated[
        int | None,
        setting_option(
            "collect_max_spans",
            "--max-spans",
            min=1,
            help="Most span ids held in memory [default: 1000000].",
        ),
    ] = None,
    max_traces: Annotated[
        int | None,
        setting_option(
            "collect_max_traces",
            "--max-traces",
            min=1,
            help="Most traces held in memory [default: 100000].",
        ),
    ] = None,
) -> None:
    """Receive OpenTelemetry traces over OTLP/HTTP (POST /v1/traces, protobuf or JSON, gzip)
    and record each trace as one run in PostgreSQL (mapping: docs/ingest.md). Exporters point
    OTEL_EXPORTER_OTLP_ENDPOINT at http://HOST:PORT; with APEX_INGEST_TOKEN set they must send
    Authorization: Bearer <token>. GET /metrics serves Prometheus counters. Needs the collect
    extra: pip install 'apex-metrics[collect]'."""
    import asyncio
    import dataclasses

    # without the collect extra, main() names it (apex_metrics/extras.py)
    from apex_metrics.collect.app import CollectConfig
    from apex_metrics.collect.serve import check_bind, serve
    from apex_metrics.collect.store import Limits

    settings = settings_with(
        database_url=database_url, collect_host=host, collect_port=port,
        collect_idle_seconds=idle_seconds, collect_max_spans=max_spans,
        collect_max_traces=max_traces,
    )  # fmt: skip
    host, port = settings.collect_host, settings.collect_port
    limits = dataclasses.replace(
        Limits(),
        idle_seconds=settings.collect_idle_seconds,
        max_spans=settings.collect_max_spans,
        max_traces=settings.collect_max_traces,
    )
    config = CollectConfig(
        database_url=settings.require("database_url"), host=host, port=port,
        token=settings.ingest_token, limits=limits,
    )  # fmt: skip
    check_bind(host, config.token)
    check_port(host, port)
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"collect: OTLP/HTTP on http://{shown}:{port}/v1/traces (protobuf, JSON, gzip); "
        f"token {'required' if config.token else 'not required (loopback)'}; "
        f"metrics on /metrics",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
    serve_or_fail(lambda: asyncio.run(serve(config)), host, port)
