"""The ``$batch`` of PATCH-by-alternate-key upserts: building the request, reading the answer.

One part per row, in order, each ``PATCH SET(key='value')`` with the key column left out of the
body, and no ``Prefer: return=representation`` (it would cost the server an extra Retrieve per
row; the answer is then 204 for a create and an update alike). The batch is sent with
``Prefer: odata.continue-on-error``, so one bad row never blocks the others; answers map back to
rows by position.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import httpx

from apex_metrics.dataverse.errors import DataverseError, error_for_status, parse_error_body
from apex_metrics.dataverse.multipart_decode import decode_batch_response, decode_response_statuses
from apex_metrics.dataverse.multipart_encode import encode_uniform_requests
from apex_metrics.dataverse.multipart_parts import (
    BatchResponseItem,
    MultipartError,
    flatten_responses,
)
from apex_metrics.dataverse.urls import key_path, key_paths
from apex_metrics.formats import utc_z

Outcome = Literal["created", "updated", "upserted", "failed"]
Items = Sequence[tuple[str, Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class UpsertOutcome:
    """What happened to one row of an upsert.

    ``created`` comes from a 201, ``updated`` from a 200 (answers to
    ``Prefer: return=representation``), ``upserted`` from a 204: the row now holds the values
    sent, created or updated, which the answer does not say. ``retry_after``: the seconds a 429
    asked to wait.
    """

    key: str
    status: int
    outcome: Outcome
    code: str = ""
    message: str = ""
    transient: bool = False
    retry_after: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"


def json_default(value: Any) -> Any:
    """JSON for values the standard encoder refuses: Decimal → number, datetime → UTC ISO Z."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return utc_z(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# One encoder for every body: ``json.dumps`` with arguments builds a new one per call.
_JSON = json.JSONEncoder(separators=(",", ":"), default=json_default)
# The part headers of every upsert (Content-Length is added per part).
UPSERT_HEADERS = {"Content-Type": "application/json; type=entry"}


# The C encoder ``json`` builds on every call (None without the accelerator).
_MAKE_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)


def dumps(body: Any) -> bytes:
    """Compact JSON: ``json.dumps(body, separators=(",", ":"), default=json_default)``."""
    return _JSON.encode(body).encode()


def batch_dumps() -> Callable[[Mapping[str, Any]], bytes]:
    """``dumps`` for the bodies (dicts) of one batch, without its cost per call.

    ``json.dumps`` builds a C encoder for every call; this builds it once, with the same
    arguments (compact separators, ``json_default``, ASCII, NaN allowed) and its own record of
    the objects being encoded (what detects circular references; emptied after each body, and
    the encoder is dropped with the batch when one fails).
    """
    if _MAKE_ENCODER is None:
        return dumps
    encode = _MAKE_ENCODER(
        {}, json_default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )

    def dumps_one(body: Mapping[str, Any]) -> bytes:
        return "".join(encode(body, 0)).encode()

    return dumps_one


def encode_upserts(
    api_url: str, entity_set: str, key_column: str, items: Items
) -> tuple[bytes, str]:
    """The ``$batch`` body and its Content-Type for ``items`` (key value, body).

    Every part is ``PATCH {api_url}SET(key='value')`` with the same headers, so the text they
    share is built once (``encode_uniform_requests``); names are checked once per batch.
    """
    try:
        paths = key_paths(entity_set, key_column, [key_value for key_value, _body in items])
    except ValueError:
        _raise_first_error(entity_set, key_column, items)
        raise
    encode = batch_dumps()
    targets = [
        (f"{api_url}{path}", encode(_without_key(body, key_column)))
        for (_key_value, body), path in zip(items, paths, strict=True)
    ]
    return encode_uniform_requests("PATCH", targets, UPSERT_HEADERS)


def _raise_first_error(entity_set: str, key_column: str, items: Items) -> None:
    """Raise what building the parts row by row raises first: a refused key, or a body that
    is not JSON before it."""
    for key_value, body in items:
        key_path(entity_set, {key_column: key_value})
        dumps(_without_key(body, key_column))


def _without_key(body: Mapping[str, Any], key_column: str) -> dict[str, Any]:
    """``without_keys(body, {key_column: ...})``: a plain dict without the key is used as is."""
    if isinstance(body, dict) and type(body) is dict:  # not a subclass: copied as it iterates
        if key_column not in body:
            return body
        copy = body.copy()
        del copy[key_column]
        return copy
    return without_keys(body, {key_column: None})


def decode_upserts(response: httpx.Response, key_column: str, items: Items) -> list[UpsertOutcome]:
    """One outcome per item from a ``$batch`` answer (positions must match)."""
    content_type = response.headers.get("Content-Type")
    answers: list[int | BatchResponseItem]
    try:  # a success's status is all this needs: its headers and body are not read
        quick = decode_response_statuses(response.content, content_type)
        if quick is None:  # a change set, or a part to decode whole: the same shape
            flat = flatten_responses(decode_batch_response(response.content, content_type))
            quick = [a.status if 200 <= a.status < 300 else a for a in flat]
        answers = quick
    except MultipartError as exc:
        raise DataverseError(f"$batch answer could not be read: {exc}") from exc
    if len(answers) != len(items):
        message = f"$batch answered {len(answers)} responses for {len(items)} requests"
        return [
            UpsertOutcome(k, response.status_code, "failed", "", message, True) for k, _ in items
        ]
    outcomes = []
    for (key_value, _body), answer in zip(items, answers, strict=True):
        if type(answer) is int:  # a 2xx; outcome_of(status) inline, this runs per row
            outcomes.append(
                UpsertOutcome(
                    key_value,
                    answer,
                    "upserted" if answer == 204 else "created" if answer == 201 else "updated",
                )
            )
            continue
        assert isinstance(answer, BatchResponseItem)
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
                key_value,
                answer.status,
                "failed",
                code,
                message or error.message,
                error.transient,
                error.retry_after or 0.0,
            )
        )
    return outcomes


def outcome_of(status: int) -> Outcome:
    if status == 201:
        return "created"
    if status == 200:
        return "updated"
    return "upserted"


def without_keys(body: Mapping[str, Any], key: Mapping[str, Any]) -> dict[str, Any]:
    """The body without key columns: Dataverse strips or mismatches them (use-upsert page)."""
    return {k: v for k, v in body.items() if k not in key}
