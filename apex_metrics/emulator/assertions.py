"""Client assertions at the token endpoint: certificate-signed JWTs and federated tokens.

Instead of a client secret, Entra ID accepts ``client_assertion_type=urn:ietf:params:oauth:
client-assertion-type:jwt-bearer`` and a ``client_assertion`` JWT that is either

- **signed by a certificate registered on the app** (certificate credentials): ``iss`` = ``sub``
  = the client id, ``aud`` = the token endpoint, ``exp`` not passed, and the header names the
  certificate by its thumbprint: ``x5t`` (SHA-1, with RS256) or ``x5t#S256`` (SHA-256, with
  PS256);
- **issued by an external identity provider the app trusts** (workload identity federation, e.g.
  a Kubernetes service account token): ``iss``, ``sub`` and ``aud`` must match one of the app's
  federated identity credentials. Entra fetches the issuer's signing keys from its OpenID
  configuration; the emulator, offline, is given them with the credential.

Signatures are verified with ``cryptography``. A rejection is an :class:`AssertionRejected`
carrying Entra's AADSTS code; ``auth.py`` turns it into the token endpoint's error answer.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from apex_metrics.emulator.config import EmulatorConfig
from apex_metrics.emulator.errors import EmulatorError

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Leeway on exp and nbf. Microsoft documents no figure; 5 minutes is the usual one.
CLOCK_SKEW_SECONDS = 300
CERTIFICATE_DOCS = "https://learn.microsoft.com/entra/identity-platform/certificate-credentials"
FEDERATION_DOCS = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
_MAX_ASSERTION = 16_384


class AssertionRejected(Exception):
    """A client assertion Entra would refuse: ``code`` is the AADSTS number."""

    def __init__(
        self, code: int, description: str, *, error: str = "invalid_client", status: int = 401
    ) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.error = error
        self.status = status


@dataclass(frozen=True, slots=True)
class RegisteredCertificate:
    """An app certificate: its public key and both thumbprints."""

    certificate: x509.Certificate
    sha1: bytes
    sha256: bytes

    @classmethod
    def of(cls, certificate: x509.Certificate) -> RegisteredCertificate:
        return cls(
            certificate,
            certificate.fingerprint(hashes.SHA1()),  # x5t is SHA-1 by spec (RFC 7515 4.1.7)
            certificate.fingerprint(hashes.SHA256()),
        )

    @property
    def thumbprint(self) -> str:
        """The SHA-1 thumbprint as the Azure portal shows it (upper-case hex)."""
        return self.sha1.hex().upper()


def load_certificates(pem: str | bytes) -> list[RegisteredCertificate]:
    """The RSA certificates in a PEM text (a private key in the same file is ignored).

    Raises ``ValueError`` when there is none, or one holds no RSA key."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError("no PEM certificate found") from None
    for certificate in certificates:
        if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
            raise ValueError("the certificate's key is not RSA (Entra app certificates are RSA)")
    return [RegisteredCertificate.of(c) for c in certificates]


def load_public_key(pem: str) -> rsa.RSAPublicKey:
    """An RSA public key from a PEM certificate or a PEM public key (``ValueError`` if not)."""
    data = pem.encode()
    key: Any
    try:
        key = x509.load_pem_x509_certificate(data).public_key()
    except ValueError:
        key = serialization.load_pem_public_key(data)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the issuer key is not RSA")
    return key


@dataclass(frozen=True, slots=True)
class _Jwt:
    header: dict[str, Any]
    claims: dict[str, Any]
    signed: bytes
    signature: bytes


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _parse(assertion: str) -> _Jwt:
    parts = assertion.split(".")
    if len(parts) != 3 or len(assertion) > _MAX_ASSERTION:
        raise AssertionRejected(50027, "JWT token is invalid or malformed.")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise AssertionRejected(50027, "JWT token is invalid or malformed.") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AssertionRejected(50027, "JWT token is invalid or malformed.")
    return _Jwt(header, claims, f"{parts[0]}.{parts[1]}".encode(), signature)


def _verify_signature(jwt: _Jwt, key: rsa.RSAPublicKey) -> bool:
    """RS256 (PKCS#1 v1.5) or PS256 (PSS, salt = hash length, RFC 7518 3.5) with SHA-256."""
    alg = jwt.header.get("alg")
    scheme: padding.AsymmetricPadding
    if alg == "RS256":
        scheme = padding.PKCS1v15()
    elif alg == "PS256":
        scheme = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    else:
        raise AssertionRejected(
            700027,
            f"Client assertion failed signature validation. [Reason - The algorithm "
            f"'{str(alg)[:20]}' is not supported; use RS256 or PS256.]",
        )
    try:
        key.verify(jwt.signature, jwt.signed, scheme, hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _check_times(claims: dict[str, Any], now: float, docs: str) -> None:
    exp, nbf = claims.get("exp"), claims.get("nbf", 0)
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise AssertionRejected(50027, "Invalid JWT token. The token has no valid 'exp' claim.")
    if isinstance(nbf, bool) or not isinstance(nbf, int | float):
        nbf = 0
    if now > exp + CLOCK_SKEW_SECONDS or now + CLOCK_SKEW_SECONDS < nbf:
        raise AssertionRejected(
            700024,
            f"Client assertion is not within its valid time range. Current time: {_when(now)}, "
            f"assertion valid from {_when(nbf)}, expiry time of assertion {_when(exp)}. Review "
            f"the documentation at {docs} .",
        )


def _audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [a for a in aud if isinstance(a, str)]
    return []


class AssertionVerifier:
    """Checks client assertions against the certificates and federated credentials of
    ``config``."""

    def __init__(self, config: EmulatorConfig) -> None:
        self._certificates = {
            client: [c for pem in pems for c in load_certificates(pem)]
            for client, pems in config.client_certificates.items()
        }
        self._federated = [
            (f, load_public_key(f.issuer_key_pem)) for f in config.federated_credentials
        ]

    def verify(
        self, assertion: str, *, client_id: str, token_endpoints: list[str], now: float
    ) -> str:
        """How the client proved itself (``"certificate"`` or ``"federated"``), or raise
        :class:`AssertionRejected`. ``token_endpoints``: the audiences accepted for a
        certificate assertion (the URL the request was sent to)."""
        jwt = _parse(assertion)
        issuer, subject = jwt.claims.get("iss"), jwt.claims.get("sub")
        if issuer == client_id:
            if subject != issuer:
                raise AssertionRejected(
                    50048, "Subject mismatches Issuer claim in the client assertion."
                )
            self._certificate(jwt, client_id, token_endpoints, now)
            return "certificate"
        if issuer == subject:
            raise AssertionRejected(
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter. "
                f"Review the documentation at {CERTIFICATE_DOCS} .",
            )
        self._federation(jwt, client_id, now)
        return "federated"

    def _certificate(
        self, jwt: _Jwt, client_id: str, token_endpoints: list[str], now: float
    ) -> None:
        sha256, sha1 = jwt.header.get("x5t#S256"), jwt.header.get("x5t")
        try:
            if isinstance(sha256, str):
                digest, field = _unb64(sha256), "sha256"
            elif isinstance(sha1, str):
                digest, field = _unb64(sha1), "sha1"
            else:
                raise AssertionRejected(
                    700027,
                    "Client assertion failed signature validation. [Reason - The client "
                    "assertion has no 'x5t' or 'x5t#S256' header naming the certificate.]",
                )
        except (binascii.Error, ValueError):
            raise AssertionRejected(50027, "JWT token is invalid or malformed.") from None
        found = [c for c in self._certificates.get(client_id, []) if getattr(c, field) == digest]
        shown = digest.hex().upper()
        if not found:
            raise AssertionRejected(
                700027,
                "The certificate with identifier used to sign the client assertion is not "
                f"registered on application. [Reason - The key was not found., Thumbprint of key "
                f"used by client: '{shown}', Please visit the Azure Portal, Graph Explorer or "
                "directly use MS Graph to see configured keys for app Id "
                f"'{client_id[:100]}'.]",
            )
        certificate = found[0].certificate
        key = certificate.public_key()
        assert isinstance(key, rsa.RSAPublicKey)  # load_certificates kept RSA keys only
        if not _verify_signature(jwt, key):
            raise AssertionRejected(
                700027,
                "Client assertion contains an invalid signature. [Reason - The provided "
                "signature value did not match the expected signature value., Thumbprint of "
                f"key used by client: '{shown}']",
            )
        valid_from = certificate.not_valid_before_utc.timestamp()
        valid_to = certificate.not_valid_after_utc.timestamp()
        if not valid_from <= now <= valid_to:
            raise AssertionRejected(
                700027,
                "Client assertion contains an invalid signature. [Reason - The key used is "
                f"expired., Thumbprint of key used by client: '{shown}', Found key "
                f"'Start={_when(valid_from)}, End={_when(valid_to)}']",
            )
        accepted = {e.lower() for e in token_endpoints}
        audiences = _audiences(jwt.claims)
        if not any(a.lower() in accepted for a in audiences):
            raise AssertionRejected(
                50027,
                f"Invalid JWT token. The audience '{(audiences or [''])[0][:200]}' of the client "
                f"assertion is not the token endpoint '{token_endpoints[0]}'.",
            )
        _check_times(jwt.claims, now, CERTIFICATE_DOCS)

    def _federation(self, jwt: _Jwt, client_id: str, now: float) -> None:
        issuer, subject = str(jwt.claims.get("iss")), str(jwt.claims.get("sub"))
        audiences = _audiences(jwt.claims)
        for credential, key in self._federated:
            if (
                credential.client_id == client_id
                and credential.issuer == issuer
                and credential.subject == subject
                and credential.audience in audiences
            ):
                if not _verify_signature(jwt, key):
                    raise AssertionRejected(700027, "Client assertion failed signature validation.")
                _check_times(jwt.claims, now, FEDERATION_DOCS)
                return
        raise AssertionRejected(
            70021,
            "No matching federated identity record found for presented assertion. Assertion "
            f"Issuer: '{issuer[:200]}'. Assertion Subject: '{subject[:200]}'. Assertion "
            f"Audience: '{','.join(audiences)[:200]}'. {FEDERATION_DOCS}",
        )


def read_certificate_files(paths: Sequence[Path]) -> tuple[str, ...]:
    """The certificate of each PEM file (``--client-certificate``: the first one in the file; a
    chain may follow it), as PEM text without the private key the file may also hold. An
    unreadable or wrong file raises ``EmulatorError``."""
    pems: list[str] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EmulatorError(
                f"cannot read --client-certificate {path}: {getattr(exc, 'strerror', exc)}"
            ) from None
        try:
            first = x509.load_pem_x509_certificates(text.encode())[0]
            pem = first.public_bytes(serialization.Encoding.PEM).decode()
            load_certificates(pem)
        except ValueError as exc:
            reason = str(exc) if "RSA" in str(exc) else "no PEM certificate found"
            raise EmulatorError(
                f"--client-certificate {path}: {reason}",
                hint="give a PEM file holding the app's RSA certificate",
            ) from None
        pems.append(pem)
    return tuple(pems)


def thumbprints(config: EmulatorConfig) -> tuple[str, ...]:
    """The SHA-1 thumbprints of the certificates registered for ``config.client_id``."""
    pems = config.client_certificates.get(config.client_id, ())
    return tuple(c.thumbprint for pem in pems for c in load_certificates(pem))
