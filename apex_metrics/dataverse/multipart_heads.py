"""Reading the heads of a ``$batch`` body for ``multipart_decode``: MIME part heads and the
header lines of the HTTP messages inside, read once per decode call where they repeat.

Speed: within one call, what repeats (part heads, header lines, header blocks) is read once
(see :class:`Memo`); each is read as the line-by-line reader would, which also runs, for the
exact error, whenever anything does not fit.
"""

from __future__ import annotations

import re

from apex_metrics.dataverse.multipart_parts import MultipartError

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# The LF that starts a blank line, its CR, its LF (the CR before it is found apart: a pattern
# starting with a fixed byte is searched fast).
_BLANK_LINE = re.compile(rb"\n\r?\n")
# A MIME part: its head, where its content starts, its Content-ID if not in the head.
Part = tuple["Head", int, str | None]
# Headers of an HTTP message, with the first names equal to Content-Length and Content-ID.
Headers = tuple[dict[str, str], str | None, str | None]
# Header blocks are no longer remembered after this many misses, when they outnumber the hits.
_BLOCK_MISSES = 32
# Header lines remembered per decode call, at most.
_MAX_LINES = 4096


class Head:
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


class Memo:
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
        self.heads: dict[bytes, Head] = {}
        self.stems: dict[bytes, Head | None] = {}
        self.prefix = b""  # empty: none yet (the heads below are then never read)
        self.prefix_head = Head({})
        self.stem = b""
        self.stem_head = Head({})
        self.blocks: dict[str, Headers] | None = {}
        self.block_hits = self.block_misses = 0
        self.lines: dict[str, tuple[str, str]] = {}
        self.names: dict[str, str] = {}
        self.keys: dict[tuple[str, ...], tuple[str | None, str | None]] = {}


def blank_line(data: bytes, start: int, end: int) -> tuple[int, int]:
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


def head_text(block: bytes, where: str) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError(f"{where}: headers are not valid UTF-8") from None


def nonblank(text: str) -> list[str]:
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


def _fast_headers(text: str, offset: int, memo: Memo) -> dict[str, str] | None:
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


def _known_pair(line: str, memo: Memo) -> tuple[str, str] | None:
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


def _first_keys(headers: dict[str, str], memo: Memo) -> tuple[str | None, str | None]:
    """The first names, in order, equal to Content-Length and Content-ID ignoring case."""
    names = tuple(headers)
    found = memo.keys.get(names)
    if found is None:
        lowered = [name.lower() for name in names]
        length = names[lowered.index("content-length")] if "content-length" in lowered else None
        content_id = names[lowered.index("content-id")] if "content-id" in lowered else None
        found = memo.keys[names] = (length, content_id)
    return found


def message_headers(text: str, offset: int, where: str, memo: Memo) -> Headers:
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
    headers = _header_lines(nonblank(text)[1:], where)
    return (headers, *_first_keys(headers, memo))


def open_part(data: bytes, start: int, end: int, where: str, memo: Memo) -> Part:
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
    head_end, content_start = blank_line(data, start, end)
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


def _after_stem(data: bytes, line_start: int, end: int, memo: Memo) -> Part | None:
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


def _parse_head(block: bytes, where: str, memo: Memo) -> Head:
    text = head_text(block, where)
    headers = _fast_headers(text, 0, memo)
    if headers is None:
        headers = _header_lines(nonblank(text), where)
    return Head({name.lower(): value for name, value in headers.items()})


def _stem_head(block: bytes, memo: Memo) -> tuple[Head, int, str | None] | None:
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


def _last_line(head: Head, line: bytes, memo: Memo) -> tuple[Head, str | None] | None:
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


def _plain_head(block: bytes, memo: Memo) -> Head | None:
    """The head in ``block`` when it is UTF-8 header lines and no blank line; else None."""
    try:
        headers = _fast_headers(block.decode("utf-8"), 0, memo)
    except UnicodeDecodeError:
        return None
    if headers is None:
        return None
    return Head({name.lower(): value for name, value in headers.items()})


def _media_type(part_headers: dict[str, str]) -> str:
    return part_headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_http_part(head: Head, where: str) -> None:
    """Raise unless the part holds one HTTP request or response (``head.is_http``)."""
    content_type = head.media_type
    if content_type != "application/http":
        raise MultipartError(
            f"{where}: Content-Type must be application/http"
            f" (or multipart/mixed for a change set), not {content_type or 'missing'!r}"
        )
    encoding = head.headers.get("content-transfer-encoding")
    raise MultipartError(f"{where}: Content-Transfer-Encoding must be binary, not {encoding!r}")
