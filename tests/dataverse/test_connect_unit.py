"""Unit tests of open_dataverse's choices: token provider, authority, TLS settings."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trustme

from apex_metrics.dataverse import errors as e
from apex_metrics.dataverse.auth import LoopbackTokenProvider, MsalTokenProvider
from apex_metrics.dataverse.connect import authority_for, tls_context, token_provider
from apex_metrics.exceptions import ConfigError

from .conftest import local_settings


async def test_loopback_environment_is_its_own_authority_with_local_credentials() -> None:
    settings = local_settings("http://127.0.0.1:8765")
    assert authority_for(settings, "http://127.0.0.1:8765") == "http://127.0.0.1:8765"
    async with httpx.AsyncClient() as http:
        provider = token_provider(settings, "http://127.0.0.1:8765", http)
    assert isinstance(provider, LoopbackTokenProvider)


async def test_real_environment_uses_msal_and_requires_credentials() -> None:
    env = "https://org.crm.dynamics.com"
    http = httpx.AsyncClient()
    await http.aclose()  # never used: MSAL has its own session
    with pytest.raises(ConfigError, match="APEX_TENANT_ID"):
        token_provider(local_settings(env), env, http)
    settings = local_settings(env, tenant_id="t", client_id="c", client_secret="s")
    assert authority_for(settings, env) == "https://login.microsoftonline.com"
    provider = token_provider(settings, env, http)
    assert isinstance(provider, MsalTokenProvider)
    provider.close()
    with pytest.raises(ConfigError, match="APEX_CLIENT_SECRET"):
        token_provider(local_settings(env, tenant_id="t", client_id="c"), env, http)


def test_explicit_http_authority_off_loopback_is_refused() -> None:
    settings = local_settings(
        "https://org.crm.dynamics.com", authority_host="http://login.example.com"
    )
    with pytest.raises(e.InsecureTransport):
        authority_for(settings, "https://org.crm.dynamics.com")


def test_tls_context_always_verifies_and_loads_the_extra_ca(tmp_path: Path) -> None:
    import ssl

    assert tls_context(None).verify_mode == ssl.CERT_REQUIRED
    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    context = tls_context(path)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with pytest.raises(ConfigError, match="APEX_CA_BUNDLE"):
        tls_context(tmp_path / "missing.pem")
