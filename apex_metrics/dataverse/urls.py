"""Transport rules and OData URL building.

- An environment or authority URL must be ``https://``; ``http://`` only on a loopback address
  (the local emulator). Certificate verification is never switched off.
- The bearer token goes only to the environment's own origin (scheme, host, port): a
  ``@odata.nextLink`` pointing elsewhere is refused.
- Keys are written as OData literals: strings in single quotes with ``'`` doubled, then
  percent-encoded for the URL path.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Iterable, Mapping
from urllib.parse import quote, urlsplit

from apex_metrics.dataverse.errors import InsecureTransport

API_PATH = "/api/data/v9.2/"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Characters that break Dataverse key URLs even when encoded (define-alternate-keys-entity).
KEY_FORBIDDEN = frozenset("/<>*%&:\\?+")
# Characters ``quote`` leaves alone, but the quote (doubled in a literal) and none forbidden in
# a key: a value made only of them is written as it is, in quotes.
_PLAIN_KEY_CHARS = string.ascii_letters + string.digits + "_.~!$,;=@()-"


def is_loopback(host: str | None) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1``."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, what: str, allow_path: bool = True) -> str:
    """A base URL that obeys the transport rules, without a trailing slash."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InsecureTransport(
            f"{what} {url!r} is not an http(s) URL",
            hint="give the full URL, e.g. https://org.crm.dynamics.com",
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise InsecureTransport(
            f"{what} {url!r} uses plain http off loopback; the token would travel unencrypted"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InsecureTransport(
            f"{what} {url!r} must not carry credentials, a query or a fragment",
            hint="give only scheme, host, port and (optionally) a path",
        )
    path = parts.path.rstrip("/")
    if path and not allow_path:
        raise InsecureTransport(
            f"{what} {url!r} has a path ({path}); give the environment URL only",
            hint="e.g. https://org.crm.dynamics.com (as in the Power Platform admin center)",
        )
    return f"{parts.scheme}://{parts.netloc}{path}"


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, with the default port filled in."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def same_origin(url: str, base: str) -> bool:
    return origin(url) == origin(base)


def check_identifier(name: str, *, what: str = "name") -> str:
    """An entity set, column or key name: letters, digits and underscores only."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{what} {name!r} is not a valid Dataverse identifier")
    return name


def odata_literal(value: str | int) -> str:
    """An OData literal: a quoted string with ``'`` doubled, or a number."""
    if isinstance(value, bool):
        raise ValueError("booleans are not valid key values")
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def key_path(entity_set: str, key: Mapping[str, str | int]) -> str:
    """``SET(col='value')`` (or ``SET(a=1,b='x')``) with values quoted and URL-encoded.

    A key value containing ``/ < > * % & : \\ ? +`` is refused: Dataverse cannot address it by
    key even when encoded.
    """
    check_identifier(entity_set, what="entity set")
    if not key:
        raise ValueError("a key needs at least one column")
    parts = []
    for column, value in key.items():
        check_identifier(column, what="key column")
        parts.append(f"{column}={_key_literal(column, value)}")
    return f"{entity_set}({','.join(parts)})"


def key_paths(entity_set: str, column: str, values: Iterable[str | int]) -> list[str]:
    """``key_path(entity_set, {column: value})`` for each value, in order: for a batch.

    The names are checked once (when there is a value), and the first refused value raises
    what ``key_path`` raises for it.
    """
    values = list(values)
    if not values:
        return []
    check_identifier(entity_set, what="entity set")
    check_identifier(column, what="key column")
    prefix = f"{entity_set}({column}="
    return [
        f"{prefix}'{value}')"
        if type(value) is str and value and not value.strip(_PLAIN_KEY_CHARS)
        else f"{prefix}{_key_literal(column, value)})"
        for value in values
    ]


def _key_literal(column: str, value: str | int) -> str:
    """One key value as a quoted, URL-encoded OData literal (refused when not addressable)."""
    if type(value) is str and value and not value.strip(_PLAIN_KEY_CHARS):
        return f"'{value}'"  # what the general path gives, without its per-character work
    if isinstance(value, str):
        if value == "":
            raise ValueError(f"key {column} must not be empty")
        bad = sorted(set(value) & KEY_FORBIDDEN)
        if bad:
            raise ValueError(
                f"key {column}={value!r} contains {' '.join(bad)}, which Dataverse cannot "
                "address in a key URL"
            )
    return quote(odata_literal(value), safe="'()!$,;=@-._~")
