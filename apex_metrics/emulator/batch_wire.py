"""The emulator's own reading of ``$batch`` request bodies and writing of their answers.

The client has a codec of its own (the ``multipart_encode`` and ``multipart_decode`` modules of
``apex_metrics.dataverse``: hand-written, fast). This one shares no code with it: it reads with
the standard library's ``email`` parser and writes by joining strings, so a bug on one side fails
the tests of the other instead of passing both (``tests/emulator/test_wire_agreement.py`` checks
that each side reads what the other writes).

A request body (OData 4.0 Part 1 §11.7, Microsoft's "Execute batch operations using the Web API")
is ``multipart/mixed`` with the boundary of its Content-Type. Each part is either one request
(``Content-Type: application/http``, ``Content-Transfer-Encoding: binary`` or none, optional
``Content-ID``; its content a request line, header lines, a blank line and a body) or a change
set: a ``multipart/mixed`` part of such requests, none of them a GET and none a change set.

- Line ends: CRLF or bare LF. The line break before a delimiter belongs to it; a body without
  ``Content-Length`` (or with more than came) ends before its trailing CR and LF bytes.
- Headers: names are RFC 9110 tokens, text is UTF-8, no line is folded; a name given twice keeps
  its last value. A request's ``Content-ID`` is its part's, else the request's own header.
- A body that is only a closing delimiter is an empty batch; a change set needs a part.

Anything else raises :class:`MalformedBatch` (a ``ValueError``) naming the part and the rule.

The parser runs with the ``compat32`` policy: it splits the body the same way as the others, and
leaves header values as they came instead of parsing every Content-Type into an object (which
made a 1,000-part batch ten times slower: 200 ms against 20 ms).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from email import errors
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from http import HTTPStatus

__all__ = [
    "BatchPart",
    "BatchRequestItem",
    "BatchResponseItem",
    "BatchResponsePart",
    "ChangeSet",
    "ChangeSetResponse",
    "MalformedBatch",
    "decode_request",
    "encode_response",
]

_PARSER = BytesParser(policy=compat32)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 2046 boundary: 1 to 70 of these characters, not ending with a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_METHODS = frozenset({"GET", "POST", "PATCH", "PUT", "DELETE"})
# What the parser notes when a head has a line that is not a header line.
_BAD_HEAD = (
    errors.MissingHeaderBodySeparatorDefect,
    errors.FirstHeaderLineIsContinuationDefect,
    errors.MisplacedEnvelopeHeaderDefect,
)
_REASONS = {status.value: status.phrase for status in HTTPStatus}


class MalformedBatch(ValueError):
    """The ``$batch`` request body cannot be read."""


@dataclass(slots=True)
class BatchPart:
    """One request of a batch (or of a change set), as sent: header names keep their case."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    content_id: str | None = None


@dataclass(slots=True)
class ChangeSet:
    """Requests that succeed or fail together."""

    parts: list[BatchPart] = field(default_factory=list)


BatchRequestItem = BatchPart | ChangeSet


@dataclass(slots=True)
class BatchResponseItem:
    """One answer in a batch response."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_id: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(slots=True)
class ChangeSetResponse:
    """The answers of a change set that succeeded, in request order."""

    items: list[BatchResponseItem] = field(default_factory=list)


BatchResponsePart = BatchResponseItem | ChangeSetResponse


# --- reading ------------------------------------------------------------------------------------


def decode_request(body: bytes, content_type: str | None) -> list[BatchRequestItem]:
    """The requests and change sets of a ``$batch`` request body, in order."""
    if not content_type:
        raise MalformedBatch("Content-Type is missing; expected multipart/mixed with a boundary")
    if "\r" in content_type or "\n" in content_type:
        raise MalformedBatch("Content-Type holds a line break")
    head = f"Content-Type: {content_type}\r\n\r\n".encode("utf-8", "surrogateescape")
    try:
        envelope = _PARSER.parsebytes(head + body)
    except RecursionError:  # multipart parts nested hundreds deep
        raise MalformedBatch("batch: multipart parts are nested too deeply") from None
    media_type = _media_type(content_type)
    if media_type != "multipart/mixed":
        raise MalformedBatch(f"Content-Type must be multipart/mixed, not {media_type!r}")
    boundary = _boundary(envelope, "Content-Type multipart/mixed")
    if not envelope.is_multipart() and _closed(envelope, len(body)):
        return []  # only a closing delimiter
    items: list[BatchRequestItem] = []
    known: dict[bytes, dict[str, str]] = {}  # header lines of requests → their headers
    for index, part in enumerate(_parts(envelope, boundary, "batch"), start=1):
        where = f"batch part {index}"
        part_head = _head(part, where)
        if _media_type(part_head.get("content-type", "")) != "multipart/mixed":
            items.append(_request(part, part_head, where, known))
            continue
        inner = _boundary(part, f"{where}: Content-Type multipart/mixed")
        changeset = ChangeSet()
        for inner_index, inner_part in enumerate(_parts(part, inner, where), start=1):
            inner_where = f"{where}, change set part {inner_index}"
            inner_head = _head(inner_part, inner_where)
            if _media_type(inner_head.get("content-type", "")) == "multipart/mixed":
                raise MalformedBatch(f"{inner_where}: change sets cannot be nested")
            request = _request(inner_part, inner_head, inner_where, known)
            if request.method == "GET":
                raise MalformedBatch(f"{inner_where}: GET is not allowed inside a change set")
            changeset.parts.append(request)
        items.append(changeset)
    return items


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _boundary(message: Message, what: str) -> str:
    """The boundary the parser split ``message`` at, checked against RFC 2046."""
    boundary = message.get_boundary()
    if boundary is None:
        raise MalformedBatch(f"{what} has no boundary parameter")
    if not _BOUNDARY.fullmatch(boundary):
        raise MalformedBatch(f"invalid multipart boundary {boundary!r} (RFC 2046: 1-70 characters)")
    return boundary


def _closed(envelope: Message, size: int) -> bool:
    """Whether the parser, finding no delimiter, met a closing one: it kept every other line of
    the body (as the payload, and what came after it as the epilogue)."""
    payload = envelope.get_payload()
    kept = len(payload) if isinstance(payload, str) else size
    return kept + len(envelope.epilogue or "") < size


def _parts(message: Message, boundary: str, where: str) -> list[Message]:
    """The parts of a multipart ``message``; the closing delimiter is required."""
    if not message.is_multipart():
        raise MalformedBatch(f"{where}: no --{boundary} delimiter found")
    if any(isinstance(d, errors.CloseBoundaryNotFoundDefect) for d in message.defects):
        raise MalformedBatch(f"{where}: the closing delimiter --{boundary}-- is missing")
    parts = [part for part in message.get_payload() if isinstance(part, Message)]
    if not parts:
        raise MalformedBatch(f"{where}: no part between the delimiters")
    return parts


def _head(message: Message, where: str) -> dict[str, str]:
    """The headers of a part's head, names in lower case."""
    return {name.lower(): value for name, value in _headers(message, where).items()}


def _bad_line(message: Message) -> str:
    """The line the parser stopped the head at, as far as it tells."""
    unixfrom = message.get_unixfrom()
    if unixfrom is not None:
        return unixfrom[:80]
    for defect in message.defects:
        line = getattr(defect, "line", None)
        if isinstance(line, str):
            return line.rstrip("\r\n")[:80]
    payload = message.get_payload()
    first = payload.splitlines()[0] if isinstance(payload, str) and payload else ""
    return first[:80]


def _headers(message: Message, where: str) -> dict[str, str]:
    """Header names and values as sent (values stripped), a later one of a name winning; the
    lines before a line the parser did not take as a header are checked first."""
    headers: dict[str, str] = {}
    for name, value in message.raw_items():
        if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value:
            raise MalformedBatch(f"{where}: malformed header line {f'{name}: {value}'[:80]!r}")
        try:
            text = value.encode("ascii", "surrogateescape").decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedBatch(f"{where}: headers are not valid UTF-8") from None
        headers[name] = text.strip()
    if message.get_unixfrom() is not None or any(isinstance(d, _BAD_HEAD) for d in message.defects):
        raise MalformedBatch(f"{where}: malformed header line {_bad_line(message)!r}")
    return headers


def _request(
    part: Message, head: dict[str, str], where: str, known: dict[bytes, dict[str, str]]
) -> BatchPart:
    """The HTTP request in ``part`` (an ``application/http`` part, binary); ``known``: header
    lines already read in this batch (requests of a batch mostly share theirs)."""
    media_type = _media_type(head.get("content-type", ""))
    if media_type != "application/http":
        raise MalformedBatch(
            f"{where}: Content-Type must be application/http"
            f" (or multipart/mixed for a change set), not {media_type or 'missing'!r}"
        )
    encoding = head.get("content-transfer-encoding")
    if encoding is not None and encoding.strip().lower() != "binary":
        raise MalformedBatch(f"{where}: Content-Transfer-Encoding must be binary, not {encoding!r}")
    content = part.get_payload(decode=True)  # the bytes as sent: nothing to undo for binary
    assert isinstance(content, bytes)
    first, _, rest = content.partition(b"\n")
    line = _utf8(first[:-1] if first.endswith(b"\r") else first, where)
    if not line.strip():
        raise MalformedBatch(f"{where}: the HTTP request line is missing")
    words = line.split()
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise MalformedBatch(f"{where}: malformed request line {line[:80]!r}")
    method = words[0].upper()
    if method not in _METHODS:
        raise MalformedBatch(f"{where}: method {words[0]!r} is not allowed in a batch")
    header_block, body = _split_head(rest)
    headers = _message_headers(header_block, where, known)
    content_id = head.get("content-id") or _first(headers, "content-id")
    length = _first(headers, "content-length")
    if length is not None:
        size = _content_length(length, where)
        if size <= len(body):
            return BatchPart(method, words[1], headers, body[:size] or None, content_id)
    return BatchPart(method, words[1], headers, body.rstrip(b"\r\n") or None, content_id)


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBatch(f"{where}: headers are not valid UTF-8") from None


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """The header lines of an HTTP message (after its start line) and its body, apart at the
    first blank line (none: all header lines)."""
    if data.startswith(b"\n"):
        return b"", data[1:]
    if data.startswith(b"\r\n"):
        return b"", data[2:]
    blank = _BLANK_LINE.search(data)
    if blank is None:
        return data, b""
    return data[: blank.start()], data[blank.end() :]


def _message_headers(
    block: bytes, where: str, known: dict[bytes, dict[str, str]]
) -> dict[str, str]:
    if not block.strip(b"\r\n"):
        return {}
    headers = known.get(block)
    if headers is None:
        headers = _headers(_PARSER.parsebytes(block + b"\r\n\r\n", headersonly=True), where)
        known[block] = headers
    return headers.copy()


def _first(headers: dict[str, str], lowered: str) -> str | None:
    """The value of the first header named ``lowered``, ignoring case."""
    for name, value in headers.items():
        if name.lower() == lowered:
            return value
    return None


def _content_length(length: str, where: str) -> int:
    if length.isdecimal() and length.isascii():
        return int(length)
    raise MalformedBatch(f"{where}: Content-Length {length!r} is not a number")


# --- writing ------------------------------------------------------------------------------------


def encode_response(items: Sequence[BatchResponsePart]) -> tuple[bytes, str]:
    """The body and Content-Type of the answer to a batch, with fresh boundaries
    (``batchresponse_<guid>``, change sets ``changesetresponse_<guid>``); CRLF line ends."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    chunks: list[bytes] = []
    for item in items:
        if isinstance(item, ChangeSetResponse):
            inner = f"changesetresponse_{uuid.uuid4()}"
            opening = f'--{boundary}\r\nContent-Type: multipart/mixed; boundary="{inner}"\r\n\r\n'
            chunks.append(opening.encode())
            for response in item.items:
                chunks += _response(inner, response)
            chunks.append(f"--{inner}--\r\n\r\n".encode())
        else:
            chunks += _response(boundary, item)
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/mixed; boundary={boundary}"


def _response(boundary: str, item: BatchResponseItem) -> tuple[bytes, bytes, bytes]:
    """A part: delimiter, MIME head, status line, header lines, blank line; the body; CRLF."""
    lines = [f"--{boundary}", "Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if item.content_id is not None:
        lines.append(f"Content-ID: {item.content_id}")
    reason = _REASONS.get(item.status, "Unknown")
    lines += ["", f"HTTP/1.1 {item.status} {reason}"]
    lines += [f"{name}: {value}" for name, value in item.headers.items()]
    lines += ["", ""]
    return "\r\n".join(lines).encode(), item.body, b"\r\n"
