"""OTLP/HTTP on the wire: content types, gzip, the body limit, and the protobuf and JSON
encodings of requests, answers and errors (decoded with ``opentelemetry-proto`` and
``google.protobuf.json_format``, as the OTLP specification defines them).

JSON follows the spec's deviations from the proto3 JSON mapping: trace and span ids are hex
(turned into the mapping's base64 before parsing), enums are integers (names are accepted
too), unknown fields are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import AsyncIterator
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from apex_metrics.collect.errors import BadRequestBody, ContentTooLarge, UnsupportedMediaType
from apex_metrics.exceptions import first_line
from apex_metrics.formats import at_most

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
MEDIA_TYPES: Final = (PROTOBUF, JSON)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


def media_type(content_type: str | None) -> str:
    """``application/x-protobuf`` or ``application/json`` (parameters ignored), else 415."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {content_type or '(none)'!r}",
            hint=f"send {PROTOBUF} or {JSON}",
        )
    return kind


def check_encoding(content_encoding: str | None) -> bool:
    """True for gzip, False for none; anything else is 415."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity", "none"):
        return False
    if coding in ("gzip", "x-gzip"):
        return True
    raise UnsupportedMediaType(
        f"unsupported Content-Encoding {content_encoding!r}", hint="send gzip or no encoding"
    )


def too_large(limit: int) -> ContentTooLarge:
    return ContentTooLarge(
        f"request body over {limit} bytes (after decompression)",
        hint="lower the exporter's batch size (OTEL_BSP_MAX_EXPORT_BATCH_SIZE)",
    )


async def read_body(
    chunks: AsyncIterator[bytes], *, gzipped: bool, limit: int, declared: str | None
) -> bytes:
    """The request body, gunzipped, never more than ``limit`` bytes held (413 past it)."""
    number = (declared or "").strip()
    if number.isascii() and number.isdigit() and not at_most(number, limit):
        raise too_large(limit)
    out = bytearray()
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if gzipped else None
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise too_large(limit)
        if inflater is None:
            out += chunk
            continue
        try:
            out += inflater.decompress(chunk, limit + 1 - len(out))
        except zlib.error as exc:
            raise BadRequestBody(f"the gzip body is corrupt: {exc}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise too_large(limit)
    if inflater is not None:
        try:
            out += inflater.flush()
        except zlib.error as exc:
            raise BadRequestBody(f"the gzip body is corrupt: {exc}") from None
        if len(out) > limit:
            raise too_large(limit)
        if not inflater.eof:
            raise BadRequestBody("the gzip body is truncated")
    return bytes(out)


def decode_request(body: bytes, kind: str) -> ExportTraceServiceRequest:
    """An ``ExportTraceServiceRequest`` from a protobuf or OTLP/JSON body (400 if it is none)."""
    message = ExportTraceServiceRequest()
    if kind == PROTOBUF:
        try:
            message.ParseFromString(body)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise BadRequestBody(
                f"the body is not a protobuf ExportTraceServiceRequest: {exc}"
            ) from None
        return message
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequestBody(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestBody("the JSON body must be an ExportTraceServiceRequest object")
    try:
        _hex_ids_to_base64(data)
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except _BadId as exc:
        raise BadRequestBody(str(exc)) from None
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise BadRequestBody(
            f"the JSON is not an OTLP ExportTraceServiceRequest: {first_line(exc)}"
        ) from None
    return message


class _BadId(ValueError):
    pass


def _b64(value: Any, where: str, size: int, *, optional: bool = False) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise _BadId(f"{where} must be a hex string (OTLP/JSON ids are hex, not base64)")
    if not (len(value) == 2 * size or (optional and value == "")):
        raise _BadId(f"{where} must be {2 * size} hex digits (got {len(value)})")
    return base64.b64encode(binascii.unhexlify(value)).decode("ascii")


def _list(parent: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _BadId(f"{where}.{key} must be a list of objects")
    return value


def _hex_ids_to_base64(data: dict[str, Any]) -> None:
    """OTLP/JSON's hex ids → the proto3 JSON mapping's base64, in place."""
    for i, rs in enumerate(_list(data, "resourceSpans", "request")):
        for j, ss in enumerate(_list(rs, "scopeSpans", f"resourceSpans[{i}]")):
            path = f"resourceSpans[{i}].scopeSpans[{j}]"
            for k, span in enumerate(_list(ss, "spans", path)):
                at = f"{path}.spans[{k}]"
                for key, size, optional in (
                    ("traceId", 16, False),
                    ("spanId", 8, False),
                    ("parentSpanId", 8, True),
                ):
                    if key in span:
                        span[key] = _b64(span[key], f"{at}.{key}", size, optional=optional)
                for n, link in enumerate(_list(span, "links", at)):
                    for key, size in (("traceId", 16), ("spanId", 8)):
                        if key in link:
                            link[key] = _b64(link[key], f"{at}.links[{n}].{key}", size)


def encode(message: Message, kind: str) -> bytes:
    if kind == JSON:
        text: str = json_format.MessageToJson(message, indent=None)
        return text.encode()
    return bytes(message.SerializeToString())


def response_body(rejected: int, error_message: str, kind: str) -> bytes:
    """An ``ExportTraceServiceResponse``; ``partial_success`` set only when there is news."""
    response = ExportTraceServiceResponse()
    if rejected or error_message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = error_message
    return encode(response, kind)


def status_body(message: str, kind: str, code: int = 0) -> bytes:
    """A ``google.rpc.Status``: the body of every 4xx and 5xx answer."""
    return encode(Status(code=code, message=message), kind)
