"""Access tokens for Dataverse (OAuth 2.0 client credentials).

- :class:`MsalTokenProvider`: MSAL ``ConfidentialClientApplication`` with a client secret or a
  certificate, for Entra ID or any https authority (an https emulator with a test CA). MSAL is
  synchronous, so its calls run in a worker thread; the token is cached and renewed ahead of
  expiry, one refresh at a time.
- :class:`LoopbackTokenProvider`: a plain client-credentials POST, for the local emulator over
  ``http://`` on loopback (MSAL refuses http authorities).
- :class:`StaticTokenProvider`: a fixed token, for unit tests.
- ``credential.CredentialTokenProvider``: any azure-identity ``TokenCredential`` (managed
  identity, workload identity, ``DefaultAzureCredential``), picked by ``APEX_AUTH``.

The scope is always ``<environment URL>/.default``. Tokens and secrets are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx
import requests

from apex_metrics.dataverse.errors import (
    DataverseError,
    InsecureTransport,
    TokenRequestFailed,
    TransientError,
    UnknownClient,
    error_from_token_answer,
)
from apex_metrics.dataverse.urls import check_url, is_loopback

log = logging.getLogger(__name__)

# Authorities for which MSAL's instance discovery (a call to login.microsoftonline.com) makes sense.
MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.microsoftonline.de",
    }
)
RENEW_BEFORE = 300.0  # seconds: renew a token with less than this left (or half its life)


@runtime_checkable
class TokenProvider(Protocol):
    """Gives a bearer token for the environment; implementations cache and renew it."""

    async def token(self) -> str: ...


# Providers may also have ``invalidate()`` (forget the cached token after a 401); the client
# calls it when present.


def scope_for(environment_url: str) -> str:
    return environment_url.rstrip("/") + "/.default"


@dataclass(slots=True)
class _Cached:
    token: str
    renew_at: float  # time.monotonic()


def _renew_at(expires_in: float) -> float:
    margin = min(RENEW_BEFORE, expires_in / 2)
    return time.monotonic() + max(0.0, expires_in - margin)


class StaticTokenProvider:
    """Always the same token (unit tests)."""

    def __init__(self, token: str = "static-test-token") -> None:
        self._token = token
        self.calls = 0
        self.invalidations = 0

    async def token(self) -> str:
        self.calls += 1
        return self._token

    def invalidate(self) -> None:
        self.invalidations += 1


class CachingTokenProvider:
    """Token cache with a single in-flight refresh."""

    def __init__(self) -> None:
        self._cached: _Cached | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def token(self) -> str:
        cached = self._cached
        if cached and time.monotonic() < cached.renew_at:
            return cached.token
        async with self._lock:
            cached = self._cached
            if cached and time.monotonic() < cached.renew_at:
                return cached.token
            token, expires_in = await self._fetch()
            self.fetches += 1
            self._cached = _Cached(token, _renew_at(expires_in))
            return token

    def invalidate(self) -> None:
        self._cached = None

    async def _fetch(self) -> tuple[str, float]:
        raise NotImplementedError


def _token_from_answer(
    data: dict[str, Any], status: int | None, authority: str
) -> tuple[str, float]:
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise error_from_token_answer(status, data, authority=authority)
    try:
        expires_in = float(data.get("expires_in") or 3599)
    except (TypeError, ValueError):
        expires_in = 3599.0
    return token, expires_in


class LoopbackTokenProvider(CachingTokenProvider):
    """Client credentials posted to ``<authority>/<tenant>/oauth2/v2.0/token`` on loopback http."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        authority_host: str,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        environment_url: str,
    ) -> None:
        super().__init__()
        base = check_url(authority_host, what="APEX_AUTHORITY_HOST")
        if not is_loopback(urlsplit(base).hostname):
            raise InsecureTransport(
                f"the plain token request is only for a loopback emulator, not {base}"
            )
        self._http = http
        self._url = f"{base}/{tenant_id}/oauth2/v2.0/token"
        self._authority = f"{base}/{tenant_id}"
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
            "scope": scope_for(environment_url),
        }

    async def _fetch(self) -> tuple[str, float]:
        try:
            response = await self._http.post(self._url, data=self._form, timeout=30.0)
        except httpx.HTTPError as exc:
            raise TransientError(
                f"token request to {self._authority} failed: {type(exc).__name__}: {exc}",
                hint="is the emulator running at APEX_AUTHORITY_HOST?",
            ) from exc
        try:
            data = response.json()
        except ValueError:
            data = {"error": f"HTTP {response.status_code}", "error_description": ""}
        if not isinstance(data, dict):
            data = {"error": f"HTTP {response.status_code}"}
        if response.is_error:
            raise error_from_token_answer(response.status_code, data, authority=self._authority)
        return _token_from_answer(data, response.status_code, self._authority)


def load_certificate(path: Path) -> dict[str, str]:
    """MSAL's ``client_credential`` for a PEM file holding the certificate and its private key.

    Without a ``thumbprint`` MSAL (1.35 and later) names the certificate by its SHA-256
    thumbprint (``x5t#S256``) and signs with PS256, as Entra ID's documentation now asks; the
    SHA-1 ``x5t`` with RS256 is its legacy form."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise TokenRequestFailed(
            f"cannot read APEX_CLIENT_CERTIFICATE {path}: {exc.strerror}",
            hint="point APEX_CLIENT_CERTIFICATE at a PEM file with the certificate and its key",
        ) from None
    try:
        cert = x509.load_pem_x509_certificate(pem)
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise TokenRequestFailed(
            f"APEX_CLIENT_CERTIFICATE {path} is not a PEM certificate plus unencrypted key ({exc})",
            hint="export the certificate and its private key (no password) into one PEM file",
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TokenRequestFailed(
            f"APEX_CLIENT_CERTIFICATE {path} holds no RSA key; Entra ID app certificates must "
            "be RSA",
            hint="create an RSA certificate (2048 bits or more) and upload it to the app",
        )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "private_key": key_pem,
        "public_certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }


def requests_session(ca_bundle: Path | None) -> requests.Session:
    """The HTTP client MSAL uses: ignores proxy/CA environment variables, always verifies.

    ``trust_env=False`` matters: otherwise ``REQUESTS_CA_BUNDLE`` silently overrides ``verify``.
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca_bundle) if ca_bundle else True
    return session


class MsalTokenProvider(CachingTokenProvider):
    """MSAL ``ConfidentialClientApplication`` (client secret or certificate)."""

    def __init__(
        self,
        *,
        authority_host: str,
        tenant_id: str,
        client_id: str,
        environment_url: str,
        client_secret: str | None = None,
        certificate: Path | None = None,
        ca_bundle: Path | None = None,
    ) -> None:
        super().__init__()
        base = check_url(authority_host, what="APEX_AUTHORITY_HOST")
        if urlsplit(base).scheme != "https":
            raise InsecureTransport(
                f"MSAL needs an https authority, got {base}",
                hint="use LoopbackTokenProvider (automatic for http://127.0.0.1) for the emulator",
            )
        if (client_secret is None) == (certificate is None):
            raise TokenRequestFailed(
                "give exactly one credential: APEX_CLIENT_SECRET or APEX_CLIENT_CERTIFICATE"
            )
        credential: str | dict[str, str] = (
            client_secret if client_secret is not None else load_certificate(certificate)  # type: ignore[arg-type]
        )
        self._authority = f"{base}/{tenant_id}"
        self._scopes = [scope_for(environment_url)]
        self._session = requests_session(ca_bundle)
        host = (urlsplit(base).hostname or "").lower()
        self._options: dict[str, Any] = {
            "client_credential": credential,
            "authority": self._authority,
            "http_client": self._session,
            "instance_discovery": host in MICROSOFT_AUTHORITY_HOSTS,
            "timeout": 30,
        }
        self._client_id = client_id
        self._app: Any = None  # built in the worker thread: MSAL fetches discovery documents

    async def _fetch(self) -> tuple[str, float]:
        try:
            result = await asyncio.to_thread(self._acquire)
        except requests.RequestException as exc:
            raise _transport_error(exc, self._authority) from None
        except ValueError as exc:
            raise _msal_error(exc, self._authority) from None
        except Exception as exc:  # MSAL's own failures (bad key, JWT errors): one clear line
            raise TokenRequestFailed(
                f"MSAL could not request a token from {self._authority}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return _token_from_answer(result, None, self._authority)

    def _acquire(self) -> dict[str, Any]:
        import msal

        if self._app is None:
            self._app = msal.ConfidentialClientApplication(self._client_id, **self._options)
        result = self._app.acquire_token_for_client(scopes=self._scopes)
        return dict(result or {})

    def close(self) -> None:
        self._session.close()


def _transport_error(exc: requests.RequestException, authority: str) -> DataverseError:
    if isinstance(exc, requests.exceptions.SSLError):
        return InsecureTransport(
            f"TLS verification of the token authority {authority} failed",
            hint="if it uses a private CA (e.g. the https emulator), set APEX_CA_BUNDLE to its CA",
        )
    return TransientError(
        f"token authority {authority} unreachable ({type(exc).__name__})",
        hint="check APEX_AUTHORITY_HOST and the network",
    )


def _msal_error(exc: ValueError, authority: str) -> DataverseError:
    # MSAL raises ValueError when the authority's discovery document is missing or invalid,
    # which is what an unknown tenant looks like.
    if "Unable to get authority configuration" in str(exc):
        return UnknownClient(
            f"token authority {authority} has no OpenID configuration for this tenant",
            hint="APEX_TENANT_ID must be the Directory (tenant) ID the app is registered in, "
            "and APEX_AUTHORITY_HOST the authority that holds it",
        )
    return TokenRequestFailed(
        f"token authority {authority} rejected the configuration: {exc}",
        hint="check APEX_AUTHORITY_HOST and APEX_TENANT_ID (the Directory (tenant) ID)",
    )
