"""Decoding the ``$batch`` wire format (client side): requests (the client's tests use it as a
server would) and responses, fast.

Speed: the body is never split into copies. Delimiters are found with ``find`` on
``\n--boundary`` (only candidates at the start of a line are looked at), parts are (start, end)
offsets into the body, a part's blank line is found with one search between those offsets, and
only head blocks and message bodies are copied out; heads are read by ``multipart_heads``.
"""

from __future__ import annotations

import re

from apex_metrics.dataverse.multipart_heads import (
    Memo,
    Part,
    blank_line,
    check_http_part,
    head_text,
    message_headers,
    nonblank,
    open_part,
)
from apex_metrics.dataverse.multipart_parts import (
    BatchPart,
    BatchRequestItem,
    BatchResponseItem,
    BatchResponsePart,
    ChangeSet,
    ChangeSetResponse,
    MultipartError,
)

__all__ = [
    "decode_batch_request",
    "decode_batch_response",
    "decode_response_statuses",
    "parse_boundary",
]

_BOUNDARY_PARAM = re.compile(r"""boundary\s*=\s*(?:"([^"]*)"|([^\s;,"]+))""", re.IGNORECASE)
_BOUNDARY_CHARS = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")
_METHODS = frozenset({"GET", "POST", "PATCH", "PUT", "DELETE"})
# An HTTP message in a part: start line, its words, headers, Content-ID, body.
_Message = tuple[str, list[str], dict[str, str], str | None, bytes]


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


def _message(part: Part, data: bytes, end: int, where: str, memo: Memo, request: bool) -> _Message:
    """The HTTP request (or response) of ``part`` (its content ends at ``end``): its start line
    and the words of it, its headers (a dict of its own), its Content-ID, its body.

    Checked in this order: the part's head, the start line (the first non-blank line), the
    header lines, Content-Length. Without Content-Length (or when fewer bytes came) the body
    ends before trailing CR/LF.
    """
    head, start, part_id = part
    if not head.is_http:
        check_http_part(head, where)
    head_end, body_start = blank_line(data, start, end)
    text = head_text(data[start:head_end], where)
    stop = text.find("\n")
    line = text if stop < 0 else text[: stop - 1] if text[stop - 1 : stop] == "\r" else text[:stop]
    offset = len(text) if stop < 0 else stop + 1  # where the header lines begin
    if not line.strip():  # blank lines first
        lines = nonblank(text)
        if not lines:
            what = "request" if request else "status"
            raise MultipartError(f"{where}: the HTTP {what} line is missing")
        line, offset = lines[0], -1
    words = _request_words(line, where) if request else _status_words(line, where)
    headers, length, inner_id = message_headers(text, offset, where, memo)
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


def _decode_request(part: Part, data: bytes, end: int, where: str, memo: Memo) -> BatchPart:
    _line, words, headers, content_id, body = _message(part, data, end, where, memo, True)
    return BatchPart(words[0], words[1], headers, body or None, content_id)


def _decode_response(
    part: Part, data: bytes, end: int, where: str, memo: Memo
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
    memo = Memo()
    items: list[BatchRequestItem] = []
    for index, (start, end) in enumerate(_split(body, boundary, "batch", 0, len(body)), start=1):
        where = f"batch part {index}"
        part = open_part(body, start, end, where, memo)
        head, content = part[0], part[1]
        if head.media_type != "multipart/mixed":
            items.append(_decode_request(part, body, end, where, memo))
            continue
        inner_boundary = parse_boundary(head.headers["content-type"])
        changeset = ChangeSet(boundary=inner_boundary)
        inner_parts = _split(body, inner_boundary, where, content, end)
        for inner_index, (inner_start, inner_end) in enumerate(inner_parts, start=1):
            inner_where = f"{where}, change set part {inner_index}"
            inner = open_part(body, inner_start, inner_end, inner_where, memo)
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
    memo = Memo()
    items: list[BatchResponsePart] = []
    parts = _split(body, boundary, "batch response", 0, len(body))
    for index, (start, end) in enumerate(parts, start=1):
        where = f"batch response part {index}"
        part = open_part(body, start, end, where, memo)
        head, content = part[0], part[1]
        if head.media_type != "multipart/mixed":
            items.append(_decode_response(part, body, end, where, memo))
            continue
        inner_boundary = parse_boundary(head.headers["content-type"])
        changeset = ChangeSetResponse(boundary=inner_boundary)
        inner_parts = _split(body, inner_boundary, where, content, end)
        for inner_index, (inner_start, inner_end) in enumerate(inner_parts, start=1):
            inner_where = f"{where}, change set part {inner_index}"
            inner = open_part(body, inner_start, inner_end, inner_where, memo)
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
    memo = Memo()
    answers: list[int | BatchResponseItem] = []
    for index, (start, end) in enumerate(
        _split(body, boundary, "batch response", 0, len(body)), start=1
    ):
        where = f"batch response part {index}"
        part = open_part(body, start, end, where, memo)
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
