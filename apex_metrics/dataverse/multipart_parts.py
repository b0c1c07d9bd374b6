"""The ``$batch`` wire format's values, shared by the client's encoder and decoder.

A batch holds requests (:class:`BatchPart`) and change sets (:class:`ChangeSet`); its response
holds responses (:class:`BatchResponseItem`) and change-set responses
(:class:`ChangeSetResponse`). ``multipart_encode`` writes them, ``multipart_decode`` reads them;
the emulator reads and writes the wire format with code of its own
(``apex_metrics.emulator.batch_wire``), so that a bug on one side shows in the tests of the other.
Layout, as in Microsoft's "Execute batch operations" page::

encode responses). Layout, as in Microsoft's "Execute batch operations" page::

    --batch_1                                  <- one part per request
    Content-Type: application/http
    Content-Transfer-Encoding: binary

    PATCH /api/data/v9.2/things(key='a') HTTP/1.1
    Content-Type: application/json; type=entry

    {"col": 1}
    --batch_1                                  <- a change set: a nested multipart/mixed
    Content-Type: multipart/mixed; boundary="changeset_2"

    --changeset_2
    Content-Type: application/http
    Content-Transfer-Encoding: binary
    Content-ID: 1
    …
    --changeset_2--
    --batch_1--


Decoding accepts CRLF and bare LF line endings (both occur on the wire). Encoding writes CRLF.
Every malformed input raises :class:`MultipartError` (a ``ValueError``) naming the part and rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CRLF",
    "BatchPart",
    "BatchRequestItem",
    "BatchResponseItem",
    "BatchResponsePart",
    "ChangeSet",
    "ChangeSetResponse",
    "MultipartError",
    "flatten_responses",
]

CRLF = "\r\n"


class MultipartError(ValueError):
    """The ``multipart/mixed`` body is malformed."""


def _header(headers: dict[str, str], name: str, default: str | None = None) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return default


@dataclass(slots=True)
class BatchPart:
    """One HTTP request inside a batch (or inside a change set)."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    content_id: str | None = None

    def header(self, name: str, default: str | None = None) -> str | None:
        """A request header, looked up without regard to case."""
        return _header(self.headers, name, default)

    def json(self) -> Any:
        """The body parsed as JSON (``json.JSONDecodeError`` when it is not JSON)."""
        return json.loads(self.body or b"")


@dataclass(slots=True)
class ChangeSet:
    """Requests that succeed or fail together (``ExecuteTransaction``); no GET allowed."""

    parts: list[BatchPart] = field(default_factory=list)
    boundary: str | None = None


BatchRequestItem = BatchPart | ChangeSet


@dataclass(slots=True)
class BatchResponseItem:
    """One HTTP response inside a batch response."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_id: str | None = None
    reason: str = ""

    def header(self, name: str, default: str | None = None) -> str | None:
        """A response header, looked up without regard to case."""
        return _header(self.headers, name, default)

    def json(self) -> Any:
        """The body parsed as JSON (``json.JSONDecodeError`` when it is not JSON)."""
        return json.loads(self.body or b"")

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(slots=True)
class ChangeSetResponse:
    """The responses of one change set, in request order."""

    items: list[BatchResponseItem] = field(default_factory=list)
    boundary: str | None = None


BatchResponsePart = BatchResponseItem | ChangeSetResponse


def flatten_responses(items: Iterable[BatchResponsePart]) -> list[BatchResponseItem]:
    """Every response in order, change sets expanded in place."""
    flat: list[BatchResponseItem] = []
    for item in items:
        if isinstance(item, ChangeSetResponse):
            flat.extend(item.items)
        else:
            flat.append(item)
    return flat
