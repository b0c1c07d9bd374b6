"""Azure-hosted sign-in: any azure-identity ``TokenCredential`` as a token provider.

``APEX_AUTH`` picks the credential (``connect.py``):

- ``managed-identity``: ``ManagedIdentityCredential`` (system-assigned; ``APEX_CLIENT_ID`` names
  a user-assigned identity);
- ``workload-identity``: ``WorkloadIdentityCredential`` (AKS: the federated token file in
  ``AZURE_FEDERATED_TOKEN_FILE``, exchanged at the authority for an app's token);
- ``default``: ``DefaultAzureCredential`` (environment, workload identity, managed identity, then
  the developer tools: Azure CLI, azd, PowerShell).

:class:`CredentialTokenProvider` adapts any object with azure-core's ``get_token(*scopes)``
(sync ``TokenCredential`` or ``AsyncTokenCredential``): a sync credential blocks on HTTP, so it
runs in a worker thread. The token is cached and renewed ahead of expiry, one refresh at a time,
as for MSAL. azure-identity's errors become ours, naming the ``APEX_AUTH`` setting.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from pathlib import Path
from typing import Any, Literal, Protocol

from apex_metrics.dataverse.auth import CachingTokenProvider, scope_for
from apex_metrics.dataverse.errors import (
    CredentialUnavailable,
    DataverseError,
    InsecureTransport,
    TokenRequestFailed,
    TransientError,
)

AzureAuth = Literal["managed-identity", "workload-identity", "default"]
_HINTS: dict[str, str] = {
    "managed-identity": (
        "give the Azure resource (VM, App Service, Container App, Function) a managed identity; "
        "for a user-assigned one set APEX_CLIENT_ID to its client id"
    ),
    "workload-identity": (
        "on AKS, label the pod azure.workload.identity/use=true and annotate its service account "
        "with the app's client id (AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID "
        "are then set); the app needs a federated credential for that service account"
    ),
    "default": (
        "DefaultAzureCredential found no identity: set AZURE_* variables, run on Azure with a "
        "managed identity, or sign in with `az login`"
    ),
}


class _AccessToken(Protocol):
    token: str
    expires_on: int


class CredentialTokenProvider(CachingTokenProvider):
    """A token provider over an azure-core ``TokenCredential`` (sync or async)."""

    def __init__(
        self,
        credential: Any,
        *,
        environment_url: str,
        setting: str = "the credential",
        owned: bool = False,
    ) -> None:
        """``setting`` names where the credential came from in messages (``APEX_AUTH=...``);
        ``owned``: :meth:`close` also closes the credential."""
        super().__init__()
        if not callable(getattr(credential, "get_token", None)):
            raise TypeError("credential must have get_token(*scopes), like azure-core's")
        self._credential = credential
        self._scope = scope_for(environment_url)
        self._setting = setting
        self._owned = owned

    async def _fetch(self) -> tuple[str, float]:
        get_token = self._credential.get_token
        failure: DataverseError | None = None
        try:
            if inspect.iscoroutinefunction(get_token):
                result: _AccessToken = await get_token(self._scope)
            else:
                result = await asyncio.to_thread(get_token, self._scope)
        except DataverseError:
            raise
        except Exception as exc:
            failure = credential_error(exc, self._setting)
        if failure is not None:
            # Raised here, without the original as its cause: azure-core's error keeps its HTTP
            # answer, whose socket would stay open for as long as our error is kept.
            raise failure
        token, expires_on = getattr(result, "token", None), getattr(result, "expires_on", None)
        if not isinstance(token, str) or not token or not isinstance(expires_on, int | float):
            raise TokenRequestFailed(
                f"{self._setting}: get_token returned no usable token ({type(result).__name__})"
            )
        return token, max(0.0, float(expires_on) - time.time())

    def close(self) -> None:
        close = getattr(self._credential, "close", None)
        if self._owned and callable(close) and not inspect.iscoroutinefunction(close):
            close()


def _first_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())  # azure-identity messages span lines
    text = text.split(" Trace ID:")[0]
    return text[:limit] + ("…" if len(text) > limit else "")


def credential_error(exc: Exception, setting: str) -> DataverseError:
    """Our error for an azure-identity failure; ``setting`` is e.g. ``APEX_AUTH=default``."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.identity import CredentialUnavailableError

    auth = setting.partition("=")[2]
    message = f"{setting}: {type(exc).__name__}: {_first_line(exc)}"
    if isinstance(exc, CredentialUnavailableError):
        return CredentialUnavailable(message, hint=_HINTS.get(auth))
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return InsecureTransport(
            f"{setting}: TLS verification of the token authority failed",
            hint="if it uses a private CA (e.g. the https emulator), set APEX_CA_BUNDLE to its CA",
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return TransientError(message, hint="check the network to the token authority")
    if isinstance(exc, ClientAuthenticationError):
        return TokenRequestFailed(
            message,
            hint="the identity exists but Entra ID refused it: check the app's federated "
            "credential or the identity's client id (APEX_CLIENT_ID), and APEX_TENANT_ID",
        )
    return TokenRequestFailed(message, hint=_HINTS.get(auth))


def azure_credential(
    auth: AzureAuth,
    *,
    tenant_id: str | None,
    client_id: str | None,
    authority: str | None,
    ca_bundle: Path | None,
) -> Any:
    """The azure-identity credential for ``APEX_AUTH=auth``.

    ``authority`` (an https URL) replaces login.microsoftonline.com, e.g. the https emulator;
    None leaves azure-identity's default (``AZURE_AUTHORITY_HOST``, else public cloud).
    ``ca_bundle`` is then the only CA trusted for the authority (as with MSAL)."""
    import azure.identity as identity

    setting = f"APEX_AUTH={auth}"
    options: dict[str, Any] = {}
    if authority is not None:
        options["authority"] = authority
    if ca_bundle is not None:
        options["connection_verify"] = str(ca_bundle)
    try:
        if auth == "managed-identity":
            return identity.ManagedIdentityCredential(client_id=client_id)
        if auth == "workload-identity":
            return identity.WorkloadIdentityCredential(
                tenant_id=tenant_id, client_id=client_id, **options
            )
        return identity.DefaultAzureCredential(
            managed_identity_client_id=client_id,
            workload_identity_client_id=client_id,
            workload_identity_tenant_id=tenant_id,
            **options,
        )
    except ValueError as exc:  # azure-identity's configuration errors
        cls = InsecureTransport if "TLS protected" in str(exc) else CredentialUnavailable
        raise cls(f"{setting}: {_first_line(exc)}", hint=_HINTS[auth]) from None
