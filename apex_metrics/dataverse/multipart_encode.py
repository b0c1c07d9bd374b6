"""Encoding the ``$batch`` wire format (client side): requests, and responses (the client's tests
use it as a server would).

Speed: each part's text is one f-string, encoded once; the batch is one ``b"".join`` of those
and the part bodies. Text every part shares (delimiter, MIME head) is built once per batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from http import HTTPStatus

from apex_metrics.dataverse.multipart_parts import (
    CRLF,
    BatchPart,
    BatchRequestItem,
    BatchResponseItem,
    BatchResponsePart,
    ChangeSet,
    ChangeSetResponse,
)

__all__ = [
    "encode_batch_request",
    "encode_batch_response",
    "encode_uniform_requests",
    "new_boundary",
]


def new_boundary(prefix: str) -> str:
    """A fresh boundary such as ``batch_<uuid>``."""
    return f"{prefix}_{uuid.uuid4()}"


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
