"""The mapping of spans to a run (docs/ingest.md), without I/O: decoded spans in, values out."""

from __future__ import annotations

import gzip
import json
import random
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from google.protobuf import json_format

from apex_metrics.collect import wire
from apex_metrics.collect.errors import (
    BadRequestBody,
    ContentTooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from apex_metrics.collect.pricing import Pricer, price
from apex_metrics.collect.runs import TraceRun
from apex_metrics.collect.spans import Rejected, SpanFacts, request_facts
from apex_metrics.collect.store import Limits, TraceStore
from apex_metrics.metric import INT32_MAX
from apex_metrics.recorder import P95, percentile_cont

from .conftest import T0, TRACE, chat, export_request, pb_span

pytestmark = pytest.mark.unit


def no_price(*_: Any) -> Decimal | None:
    return None


def facts_of(spans: list[Any], price_fn: Any = no_price, **resource: Any) -> list[SpanFacts]:
    accepted, rejected = request_facts(export_request(spans, **resource), price_fn)
    assert not rejected, [str(r) for r in rejected]
    return accepted


def run_of(spans: list[Any], **kw: Any) -> dict[str, Any]:
    run = TraceRun(TRACE)
    for f in facts_of(spans, **kw):
        run.add(f)
    return run.values()


def campaign() -> list[Any]:
    return [
        pb_span(1, duration_ms=2000, gen_ai__operation__name="invoke_agent",
                gen_ai__usage__input_tokens=10_000, apex__phase="2-3"),
        chat(2, 100, 10, apex__cost_usd=0.01),
        pb_span(3, parent=1, start_ms=100, duration_ms=300, gen_ai__operation__name="chat",
                gen_ai__usage__input_tokens=200, gen_ai__usage__output_tokens=20,
                apex__cost_usd="0.02", apex__assets_generated=2),
        pb_span(4, parent=1, gen_ai__operation__name="execute_tool", gen_ai__usage__input_tokens=5),
        pb_span(5, parent=1, start_ms=400, duration_ms=700,
                gen_ai__operation__name="embeddings", gen_ai__usage__input_tokens=50,
                apex__cost_usd=0, apex__assets_generated=1),
    ]  # fmt: skip


def test_model_calls_only_are_summed_and_agent_totals_not_counted_twice() -> None:
    values = run_of(campaign())
    assert values["tokens_in"] == 350  # not the agent's 10,000 nor the tool's 5
    assert values["tokens_out"] == 30
    assert values["cost_usd"] == Decimal("0.03")
    assert values["assets_generated"] == 3
    assert values["agents_total"] == 1 and values["agents_successful"] == 1
    assert values["phase"] == "2-3"
    assert values["campaign_id"] == "spring"  # service.name
    assert values["run_id"] == TRACE.hex()
    assert values["created_at"].isoformat() == "2026-01-01T00:00:00+00:00"


def test_latency_is_postgres_percentile_cont_over_model_calls() -> None:
    durations = [100, 300, 700]
    values = run_of(campaign())
    expected = percentile_cont([Fraction(d) for d in durations], P95)
    assert expected == Fraction(660)  # 300 + 0.9 * (700 - 300): linear interpolation
    assert values["latency_p95_ms"] == 660
    assert values["latency_avg_ms"] == round(Fraction(sum(durations), 3))


def test_order_and_redelivery_do_not_change_the_run() -> None:
    spans = [*campaign(), pb_span(9, parent=1, start_ms=-5, apex__run_id="late-named")]
    reference = run_of(spans)
    assert reference["run_id"] == "late-named"
    for seed in range(20):
        shuffled = spans + spans[: seed % len(spans)]  # some spans delivered twice
        random.Random(seed).shuffle(shuffled)
        assert run_of(shuffled) == reference


def test_agents_count_invoke_agent_spans_and_errors() -> None:
    spans = [
        pb_span(1, gen_ai__operation__name="invoke_agent"),
        pb_span(2, parent=1, gen_ai__operation__name="invoke_agent", error=True),
        pb_span(3, parent=1, gen_ai__operation__name="invoke_agent"),
        chat(4, 1, 1, parent=2),
    ]
    values = run_of(spans)
    assert (values["agents_total"], values["agents_successful"]) == (3, 2)


def test_model_calls_without_agent_span_make_one_agent() -> None:
    assert run_of([chat(2, 1, 1, parent=None)])["agents_total"] == 1
    failed = run_of([chat(2, 1, 1, parent=None, error=True)])
    assert (failed["agents_total"], failed["agents_successful"]) == (1, 0)
    nothing = run_of([pb_span(1, apex__assets_generated=4)])
    assert (nothing["agents_total"], nothing["tokens_in"], nothing["latency_p95_ms"]) == (
        0,
        0,
        None,
    )


def test_campaign_id_from_span_then_resource_then_service_name() -> None:
    assert (
        run_of([chat(2, 1, 1, apex__campaign_id="c-span")], apex__campaign_id="c-res")[
            "campaign_id"
        ]
        == "c-span"
    )
    assert run_of([chat(2, 1, 1)], apex__campaign_id="c-res")["campaign_id"] == "c-res"
    long_service = "s" * 100
    assert run_of([chat(2, 1, 1)], service=long_service)["campaign_id"] == "s" * 64  # clipped


def test_earliest_span_wins_for_values_taken_from_a_span() -> None:
    spans = [
        pb_span(1, start_ms=10, apex__run_id="second", apex__phase="p2"),
        pb_span(2, start_ms=5, apex__run_id="first", apex__phase="p1"),
    ]
    values = run_of(spans)
    assert (values["run_id"], values["phase"]) == ("first", "p1")


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [
        ({"gen_ai__usage__input_tokens": -5}, "gen_ai.usage.input_tokens must be ≥ 0 (got -5)"),
        ({"gen_ai__usage__output_tokens": 10**12}, "must be ≤ 2147483647 (got 1000000000000)"),
        ({"gen_ai__usage__input_tokens": "12"}, "must be a whole number (got a string)"),
        ({"gen_ai__usage__input_tokens": 1.5}, "must be a whole number (got 1.5)"),
        ({"apex__cost_usd": -1.0}, "apex.cost_usd must be ≥ 0"),
        ({"apex__cost_usd": "lots"}, "apex.cost_usd must be a number"),
        ({"apex__cost_usd": 1e9}, "apex.cost_usd must be ≤ 99999.99999"),
        ({"apex__run_id": "a/b"}, "apex.run_id must not contain /"),
        ({"apex__run_id": "x" * 65}, "apex.run_id must be at most 64 characters"),
        ({"apex__run_id": 42}, "apex.run_id must be a string (got an int)"),
        ({"apex__phase": "p" * 17}, "apex.phase must be at most 16 characters"),
        ({"apex__assets_generated": -1}, "apex.assets_generated must be ≥ 0"),
    ],
)
def test_absurd_attributes_reject_the_span(attrs: dict[str, Any], reason: str) -> None:
    good = chat(2, 10, 1)
    bad = pb_span(3, parent=1, gen_ai__operation__name="chat", **attrs)
    accepted, rejected = request_facts(export_request([good, bad]), no_price)
    assert [f.span_id for f in accepted] == [good.span_id]
    assert len(rejected) == 1 and reason in rejected[0].reason, rejected[0].reason


def test_broken_ids_and_times_reject_the_span() -> None:
    spans = [
        pb_span(1, trace_id=b"\x00" * 16),
        pb_span(2, trace_id=b"short"),
        pb_span(0),
        pb_span(3, duration_ms=-1),
    ]
    spans[-1].start_time_unix_nano = 0
    spans.append(pb_span(4, start_ms=10, duration_ms=-5))
    accepted, rejected = request_facts(export_request(spans), no_price)
    assert accepted == []
    assert [r.reason.split(" ")[0] for r in rejected] == [
        "trace",
        "trace",
        "span",
        "start_time_unix_nano",
        "ends",
    ]


def test_sums_saturate_at_the_column_maximum() -> None:
    spans = [chat(n, INT32_MAX, INT32_MAX, apex__cost_usd=99999) for n in range(2, 5)]
    values = run_of(spans)
    assert values["tokens_in"] == values["tokens_out"] == INT32_MAX
    assert values["cost_usd"] == Decimal("99999.99999")


def test_genai_prices_prices_known_models_and_counts_unknown_ones() -> None:
    at = T0 // 1_000_000_000
    known = price("gpt-4o", "openai", 1_000_000, 0, at)
    assert known is not None and known > 0
    assert price("gpt-4o", "some.gateway", 1_000_000, 0, at) == known  # model alone matched
    assert price("no-such-model-xyz", "openai", 10, 10, at) is None
    pricer = Pricer()
    spans = [
        chat(2, 1_000_000, 0, gen_ai__response__model="gpt-4o", gen_ai__system="openai"),
        chat(3, 5, 5, gen_ai__request__model="test", gen_ai__provider__name="test"),
        chat(4, 5, 5, apex__cost_usd=0.5, gen_ai__request__model="test"),
    ]
    facts = facts_of(spans, price_fn=pricer)
    assert facts[0].cost == known and facts[0].unpriced is None
    assert facts[1].cost == 0 and facts[1].unpriced == "test (test)"
    assert facts[2].cost == Decimal("0.5") and facts[2].unpriced is None


def store_with(limits: Limits, clock: list[float]) -> TraceStore:
    return TraceStore(limits, clock=lambda: clock[0])


def test_store_dedupes_and_waits_for_the_root_or_a_run_id() -> None:
    clock = [0.0]
    store = store_with(Limits(idle_seconds=10), clock)
    children = facts_of([chat(2, 1, 1), chat(3, 1, 1)])
    first = store.admit(children)
    assert (first.accepted, first.dirty) == (2, False)  # run id not settled: not written yet
    again = store.admit(children)
    assert (again.accepted, again.duplicates) == (0, 2)
    root = store.admit(facts_of([pb_span(1, gen_ai__operation__name="invoke_agent")]))
    assert root.dirty and [r.trace_id for r in store.take_dirty()] == [TRACE]


def test_idle_traces_are_finalised_then_forgotten_and_late_spans_rejected() -> None:
    clock = [0.0]
    store = store_with(Limits(idle_seconds=10), clock)
    store.admit(facts_of([chat(2, 1, 1)]))
    clock[0] = 11
    store.sweep()
    [run] = store.take_dirty()  # finalised: written under the trace id
    run.written_changes, run.written_run_id = run.changes, run.run_id
    store.sweep()
    assert not store.traces and store.spans_held == 0
    late = store.admit(facts_of([chat(3, 1, 1)]))
    assert late.accepted == 0 and "late" in late.rejected[0].reason


def test_store_caps_refuse_rather_than_drop_unwritten_runs() -> None:
    clock = [0.0]
    store = store_with(Limits(max_traces=2, max_spans_per_trace=2), clock)
    traces = [bytes([n]) * 16 for n in range(1, 4)]
    for t in traces[:2]:
        store.admit(facts_of([chat(2, 1, 1, parent=None, trace_id=t)]))
    with pytest.raises(Unavailable):
        store.admit(facts_of([chat(2, 1, 1, parent=None, trace_id=traces[2])]))
    for run in store.take_dirty():  # the writer catches up
        run.written_changes, run.written_run_id = run.changes, run.run_id
    assert store.admit(facts_of([chat(2, 1, 1, parent=None, trace_id=traces[2])])).accepted == 1
    assert len(store.traces) == 2
    over = store.admit(facts_of([chat(n, 1, 1, trace_id=traces[2]) for n in (3, 4)]))
    assert over.accepted == 1 and "more than 2 spans" in over.rejected[0].reason


# --- the wire -----------------------------------------------------------------------------------


async def chunks(*parts: bytes) -> Any:
    for part in parts:
        yield part


async def test_body_limits_apply_after_gunzip() -> None:
    body = b"\x00" * 5000
    assert (
        await wire.read_body(chunks(gzip.compress(body)), gzipped=True, limit=5000, declared=None)
        == body
    )
    with pytest.raises(ContentTooLarge):  # a small gzip bomb
        await wire.read_body(chunks(gzip.compress(body)), gzipped=True, limit=4999, declared=None)
    with pytest.raises(ContentTooLarge):
        await wire.read_body(chunks(body), gzipped=False, limit=10, declared=None)
    with pytest.raises(ContentTooLarge):
        await wire.read_body(chunks(), gzipped=False, limit=10, declared="11")
    with pytest.raises(BadRequestBody, match="corrupt"):
        await wire.read_body(chunks(b"not gzip"), gzipped=True, limit=100, declared=None)
    with pytest.raises(BadRequestBody, match="truncated"):
        await wire.read_body(
            chunks(gzip.compress(body)[:30]), gzipped=True, limit=9999, declared=None
        )


def test_content_types_and_encodings() -> None:
    assert wire.media_type("application/json; charset=utf-8") == wire.JSON
    assert wire.media_type("Application/X-Protobuf") == wire.PROTOBUF
    for bad in (None, "text/plain", "application/protobuf"):
        with pytest.raises(UnsupportedMediaType):
            wire.media_type(bad)
    assert wire.check_encoding("gzip") and not wire.check_encoding(None)
    with pytest.raises(UnsupportedMediaType):
        wire.check_encoding("br")


def test_json_mapping_hex_ids_and_integer_enums() -> None:
    request = export_request([chat(2, 7, 3, error=True)])
    data = json_format.MessageToDict(request)
    span = data["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["traceId"], span["spanId"] = TRACE.hex().upper(), (2).to_bytes(8, "big").hex()
    span["parentSpanId"] = (1).to_bytes(8, "big").hex()
    span["status"] = {"code": 2}
    span["kind"] = 3
    span["somethingNew"] = {"x": 1}  # unknown fields are ignored
    decoded = wire.decode_request(json.dumps(data).encode(), wire.JSON)
    got = decoded.resource_spans[0].scope_spans[0].spans[0]
    assert (got.trace_id, got.status.code, got.kind) == (TRACE, 2, 3)


@pytest.mark.parametrize(
    ("body", "kind", "message"),
    [
        (b"\xff\xff\xff\xff", wire.PROTOBUF, "not a protobuf"),
        (b"{not json", wire.JSON, "not JSON"),
        (b"[1, 2]", wire.JSON, "must be an ExportTraceServiceRequest object"),
        (b'{"resourceSpans": 3}', wire.JSON, "must be a list"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": '
            b'[{"traceId": "W46P95gDgQPSabYzgT/GDA=="}]}]}]}',
            wire.JSON,
            "hex",
        ),
        (b'{"resourceSpans": [{"resource": {"attributes": 5}}]}', wire.JSON, "not an OTLP"),
    ],
)
def test_undecodable_bodies_are_bad_requests(body: bytes, kind: str, message: str) -> None:
    with pytest.raises(BadRequestBody, match=message):
        wire.decode_request(body, kind)


def test_answers_partial_success_only_when_there_is_news() -> None:
    assert wire.response_body(0, "", wire.JSON) == b"{}"
    assert json.loads(wire.response_body(2, "two bad", wire.JSON)) == {
        "partialSuccess": {"rejectedSpans": "2", "errorMessage": "two bad"}
    }


def test_rejected_str_names_span_and_trace() -> None:
    text = str(Rejected(TRACE, (7).to_bytes(8, "big"), "why"))
    assert text == f"span 0000000000000007 of trace {TRACE.hex()}: why"


@pytest.mark.parametrize(
    ("model", "provider"),
    [("gpt-4o", "openai"), ("claude-sonnet-4-5", "anthropic"), ("gemini-2.5-pro", "gcp.gemini")],
)
def test_fast_pricing_equals_genai_prices(model: str, provider: str) -> None:
    pricer = Pricer()
    rng = random.Random(model)
    at_ns = T0
    for _ in range(30):
        tokens_in, tokens_out = rng.randint(0, 400_000), rng.randint(0, 50_000)
        expected = price(model, provider, tokens_in, tokens_out, at_ns // 10**9)
        assert expected is not None
        assert pricer(model, provider, tokens_in, tokens_out, at_ns) == expected
