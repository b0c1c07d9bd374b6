"""The ``$batch`` wire format: ``multipart/mixed`` requests and responses, with change sets.

Shared by the client (encode requests, decode responses) and the emulator (decode requests,
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
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

__all__ = [
    "BatchPart",
    "BatchRequestItem",
    "BatchResponseItem",
    "BatchResponsePart",
    "ChangeSet",
    "ChangeSetResponse",
    "MultipartError",
    "decode_batch_request",
    "decode_batch_response",
    "encode_batch_request",
    "encode_batch_response",
    "flatten_responses",
    "new_boundary",
    "parse_boundary",
]

CRLF = "\r\n"
_BOUNDARY_PARAM = re.compile(r"""boundary\s*=\s*(?:"([^"]*)"|([^\s;,"]+))""", re.IGNORECASE)
_BOUNDARY_CHARS = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_LINE_BREAK = re.compile(r"\r?\n")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_METHODS = frozenset({"GET", "POST", "PATCH", "PUT", "DELETE"})


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


# --- boundaries ---------------------------------------------------------------------------------


def new_boundary(prefix: str) -> str:
    """A fresh boundary such as ``batch_<uuid>``."""
    return f"{prefix}_{uuid.uuid4()}"


def parse_boundary(content_type: str | None) -> str:
    """The boundary parameter of a ``multipart/mixed`` Content-Type."""
    if not content_type:
        raise MultipartError("Content-Type is missing; expected multipart/mixed with a boundary")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "multipart/mixed":
        raise MultipartError(f"Content-Type must be multipart/mixed, not {media_type!r}")
    match = _BOUNDARY_PARAM.search(content_type)
    if match is None:
        raise MultipartError("Content-Type multipart/mixed has no boundary parameter")
    boundary = match.group(1) if match.group(1) is not None else match.group(2)
    if not _BOUNDARY_CHARS.match(boundary) or boundary.endswith(" "):
        raise MultipartError(f"invalid multipart boundary {boundary!r} (RFC 2046: 1-70 characters)")
    return boundary


# --- decoding -----------------------------------------------------------------------------------


def _delimiter_at(body: bytes, index: int, marker: bytes) -> tuple[int, int, bool] | None:
    """For ``--boundary`` found at ``index``: (start of its line break, end of the delimiter,
    closing?) when it is a whole delimiter line, else None."""
    if index > 0:
        if body[index - 1] != 0x0A:  # a delimiter starts a line
            return None
        line_start = index - 2 if index > 1 and body[index - 2] == 0x0D else index - 1
    else:
        line_start = 0
    end = index + len(marker)
    closing = body.startswith(b"--", end)
    after = end + 2 if closing else end
    while after < len(body) and body[after] in (0x20, 0x09):  # transport padding
        after += 1
    if after < len(body) and body[after] != 0x0A and not body.startswith(b"\r\n", after):
        return None
    return line_start, after, closing


def _split(body: bytes, boundary: str, where: str) -> list[bytes]:
    """The parts between ``--boundary`` lines; the closing ``--boundary--`` is required."""
    marker = b"--" + boundary.encode("ascii")
    parts: list[bytes] = []
    start: int | None = None
    position = 0
    while (index := body.find(marker, position)) >= 0:
        found = _delimiter_at(body, index, marker)
        if found is None:
            position = index + 1
            continue
        line_start, after, closing = found
        if start is not None:
            parts.append(_strip_line_break(body[start:line_start]))
        if closing:
            return parts
        start = position = after
    if start is None:
        raise MultipartError(f"{where}: no --{boundary} delimiter found")
    raise MultipartError(f"{where}: the closing delimiter --{boundary}-- is missing")


def _strip_line_break(chunk: bytes) -> bytes:
    if chunk.startswith(b"\r\n"):
        return chunk[2:]
    if chunk.startswith(b"\n"):
        return chunk[1:]
    return chunk


def _head_and_body(chunk: bytes) -> tuple[bytes, bytes]:
    if chunk.startswith((b"\r\n", b"\n")):
        return b"", _strip_line_break(chunk)
    match = _BLANK_LINE.search(chunk)
    if match is None:
        return chunk, b""
    return chunk[: match.start()], chunk[match.end() :]


def _decode_text(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError(f"{where}: headers are not valid UTF-8") from None


def _parse_headers(block: bytes, where: str) -> dict[str, str]:
    """The headers of a MIME part."""
    return _header_lines(_lines(block, where), where)


def _lines(block: bytes, where: str) -> list[str]:
    return [line for line in _LINE_BREAK.split(_decode_text(block, where)) if line.strip()]


def _header_lines(lines: Iterable[str], where: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _TOKEN.match(name):
            raise MultipartError(f"{where}: malformed header line {line[:80]!r}")
        headers[name] = value.strip()
    return headers


def _message_body(raw: bytes, headers: dict[str, str], where: str) -> bytes:
    length = _header(headers, "Content-Length")
    if length is not None:
        if not length.isdigit():
            raise MultipartError(f"{where}: Content-Length {length!r} is not a number")
        if int(length) <= len(raw):
            return raw[: int(length)]
    return raw.rstrip(b"\r\n")


def _open_part(chunk: bytes, where: str) -> tuple[dict[str, str], bytes]:
    """A MIME part's headers (names in lower case) and its content."""
    block, content = _head_and_body(chunk)
    headers = {name.lower(): value for name, value in _parse_headers(block, where).items()}
    return headers, content


def _media_type(part_headers: dict[str, str]) -> str:
    return part_headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _check_http_part(part_headers: dict[str, str], where: str) -> None:
    content_type = _media_type(part_headers)
    if content_type != "application/http":
        raise MultipartError(
            f"{where}: Content-Type must be application/http"
            f" (or multipart/mixed for a change set), not {content_type or 'missing'!r}"
        )
    encoding = part_headers.get("content-transfer-encoding")
    if encoding is not None and encoding.strip().lower() != "binary":
        raise MultipartError(f"{where}: Content-Transfer-Encoding must be binary, not {encoding!r}")


def _decode_request(part_headers: dict[str, str], message: bytes, where: str) -> BatchPart:
    _check_http_part(part_headers, where)
    head, raw_body = _head_and_body(message)
    lines = _lines(head, where)
    if not lines:
        raise MultipartError(f"{where}: the HTTP request line is missing")
    words = lines[0].split()
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise MultipartError(f"{where}: malformed request line {lines[0][:80]!r}")
    method = words[0].upper()
    if method not in _METHODS:
        raise MultipartError(f"{where}: method {words[0]!r} is not allowed in a batch")
    headers = _header_lines(lines[1:], where)
    body = _message_body(raw_body, headers, where)
    content_id = part_headers.get("content-id") or _header(headers, "Content-ID")
    return BatchPart(method, words[1], headers, body or None, content_id)


def _decode_response(chunk: bytes, where: str) -> BatchResponseItem:
    part_headers, message = _open_part(chunk, where)
    _check_http_part(part_headers, where)
    head, raw_body = _head_and_body(message)
    lines = _lines(head, where)
    if not lines:
        raise MultipartError(f"{where}: the HTTP status line is missing")
    words = lines[0].split(" ", 2)
    if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        raise MultipartError(f"{where}: malformed status line {lines[0][:80]!r}")
    headers = _header_lines(lines[1:], where)
    content_id = part_headers.get("content-id") or _header(headers, "Content-ID")
    reason = words[2].strip() if len(words) > 2 else ""
    return BatchResponseItem(
        int(words[1]), headers, _message_body(raw_body, headers, where), content_id, reason
    )


def _nested_boundary(chunk: bytes, where: str) -> tuple[str, bytes] | None:
    """The change-set boundary and body when ``chunk`` is a nested multipart part."""
    part_headers, body = _open_part(chunk, where)
    if _media_type(part_headers) != "multipart/mixed":
        return None
    return parse_boundary(part_headers["content-type"]), body


def decode_batch_request(body: bytes, content_type: str | None) -> list[BatchRequestItem]:
    """Parse a ``$batch`` request body into requests and change sets, in order."""
    boundary = parse_boundary(content_type)
    items: list[BatchRequestItem] = []
    for index, chunk in enumerate(_split(body, boundary, "batch"), start=1):
        where = f"batch part {index}"
        part_headers, content = _open_part(chunk, where)
        if _media_type(part_headers) != "multipart/mixed":
            items.append(_decode_request(part_headers, content, where))
            continue
        inner_boundary = parse_boundary(part_headers["content-type"])
        changeset = ChangeSet(boundary=inner_boundary)
        for inner_index, inner in enumerate(_split(content, inner_boundary, where), start=1):
            inner_where = f"{where}, change set part {inner_index}"
            inner_headers, inner_content = _open_part(inner, inner_where)
            if _media_type(inner_headers) == "multipart/mixed":
                raise MultipartError(f"{inner_where}: change sets cannot be nested")
            part = _decode_request(inner_headers, inner_content, inner_where)
            if part.method == "GET":
                raise MultipartError(f"{inner_where}: GET is not allowed inside a change set")
            changeset.parts.append(part)
        items.append(changeset)
    return items


def decode_batch_response(body: bytes, content_type: str | None) -> list[BatchResponsePart]:
    """Parse a ``$batch`` response body into responses and change-set responses, in order."""
    boundary = parse_boundary(content_type)
    items: list[BatchResponsePart] = []
    for index, chunk in enumerate(_split(body, boundary, "batch response"), start=1):
        where = f"batch response part {index}"
        nested = _nested_boundary(chunk, where)
        if nested is None:
            items.append(_decode_response(chunk, where))
            continue
        inner_boundary, inner_body = nested
        changeset = ChangeSetResponse(boundary=inner_boundary)
        for inner_index, inner in enumerate(_split(inner_body, inner_boundary, where), start=1):
            changeset.items.append(
                _decode_response(inner, f"{where}, change set part {inner_index}")
            )
        items.append(changeset)
    return items


def flatten_responses(items: Iterable[BatchResponsePart]) -> list[BatchResponseItem]:
    """Every response in order, change sets expanded in place."""
    flat: list[BatchResponseItem] = []
    for item in items:
        if isinstance(item, ChangeSetResponse):
            flat.extend(item.items)
        else:
            flat.append(item)
    return flat


# --- encoding -----------------------------------------------------------------------------------


def _part_head(content_id: str | None, nl: str) -> str:
    head = f"Content-Type: application/http{nl}Content-Transfer-Encoding: binary{nl}"
    if content_id is not None:
        head += f"Content-ID: {content_id}{nl}"
    return head + nl


def _encode_request(part: BatchPart, nl: str) -> bytes:
    headers = dict(part.headers)
    if part.body is not None:
        if _header(headers, "Content-Type") is None:
            headers["Content-Type"] = "application/json; type=entry"
        if _header(headers, "Content-Length") is None:
            headers["Content-Length"] = str(len(part.body))
    lines = [f"{part.method.upper()} {part.url} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    text = _part_head(part.content_id, nl) + nl.join(lines) + nl + nl
    return text.encode("utf-8") + (part.body or b"") + nl.encode("ascii")


def _encode_response(item: BatchResponseItem, nl: str) -> bytes:
    reason = item.reason
    if not reason:
        try:
            reason = HTTPStatus(item.status).phrase
        except ValueError:
            reason = "Unknown"
    lines = [f"HTTP/1.1 {item.status} {reason}"]
    lines.extend(f"{name}: {value}" for name, value in item.headers.items())
    text = _part_head(item.content_id, nl) + nl.join(lines) + nl + nl
    return text.encode("utf-8") + item.body + nl.encode("ascii")


def _multipart(boundary: str, chunks: Sequence[bytes], nl: str) -> bytes:
    out = bytearray()
    for chunk in chunks:
        out += f"--{boundary}{nl}".encode("ascii")
        out += chunk
    out += f"--{boundary}--{nl}".encode("ascii")
    return bytes(out)


def _nested(boundary: str, body: bytes, nl: str) -> bytes:
    head = f'Content-Type: multipart/mixed; boundary="{boundary}"{nl}{nl}'
    return head.encode("ascii") + body + nl.encode("ascii")


def encode_batch_request(
    items: Sequence[BatchRequestItem], *, boundary: str | None = None, newline: str = CRLF
) -> tuple[bytes, str]:
    """The body and the Content-Type header value of a ``$batch`` request."""
    boundary = boundary or new_boundary("batch")
    chunks: list[bytes] = []
    for item in items:
        if isinstance(item, ChangeSet):
            inner = item.boundary or new_boundary("changeset")
            body = _multipart(inner, [_encode_request(p, newline) for p in item.parts], newline)
            chunks.append(_nested(inner, body, newline))
        else:
            chunks.append(_encode_request(item, newline))
    return _multipart(boundary, chunks, newline), f'multipart/mixed; boundary="{boundary}"'


def encode_batch_response(
    items: Sequence[BatchResponsePart], *, boundary: str | None = None
) -> tuple[bytes, str]:
    """The body and the Content-Type header value of a ``$batch`` response."""
    boundary = boundary or new_boundary("batchresponse")
    chunks: list[bytes] = []
    for item in items:
        if isinstance(item, ChangeSetResponse):
            inner = item.boundary or new_boundary("changesetresponse")
            body = _multipart(inner, [_encode_response(i, CRLF) for i in item.items], CRLF)
            chunks.append(_nested(inner, body, CRLF))
        else:
            chunks.append(_encode_response(item, CRLF))
    return _multipart(boundary, chunks, CRLF), f"multipart/mixed; boundary={boundary}"
