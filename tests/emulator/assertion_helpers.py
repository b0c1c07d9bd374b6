"""Test certificates and client assertions, made with ``cryptography`` and PyJWT (MSAL's own
JWT library), for the token endpoint's certificate and federated sign-in."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from apex_metrics.emulator.assertions import JWT_BEARER


@dataclass(frozen=True)
class ClientCert:
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    pem_file: Path  # private key + certificate, as APEX_CLIENT_CERTIFICATE wants

    @property
    def cert_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    @property
    def sha1(self) -> bytes:
        return self.certificate.fingerprint(hashes.SHA1())

    @property
    def sha256(self) -> bytes:
        return self.certificate.fingerprint(hashes.SHA256())


def make_certificate(directory: Path, name: str, *, expired: bool = False) -> ClientCert:
    """A self-signed RSA certificate (2048 bits), valid now unless ``expired``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    start, end = (
        (now - timedelta(days=30), now - timedelta(days=1))
        if expired
        else (now - timedelta(minutes=5), now + timedelta(days=30))
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    pem_file = directory / f"{name}.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem_file.write_bytes(key_pem + certificate.public_bytes(serialization.Encoding.PEM))
    return ClientCert(key, certificate, pem_file)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assertion(
    cert: ClientCert,
    *,
    client_id: str,
    audience: str,
    alg: str = "PS256",
    lifetime: float = 600,
    issued: float | None = None,
    thumbprint: str = "auto",
    **claims: Any,
) -> str:
    """A client assertion as Entra documents it (MSAL's format). ``thumbprint``: ``auto``
    (x5t#S256 for PS256, x5t for RS256), ``sha1``, ``sha256`` or ``none``."""
    now = time.time() if issued is None else issued
    payload = {
        "aud": audience, "iss": client_id, "sub": client_id, "jti": str(uuid.uuid4()),
        "iat": int(now), "nbf": int(now), "exp": int(now + lifetime), **claims,
    }  # fmt: skip
    if thumbprint == "auto":
        thumbprint = "sha256" if alg == "PS256" else "sha1"
    headers: dict[str, Any] = {}
    if thumbprint == "sha256":
        headers["x5t#S256"] = b64(cert.sha256)
    elif thumbprint == "sha1":
        headers["x5t"] = b64(cert.sha1)
    return jwt.encode(payload, cert.key, algorithm=alg, headers=headers)


def federated_token(
    issuer_cert: ClientCert,
    *,
    issuer: str,
    subject: str,
    audience: str = "api://AzureADTokenExchange",
    lifetime: float = 3600,
    issued: float | None = None,
) -> str:
    """A token as a Kubernetes service account issuer makes it (RS256)."""
    now = time.time() if issued is None else issued
    payload = {
        "iss": issuer, "sub": subject, "aud": [audience],
        "iat": int(now), "nbf": int(now), "exp": int(now + lifetime),
    }  # fmt: skip
    return jwt.encode(payload, issuer_cert.key, algorithm="RS256", headers={"kid": "k1"})


def assertion_form(client_id: str, scope: str, token: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": token,
        "scope": scope,
    }
