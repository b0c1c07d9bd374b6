"""Helpers of the collect tests: protobuf spans by hand (unit tests), spans from the real
OpenTelemetry SDK, the collector under uvicorn in a thread, and the runs it wrote."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status as SdkStatus
from opentelemetry.trace import StatusCode
from pydantic import SecretStr

from apex_metrics.collect.app import CollectConfig, create_app
from apex_metrics.collect.store import Limits

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns
MS = 1_000_000
TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(any_value(v) for v in value)
        return out
    return AnyValue(string_value=str(value))


def pb_span(
    n: int,
    *,
    trace_id: bytes = TRACE,
    parent: int | None = None,
    start_ms: int = 0,
    duration_ms: int = 100,
    error: bool = False,
    **attrs: Any,
) -> Span:
    """Span number ``n`` (span id n) of a trace; attribute names use __ for dots."""
    span = Span(
        trace_id=trace_id,
        span_id=n.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=f"span-{n}",
        start_time_unix_nano=T0 + start_ms * MS,
        end_time_unix_nano=T0 + (start_ms + duration_ms) * MS,
    )
    if error:
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR))
    for key, value in attrs.items():
        span.attributes.append(KeyValue(key=key.replace("__", "."), value=any_value(value)))
    return span


def chat(n: int, tokens_in: int, tokens_out: int, parent: int | None = 1, **kw: Any) -> Span:
    return pb_span(
        n,
        parent=parent,
        gen_ai__operation__name="chat",
        gen_ai__usage__input_tokens=tokens_in,
        gen_ai__usage__output_tokens=tokens_out,
        **kw,
    )


def export_request(
    spans: Sequence[Span], service: str = "spring", **resource: Any
) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=any_value(service)))
    for key, value in resource.items():
        rs.resource.attributes.append(KeyValue(key=key.replace("__", "."), value=any_value(value)))
    rs.scope_spans.add().spans.extend(spans)
    return request


def sdk_campaign(
    calls: int = 4, *, service: str = "spring", run_id: str | None = None, root_error: bool = False
) -> list[ReadableSpan]:
    """A finished trace made by the real SDK: an invoke_agent root with ``calls`` chat calls
    (call i: 100+i tokens in, 10+i out, (i+1)*100 ms, model gpt-4o by openai)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.collect")
    attrs: dict[str, Any] = {"gen_ai.operation.name": "invoke_agent", "apex.phase": "2-3"}
    if run_id:
        attrs["apex.run_id"] = run_id
    with tracer.start_as_current_span(
        "invoke_agent planner", attributes=attrs, start_time=T0
    ) as root:
        at = T0
        for i in range(calls):
            with tracer.start_as_current_span(
                "chat gpt-4o",
                start_time=at,
                end_on_exit=False,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.usage.input_tokens": 100 + i,
                    "gen_ai.usage.output_tokens": 10 + i,
                    # agents that repeat totals on their own span must not be counted twice
                },
            ) as span:
                span.set_attribute("apex.assets_generated", 1)
                span.end(end_time=at + (i + 1) * 100 * MS)
            at += (i + 1) * 100 * MS
        root.set_attribute("gen_ai.usage.input_tokens", 999_999)  # a repeated total
        if root_error:
            root.set_status(SdkStatus(StatusCode.ERROR, "boom"))
        root.end(end_time=at + MS)
    provider.shutdown()
    return list(memory.get_finished_spans())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    url: str
    endpoint: str
    database_url: str
    app: Any


@contextlib.contextmanager
def serve_collect(
    database_url: str, *, token: str | None = None, limits: Limits | None = None
) -> Iterator[Served]:
    port = free_port()
    config = CollectConfig(
        database_url=database_url,
        port=port,
        token=SecretStr(token) if token else None,
        limits=limits or Limits(),
    )
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"collect-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("collect did not start")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    try:
        yield Served(url, f"{url}/v1/traces", database_url, app)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive(), "collect did not stop"


def runs(database_url: str) -> dict[str, dict[str, Any]]:
    """Every run in campaign_metrics, by run id."""
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT campaign_id, run_id, phase, agents_total, agents_successful, "
            "assets_generated, tokens_in, tokens_out, cost_usd, latency_p95_ms, latency_avg_ms, "
            "success_rate, created_at, version FROM campaign_metrics"
        )
        names = [d.name for d in cur.description or ()]
        return {row[1]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def pg_p95_avg(database_url: str, durations_ms: Sequence[float]) -> tuple[int, int]:
    """PostgreSQL's own percentile_cont(0.95) and avg over the same durations, rounded."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT round(percentile_cont(0.95) WITHIN GROUP (ORDER BY d)::numeric), "
            "round(avg(d)) FROM unnest(%s::float8[]) AS d",
            (list(durations_ms),),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


ZERO = Decimal(0)


@pytest.fixture
def h() -> types.ModuleType:
    """This module's helpers, for the test modules."""
    return sys.modules[__name__]
