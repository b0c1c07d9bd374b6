"""Small text formats every layer shares (emulator, client, panel, contract): no imports of ours.

- :func:`ascii_int` and :func:`at_most` read whole numbers from untrusted text (query
  parameters, headers).
  ``str.isdigit`` is no guard: ``"²".isdigit()`` is true and ``int("²")`` raises, and ``int``
  refuses strings of more than 4,300 digits; either would turn bad input into a 500.
- :func:`utc_z` writes a timestamp as Dataverse does: UTC, whole seconds, ``Z``.
"""

from __future__ import annotations

from datetime import UTC, datetime


def ascii_int(text: str, max_digits: int) -> int | None:
    """``text`` as a whole number, or None unless it is one or more ASCII digits with at most
    ``max_digits`` of them after any leading zeros (no sign, no spaces)."""
    if not (text.isascii() and text.isdigit()):
        return None
    significant = text.lstrip("0")
    if len(significant) > max_digits:
        return None
    return int(significant or "0")


def at_most(text: str, limit: int) -> bool:
    """Whether ``text`` is a whole number (ASCII digits) no larger than ``limit``, e.g. a declared
    Content-Length within a cap."""
    value = ascii_int(text, len(str(limit)))
    return value is not None and value <= limit


def utc_z(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``: the moment in UTC, fractions of a second dropped."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
