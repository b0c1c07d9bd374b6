"""Errors of the Dataverse client, and the one place where HTTP answers become them.

    DataverseError                   any Dataverse or token failure (status, code, message)
    ├── AuthenticationError          credentials or permissions
    │   ├── InvalidClientSecret      AADSTS7000215: wrong or expired client secret
    │   ├── UnknownClient            AADSTS700016 / 90002: app id or tenant unknown
    │   ├── CertificateRejected      AADSTS700027 / 700024: unknown certificate, bad or old JWT
    │   ├── CredentialUnavailable    the Azure credential APEX_AUTH picked cannot work here
    │   ├── TokenRequestFailed       any other answer of the token authority
    │   ├── TokenRejected            401 from the Web API (expired or foreign token)
    │   ├── NotApplicationUser       0x80072560: the app is no application user of the environment
    │   └── PrivilegeDenied          403: the application user lacks a privilege
    ├── InsecureTransport            http:// off loopback, a nextLink to another host, TLS failure
    ├── Throttled                    429 (service protection limits); ``retry_after`` seconds
    ├── DataverseValidationError     400: bad column or value (``column`` when known)
    ├── NotFound                     404
    ├── PreconditionFailed           412: key already used, create-only hit an existing row, …
    ├── AggregateLimitExceeded       0x8004E023: an aggregate touched more than 50,000 records
    └── TransientError               5xx, timeouts, dropped connections: retrying may succeed

``.transient`` says whether the same request may succeed later unchanged. Every class has a
``hint`` saying what to do. Raw server messages are kept in ``server_message``; the bearer token
never appears in any of them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from apex_metrics.exceptions import ApexMetricsError

NOT_APPLICATION_USER = "0x80072560"
AGGREGATE_LIMIT = "0x8004e023"
DUPLICATE_DETECTED = "0x80040333"
THROTTLING_CODES = frozenset({"0x80072322", "0x80072321", "0x80072326", "0x80072327"})
EXPIRED_TOKEN = "0x8005f101"


class DataverseError(ApexMetricsError):
    """Dataverse refused or failed the request."""

    transient: bool = False

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        code: str = "",
        server_message: str = "",
        hint: str | None = None,
        transient: bool | None = None,
        sent: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code
        self.server_message = server_message
        # False when the request provably never reached the server (safe to send again)
        self.sent = sent
        # seconds the server asked to wait (Retry-After), when it said
        self.retry_after = retry_after
        if transient is not None:
            self.transient = transient


class AuthenticationError(DataverseError):
    """Authentication with Entra ID or Dataverse failed."""


class InvalidClientSecret(AuthenticationError):
    """The token authority rejected the client secret (AADSTS7000215)."""

    hint = (
        "set APEX_CLIENT_SECRET to the secret's *value* (not its id); if it expired, create a new "
        "one under Certificates & secrets of the app registration"
    )


class UnknownClient(AuthenticationError):
    """The token authority does not know this app in this tenant (AADSTS700016)."""

    hint = (
        "check APEX_CLIENT_ID (the app registration's Application (client) ID) and APEX_TENANT_ID "
        "(the Directory (tenant) ID it is registered in)"
    )


class CertificateRejected(AuthenticationError):
    """The token authority rejected the certificate's client assertion (AADSTS700027,
    AADSTS700024)."""

    hint = (
        "APEX_CLIENT_CERTIFICATE must hold the private key of a certificate uploaded under "
        "Certificates & secrets of the app registration (compare the thumbprints); AADSTS700024 "
        "means this machine's clock is off"
    )


class CredentialUnavailable(AuthenticationError):
    """The Azure credential chosen by APEX_AUTH is not available in this environment."""

    hint = "run where that identity exists (Azure VM, App Service, AKS pod), or change APEX_AUTH"


class TokenRequestFailed(AuthenticationError):
    """The token authority refused to issue a token."""

    hint = "check APEX_AUTHORITY_HOST, APEX_TENANT_ID, APEX_CLIENT_ID and the app's credential"


class TokenRejected(AuthenticationError):
    """Dataverse rejected the access token (401)."""

    hint = (
        "the token is for another resource or expired: APEX_DATAVERSE_URL must be the exact "
        "environment URL the token is requested for"
    )


class NotApplicationUser(AuthenticationError):
    """The app is not an application user of this environment (0x80072560)."""

    hint = (
        "add the app as an application user with a security role in the Power Platform admin "
        "center (Environment > Settings > Users + permissions > Application users)"
    )


class PrivilegeDenied(AuthenticationError):
    """The application user lacks a privilege for this operation (403)."""

    hint = (
        "give the application user a security role with create/read/write on the table "
        "(and System Customizer for `dataverse provision`)"
    )


class InsecureTransport(DataverseError):
    """Refused: the connection would not be verified or would leak the token."""

    hint = "use an https:// URL (plain http is only allowed on a loopback address)"


class Throttled(DataverseError):
    """Dataverse service protection limits were hit (429)."""

    transient = True
    hint = "the client waits as told by Retry-After; lower the parallelism if this persists"

    retry_after: float

    def __init__(self, message: str | None = None, *, retry_after: float, **kw: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kw)


class DataverseValidationError(DataverseError):
    """Dataverse rejected a value or a column (400)."""

    hint = "fix the value or the column named in the message; retrying unchanged will fail again"

    def __init__(self, message: str | None = None, *, column: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.column = column


class NotFound(DataverseError):
    """The row, table or resource does not exist (404)."""

    hint = "check the entity set and key; run `apex-metrics dataverse provision` for the table"


class PreconditionFailed(DataverseError):
    """A precondition or uniqueness rule failed (412)."""

    hint = "the row already exists, or changed since it was read"


class AggregateLimitExceeded(DataverseError):
    """The aggregate would read more than 50,000 records (0x8004E023)."""

    hint = "narrow the query (e.g. a shorter time range) and combine the results"


class TransientError(DataverseError):
    """Dataverse or the network failed temporarily."""

    transient = True
    hint = "retry later; if it persists check the environment's health and the network"


# ------------------------------------------------------------------------------------------------
# Mapping answers to errors

_COLUMN_PATTERNS = (
    re.compile(r"property named '([^']+)'"),
    re.compile(r"length of the '([^']+)' attribute"),
    re.compile(r"[Aa]ttribute '?([a-z_0-9]+)'? "),
    re.compile(r"column '([^']+)'"),
)


def parse_error_body(content: bytes) -> tuple[str, str]:
    """``(code, message)`` from a Dataverse error body; empty strings when it is not one."""
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return "", content[:300].decode("utf-8", "replace").strip()
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return "", ""
    return str(error.get("code") or ""), str(error.get("message") or "")


def parse_retry_after(value: str | None, default: float) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds; HTTP dates are rare here)."""
    if not value:
        return default
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds)


def error_for_status(
    status: int,
    code: str,
    server_message: str,
    *,
    what: str,
    retry_after: str | None = None,
) -> DataverseError:
    """The error for one failed Web API answer (also used for the parts of a ``$batch``)."""
    lcode = code.lower()
    detail = f"{what}: {status} {server_message or httpx.codes.get_reason_phrase(status)}"
    if code:
        detail += f" [{code}]"
    kw: dict[str, Any] = {"status": status, "code": code, "server_message": server_message}
    if status == 429 or lcode in THROTTLING_CODES:
        return Throttled(detail, retry_after=parse_retry_after(retry_after, 0.0), **kw)
    if retry_after:
        kw["retry_after"] = parse_retry_after(retry_after, 0.0)
    if lcode == NOT_APPLICATION_USER:
        return NotApplicationUser(detail, **kw)
    if lcode == AGGREGATE_LIMIT:
        return AggregateLimitExceeded(detail, **kw)
    if status == 401:
        return TokenRejected(detail, **kw)
    if status == 403:
        return PrivilegeDenied(detail, **kw)
    if status == 404:
        return NotFound(detail, **kw)
    if status == 412 or status == 409:
        return PreconditionFailed(detail, **kw)
    if status == 400 or status == 413:
        return DataverseValidationError(detail, column=_column_of(server_message), **kw)
    if lcode == DUPLICATE_DETECTED:
        return DataverseError(
            detail,
            hint="a duplicate detection rule matched; change the rule or the row",
            **kw,
        )
    if status >= 500 or status == 408:
        return TransientError(detail, **kw)
    return DataverseError(detail, **kw)


def error_from_response(response: httpx.Response, *, what: str) -> DataverseError:
    """The error for a failed Web API answer."""
    code, message = parse_error_body(response.content)
    return error_for_status(
        response.status_code,
        code,
        message,
        what=what,
        retry_after=response.headers.get("Retry-After"),
    )


def _column_of(message: str) -> str | None:
    for pattern in _COLUMN_PATTERNS:
        match = pattern.search(message)
        if match:
            return match.group(1)
    return None


def error_from_token_answer(
    status: int | None, data: dict[str, Any], *, authority: str
) -> DataverseError:
    """The error for a failed token request (an OAuth2 error body, as MSAL also returns it)."""
    error = str(data.get("error") or "error")
    description = str(data.get("error_description") or "").split("\r\n")[0].split("\n")[0]
    description = description.split(" Trace ID:")[0].strip()  # drop trace/correlation noise
    codes = {int(c) for c in data.get("error_codes") or [] if str(c).isdigit()}
    for match in re.finditer(r"AADSTS(\d+)", description):
        codes.add(int(match.group(1)))
    text = f"token request to {authority} failed: {error}"
    if description:
        text += f": {description}"
    kw: dict[str, Any] = {"status": status, "code": error, "server_message": description}
    if 7000215 in codes or 7000222 in codes:
        return InvalidClientSecret(text, **kw)
    if codes & {90002, 900023, 90023}:
        return UnknownClient(
            text,
            hint="APEX_TENANT_ID must be the Directory (tenant) ID the app is registered in",
            **kw,
        )
    if 700016 in codes:
        return UnknownClient(text, **kw)
    if codes & {700027, 700024, 700021, 50048}:
        return CertificateRejected(text, **kw)
    if status is not None and (status >= 500 or status == 429):
        return TransientError(text, **kw)
    return TokenRequestFailed(text, **kw)


def error_from_transport(exc: Exception, *, what: str) -> DataverseError:
    """The error for an httpx exception (timeouts, refused or dropped connections, TLS, an
    answer whose body cannot be decoded)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.DecodingError):  # the answer arrived, damaged (e.g. bad gzip)
        return TransientError(f"{what}: the answer cannot be decoded ({text})")
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in text:
        return InsecureTransport(
            f"{what}: TLS certificate verification failed ({text})",
            hint="if the server uses a private CA (e.g. the https emulator), point APEX_CA_BUNDLE "
            "at its CA file",
        )
    # Not connected, or no connection from the pool: the request never left.
    sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"{what}: timed out ({type(exc).__name__})", sent=sent)
    if isinstance(exc, httpx.ConnectError):
        return TransientError(
            f"{what}: cannot connect ({text})",
            hint="check APEX_DATAVERSE_URL and that the server is up and reachable",
            sent=False,
        )
    return TransientError(f"{what}: connection failed ({type(exc).__name__}: {text})")
