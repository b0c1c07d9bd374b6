"""``open_dataverse(settings)``: a ready client for the configured environment or emulator.

Picks the token provider from the authority URL:

- ``https://`` authority (Entra ID, or the https emulator): MSAL with the client secret, or the
  certificate in ``APEX_CLIENT_CERTIFICATE``;
- ``http://`` on loopback (the emulator): a plain client-credentials request.

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
from urllib.parse import urlsplit

import httpx

from apex_metrics.dataverse.auth import LoopbackTokenProvider, MsalTokenProvider, TokenProvider
from apex_metrics.dataverse.client import DataverseClient
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
    """The provider that fits the authority (see the module docstring)."""
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


@asynccontextmanager
async def open_dataverse(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    tokens: TokenProvider | None = None,
    flow: Flow | None = None,
) -> AsyncIterator[DataverseClient]:
    """A :class:`DataverseClient` for ``APEX_DATAVERSE_URL``; closes its connections on exit.

    ``flow`` paces and retries its requests (default: a flow of its own, slots in memory).
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
        provider = tokens or token_provider(settings, environment_url, http)
        try:
            yield DataverseClient(http, environment_url, provider, flow=flow)
        finally:
            close = getattr(provider, "close", None)
            if callable(close):
                close()
