"""Inbound authentication: is this request really from Teams, for this bot, and allowed?

Token checks (Bot Framework's seven):

1. ``Authorization: Bearer <token>``;
2. a well-formed JWT;
3. ``iss`` in ``teams.issuers`` (exactly);
4. ``aud`` is the bot's app id;
5. ``exp`` present and not past, ``nbf`` not ahead (``teams.clock_skew_s`` of tolerance);
6. RS256 only, signed by a key of the channel's OpenID metadata whose
   ``endorsements``, when it lists any, include ``msteams``;
7. the ``serviceurl`` claim equals the activity's ``serviceUrl``;

and the bridge's own, on the activity: the channel is ``msteams``, the tenant is in
the tenant allow-list, the serviceUrl host (and port) in the host allow-list, over
https unless the host is loopback.

Signature, audience, algorithm, lifetime and issuer are checked by the Agents SDK's
``JwtTokenValidator`` (issuer allow-list switched on). That validator hard-codes
Microsoft's key URLs and keeps a process-wide key cache, so the one instance used
here is given a key manager that reads from an injected ``KeySource`` instead.
Everything the SDK leaves out (required ``exp``, exact issuer, endorsements, the
serviceUrl claim, the allow-lists) is checked here on the verified claims.

The channel sends one token for as long as it is valid, so a token that passed is
remembered (``VerifiedTokenCache``, keyed by the exact token string, at most
``TOKEN_CACHE_SIZE`` of them, least recently used first out) and not verified again:
an entry serves only until the token's ``exp`` and only while the key set it was
verified against is current (``KeySource.generation``); the claim checks against the
clock (lifetime, skew) run on every use. A refused token is never remembered.

A refused request raises ``AuthRejectedError``: 401 for a missing or bad token, 403 for a
valid token from a caller the bridge does not serve. Nothing is stored and nothing
is sent for a refused request.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
from jwt import PyJWK
from microsoft_agents.hosting.core.authorization import AgentAuthConfiguration, AuthTypes
from microsoft_agents.hosting.core.authorization.jwt.jwt_token_validator import (
    JwtTokenValidator,
    _JwkClientManager,
)

from adapters.teams.keys import KeySource
from bridge.config.teams import TeamsSettings, is_loopback_host
from bridge.ports import Clock

TEAMS_CHANNEL: Final = "msteams"
SERVICE_URL_CLAIM: Final = "serviceurl"
_DEFAULT_PORTS: Final = {"https": 443, "http": 80}
TOKEN_CACHE_SIZE: Final = 4096
"""Verified tokens remembered; the channel uses one at a time, so this is ample."""
_WHITESPACE: Final = re.compile(r"\s")
"""What ``str.isspace`` calls whitespace (the same Unicode table), found in C."""


class AuthRejectedError(Exception):
    """The request is refused; ``reason`` is a constant snake_case word for logs and metrics."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedToken:
    """The claims of a token whose signature and lifetime were checked."""

    claims: Mapping[str, Any]

    @property
    def service_url(self) -> str | None:
        value = self.claims.get(SERVICE_URL_CLAIM)
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class _CachedToken:
    claims: Mapping[str, Any]
    expires: float
    """The token's ``exp``: the entry serves until then."""


class VerifiedTokenCache:
    """Tokens whose signature and claims passed, by their exact string; bounded, LRU."""

    def __init__(self, *, capacity: int = TOKEN_CACHE_SIZE) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, _CachedToken] = OrderedDict()
        self._generation: int | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, *, now: float, generation: int) -> Mapping[str, Any] | None:
        """The claims of ``token`` if it was verified against this key generation and its
        ``exp`` is not reached yet (an entry past it is dropped)."""
        if generation != self._generation:
            self._entries.clear()  # the keys changed: every verdict is void
            self._generation = generation
            return None
        entry = self._entries.get(token)
        if entry is None:
            return None
        if now >= entry.expires:
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return entry.claims

    def put(self, token: str, claims: Mapping[str, Any], *, now: float, generation: int) -> None:
        """Remember a token verified against key generation ``generation`` (until its ``exp``)."""
        expires = claims.get("exp")
        if not isinstance(expires, int | float) or isinstance(expires, bool) or now >= expires:
            return
        if generation != self._generation:
            self._entries.clear()
            self._generation = generation
        self._entries[token] = _CachedToken(claims=claims, expires=float(expires))
        self._entries.move_to_end(token)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)


class _InjectedKeys(_JwkClientManager):
    """The SDK validator's key lookup, answered from a ``KeySource``."""

    def __init__(self, keys: KeySource) -> None:
        # The base's only state is a cache of clients keyed by JWKS URL, which this
        # lookup never uses, so its constructor is deliberately not called.
        self._keys = keys

    async def get_signing_key(self, jwks_uri: str, header: dict[str, Any]) -> PyJWK:
        del jwks_uri  # Microsoft's hard-coded URL; the key source knows where to look
        key_id = header.get("kid")
        if not isinstance(key_id, str):
            raise jwt.InvalidTokenError("no key id")
        key = await self._keys.signing_key(key_id)
        if key is None:
            raise jwt.InvalidKeyError("unknown key id")
        if key.endorsements is not None and TEAMS_CHANNEL not in key.endorsements:
            raise jwt.InvalidKeyError("key not endorsed for the channel")
        return key.key


class _ChannelTokenValidator(JwtTokenValidator):
    def __init__(self, configuration: AgentAuthConfiguration, keys: _InjectedKeys) -> None:
        super().__init__(configuration)
        self._jwk_client_manager = keys  # per instance, instead of the class-wide cache


class InboundAuthenticator:
    """Checks a request's token, then whether its activity may be served."""

    def __init__(self, *, settings: TeamsSettings, keys: KeySource, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._issuers = frozenset(settings.issuers)
        self._tenants = settings.effective_allowed_tenants
        self._hosts = frozenset(settings.allowed_service_url_hosts)
        configuration = AgentAuthConfiguration(
            auth_type=AuthTypes.client_secret,  # unused: this instance only validates
            client_id=settings.app_id,
            tenant_id=settings.tenant_id,
            authority=settings.authority,
            issuers=list(settings.issuers),
            validate_issuer=True,
            anonymous_allowed=False,
        )
        self._keys = keys
        self._validator = _ChannelTokenValidator(configuration, _InjectedKeys(keys))
        self._verified = VerifiedTokenCache()

    async def authenticate(self, authorization: str | None) -> VerifiedToken:
        """Validate the bearer token (checks 1-6); raise ``AuthRejectedError`` (401) otherwise.

        A token verified before (same string, same key generation, ``exp`` not reached)
        is not verified again; its claims are checked against the clock again.
        ``DependencyUnavailableError`` passes through when the signing keys cannot be
        fetched: the caller answers 503 so the channel delivers again later.
        """
        token = _bearer_token(authorization)
        generation = self._keys.generation
        now = self._clock.now().timestamp()
        cached = self._verified.get(token, now=now, generation=generation)
        if cached is not None:
            self._check_claims(cached)
            return VerifiedToken(claims=cached)
        claims = await self._verify(token)
        self._check_claims(claims)
        if self._keys.generation == generation:  # not when the keys changed meanwhile
            self._verified.put(token, claims, now=now, generation=generation)
        return VerifiedToken(claims=claims)

    async def _verify(self, token: str) -> Mapping[str, Any]:
        """Checks 2-6 by the SDK's validator: the claims of a token signed by a channel key."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthRejectedError(401, "malformed_token") from None
        if header.get("alg") != "RS256":  # before any key lookup: none, HS*, ES* ...
            raise AuthRejectedError(401, "algorithm_not_allowed")
        if not isinstance(header.get("kid"), str):
            raise AuthRejectedError(401, "no_key_id")
        try:
            identity = await self._validator.validate_token(token)
        except jwt.InvalidKeyError:
            raise AuthRejectedError(401, "unknown_signing_key") from None
        except jwt.ExpiredSignatureError:
            raise AuthRejectedError(401, "token_expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthRejectedError(401, "token_not_yet_valid") from None
        except jwt.PyJWTError:
            raise AuthRejectedError(401, "invalid_token") from None
        except ValueError as exc:  # the SDK's audience, issuer and tenant-binding refusals
            issuer = "issuer" in str(exc).lower()
            reason = "issuer_not_allowed" if issuer else "token_not_for_this_bot"
            raise AuthRejectedError(401, reason) from None
        except (TypeError, KeyError, AttributeError):  # claims of unexpected JSON types
            raise AuthRejectedError(401, "invalid_token") from None
        return MappingProxyType(dict(identity.claims))

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in self._issuers:
            raise AuthRejectedError(401, "issuer_not_allowed")
        audience = claims.get("aud")
        if not isinstance(audience, str) or audience.lower() != self._settings.app_id.lower():
            raise AuthRejectedError(401, "token_not_for_this_bot")
        now = self._clock.now().timestamp()
        skew = self._settings.clock_skew_s
        expires = claims.get("exp")
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise AuthRejectedError(401, "token_without_expiry")
        if now > expires + skew:
            raise AuthRejectedError(401, "token_expired")
        not_before = claims.get("nbf")
        if not_before is not None:
            if not isinstance(not_before, int | float) or isinstance(not_before, bool):
                raise AuthRejectedError(401, "invalid_token")
            if now + skew < not_before:
                raise AuthRejectedError(401, "token_not_yet_valid")

    def authorize(
        self,
        token: VerifiedToken,
        *,
        service_url: str | None,
        channel_id: str | None,
        tenant_ids: Sequence[str],
    ) -> None:
        """Check the activity against the token (check 7) and the allow-lists."""
        if not service_url or token.service_url is None:
            raise AuthRejectedError(401, "service_url_claim_missing")
        if normalize_service_url(token.service_url) != normalize_service_url(service_url):
            raise AuthRejectedError(401, "service_url_claim_mismatch")
        if channel_id != TEAMS_CHANNEL:
            raise AuthRejectedError(403, "channel_not_allowed")
        if not self.service_url_allowed(service_url):
            raise AuthRejectedError(403, "service_url_not_allowed")
        tenants = {t.lower() for t in tenant_ids if t}
        if not tenants or not tenants <= self._tenants:
            raise AuthRejectedError(403, "tenant_not_allowed")

    def service_url_allowed(self, service_url: str) -> bool:
        """Whether the bot may call ``service_url``: an allow-listed host and port, https
        unless the host is loopback, no credentials in the URL."""
        return service_url_allowed(service_url, self._hosts)


def service_url_allowed(service_url: str, allowed_hosts: frozenset[str]) -> bool:
    try:
        parts = urlsplit(service_url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return False
    if host is None or parts.username is not None or parts.password is not None:
        return False
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback_host(host)):
        return False
    default_port = _DEFAULT_PORTS[parts.scheme]
    effective_port = port if port is not None else default_port
    name = f"[{host}]" if ":" in host else host
    if effective_port == default_port and name in allowed_hosts:
        return True
    return f"{name}:{effective_port}" in allowed_hosts


def normalize_service_url(url: str) -> str:
    """``scheme://host[:port]/path`` with case folded, default port and trailing slash dropped."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc = f"{netloc}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthRejectedError(401, "missing_token")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or _WHITESPACE.search(token) is not None:
        raise AuthRejectedError(401, "not_a_bearer_token")
    return token
