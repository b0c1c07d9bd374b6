"""The token authority (Entra ID's client-credentials flow) and bearer-token checks.

A client proves itself with its secret, or with a client assertion: a JWT signed by one of its
certificates, or a federated token (``assertions.py``). Tokens are HMAC-signed (key kept in the
store, so they survive restarts with a database file) and carry the audience (environment URL),
the client id, how the client authenticated (``appidacr``) and the expiry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from apex_metrics.emulator.assertions import JWT_BEARER, AssertionRejected, AssertionVerifier
from apex_metrics.emulator.config import EmulatorConfig
from apex_metrics.emulator.errors import NOT_A_MEMBER, TOKEN_EXPIRED, ApiError
from apex_metrics.emulator.messages import Caller

_USER_NAMESPACE = uuid.UUID("6f1c2f8e-2d55-4b3c-9a52-3c1b2d7f0a10")


def user_id_for(client_id: str) -> str:
    """The application user's systemuserid, stable for a client id."""
    return str(uuid.uuid5(_USER_NAMESPACE, client_id))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def openid_configuration(base: str, tenant: str) -> dict[str, Any]:
    issuer = f"{base}/{tenant}/v2.0"
    return {
        "issuer": issuer,
        "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
        "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/devicecode",
        "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "tenant_region_scope": None,
        "cloud_instance_name": "emulator.local",
    }


class TokenError(Exception):
    """An Entra-style token endpoint error."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.body: dict[str, Any] = {
            "error": error,
            "error_description": (
                f"AADSTS{code}: {description} Trace ID: {uuid.uuid4()} Correlation ID:"
                f" {uuid.uuid4()} Timestamp: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%SZ')}"
            ),
            "error_codes": [code],
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        }


class Authority:
    def __init__(self, config: EmulatorConfig, signing_key: bytes) -> None:
        self.config = config
        self.key = signing_key
        self.assertions = AssertionVerifier(config)

    def _sign(self, payload: dict[str, Any]) -> str:
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        mac = hmac.new(self.key, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64(mac)}"

    def issue(
        self, tenant: str, form_body: bytes, authorization: str | None, base: str
    ) -> dict[str, Any]:
        """Answer a token request (form POST); raises TokenError like Entra ID."""
        try:
            form = dict(
                parse_qsl(form_body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
            )
        except (UnicodeDecodeError, ValueError):
            raise TokenError(
                400, "invalid_request", 900144, "The request body must be form-encoded."
            ) from None
        if tenant.lower() != self.config.tenant_id.lower():
            raise TokenError(400, "invalid_tenant", 90002, f"Tenant '{tenant[:100]}' not found.")
        grant = form.get("grant_type")
        if grant != "client_credentials":
            raise TokenError(
                400, "unsupported_grant_type", 70003,
                f"The app requested an unsupported grant type '{str(grant)[:50]}'.",
            )  # fmt: skip
        client_id, secret = form.get("client_id"), form.get("client_secret")
        assertion, assertion_type = form.get("client_assertion"), form.get("client_assertion_type")
        if authorization and authorization.lower().startswith("basic "):
            try:
                decoded = _unb64(authorization[6:].strip()).decode()
                client_id, _, secret = decoded.partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise TokenError(
                    401, "invalid_client", 7000215, "Invalid client secret provided."
                ) from None
        if not client_id:
            raise TokenError(
                400, "invalid_request", 900144,
                "The request body must contain the following parameter: 'client_id'.",
            )  # fmt: skip
        if client_id not in self.config.registered_clients():
            raise TokenError(
                400, "unauthorized_client", 700016,
                f"Application with identifier '{client_id[:100]}' was not found in the directory"
                f" '{self.config.tenant_id}'. This can happen if the application has not been"
                " installed by the administrator of the tenant.",
            )  # fmt: skip
        if assertion is not None or assertion_type is not None:
            if secret:
                raise TokenError(
                    400, "invalid_request", 90023,
                    "Only one of 'client_assertion' and 'client_secret' may be presented.",
                )  # fmt: skip
            self._check_assertion(tenant, client_id, assertion, assertion_type, base)
            method = "2"  # appidacr: certificate or federated credential
        else:
            self._check_secret(client_id, secret)
            method = "1"  # appidacr: client secret
        return self._finish(form, client_id, method, base)

    def _check_secret(self, client_id: str, secret: str | None) -> None:
        if not secret:
            raise TokenError(
                401, "invalid_client", 7000218,
                "The request body must contain the following parameter: 'client_assertion' or"
                " 'client_secret'.",
            )  # fmt: skip
        expected = self.config.secrets().get(client_id)
        if expected is None or not hmac.compare_digest(secret.encode(), expected.encode()):
            raise TokenError(
                401, "invalid_client", 7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is"
                f" the client secret value, not the client secret ID, for a secret added to app"
                f" '{client_id}'.",
            )  # fmt: skip

    def _check_assertion(
        self, tenant: str, client_id: str, assertion: str | None, kind: str | None, base: str
    ) -> None:
        if kind != JWT_BEARER:
            raise TokenError(
                400, "invalid_request", 90014 if not kind else 90023,
                f"The value of 'client_assertion_type' must be '{JWT_BEARER}'.",
            )  # fmt: skip
        if not assertion:
            raise TokenError(
                400, "invalid_request", 900144,
                "The request body must contain the following parameter: 'client_assertion'.",
            )  # fmt: skip
        endpoints = [f"{base}/{tenant}/oauth2/v2.0/token", f"{base}/{tenant}/oauth2/token"]
        try:
            self.assertions.verify(
                assertion, client_id=client_id, token_endpoints=endpoints, now=time.time()
            )
        except AssertionRejected as exc:
            raise TokenError(exc.status, exc.error, exc.code, exc.description) from None

    def _finish(
        self, form: dict[str, str], client_id: str, method: str, base: str
    ) -> dict[str, Any]:
        scope = (form.get("scope") or "").strip()
        if not scope:
            raise TokenError(
                400, "invalid_request", 90014, "The required field 'scope' is missing."
            )
        resource = scope.split()[0]
        if not resource.endswith("/.default"):
            raise TokenError(
                400, "invalid_scope", 1002012,
                f"The provided value for scope {resource[:200]} is not valid. Client credential"
                " flows must have a scope value with /.default suffixed to the resource"
                " identifier.",
            )  # fmt: skip
        audience = resource.removesuffix("/.default").rstrip("/")
        if audience.lower() != base.lower():
            raise TokenError(
                400, "invalid_resource", 500011,
                f"The resource principal named {audience[:200]} was not found in the tenant named"
                f" {self.config.tenant_id}.",
            )  # fmt: skip
        now = int(time.time())
        lifetime = self.config.token_lifetime_seconds
        payload = {
            "aud": audience, "appid": client_id, "appidacr": method, "tid": self.config.tenant_id,
            "iat": now, "nbf": now, "exp": now + lifetime, "jti": str(uuid.uuid4()),
        }  # fmt: skip
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self._sign(payload),
        }

    def check(self, authorization: str | None, base: str) -> Caller:
        """The caller of a Web API request, or a 401/403 ApiError."""
        challenge = {
            "WWW-Authenticate": f'Bearer authorization_uri="{base}/{self.config.tenant_id}'
            f'/oauth2/authorize", resource_id="{base}/"'
        }
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApiError(401, "", "The request has no bearer token.", challenge)
        token = authorization[7:].strip()
        payload = self._verify(token)
        if payload is None:
            raise ApiError(
                401, "", "The bearer token is malformed or its signature is invalid.", challenge
            )
        if not isinstance(payload.get("exp"), int) or payload["exp"] <= time.time():
            raise ApiError(401, TOKEN_EXPIRED, "Access token has expired.", challenge)
        if str(payload.get("aud", "")).lower() != base.lower():
            raise ApiError(401, "", f"The token audience is not {base}.", challenge)
        client_id = str(payload.get("appid", ""))
        if not self.config.is_application_user(client_id):
            raise ApiError(403, NOT_A_MEMBER, "The user is not a member of the organization.")
        return Caller(client_id, user_id_for(client_id))

    def _verify(self, token: str) -> dict[str, Any] | None:
        parts = token.split(".")
        if len(parts) != 3 or len(token) > 8192:
            return None
        expected = hmac.new(self.key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(_unb64(parts[2]), expected):
                return None
            payload = json.loads(_unb64(parts[1]))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
        return payload if isinstance(payload, dict) else None
