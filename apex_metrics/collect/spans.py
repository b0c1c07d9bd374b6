"""What one OTLP span says about its run: extracted from the decoded protobuf, validated against
the data contract (``apex_metrics/metric.py``) and priced. Pure functions: no I/O, no clock.

A span that breaks a rule is rejected whole (it counts in ``partial_success.rejected_spans``
with its reason) and contributes nothing: see docs/ingest.md, "Bad spans".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from apex_metrics.exceptions import MetricValidationError
from apex_metrics.metric import COST_MAX, INT32_MAX, parse_metric

MODEL_OPERATIONS: Final = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
AGENT_OPERATION: Final = "invoke_agent"
STATUS_ERROR: Final = 2  # Status.STATUS_CODE_ERROR
NS_PER_MS: Final = 1_000_000
MAX_DURATION_NS: Final = INT32_MAX * NS_PER_MS  # a latency column holds at most INT32_MAX ms
DEFAULT_SERVICE: Final = "unknown_service"  # OpenTelemetry's own fallback service name

OPERATION = "gen_ai.operation.name"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
RESPONSE_MODEL = "gen_ai.response.model"
REQUEST_MODEL = "gen_ai.request.model"
PROVIDER = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"  # the older name of gen_ai.provider.name
RUN_ID = "apex.run_id"
CAMPAIGN_ID = "apex.campaign_id"
PHASE = "apex.phase"
ASSETS = "apex.assets_generated"
COST = "apex.cost_usd"
SERVICE_NAME = "service.name"
WANTED: Final = frozenset(
    {OPERATION, INPUT_TOKENS, OUTPUT_TOKENS, RESPONSE_MODEL, REQUEST_MODEL, PROVIDER, SYSTEM}
    | {RUN_ID, CAMPAIGN_ID, PHASE, ASSETS, COST}
)
RELEVANT_PREFIXES: Final = ("gen_ai.", "apex.")

# (model, provider, input tokens, output tokens, start ns) -> cost, or None when unknown.
Pricer = Callable[[str | None, str | None, int, int, int], Decimal | None]


@dataclass(slots=True)
class SpanFacts:
    """One accepted span, reduced to what the run needs."""

    trace_id: bytes
    span_id: bytes
    is_root: bool
    start_ns: int
    duration_ns: int
    relevant: bool  # carries a gen_ai.* or apex.* attribute: its trace is a run
    is_model: bool
    is_agent: bool
    error: bool
    tokens_in: int = 0
    tokens_out: int = 0
    cost: Decimal = Decimal(0)
    unpriced: str | None = None  # "model (provider)" of a model call priced at 0
    assets: int = 0
    run_id: str | None = None
    campaign_id: str | None = None
    phase: str | None = None
    resource_campaign: str | None = None
    service_name: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A span refused whole, and why."""

    trace_id: bytes
    span_id: bytes
    reason: str

    def __str__(self) -> str:
        return f"span {self.span_id.hex()} of trace {self.trace_id.hex()}: {self.reason}"


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


_KINDS: Final = {
    "string_value": "a string",
    "int_value": "an int",
    "double_value": "a double",
    "bool_value": "a bool",
    "bytes_value": "bytes",
    "array_value": "an array",
    "kvlist_value": "a key-value list",
}


def _value(value: AnyValue) -> tuple[str | None, Any]:
    kind = value.WhichOneof("value")
    if kind is None or kind in ("array_value", "kvlist_value"):
        return kind, None
    return kind, getattr(value, kind)


def _count(name: str, value: AnyValue) -> int:
    """A whole number 0..INT32_MAX (the contract's integer columns)."""
    kind, raw = _value(value)
    if kind == "int_value":
        number = int(raw)
    elif kind == "double_value" and math.isfinite(raw) and float(raw).is_integer():
        number = int(raw)
    else:
        got = _KINDS.get(kind or "", "nothing") if kind != "double_value" else repr(raw)
        raise _Bad(f"{name} must be a whole number (got {got})")
    if number < 0:
        raise _Bad(f"{name} must be ≥ 0 (got {number})")
    if number > INT32_MAX:
        raise _Bad(f"{name} must be ≤ {INT32_MAX} (got {number})")
    return number


def _cost(value: AnyValue) -> Decimal:
    """A cost in USD: 0..COST_MAX (the contract's numeric(10,5))."""
    kind, raw = _value(value)
    try:
        if kind == "double_value":
            amount = Decimal(repr(raw))
        elif kind == "int_value":
            amount = Decimal(int(raw))
        elif kind == "string_value" and len(raw) <= 64:
            amount = Decimal(raw.strip())
        else:
            raise _Bad(f"{COST} must be a number (got {_KINDS.get(kind or '', 'nothing')})")
    except InvalidOperation:
        raise _Bad(f"{COST} must be a number (got {raw!r})") from None
    if not amount.is_finite():
        raise _Bad(f"{COST} must be a finite number (got {raw!r})")
    if amount < 0:
        raise _Bad(f"{COST} must be ≥ 0 (got {amount})")
    if amount > COST_MAX:
        raise _Bad(f"{COST} must be ≤ {COST_MAX} (got {amount})")
    return amount


@lru_cache(maxsize=4096)
def _contract_rule(field: str, text: str) -> str | None:
    """The rule of metric.py a string breaks as ``field`` (None when it is fine)."""
    probe: dict[str, Any] = {"campaign_id": "c", "run_id": "r", field: text}
    try:
        parse_metric(probe)
    except MetricValidationError as exc:
        return exc.errors[0].rule
    return None


def _text(name: str, field: str, value: AnyValue) -> str:
    kind, raw = _value(value)
    if kind != "string_value":
        raise _Bad(f"{name} must be a string (got {_KINDS.get(kind or '', 'nothing')})")
    rule = _contract_rule(field, raw)
    if rule is not None:
        raise _Bad(f"{name} {rule}")
    return str(raw)


def _name(value: AnyValue | None) -> str | None:
    """A free-form string attribute (model or provider name), or None."""
    if value is None or value.WhichOneof("value") != "string_value":
        return None
    return value.string_value or None


@dataclass(frozen=True, slots=True)
class ResourceFacts:
    campaign: str | None
    service_name: str
    problem: str | None  # a bad apex.campaign_id on the resource rejects its spans


def resource_facts(attributes: Iterator[KeyValue] | Any) -> ResourceFacts:
    campaign: str | None = None
    service: str | None = None
    problem: str | None = None
    for kv in attributes:
        if kv.key == CAMPAIGN_ID:
            try:
                campaign = _text(f"resource {CAMPAIGN_ID}", "campaign_id", kv.value)
            except _Bad as bad:
                problem = bad.reason
        elif kv.key == SERVICE_NAME:
            service = _name(kv.value)
    # Clip rule: service.name is only a fallback, so it is cut to the column's 64 characters.
    service = (service or DEFAULT_SERVICE).replace("\x00", "")[:64].strip() or DEFAULT_SERVICE
    return ResourceFacts(campaign, service, problem)


def span_facts(span: Span, resource: ResourceFacts, price: Pricer) -> SpanFacts | Rejected:
    """The facts of one span, or why it is rejected."""
    trace_id, span_id = span.trace_id, span.span_id
    try:
        return _span_facts(span, resource, price)
    except _Bad as bad:
        return Rejected(trace_id, span_id, bad.reason)


def _span_facts(span: Span, resource: ResourceFacts, price: Pricer) -> SpanFacts:
    trace_id, span_id = span.trace_id, span.span_id
    if len(trace_id) != 16 or not any(trace_id):
        raise _Bad("trace id must be 16 bytes, not all zero")
    if len(span_id) != 8 or not any(span_id):
        raise _Bad("span id must be 8 bytes, not all zero")
    if resource.problem:
        raise _Bad(resource.problem)
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if start == 0:
        raise _Bad("start_time_unix_nano is missing")
    if end < start:
        raise _Bad("ends before it starts")
    attrs: dict[str, AnyValue] = {}
    relevant = False
    for kv in span.attributes:
        key = kv.key
        if key in WANTED:
            attrs[key] = kv.value
        elif not relevant and key.startswith(RELEVANT_PREFIXES):
            relevant = True
    operation = _name(attrs.get(OPERATION))
    is_model = operation in MODEL_OPERATIONS
    facts = SpanFacts(
        trace_id=trace_id,
        span_id=span_id,
        is_root=not span.parent_span_id,
        start_ns=start,
        duration_ns=end - start,
        relevant=relevant or bool(attrs),
        is_model=is_model,
        is_agent=operation == AGENT_OPERATION,
        error=span.status.code == STATUS_ERROR,
        resource_campaign=resource.campaign,
        service_name=resource.service_name,
    )
    if RUN_ID in attrs:
        facts.run_id = _text(RUN_ID, "run_id", attrs[RUN_ID])
    if CAMPAIGN_ID in attrs:
        facts.campaign_id = _text(CAMPAIGN_ID, "campaign_id", attrs[CAMPAIGN_ID])
    if PHASE in attrs:
        facts.phase = _text(PHASE, "phase", attrs[PHASE])
    if ASSETS in attrs:
        facts.assets = _count(ASSETS, attrs[ASSETS])
    if not is_model:
        return facts  # usage and cost of other spans (agents repeating totals) are not counted
    if facts.duration_ns > MAX_DURATION_NS:
        raise _Bad(f"a model call must last at most {INT32_MAX} ms")
    if INPUT_TOKENS in attrs:
        facts.tokens_in = _count(INPUT_TOKENS, attrs[INPUT_TOKENS])
    if OUTPUT_TOKENS in attrs:
        facts.tokens_out = _count(OUTPUT_TOKENS, attrs[OUTPUT_TOKENS])
    if COST in attrs:
        facts.cost = _cost(attrs[COST])
        return facts
    model = _name(attrs.get(RESPONSE_MODEL)) or _name(attrs.get(REQUEST_MODEL))
    provider = _name(attrs.get(PROVIDER)) or _name(attrs.get(SYSTEM))
    cost = price(model, provider, facts.tokens_in, facts.tokens_out, start)
    if cost is None:
        facts.unpriced = f"{model or '(no model)'} ({provider or 'no provider'})"
    else:
        facts.cost = cost
    return facts


def request_facts(
    request: ExportTraceServiceRequest, price: Pricer
) -> tuple[list[SpanFacts], list[Rejected]]:
    """Every span of an export request: accepted facts, and rejected spans with reasons."""
    accepted: list[SpanFacts] = []
    rejected: list[Rejected] = []
    for resource_spans in request.resource_spans:
        resource = resource_facts(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                result = span_facts(span, resource, price)
                if isinstance(result, Rejected):
                    rejected.append(result)
                else:
                    accepted.append(result)
    return accepted, rejected
