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
    "encode_uniform_requests",
    "flatten_responses",
    "new_boundary",
    "parse_boundary",
]

CRLF = "\r\n"
_BOUNDARY_PARAM = re.compile(r"""boundary\s*=\s*(?:"([^"]*)"|([^\s;,"]+))""", re.IGNORECASE)
_BOUNDARY_CHARS = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# The LF that starts a blank line, its CR, its LF (the CR before it is found apart: a pattern
# starting with a fixed byte is searched fast).
_BLANK_LINE = re.compile(rb"\n\r?\n")
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
#
# Speed: the body is never split into copies. Delimiters are found with ``find`` on
# ``\n--boundary`` (only candidates at the start of a line are looked at), parts are (start, end)
# offsets into the body, a part's blank line is found with one search between those offsets, and
# only head blocks and message bodies are copied out. Within one call, what repeats (part heads,
# header lines, header blocks) is read once (see ``_Memo``); each is read as the line-by-line
# reader would, which also runs, for the exact error, whenever anything does not fit.

# A MIME part: its head, where its content starts, its Content-ID if not in the head.
_Part = tuple["_Head", int, str | None]
# An HTTP message in a part: start line, its words, headers, Content-ID, body.
_Message = tuple[str, list[str], dict[str, str], str | None, bytes]
# Headers of an HTTP message, with the first names equal to Content-Length and Content-ID.
_Headers = tuple[dict[str, str], str | None, str | None]
# Header blocks are no longer remembered after this many misses, when they outnumber the hits.
_BLOCK_MISSES = 32
# Header lines remembered per decode call, at most.
_MAX_LINES = 4096


class _Head:
    """A parsed MIME part head: headers with lower-case names, media type, fit for a request or
    response (``application/http``, binary)?"""

    __slots__ = ("headers", "is_http", "media_type")

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.media_type = _media_type(headers)
        encoding = headers.get("content-transfer-encoding")
        self.is_http = self.media_type == "application/http" and (
            encoding is None or encoding.strip().lower() == "binary"
        )


class _Memo:
    """What one decode call has already worked out, keyed by its exact input (so bounded by it).

    ``heads``: MIME part head block → its parse (parts of a batch mostly share one);
    ``stems``: a head block without its last line → its parse (parts of a change set differ by
    their last line, Content-ID);
    ``prefix``, ``prefix_head``: the last part's head block with its blank line, and its parse
    (a part starting with the same bytes has the same head: no search needed);
    ``stem``, ``stem_head``: the same for the last head read as a stem and one more line;
    ``blocks``: the header lines of an HTTP message (after its start line) → their parse
    (requests of a batch mostly share theirs), kept while it finds more than it misses;
    ``lines``: a header line → (name, value), and ``names``: the text before its colon → the
    name it gives (a token), for the first ``_MAX_LINES``;
    ``keys``: header names in order → the first names equal to Content-Length and Content-ID
    without regard to case (what ``_header`` finds).
    """

    __slots__ = (
        "block_hits",
        "block_misses",
        "blocks",
        "heads",
        "keys",
        "lines",
        "names",
        "prefix",
        "prefix_head",
        "stem",
        "stem_head",
        "stems",
    )

    def __init__(self) -> None:
        self.heads: dict[bytes, _Head] = {}
        self.stems: dict[bytes, _Head | None] = {}
        self.prefix = b""  # empty: none yet (the heads below are then never read)
        self.prefix_head = _Head({})
        self.stem = b""
        self.stem_head = _Head({})
        self.blocks: dict[str, _Headers] | None = {}
        self.block_hits = self.block_misses = 0
        self.lines: dict[str, tuple[str, str]] = {}
        self.names: dict[str, str] = {}
        self.keys: dict[tuple[str, ...], tuple[str | None, str | None]] = {}


def _split(data: bytes, boundary: str, where: str, start: int, end: int) -> list[tuple[int, int]]:
    """The parts of ``data[start:end]`` between ``--boundary`` lines, as offsets into ``data``;
    the closing ``--boundary--`` is required.

    A delimiter is ``--boundary`` at the start of a line, then ``--`` if closing, transport padding
    (spaces, tabs), then a line break or the end; the line break before it belongs to it, and a
    part starts after the line break that ends the delimiter before it. Preamble and epilogue are
    ignored. A ``--boundary`` that is not a whole delimiter line (``--boundaryX``) is content.
    """
    marker = b"--" + boundary.encode("ascii")
    separator = b"\n" + marker
    parts: list[tuple[int, int]] = []
    part_start = -1  # where the part being read starts: just after its delimiter line
    if data.startswith(marker, start, end):
        at = start  # where a candidate delimiter starts, -1: no more
    else:
        found = data.find(separator, start, end)
        at = found + 1 if found >= 0 else -1
    while at >= 0:
        tail = at + len(marker)
        closing = False
        after = tail
        byte = data[tail] if tail < end else -1
        if byte != 0x0A and not (byte == 0x0D and data.startswith(b"\r\n", tail, end)):
            # not the usual delimiter line (a line break right after the boundary)
            closing = data.startswith(b"--", tail, end)
            after = tail + 2 if closing else tail
            while after < end and data[after] in (0x20, 0x09):  # transport padding
                after += 1
            if after < end and data[after] != 0x0A and not data.startswith(b"\r\n", after, end):
                found = data.find(separator, at, end)  # not a delimiter: content
                at = found + 1 if found >= 0 else -1
                continue
        if part_start >= 0:
            line_start = at - 2 if at - 2 >= start and data[at - 2] == 0x0D else at - 1
            if part_start < line_start:  # without the line break that ended the delimiter
                byte = data[part_start]
                if byte == 0x0A:
                    part_start += 1
                elif byte == 0x0D and part_start + 1 < line_start and data[part_start + 1] == 0x0A:
                    part_start += 2
            parts.append((part_start, line_start))
        if closing:
            return parts
        part_start = after
        found = data.find(separator, after, end)
        at = found + 1 if found >= 0 else -1
    if part_start < 0:
        raise MultipartError(f"{where}: no --{boundary} delimiter found")
    raise MultipartError(f"{where}: the closing delimiter --{boundary}-- is missing")


def _blank_line(data: bytes, start: int, end: int) -> tuple[int, int]:
    """In ``data[start:end]``, the first blank line (``\\r?\\n\\r?\\n``): (where the head
    before it ends, where what follows it starts); (end, end) when there is none. Content that
    starts with a line break has an empty head."""
    if start < end and data[start] in (0x0A, 0x0D):  # seldom: content starting with a line break
        if data[start] == 0x0A:
            return start, start + 1
        if data.startswith(b"\r\n", start, end):
            return start, start + 2
    match = _BLANK_LINE.search(data, start, end)
    if match is None:
        return end, end
    line_feed, after = match.span()
    if line_feed > start and data[line_feed - 1] == 0x0D:
        return line_feed - 1, after
    return line_feed, after


def _text(block: bytes, where: str) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError(f"{where}: headers are not valid UTF-8") from None


def _nonblank(text: str) -> list[str]:
    """The lines that are not blank, split at CRLF or LF (a lone CR stays in its line)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return [line for line in text.split("\n") if line.strip()]


def _header_pair(line: str, where: str) -> tuple[str, str]:
    name, sep, value = line.partition(":")
    name = name.strip()
    if not sep or not _TOKEN.match(name):
        raise MultipartError(f"{where}: malformed header line {line[:80]!r}")
    return name, value.strip()


def _header_lines(lines: list[str], where: str) -> dict[str, str]:
    """Headers line by line (a later line of the same name wins): the exact error for a bad one."""
    headers: dict[str, str] = {}
    for line in lines:
        name, value = _header_pair(line, where)
        headers[name] = value
    return headers


def _fast_headers(text: str, offset: int, memo: _Memo) -> dict[str, str] | None:
    """The headers in the lines of ``text`` from ``offset``, when every one of them is a header
    line; None when one is blank or malformed (``_header_lines`` will tell which).

    Lines already read in this call are looked up (most repeat from part to part), the others
    read as ``_header_pair`` does. The text may have CRLF line ends: a CR before the LF is
    trailing whitespace to ``strip``.
    """
    if offset >= len(text):
        return {}
    lines = (text[offset:] if offset else text).split("\n")
    known = memo.lines
    pairs = list(map(known.get, lines))
    if None in pairs:
        for index, pair in enumerate(pairs):
            if pair is None:
                pair = _known_pair(lines[index], memo)
                if pair is None:
                    return None
                pairs[index] = pair
    return dict(pairs)  # type: ignore[arg-type]  # no None is left


def _known_pair(line: str, memo: _Memo) -> tuple[str, str] | None:
    """``_header_pair(line)`` (remembered), or None where it would raise."""
    name, sep, value = line.partition(":")
    if not sep:
        return None
    valid = memo.names.get(name)
    if valid is None:
        valid = name.strip()
        if not _TOKEN.match(valid):
            return None
        if len(memo.names) < _MAX_LINES:
            memo.names[name] = valid
    pair = (valid, value.strip())
    if len(memo.lines) < _MAX_LINES:
        memo.lines[line] = pair
    return pair


def _first_keys(headers: dict[str, str], memo: _Memo) -> tuple[str | None, str | None]:
    """The first names, in order, equal to Content-Length and Content-ID ignoring case."""
    names = tuple(headers)
    found = memo.keys.get(names)
    if found is None:
        lowered = [name.lower() for name in names]
        length = names[lowered.index("content-length")] if "content-length" in lowered else None
        content_id = names[lowered.index("content-id")] if "content-id" in lowered else None
        found = memo.keys[names] = (length, content_id)
    return found


def _message_headers(text: str, offset: int, where: str, memo: _Memo) -> _Headers:
    """The headers after the (valid) start line of ``text``, in a dict of their own.

    ``offset``: where the lines after the start line begin (-1: unknown, read line by line).
    """
    if offset >= 0:
        blocks = memo.blocks
        block = text[offset:] if blocks is not None else ""
        if blocks is not None:
            cached = blocks.get(block)
            if cached is not None:
                memo.block_hits += 1
                return cached[0].copy(), cached[1], cached[2]
        headers = _fast_headers(text, offset, memo)
        if headers is not None:
            found = (headers, *_first_keys(headers, memo))
            if blocks is not None:
                blocks[block] = (headers.copy(), found[1], found[2])
                memo.block_misses += 1
                if memo.block_misses > _BLOCK_MISSES and memo.block_misses > memo.block_hits:
                    memo.blocks = None  # they do not repeat: stop looking
            return found
    headers = _header_lines(_nonblank(text)[1:], where)
    return (headers, *_first_keys(headers, memo))


def _message(
    part: _Part, data: bytes, end: int, where: str, memo: _Memo, request: bool
) -> _Message:
    """The HTTP request (or response) of ``part`` (its content ends at ``end``): its start line
    and the words of it, its headers (a dict of its own), its Content-ID, its body.

    Checked in this order: the part's head, the start line (the first non-blank line), the
    header lines, Content-Length. Without Content-Length (or when fewer bytes came) the body
    ends before trailing CR/LF.
    """
    head, start, part_id = part
    if not head.is_http:
        _check_http_part(head, where)
    head_end, body_start = _blank_line(data, start, end)
    text = _text(data[start:head_end], where)
    stop = text.find("\n")
    line = text if stop < 0 else text[: stop - 1] if text[stop - 1 : stop] == "\r" else text[:stop]
    offset = len(text) if stop < 0 else stop + 1  # where the header lines begin
    if not line.strip():  # blank lines first
        lines = _nonblank(text)
        if not lines:
            what = "request" if request else "status"
            raise MultipartError(f"{where}: the HTTP {what} line is missing")
        line, offset = lines[0], -1
    words = _request_words(line, where) if request else _status_words(line, where)
    headers, length, inner_id = _message_headers(text, offset, where, memo)
    if part_id is None:
        part_id = head.headers.get("content-id")
    content_id = part_id or (None if inner_id is None else headers[inner_id])
    if length is not None:
        size = _content_length(headers[length], where)
        if size <= end - body_start:
            return line, words, headers, content_id, data[body_start : body_start + size]
    if end > body_start and data[end - 1] in (0x0A, 0x0D):
        return line, words, headers, content_id, data[body_start:end].rstrip(b"\r\n")
    return line, words, headers, content_id, data[body_start:end]


def _request_words(line: str, where: str) -> list[str]:
    """Method (upper case), target, version of a request line."""
    words = line.split()
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise MultipartError(f"{where}: malformed request line {line[:80]!r}")
    method = words[0].upper()
    if method not in _METHODS:
        raise MultipartError(f"{where}: method {words[0]!r} is not allowed in a batch")
    words[0] = method
    return words


def _status_words(line: str, where: str) -> list[str]:
    """Version, status code (digits), reason (stripped, maybe empty) of a status line."""
    words = line.split(" ", 2)
    if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        raise MultipartError(f"{where}: malformed status line {line[:80]!r}")
    return [words[0], words[1], words[2].strip() if len(words) > 2 else ""]


def _content_length(length: str, where: str) -> int:
    if length.isdigit():
        try:
            return int(length)
        except ValueError:  # digits such as "²" have no value
            pass
    raise MultipartError(f"{where}: Content-Length {length!r} is not a number")


def _open_part(data: bytes, start: int, end: int, where: str, memo: _Memo) -> _Part:
    """A MIME part's head (header names in lower case), where its content starts, and its
    Content-ID when that is the last head line and not in the head (None: see the head)."""
    prefix = memo.prefix
    if prefix and data.startswith(prefix, start, end):
        # Same head bytes, blank line included, as the part before: same first blank line.
        return memo.prefix_head, start + len(prefix), None
    stem = memo.stem
    if stem and data.startswith(stem, start, end):
        found = _after_stem(data, start + len(stem), end, memo)
        if found is not None:
            return found
    head_end, content_start = _blank_line(data, start, end)
    block = data[start:head_end]
    head = memo.heads.get(block)
    if head is None:
        found = _stem_head(block, memo)
        if found is not None:
            memo.stem, memo.stem_head = block[: found[1]], found[0]
            return found[0], content_start, found[2]
        head = memo.heads[block] = _parse_head(block, where, memo)
    if block:
        memo.prefix, memo.prefix_head = data[start:content_start], head
    return head, content_start, None


def _after_stem(data: bytes, line_start: int, end: int, memo: _Memo) -> _Part | None:
    """For a part that starts with ``memo.stem`` (a head's lines but the last, through its LF):
    the part when one more line, then the blank line, follow (as ``_stem_head`` reads it); else
    None. No blank line can start within the stem bytes: they held none in the part they came
    from, and the line after them does not start with a line break here."""
    line_feed = data.find(b"\n", line_start, end)
    if line_feed <= line_start or (line_feed == line_start + 1 and data[line_start] == 0x0D):
        return None  # no line, or an empty one: not this layout
    after = data[line_feed + 1 : min(line_feed + 3, end)]
    if after[:1] == b"\n":
        content_start = line_feed + 2
    elif after == b"\r\n":
        content_start = line_feed + 3
    else:
        return None  # more head lines (or the end)
    line_end = line_feed - 1 if data[line_feed - 1] == 0x0D else line_feed
    found = _last_line(memo.stem_head, data[line_start:line_end], memo)
    return None if found is None else (found[0], content_start, found[1])


def _parse_head(block: bytes, where: str, memo: _Memo) -> _Head:
    text = _text(block, where)
    headers = _fast_headers(text, 0, memo)
    if headers is None:
        headers = _header_lines(_nonblank(text), where)
    return _Head({name.lower(): value for name, value in headers.items()})


def _stem_head(block: bytes, memo: _Memo) -> tuple[_Head, int, str | None] | None:
    """A head that is a known head (its lines but the last, parsed once) plus one more line:
    ``_last_line`` of them, with where the last line starts; None when the head must be parsed
    whole."""
    stem, line_feed, last = block.rpartition(b"\n")
    if not line_feed:
        return None
    if stem in memo.stems:
        head = memo.stems[stem]
    else:
        head = memo.stems[stem] = _plain_head(stem, memo)
    found = None if head is None else _last_line(head, last, memo)
    return None if found is None else (found[0], len(stem) + 1, found[1])


def _last_line(head: _Head, line: bytes, memo: _Memo) -> tuple[_Head, str | None] | None:
    """``head`` plus the header ``line`` after its lines, when that line adds a name: the same
    head, with the Content-ID when the line gives it. None when the whole head must be parsed
    (the line is blank, malformed, repeats a name, or sets the Content-Type or the
    Content-Transfer-Encoding).

    Parts of a change set differ by their last head line, Content-ID; what decoding needs of a
    head (media type, transfer encoding, Content-ID) is then the known head's, or that line.
    """
    try:
        pair = _known_pair(line.decode("utf-8"), memo)
    except UnicodeDecodeError:
        return None
    if pair is None:
        return None
    name = pair[0].lower()
    if name in head.headers or name in ("content-type", "content-transfer-encoding"):
        return None
    return head, pair[1] if name == "content-id" else None


def _plain_head(block: bytes, memo: _Memo) -> _Head | None:
    """The head in ``block`` when it is UTF-8 header lines and no blank line; else None."""
    try:
        headers = _fast_headers(block.decode("utf-8"), 0, memo)
    except UnicodeDecodeError:
        return None
    if headers is None:
        return None
    return _Head({name.lower(): value for name, value in headers.items()})


def _media_type(part_headers: dict[str, str]) -> str:
    return part_headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _check_http_part(head: _Head, where: str) -> None:
    """Raise unless the part holds one HTTP request or response (``head.is_http``)."""
    content_type = head.media_type
    if content_type != "application/http":
        raise MultipartError(
            f"{where}: Content-Type must be application/http"
            f" (or multipart/mixed for a change set), not {content_type or 'missing'!r}"
        )
    encoding = head.headers.get("content-transfer-encoding")
    raise MultipartError(f"{where}: Content-Transfer-Encoding must be binary, not {encoding!r}")


def _decode_request(part: _Part, data: bytes, end: int, where: str, memo: _Memo) -> BatchPart:
    _line, words, headers, content_id, body = _message(part, data, end, where, memo, True)
    return BatchPart(words[0], words[1], headers, body or None, content_id)


def _decode_response(
    part: _Part, data: bytes, end: int, where: str, memo: _Memo
) -> BatchResponseItem:
    line, words, headers, content_id, body = _message(part, data, end, where, memo, False)
    try:
        status = int(words[1])
    except ValueError:  # digits such as "²" have no value
        raise MultipartError(f"{where}: malformed status line {line[:80]!r}") from None
    return BatchResponseItem(status, headers, body, content_id, words[2])


def decode_batch_request(body: bytes, content_type: str | None) -> list[BatchRequestItem]:
    """Parse a ``$batch`` request body into requests and change sets, in order."""
    boundary = parse_boundary(content_type)
    memo = _Memo()
    items: list[BatchRequestItem] = []
    for index, (start, end) in enumerate(_split(body, boundary, "batch", 0, len(body)), start=1):
        where = f"batch part {index}"
        part = _open_part(body, start, end, where, memo)
        head, content = part[0], part[1]
        if head.media_type != "multipart/mixed":
            items.append(_decode_request(part, body, end, where, memo))
            continue
        inner_boundary = parse_boundary(head.headers["content-type"])
        changeset = ChangeSet(boundary=inner_boundary)
        inner_parts = _split(body, inner_boundary, where, content, end)
        for inner_index, (inner_start, inner_end) in enumerate(inner_parts, start=1):
            inner_where = f"{where}, change set part {inner_index}"
            inner = _open_part(body, inner_start, inner_end, inner_where, memo)
            if inner[0].media_type == "multipart/mixed":
                raise MultipartError(f"{inner_where}: change sets cannot be nested")
            request = _decode_request(inner, body, inner_end, inner_where, memo)
            if request.method == "GET":
                raise MultipartError(f"{inner_where}: GET is not allowed inside a change set")
            changeset.parts.append(request)
        items.append(changeset)
    return items


def decode_batch_response(body: bytes, content_type: str | None) -> list[BatchResponsePart]:
    """Parse a ``$batch`` response body into responses and change-set responses, in order."""
    boundary = parse_boundary(content_type)
    memo = _Memo()
    items: list[BatchResponsePart] = []
    parts = _split(body, boundary, "batch response", 0, len(body))
    for index, (start, end) in enumerate(parts, start=1):
        where = f"batch response part {index}"
        part = _open_part(body, start, end, where, memo)
        head, content = part[0], part[1]
        if head.media_type != "multipart/mixed":
            items.append(_decode_response(part, body, end, where, memo))
            continue
        inner_boundary = parse_boundary(head.headers["content-type"])
        changeset = ChangeSetResponse(boundary=inner_boundary)
        inner_parts = _split(body, inner_boundary, where, content, end)
        for inner_index, (inner_start, inner_end) in enumerate(inner_parts, start=1):
            inner_where = f"{where}, change set part {inner_index}"
            inner = _open_part(body, inner_start, inner_end, inner_where, memo)
            changeset.items.append(_decode_response(inner, body, inner_end, inner_where, memo))
        items.append(changeset)
    return items


def decode_response_statuses(
    body: bytes, content_type: str | None
) -> list[int | BatchResponseItem] | None:
    """The answer to each top-level part of a ``$batch`` response, for a caller that needs only
    the status of a success: an ``int`` for a part whose status line (its first line) says 2xx,
    the whole response (``decode_batch_response``'s) for any other part. None when the batch
    has a change set or a part that is not plain ``application/http``: decode it whole.

    A success's header lines and body are not read, so they are not checked either; everything
    else is read and checked as ``decode_batch_response`` does, with the same errors.
    """
    boundary = parse_boundary(content_type)
    memo = _Memo()
    answers: list[int | BatchResponseItem] = []
    for index, (start, end) in enumerate(
        _split(body, boundary, "batch response", 0, len(body)), start=1
    ):
        where = f"batch response part {index}"
        part = _open_part(body, start, end, where, memo)
        head, content = part[0], part[1]
        if not head.is_http:
            return None
        line_end = body.find(b"\n", content, end)
        line = body[content : line_end if line_end >= 0 else end]
        # "HTTP/1.1 2xx" and then a space or the line's end: the 2xx that _status_words reads
        if line[:9] == b"HTTP/1.1 " and line[9:10] == b"2" and line[10:12].isdigit():
            rest = line[12:13]
            if rest in (b" ", b"\r", b""):
                answers.append(int(line[9:12]))
                continue
        answers.append(_decode_response(part, body, end, where, memo))
    return answers


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
#
# Speed: each part's text is one f-string, encoded once; the batch is one ``b"".join`` of those
# and the part bodies. Text every part shares (delimiter, MIME head) is built once per batch.

_JSON_ENTRY = "application/json; type=entry"
# A request's header lines: without a body; with one, before and after the value of the
# Content-Length line the encoder adds, and whether it adds one.
_LinesPlan = tuple[str, str, str, bool]
# Reason phrases by status code, as HTTPStatus(code).phrase gives them (an enum call is slow),
# and the status lines they make.
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {phrase}" for code, phrase in _PHRASES.items()}
_COLON_JOIN = ": ".join


def _part_lead(boundary: str, nl: str) -> str:
    """A part's delimiter line and MIME head, up to its optional Content-ID line."""
    return (
        f"--{boundary}{nl}Content-Type: application/http{nl}Content-Transfer-Encoding: binary{nl}"
    )


def _content_keys(names: tuple[str, ...]) -> tuple[str | None, str | None]:
    """The first of ``names`` equal to Content-Type, and to Content-Length, ignoring case."""
    lowered = [name.lower() for name in names]
    return (
        names[lowered.index("content-type")] if "content-type" in lowered else None,
        names[lowered.index("content-length")] if "content-length" in lowered else None,
    )


def _body_headers(headers: dict[str, str], length: str) -> tuple[dict[str, str], bool]:
    """``headers`` of a request with a body: Content-Type (JSON entry) and Content-Length
    (``length``) added when missing (or None); and whether Content-Length was."""
    type_key, length_key = _content_keys(tuple(headers))
    needs_type = type_key is None or headers[type_key] is None
    needs_length = length_key is None or headers[length_key] is None
    if needs_type or needs_length:
        headers = dict(headers)
        if needs_type:
            headers["Content-Type"] = _JSON_ENTRY
        if needs_length:
            headers["Content-Length"] = length
    return headers, needs_length


def _add_requests(
    out: list[bytes], parts: Iterable[BatchPart], lead: str, nl: str, nl_bytes: bytes
) -> None:
    """Append each request's delimiter, MIME head, HTTP head, body and final line break."""
    plans: dict[tuple[tuple[str, str], ...], _LinesPlan] = {}
    with_id = f"{lead}Content-ID: "
    for part in parts:
        headers, body = part.headers, part.body
        key = tuple(headers.items())
        try:
            plan, cacheable = plans.get(key), True
        except TypeError:  # a value that cannot be hashed
            plan, cacheable = None, False
        if plan is None:
            plan = _lines_plan(headers, nl)
            if cacheable and all(type(x) is str for pair in key for x in pair):
                plans[key] = plan  # str only: equal headers write the same lines
        if body is None:
            lines = plan[0]
        elif plan[3]:
            lines = f"{plan[1]}{nl}Content-Length: {len(body)}{plan[2]}"
        else:
            lines = plan[1]
        cid = part.content_id
        request = f"{part.method.upper()} {part.url} HTTP/1.1{lines}{nl}{nl}"
        text = f"{lead}{nl}{request}" if cid is None else f"{with_id}{cid}{nl}{nl}{request}"
        out += (text.encode(), body or b"", nl_bytes)


def _lines_plan(headers: dict[str, str], nl: str) -> _LinesPlan:
    """The header lines of a request without a body; with one, the lines before and after its
    Content-Length value and whether it has to be written (``_body_headers``)."""
    plain = "".join([f"{nl}{name}: {value}" for name, value in headers.items()])
    written, sized = _body_headers(headers, "")
    pairs = list(written.items())
    at = [name for name, _ in pairs].index("Content-Length") if sized else len(pairs)
    before = "".join([f"{nl}{name}: {value}" for name, value in pairs[:at]])
    after = "".join([f"{nl}{name}: {value}" for name, value in pairs[at + 1 :]])
    return plain, before, after, sized


def _status_line(status: int, reason: str) -> str:
    """``HTTP/1.1 code reason``; without a reason, ``HTTPStatus(code).phrase`` or "Unknown"."""
    if not reason:
        try:
            reason = _PHRASES.get(status) or "Unknown"
        except TypeError:  # not hashable: not a status code
            reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}"


def _add_responses(out: list[bytes], items: Iterable[BatchResponseItem], lead: str) -> None:
    """Append each response's delimiter, MIME head, HTTP head, body and final line break."""
    with_id = f"{lead}Content-ID: "
    status_lines = _STATUS_LINES
    for item in items:
        status = item.status
        if item.reason or type(status) is not int:  # an int subclass may print otherwise
            first = _status_line(status, item.reason)
        else:
            first = status_lines.get(status) or _status_line(status, "")
        try:  # ": ".join writes a str as an f-string does, and refuses anything else
            head = "\r\n".join([first, *map(_COLON_JOIN, item.headers.items())])
        except TypeError:
            head = first + "".join([f"\r\n{name}: {value}" for name, value in item.headers.items()])
        cid = item.content_id
        if cid is None:
            text = f"{lead}\r\n{head}\r\n\r\n"
        else:
            text = f"{with_id}{cid}\r\n\r\n{head}\r\n\r\n"
        out += (text.encode(), item.body, b"\r\n")


def _open_changeset(out: list[bytes], boundary: str, inner: str, nl: str) -> str:
    """Append the change set's delimiter and head; the lead of its parts."""
    head = f'--{boundary}{nl}Content-Type: multipart/mixed; boundary="{inner}"{nl}{nl}'
    out.append(head.encode("ascii"))
    return _part_lead(inner, nl)


def encode_batch_request(
    items: Sequence[BatchRequestItem], *, boundary: str | None = None, newline: str = CRLF
) -> tuple[bytes, str]:
    """The body and the Content-Type header value of a ``$batch`` request."""
    boundary = boundary or new_boundary("batch")
    nl = newline
    nl_bytes = nl.encode("ascii")
    lead = _part_lead(boundary, nl)
    lead.encode("ascii")
    out: list[bytes] = []
    run: list[BatchPart] = []  # requests outside change sets, written together
    for item in items:
        if not isinstance(item, ChangeSet):
            run.append(item)
            continue
        if run:
            _add_requests(out, run, lead, nl, nl_bytes)
            run = []
        inner = item.boundary or new_boundary("changeset")
        _add_requests(out, item.parts, _open_changeset(out, boundary, inner, nl), nl, nl_bytes)
        out += (f"--{inner}--{nl}".encode("ascii"), nl_bytes)
    _add_requests(out, run, lead, nl, nl_bytes)
    out.append(f"--{boundary}--{nl}".encode("ascii"))
    return b"".join(out), f'multipart/mixed; boundary="{boundary}"'


def encode_uniform_requests(
    method: str,
    targets: Iterable[tuple[str, bytes]],
    headers: dict[str, str],
    *,
    boundary: str | None = None,
) -> tuple[bytes, str]:
    """A ``$batch`` of requests that differ only by URL and body (``targets``), such as upserts.

    Byte for byte ``encode_batch_request([BatchPart(method, url, headers, body) for url, body in
    targets], boundary=boundary)``, with the text every part shares built once.
    """
    boundary = boundary or new_boundary("batch")
    lead = _part_lead(boundary, CRLF)
    lead.encode("ascii")
    _plain, before, after, sized = _lines_plan(headers, CRLF)
    start = f"{lead}\r\n{method.upper()} "
    out: list[bytes] = []
    for url, body in targets:
        if sized:
            text = f"{start}{url} HTTP/1.1{before}\r\nContent-Length: {len(body)}{after}\r\n\r\n"
        else:
            text = f"{start}{url} HTTP/1.1{before}\r\n\r\n"
        out += (text.encode(), body, b"\r\n")
    out.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(out), f'multipart/mixed; boundary="{boundary}"'


def encode_batch_response(
    items: Sequence[BatchResponsePart], *, boundary: str | None = None
) -> tuple[bytes, str]:
    """The body and the Content-Type header value of a ``$batch`` response."""
    boundary = boundary or new_boundary("batchresponse")
    lead = _part_lead(boundary, CRLF)
    lead.encode("ascii")
    out: list[bytes] = []
    run: list[BatchResponseItem] = []  # responses outside change sets, written together
    for item in items:
        if not isinstance(item, ChangeSetResponse):
            run.append(item)
            continue
        if run:
            _add_responses(out, run, lead)
            run = []
        inner = item.boundary or new_boundary("changesetresponse")
        _add_responses(out, item.items, _open_changeset(out, boundary, inner, CRLF))
        out += (f"--{inner}--\r\n".encode("ascii"), b"\r\n")
    _add_responses(out, run, lead)
    out.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(out), f"multipart/mixed; boundary={boundary}"
