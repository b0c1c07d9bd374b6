"""``collect`` under uvicorn against real PostgreSQL, fed by the real OpenTelemetry SDK exporter,
raw OTLP/JSON over httpx, a real agent framework (Pydantic AI, offline), and bad input."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

from apex_metrics.collect.store import Limits

from .conftest import (
    MS,
    T0,
    TRACE,
    chat,
    export_request,
    pb_span,
    pg_p95_avg,
    runs,
    sdk_campaign,
    serve_collect,
)

PB = {"Content-Type": "application/x-protobuf"}


def exporter(endpoint: str, **kw: Any) -> OTLPSpanExporter:
    return OTLPSpanExporter(endpoint=endpoint, timeout=10, **kw)


def test_sdk_exporter_split_over_requests_children_first(database_url: str) -> None:
    spans = sdk_campaign(calls=6, run_id=None)
    root = next(s for s in spans if s.parent is None)
    children = [s for s in spans if s.parent is not None]
    with serve_collect(database_url) as served:
        sdk = exporter(served.endpoint, compression=Compression.Gzip)
        # children before parents, in three requests, one of them sent twice (a retry)
        assert sdk.export(children[3:]) is SpanExportResult.SUCCESS
        assert runs(database_url) == {}  # run id not settled until the root (or idle)
        assert sdk.export(children[:3]) is SpanExportResult.SUCCESS
        assert sdk.export(children[:3]) is SpanExportResult.SUCCESS
        assert sdk.export([root]) is SpanExportResult.SUCCESS
        written = runs(database_url)
        sdk.shutdown()
    trace_hex = f"{root.context.trace_id:032x}"
    run = written[trace_hex]
    durations = [(i + 1) * 100 for i in range(6)]
    p95, avg = pg_p95_avg(database_url, durations)
    assert run["campaign_id"] == "spring" and run["phase"] == "2-3"
    assert (run["agents_total"], run["agents_successful"]) == (1, 1)
    assert run["tokens_in"] == sum(100 + i for i in range(6))  # not the root's 999,999
    assert run["tokens_out"] == sum(10 + i for i in range(6))
    assert run["assets_generated"] == 6
    assert (run["latency_p95_ms"], run["latency_avg_ms"]) == (p95, avg)
    assert run["cost_usd"] > 0  # gpt-4o, priced by genai-prices
    assert run["success_rate"] == Decimal("100.00")
    assert int(run["created_at"].timestamp() * 1e9) == T0


def test_the_same_trace_in_any_order_ends_equal(database_url: str) -> None:
    spans = sdk_campaign(calls=5, run_id="run-fixed", root_error=True)
    with serve_collect(database_url) as served:
        sdk = exporter(served.endpoint)
        for span in reversed(spans):  # one span per request, root first this time
            assert sdk.export([span]) is SpanExportResult.SUCCESS
        first = runs(database_url)["run-fixed"]
        assert sdk.export(spans) is SpanExportResult.SUCCESS  # everything again
        again = runs(database_url)["run-fixed"]
    assert (first["agents_total"], first["agents_successful"]) == (1, 0)
    assert first["success_rate"] == Decimal("0.00")
    keys = [k for k in first if k != "version"]
    assert {k: first[k] for k in keys} == {k: again[k] for k in keys}


def test_batch_span_processor_end_to_end(database_url: str) -> None:
    with serve_collect(database_url) as served:
        provider = TracerProvider(resource=Resource.create({"service.name": "bsp"}))
        provider.add_span_processor(
            BatchSpanProcessor(exporter(served.endpoint), max_export_batch_size=7)
        )
        tracer = provider.get_tracer("t")
        for n in range(5):
            with tracer.start_as_current_span("agent", attributes={"apex.run_id": f"bsp-{n}"}):
                for _ in range(3):
                    with tracer.start_as_current_span(
                        "chat",
                        attributes={
                            "gen_ai.operation.name": "chat",
                            "gen_ai.usage.input_tokens": 10,
                            "gen_ai.usage.output_tokens": 1,
                            "apex.cost_usd": 0.001,
                        },
                    ):
                        pass
        provider.shutdown()  # flushes
        written = runs(database_url)
    assert sorted(written) == [f"bsp-{n}" for n in range(5)]
    assert {r["tokens_in"] for r in written.values()} == {30}
    assert {r["cost_usd"] for r in written.values()} == {Decimal("0.00300")}


def otlp_json(spans: list[Any], **resource: Any) -> dict[str, Any]:
    """The spec's OTLP/JSON of these spans: hex ids, integer enums, lowerCamelCase."""
    data = json_format.MessageToDict(export_request(spans, **resource))
    for rs in data["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = __import__("base64").b64decode(span[key]).hex()
                if "status" in span:
                    span["status"]["code"] = 2
                span["kind"] = 1
    return data


def test_json_with_hex_ids_and_gzip(database_url: str) -> None:
    spans = [
        pb_span(1, duration_ms=900, gen_ai__operation__name="invoke_agent", apex__run_id="json-1"),
        chat(2, 40, 4, apex__cost_usd=0.25),
        chat(3, 60, 6, apex__cost_usd="0.5", error=True),
    ]
    with serve_collect(database_url) as served, httpx.Client() as client:
        body = json.dumps(otlp_json(spans, apex__campaign_id="autumn")).encode()
        answer = client.post(
            served.endpoint,
            content=gzip.compress(body),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == {}
        run = runs(database_url)["json-1"]
    assert run["campaign_id"] == "autumn"
    assert (run["tokens_in"], run["tokens_out"], run["cost_usd"]) == (100, 10, Decimal("0.75"))
    assert (run["agents_total"], run["agents_successful"]) == (1, 1)  # model errors are calls


def test_partial_success_counts_rejected_spans(database_url: str) -> None:
    spans = [
        pb_span(1, gen_ai__operation__name="invoke_agent", apex__run_id="partial"),
        chat(2, 10, 1, apex__cost_usd=0.1),
        chat(3, -4, 1),
        chat(4, 10**12, 1),
        chat(5, 5, 5, gen_ai__request__model="test", gen_ai__provider__name="test"),
    ]
    with serve_collect(database_url) as served, httpx.Client() as client:
        answer = client.post(
            served.endpoint, content=export_request(spans).SerializeToString(), headers=PB
        )
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/x-protobuf"
        reply = ExportTraceServiceResponse.FromString(answer.content)
        metrics = client.get(f"{served.url}/metrics").text
        run = runs(database_url)["partial"]
    assert reply.partial_success.rejected_spans == 2
    message = reply.partial_success.error_message
    assert "gen_ai.usage.input_tokens must be ≥ 0 (got -4)" in message
    assert "must be ≤ 2147483647 (got 1000000000000)" in message
    assert "no price for model test (test)" in message
    assert 'apex_collect_unpriced_calls_total{model="test (test)"} 1.0' in metrics
    assert "apex_collect_spans_rejected_total 2.0" in metrics
    assert (run["tokens_in"], run["tokens_out"], run["cost_usd"]) == (15, 6, Decimal("0.10000"))


def status_of(answer: httpx.Response) -> str:
    if answer.headers["content-type"] == "application/json":
        return str(answer.json().get("message", ""))
    return str(Status.FromString(answer.content).message)


def test_bad_requests_get_clear_answers_and_write_nothing(database_url: str) -> None:
    good = export_request([chat(2, 1, 1, parent=None)]).SerializeToString()
    with (
        serve_collect(database_url, limits=Limits(max_body_bytes=4096)) as served,
        httpx.Client() as client,
    ):
        post = lambda **kw: client.post(served.endpoint, **kw)  # noqa: E731
        cases = [
            (post(content=b"\xff\xfe garbage", headers=PB), 400, "not a protobuf"),
            (post(content=b"{", headers={"Content-Type": "application/json"}), 400, "not JSON"),
            (post(content=good, headers={"Content-Type": "text/plain"}), 415, "Content-Type"),
            (post(content=good, headers={**PB, "Content-Encoding": "br"}), 415, "Encoding"),
            (post(content=b"\x00" * 5000, headers=PB), 413, "over 4096 bytes"),
            (
                post(
                    content=gzip.compress(b"\x0a" * 100_000),
                    headers={**PB, "Content-Encoding": "gzip"},
                ),
                413,
                "after decompression",
            ),
            (
                post(content=b"not gzip", headers={**PB, "Content-Encoding": "gzip"}),
                400,
                "corrupt",
            ),
        ]
        for answer, code, text in cases:
            assert answer.status_code == code, (code, answer.text)
            assert text in status_of(answer)
        assert client.get(served.endpoint).status_code == 405
        assert runs(database_url) == {}


def test_bearer_token(database_url: str) -> None:
    spans = sdk_campaign(calls=1, run_id="with-token")
    with serve_collect(database_url, token="s3cret") as served:
        refused = httpx.post(
            served.endpoint,
            content=export_request([chat(2, 1, 1)]).SerializeToString(),
            headers={**PB, "Authorization": "Bearer wrong"},
        )
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "bearer token" in status_of(refused)
        assert exporter(served.endpoint).export(spans) is SpanExportResult.FAILURE
        assert httpx.get(f"{served.url}/metrics").status_code == 401
        sdk = exporter(served.endpoint, headers={"Authorization": "Bearer s3cret"})
        assert sdk.export(spans) is SpanExportResult.SUCCESS
        assert "with-token" in runs(database_url)


def test_idle_trace_is_finalised_under_its_trace_id(database_url: str) -> None:
    with serve_collect(database_url, limits=Limits(idle_seconds=0.5)) as served:
        body = export_request([chat(2, 3, 4)]).SerializeToString()  # its root never comes
        assert httpx.post(served.endpoint, content=body, headers=PB).status_code == 200
        deadline = time.monotonic() + 10
        while TRACE.hex() not in runs(database_url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert runs(database_url)[TRACE.hex()]["tokens_in"] == 3
        while httpx.get(f"{served.url}/healthz").json()["traces_held"]:  # then forgotten
            assert time.monotonic() < deadline
            time.sleep(0.1)
        late = httpx.post(
            served.endpoint, content=export_request([chat(3, 1, 1)]).SerializeToString(), headers=PB
        )
        reply = ExportTraceServiceResponse.FromString(late.content)
        assert reply.partial_success.rejected_spans == 1
        assert "late" in reply.partial_success.error_message


def test_database_down_answers_503_and_the_retry_writes(database_url: str, admin_url: str) -> None:
    import psycopg

    spans = sdk_campaign(calls=2, run_id="after-outage")
    with serve_collect(database_url) as served:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE campaign_metrics RENAME TO campaign_metrics_away")
            body = export_request([]).SerializeToString()
            assert httpx.post(served.endpoint, content=body, headers=PB).status_code == 200
            sdk = exporter(served.endpoint)
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

            payload = encode_spans(spans).SerializeToString()
            answer = httpx.post(served.endpoint, content=payload, headers=PB, timeout=10)
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
            conn.execute("ALTER TABLE campaign_metrics_away RENAME TO campaign_metrics")
        assert sdk.export(spans) is SpanExportResult.SUCCESS  # the exporter's retry
        run = runs(database_url)["after-outage"]
    assert run["tokens_in"] == 201  # counted once


def test_pydantic_ai_agent_run_becomes_a_run(database_url: str) -> None:
    """A real agent framework, offline (TestModel), instrumented with OpenTelemetry and
    exported by the SDK to collect: no code of ours in the agent."""
    from pydantic_ai import Agent
    from pydantic_ai.models.instrumented import InstrumentationSettings
    from pydantic_ai.models.test import TestModel

    with serve_collect(database_url) as served:
        provider = TracerProvider(resource=Resource.create({"service.name": "copywriter"}))
        provider.add_span_processor(BatchSpanProcessor(exporter(served.endpoint)))
        agent: Agent[None, str] = Agent(TestModel(), name="copywriter")
        agent.instrument = InstrumentationSettings(tracer_provider=provider)

        @agent.tool_plain
        def word_count(text: str) -> int:
            return len(text.split())

        try:
            result = asyncio.run(agent.run("Write a tagline"))  # closes its loop
        except BaseException:
            provider.shutdown()
            raise
        assert result.output
        usage = result.usage
        provider.shutdown()
        written = runs(database_url)
    [run] = written.values()
    assert run["campaign_id"] == "copywriter"
    assert len(run["run_id"]) == 32  # the trace id
    assert (run["agents_total"], run["agents_successful"]) == (1, 1)
    assert (run["tokens_in"], run["tokens_out"]) == (usage.input_tokens, usage.output_tokens)
    assert run["cost_usd"] == 0  # TestModel has no price: counted as unpriced
    assert run["latency_avg_ms"] is not None and run["latency_p95_ms"] is not None


def test_metrics_and_health(database_url: str) -> None:
    with serve_collect(database_url) as served:
        health = httpx.get(f"{served.url}/healthz").json()
        assert health["status"] == "ok"
        body = export_request([chat(2, 1, 1, start_ms=0, duration_ms=5 * MS // MS)])
        httpx.post(served.endpoint, content=body.SerializeToString(), headers=PB)
        text = httpx.get(f"{served.url}/metrics").text
    assert "apex_collect_spans_accepted_total 1.0" in text
    assert 'apex_collect_requests_total{code="200"} 1.0' in text


@pytest.fixture(autouse=True)
def _quiet_exporter_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("CRITICAL", logger="opentelemetry")
