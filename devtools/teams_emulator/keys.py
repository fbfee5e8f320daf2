"""RSA signing keys, published the way Microsoft publishes them.

A key carries a self-signed certificate so its JWK has ``x5c`` and ``x5t`` as the
Bot Framework's keys do; the key id is the certificate thumbprint (base64url SHA-1),
also as Microsoft does.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from devtools.teams_emulator.model import JSONObject

RSA_KEY_BITS = 2048
CERTIFICATE_VALIDITY = timedelta(days=365)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _uint_b64url(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey
    certificate_der: bytes

    @classmethod
    def generate(cls, *, subject: str, now: datetime) -> SigningKey:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + CERTIFICATE_VALIDITY)
            .sign(private_key, hashes.SHA256())
        )
        der = certificate.public_bytes(serialization.Encoding.DER)
        return cls(
            kid=b64url(hashlib.sha1(der, usedforsecurity=False).digest()),
            private_key=private_key,
            certificate_der=der,
        )

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign_rs256(self, data: bytes) -> bytes:
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def verify_rs256(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

        try:
            self.public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True

    def jwk(self, endorsements: Sequence[str] | None = None) -> JSONObject:
        numbers = self.public_key.public_numbers()
        key: JSONObject = {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": _uint_b64url(numbers.n),
            "e": _uint_b64url(numbers.e),
            "x5c": [base64.b64encode(self.certificate_der).decode()],
        }
        if endorsements is not None:
            key["endorsements"] = list(endorsements)
        return key


@dataclass(frozen=True, slots=True)
class PublishedKey:
    key: SigningKey
    endorsements: tuple[str, ...] | None


class KeySet:
    """The keys a JWKS document lists, in order (the first is the one in use)."""

    def __init__(self, keys: Sequence[PublishedKey]) -> None:
        self._keys: list[PublishedKey] = list(keys)

    @property
    def current(self) -> SigningKey:
        return self._keys[0].key

    @property
    def published(self) -> tuple[PublishedKey, ...]:
        return tuple(self._keys)

    def find(self, kid: str) -> SigningKey | None:
        return next((p.key for p in self._keys if p.key.kid == kid), None)

    def publish(
        self, key: SigningKey, endorsements: Sequence[str] | None, *, current: bool
    ) -> None:
        entry = PublishedKey(key, tuple(endorsements) if endorsements is not None else None)
        self._keys = [p for p in self._keys if p.key.kid != key.kid]
        if current:
            self._keys.insert(0, entry)
        else:
            self._keys.append(entry)

    def withdraw(self, kid: str) -> None:
        remaining = [p for p in self._keys if p.key.kid != kid]
        if not remaining:
            raise ValueError("the key set would be empty")
        self._keys = remaining

    def jwks(self) -> JSONObject:
        return {"keys": [p.key.jwk(p.endorsements) for p in self._keys]}


@dataclass(frozen=True, slots=True, kw_only=True)
class EmulatorKeys:
    """Every key an emulator signs with; generate once and share to save start-up time."""

    channel: SigningKey
    """Signs the channel's tokens; published endorsed for ``msteams``."""
    webchat: SigningKey
    """Published too, but endorsed for ``webchat`` only: not valid for a Teams activity."""
    entra: SigningKey
    """Signs the bot's access tokens (Entra ID's key, published at Entra's JWKS)."""
    workload: SigningKey
    """Signs workload-identity (projected service-account) tokens."""

    @classmethod
    def generate(cls, now: datetime) -> EmulatorKeys:
        return cls(
            channel=SigningKey.generate(subject="login.botframework.com", now=now),
            webchat=SigningKey.generate(subject="webchat.botframework.com", now=now),
            entra=SigningKey.generate(subject="login.microsoftonline.com", now=now),
            workload=SigningKey.generate(subject="oidc.kubernetes.local", now=now),
        )
