"""``open_dataverse(settings)``: a ready client for the configured environment or emulator.

Picks the token provider from ``APEX_AUTH`` and the authority URL:

- ``APEX_AUTH=client`` (the default), ``https://`` authority (Entra ID, or the https emulator):
  MSAL with the client secret, or the certificate in ``APEX_CLIENT_CERTIFICATE``;
- ``APEX_AUTH=client``, ``http://`` on loopback (the emulator): a plain client-credentials
  request;
- ``APEX_AUTH=managed-identity|workload-identity|default``: the azure-identity credential of
  that name (``credential.py``); or pass any ``TokenCredential`` as ``credential=``.

When ``APEX_DATAVERSE_URL`` is a loopback URL and ``APEX_AUTHORITY_HOST`` was not set, the
environment is its own authority (the emulator is both), and unset credentials default to the
emulator's local ones. TLS is always verified: the system trust store plus ``APEX_CA_BUNDLE``.

Cookies are refused, so the server-affinity cookie never pins the client to one web server:
the service protection limits apply per web server, and Microsoft's guidance for parallel
requests is to spread them (``APEX_DATAVERSE_AFFINITY=true`` keeps the cookie).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, CookiePolicy, DefaultCookiePolicy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from apex_metrics.dataverse.auth import LoopbackTokenProvider, MsalTokenProvider, TokenProvider
from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.credential import CredentialTokenProvider, azure_credential
from apex_metrics.dataverse.flow import Flow
from apex_metrics.dataverse.urls import check_url, is_loopback
from apex_metrics.exceptions import ConfigError
from apex_metrics.settings import Settings

# The emulator's default credentials (contracts.md); used only against a loopback authority.
LOCAL_TENANT_ID = "apex-local-tenant"
LOCAL_CLIENT_ID = "apex-local-client"
LOCAL_CLIENT_SECRET = "apex-local-secret"  # documented local credential, not a secret
TIMEOUT = httpx.Timeout(120.0, connect=15.0)  # Dataverse's practical ceiling is ~2 minutes


class _RefuseCookies(DefaultCookiePolicy):
    """Keep no cookie, so no affinity cookie pins requests to one web server."""

    def set_ok(self, cookie: object, request: object) -> bool:
        return False


def cookie_jar(affinity: bool) -> CookieJar:
    """A jar that keeps cookies (``affinity``) or refuses them all."""
    policy: CookiePolicy = DefaultCookiePolicy() if affinity else _RefuseCookies()
    return CookieJar(policy)


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Verification on, with the system trust store plus ``ca_bundle`` when given."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"APEX_CA_BUNDLE {ca_bundle} cannot be loaded ({exc})",
                hint="point it at a PEM file of CA certificates",
            ) from None
    return context


def authority_for(settings: Settings, environment_url: str) -> str:
    """The token authority: APEX_AUTHORITY_HOST, or the loopback environment itself."""
    if "authority_host" not in settings.model_fields_set and is_loopback(
        urlsplit(environment_url).hostname
    ):
        return environment_url
    return check_url(settings.authority_host, what="APEX_AUTHORITY_HOST")


def token_provider(
    settings: Settings, environment_url: str, http: httpx.AsyncClient
) -> TokenProvider:
    """The provider that fits APEX_AUTH and the authority (see the module docstring)."""
    if settings.auth != "client":
        return _azure_provider(settings, environment_url)
    authority = authority_for(settings, environment_url)
    local = is_loopback(urlsplit(authority).hostname)

    def value(field: str, local_default: str) -> str:
        raw = getattr(settings, field)
        if raw is None and local:
            return local_default
        return settings.require(field)

    tenant = value("tenant_id", LOCAL_TENANT_ID)
    client_id = value("client_id", LOCAL_CLIENT_ID)
    if urlsplit(authority).scheme == "http":
        return LoopbackTokenProvider(
            http,
            authority_host=authority,
            tenant_id=tenant,
            client_id=client_id,
            client_secret=value("client_secret", LOCAL_CLIENT_SECRET),
            environment_url=environment_url,
        )
    certificate = settings.client_certificate if settings.client_secret is None else None
    return MsalTokenProvider(
        authority_host=authority,
        tenant_id=tenant,
        client_id=client_id,
        environment_url=environment_url,
        client_secret=None if certificate else value("client_secret", LOCAL_CLIENT_SECRET),
        certificate=certificate,
        ca_bundle=settings.ca_bundle,
    )


def _azure_provider(settings: Settings, environment_url: str) -> TokenProvider:
    """``APEX_AUTH=managed-identity|workload-identity|default``: APEX_TENANT_ID and
    APEX_CLIENT_ID, when set, override azure-identity's AZURE_* variables; the authority is
    APEX_AUTHORITY_HOST when set (or the loopback environment itself, the emulator), else
    azure-identity's own default."""
    assert settings.auth != "client"
    explicit = "authority_host" in settings.model_fields_set or is_loopback(
        urlsplit(environment_url).hostname
    )
    credential = azure_credential(
        settings.auth,
        tenant_id=settings.tenant_id,
        client_id=settings.client_id,
        authority=authority_for(settings, environment_url) if explicit else None,
        ca_bundle=settings.ca_bundle,
    )
    return CredentialTokenProvider(
        credential,
        environment_url=environment_url,
        setting=f"APEX_AUTH={settings.auth}",
        owned=True,
    )


@asynccontextmanager
async def open_dataverse(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    tokens: TokenProvider | None = None,
    flow: Flow | None = None,
    credential: Any = None,
) -> AsyncIterator[DataverseClient]:
    """A :class:`DataverseClient` for ``APEX_DATAVERSE_URL``; closes its connections on exit.

    ``flow`` paces and retries its requests (default: a flow of its own, slots in memory).
    ``credential``: any azure-core ``TokenCredential`` (or async one) to sign in with, instead
    of what ``APEX_AUTH`` picks; the caller keeps it and closes it.
    ``transport`` (e.g. ``httpx.ASGITransport(app=emulator)``) and ``tokens`` are for tests.
    """
    environment_url = check_url(
        settings.require("dataverse_url"), what="APEX_DATAVERSE_URL", allow_path=False
    )
    async with httpx.AsyncClient(
        verify=tls_context(settings.ca_bundle),
        transport=transport,
        timeout=TIMEOUT,
        trust_env=False,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        cookies=cookie_jar(settings.dataverse_affinity),
    ) as http:
        if tokens is None and credential is not None:
            tokens = CredentialTokenProvider(credential, environment_url=environment_url)
        provider = tokens or token_provider(settings, environment_url, http)
        try:
            yield DataverseClient(http, environment_url, provider, flow=flow)
        finally:
            close = getattr(provider, "close", None)
            if callable(close):
                close()
