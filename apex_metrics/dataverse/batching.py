"""The ``$batch`` of PATCH-by-alternate-key upserts: building the request, reading the answer.

One part per row, in order, each ``PATCH SET(key='value')?$select=key`` with
``Prefer: return=representation`` (so the answer says 201 created or 200 updated) and the key
column left out of the body. The batch is sent with ``Prefer: odata.continue-on-error``, so one
bad row never blocks the others; answers map back to rows by position.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import httpx

from apex_metrics.dataverse.errors import DataverseError, error_for_status, parse_error_body
from apex_metrics.dataverse.multipart import (
    BatchPart,
    MultipartError,
    decode_batch_response,
    encode_batch_request,
    flatten_responses,
)
from apex_metrics.dataverse.urls import key_path

Outcome = Literal["created", "updated", "failed"]
Items = Sequence[tuple[str, Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class UpsertOutcome:
    """What happened to one row of an upsert.

    ``created`` comes from a 201; ``updated`` from a 200, and also from a bare 204 (a server that
    ignored ``Prefer: return=representation`` does not say which it did; either way the row now
    holds the values sent).
    """

    key: str
    status: int
    outcome: Outcome
    code: str = ""
    message: str = ""
    transient: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"


def json_default(value: Any) -> Any:
    """JSON for values the standard encoder refuses: Decimal → number, datetime → UTC ISO Z."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), default=json_default).encode()


def encode_upserts(
    api_url: str, entity_set: str, key_column: str, items: Items
) -> tuple[bytes, str]:
    """The ``$batch`` body and its Content-Type for ``items`` (key value, body)."""
    parts = []
    for key_value, body in items:
        path = key_path(entity_set, {key_column: key_value})
        payload = dumps(without_keys(body, {key_column: key_value}))
        parts.append(
            BatchPart(
                "PATCH",
                f"{api_url}{path}?$select={key_column}",
                {"Content-Type": "application/json; type=entry", "Prefer": "return=representation"},
                payload,
            )
        )
    return encode_batch_request(parts)


def decode_upserts(response: httpx.Response, key_column: str, items: Items) -> list[UpsertOutcome]:
    """One outcome per item from a ``$batch`` answer (positions must match)."""
    try:
        answers = flatten_responses(
            decode_batch_response(response.content, response.headers.get("Content-Type"))
        )
    except MultipartError as exc:
        raise DataverseError(f"$batch answer could not be read: {exc}") from exc
    if len(answers) != len(items):
        message = f"$batch answered {len(answers)} responses for {len(items)} requests"
        return [
            UpsertOutcome(k, response.status_code, "failed", "", message, True) for k, _ in items
        ]
    outcomes = []
    for (key_value, _body), answer in zip(items, answers, strict=True):
        if answer.ok:
            outcomes.append(UpsertOutcome(key_value, answer.status, outcome_of(answer.status)))
            continue
        code, message = parse_error_body(answer.body)
        error = error_for_status(
            answer.status,
            code,
            message,
            what=f"{key_column}={key_value}",
            retry_after=answer.header("Retry-After"),
        )
        outcomes.append(
            UpsertOutcome(
                key_value, answer.status, "failed", code, message or error.message, error.transient
            )
        )
    return outcomes


def outcome_of(status: int) -> Outcome:
    if status == 201:
        return "created"
    return "updated"


def without_keys(body: Mapping[str, Any], key: Mapping[str, Any]) -> dict[str, Any]:
    """The body without key columns: Dataverse strips or mismatches them (use-upsert page)."""
    return {k: v for k, v in body.items() if k not in key}
