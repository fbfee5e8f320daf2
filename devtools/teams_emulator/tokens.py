"""JSON Web Tokens: the channel's tokens to the bot, Entra ID's tokens to the bot, and checks.

Encoding is done here rather than through a JWT library so that tests can also
forge what a library refuses to produce (``alg: none``, HS256 keyed with the public
key PEM). Verification reads the emulator's clock, so an injected clock decides
what is expired.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from devtools.teams_emulator.keys import KeySet, SigningKey, b64url

CHANNEL_ISSUER: Final = "https://api.botframework.com"
"""``iss`` of the channel's tokens to the bot."""
CONNECTOR_AUDIENCE: Final = "https://api.botframework.com"
"""``aud`` of the bot's access tokens for the connector."""
CONNECTOR_SCOPE: Final = "https://api.botframework.com/.default"
GRAPH_AUDIENCE: Final = "https://graph.microsoft.com"
"""``aud`` of app-only Microsoft Graph tokens (v1 tokens, as Graph's are)."""
GRAPH_APP_ID: Final = "00000003-0000-0000-c000-000000000000"
"""Graph's own application id, the other ``aud`` Graph accepts."""
GRAPH_SCOPE: Final = "https://graph.microsoft.com/.default"
BOTFRAMEWORK_TENANT: Final = "botframework.com"
"""The tenant multi-tenant bots request connector tokens from."""
BOTFRAMEWORK_TENANT_ID: Final = "d6d49420-f39b-4df7-a1dc-d59a935871db"
TOKEN_LIFETIME: Final = timedelta(hours=1)
ACCESS_TOKEN_LEEWAY: Final = timedelta(minutes=5)
WORKLOAD_IDENTITY_AUDIENCE: Final = "api://AzureADTokenExchange"
JWT_BEARER_ASSERTION: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Algorithm(StrEnum):
    RS256 = "RS256"
    NONE = "none"
    """Unsigned: the signature part is empty."""
    HS256 = "HS256"
    """HMAC-SHA256 keyed with the signing key's public PEM (the key-confusion attack)."""


class TokenError(ValueError):
    """A token that is not a well-formed compact JWS."""


def unix(moment: datetime) -> int:
    return int(moment.timestamp())


def _json_segment(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def encode(
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    *,
    algorithm: Algorithm,
    key: SigningKey,
) -> str:
    """A compact JWS; ``header`` may override ``typ`` and add ``kid`` and the like."""
    full_header = {"alg": algorithm.value, "typ": "JWT", **header}
    signing_input = f"{_json_segment(full_header)}.{_json_segment(claims)}".encode()
    if algorithm is Algorithm.RS256:
        signature = key.sign_rs256(signing_input)
    elif algorithm is Algorithm.HS256:
        signature = hmac.new(key.public_pem(), signing_input, hashlib.sha256).digest()
    else:
        signature = b""
    return f"{signing_input.decode()}.{b64url(signature)}"


def _b64decode(segment: str) -> bytes:
    import base64  # noqa: PLC0415

    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("bad base64url") from exc


@dataclass(frozen=True, slots=True)
class DecodedToken:
    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    signing_input: bytes
    signature: bytes


def decode_unverified(token: str) -> DecodedToken:
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not three segments")
    try:
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenError("segment is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("segment is not a JSON object")
    return DecodedToken(header, claims, f"{parts[0]}.{parts[1]}".encode(), _b64decode(parts[2]))


@dataclass(frozen=True, slots=True)
class AuthCheck:
    """The verdict on the bearer token of one call."""

    valid: bool
    reason: str | None = None
    """Why it was refused: missing, scheme, malformed, algorithm, unknown_kid, signature,
    issuer, audience, app_id, expired, not_yet_valid, no_expiry."""
    app_id: str | None = None
    expires_at: datetime | None = None


def _numeric(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def verify_rs256(
    token: str, *, keys: KeySet, now: datetime, leeway: timedelta
) -> tuple[Mapping[str, Any] | None, str | None]:
    """(claims, None) if the signature and the time window hold, else (None, reason)."""
    try:
        decoded = decode_unverified(token)
    except TokenError:
        return None, "malformed"
    if decoded.header.get("alg") != Algorithm.RS256.value:
        return None, "algorithm"
    kid = decoded.header.get("kid")
    key = keys.find(kid) if isinstance(kid, str) else None
    if key is None:
        return None, "unknown_kid"
    if not key.verify_rs256(decoded.signature, decoded.signing_input):
        return None, "signature"
    claims = decoded.claims
    exp, nbf = _numeric(claims, "exp"), _numeric(claims, "nbf")
    if exp is None:
        return None, "no_expiry"
    if unix(now - leeway) >= exp:
        return None, "expired"
    if nbf is not None and unix(now + leeway) < nbf:
        return None, "not_yet_valid"
    return claims, None


def check_bearer(
    authorization: str | None,
    *,
    keys: KeySet,
    app_id: str,
    issuers: frozenset[str],
    now: datetime,
) -> AuthCheck:
    """Whether a connector call carries a valid access token of this bot."""
    if not authorization:
        return AuthCheck(valid=False, reason="missing")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return AuthCheck(valid=False, reason="scheme")
    claims, reason = verify_rs256(token.strip(), keys=keys, now=now, leeway=ACCESS_TOKEN_LEEWAY)
    if claims is None:
        return AuthCheck(valid=False, reason=reason)
    return _check_claims(
        claims, app_id=app_id, issuers=issuers, audiences=frozenset({CONNECTOR_AUDIENCE}), now=now
    )


def check_graph_bearer(
    authorization: str | None,
    *,
    keys: KeySet,
    app_id: str,
    issuer: str,
    now: datetime,
) -> tuple[AuthCheck, tuple[str, ...]]:
    """Whether a Graph call carries a valid app-only Graph token of this bot (for the
    tenant's ``issuer``), and the application permissions (``roles``) it holds."""
    if not authorization:
        return AuthCheck(valid=False, reason="missing"), ()
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return AuthCheck(valid=False, reason="scheme"), ()
    claims, reason = verify_rs256(token.strip(), keys=keys, now=now, leeway=ACCESS_TOKEN_LEEWAY)
    if claims is None:
        return AuthCheck(valid=False, reason=reason), ()
    check = _check_claims(
        claims,
        app_id=app_id,
        issuers=frozenset({issuer}),
        audiences=frozenset({GRAPH_AUDIENCE, GRAPH_APP_ID}),
        now=now,
    )
    roles = claims.get("roles")
    granted = tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else ()
    return check, granted


def _check_claims(
    claims: Mapping[str, Any],
    *,
    app_id: str,
    issuers: frozenset[str],
    audiences: frozenset[str],
    now: datetime,
) -> AuthCheck:
    token_app = claims.get("appid") or claims.get("azp")
    expires_at = datetime.fromtimestamp(claims["exp"], tz=now.tzinfo)
    if claims.get("iss") not in issuers:
        return AuthCheck(valid=False, reason="issuer", app_id=token_app)
    if claims.get("aud") not in audiences:
        return AuthCheck(valid=False, reason="audience", app_id=token_app)
    if token_app != app_id:
        return AuthCheck(valid=False, reason="app_id", app_id=token_app)
    return AuthCheck(valid=True, app_id=token_app, expires_at=expires_at)
