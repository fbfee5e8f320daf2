"""Outbound bearer tokens for the Bot Connector (the ``TokenProvider`` of ``ids.py``).

``CachingTokenProvider`` keeps one token until ``token_refresh_margin_s`` before it
expires; concurrent callers wait for one shared refresh, bounded by
``request_timeout_s``. Where tokens come from is a ``TokenSource``:

- ``MsalTokenSource`` (production): the Agents SDK's MSAL auth
  (``microsoft_agents.authentication.msal``) for client secret, certificate (PKCS#12)
  and workload identity. MSAL is synchronous and its client set-up fetches the
  authority's metadata, so each acquisition runs on a worker thread.
- ``ClientCredentialsTokenSource``: a plain OAuth client-credentials request over
  aiohttp, for a loopback ``authority`` only (an emulator: MSAL refuses http
  authorities). It refuses any other authority, so a secret never travels in clear.

Both take the scope to ask for: the Bot Connector's (``teams.scope``) by default, or
another one with the same app credentials (Microsoft Graph: ``teams.graph_scope``);
each scope gets its own provider and cache.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
import structlog
from azure.core.credentials import AccessToken
from microsoft_agents.authentication.msal import MsalAuth
from microsoft_agents.hosting.core.authorization import AgentAuthConfiguration, AuthTypes

from bridge.config.teams import TeamsSettings
from bridge.errors import PermanentDeliveryError, RetryableDeliveryError
from bridge.ports import Clock

log = structlog.get_logger(__name__)

_AUTH_TYPES = {
    "client_secret": AuthTypes.client_secret,
    "certificate": AuthTypes.certificate,
    "workload_identity": AuthTypes.workload_identity,
}
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024


class TokenUnavailableError(RetryableDeliveryError):
    """No token now (the authority did not answer, or answered with a server error)."""


class TokenRefusedError(PermanentDeliveryError):
    """The authority refused the bot's credentials: a configuration problem."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedToken:
    value: str
    expires_in_s: float


class TokenSource(Protocol):
    async def fetch(self) -> IssuedToken:
        """A fresh token; raise ``TokenUnavailableError`` or ``TokenRefusedError``."""


class CachingTokenProvider:
    """A ``TokenProvider``: cached until shortly before expiry, one refresh at a time."""

    def __init__(
        self, source: TokenSource, *, clock: Clock, refresh_margin_s: float, timeout_s: float
    ) -> None:
        self._source = source
        self._clock = clock
        self._margin_s = refresh_margin_s
        self._timeout_s = timeout_s
        self._value: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        value = self._current()
        if value is not None:
            return value
        async with self._lock:
            value = self._current()
            if value is not None:
                return value  # refreshed by the caller we waited for
            started = self._clock.monotonic()
            try:
                async with asyncio.timeout(self._timeout_s):
                    issued = await self._source.fetch()
            except TimeoutError:
                raise TokenUnavailableError("token request timed out") from None
            lifetime = max(issued.expires_in_s - self._margin_s, issued.expires_in_s / 2)
            self._value = issued.value
            self._renew_at = started + lifetime
            log.info("teams_token_acquired", expires_in_s=round(issued.expires_in_s))
            return issued.value

    def invalidate(self) -> None:
        """Forget the cached token (after the connector answered 401)."""
        self._value = None
        self._renew_at = 0.0

    def _current(self) -> str | None:
        if self._value is not None and self._clock.monotonic() < self._renew_at:
            return self._value
        return None


def msal_configuration(
    settings: TeamsSettings, *, scope: str | None = None
) -> AgentAuthConfiguration:
    """The SDK's configuration of the bot's credentials (for ``scope``, else ``teams.scope``)."""
    auth = settings.auth
    return AgentAuthConfiguration(
        auth_type=_AUTH_TYPES[auth.type],
        client_id=settings.app_id,
        tenant_id=settings.tenant_id,
        client_secret=auth.client_secret.get_secret_value() if auth.client_secret else None,
        cert_pfx_file=auth.certificate_path,
        send_x5c=auth.send_x5c,
        federated_token_file=auth.federated_token_path,
        authority=f"{settings.authority}/{settings.tenant_id}",
        scopes=[scope or settings.scope],
    )


class MsalTokenSource:
    """Tokens from the Agents SDK's MSAL auth, acquired on a worker thread."""

    def __init__(self, settings: TeamsSettings, *, clock: Clock, scope: str | None = None) -> None:
        self._scope = scope or settings.scope
        configuration = msal_configuration(settings, scope=self._scope)
        self._credential = MsalAuth(configuration).get_token_credential()
        self._clock = clock

    async def fetch(self) -> IssuedToken:
        def acquire() -> AccessToken:
            # MsalAuth builds its MSAL client (a blocking metadata fetch) on first use
            # and calls MSAL synchronously: keep all of it off the event loop.
            return asyncio.run(self._credential.get_token(self._scope))

        try:
            access = await asyncio.to_thread(acquire)
        except ValueError as exc:
            log.warning("teams_token_request_failed", error=type(exc).__name__)
            raise TokenUnavailableError("token request failed") from None
        return IssuedToken(
            value=access.token,
            expires_in_s=float(access.expires_on) - self._clock.now().timestamp(),
        )


class ClientCredentialsTokenSource:
    """Client credentials against a loopback authority (an emulator), over aiohttp."""

    def __init__(
        self,
        settings: TeamsSettings,
        *,
        session: aiohttp.ClientSession,
        scope: str | None = None,
    ) -> None:
        if not settings.uses_loopback_authority:
            raise ValueError("the plain token client is only for a loopback authority")
        if settings.auth.type == "certificate":
            raise ValueError("a loopback authority takes client_secret or workload_identity")
        self._settings = settings
        self._session = session
        self._scope = scope or settings.scope
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)

    async def fetch(self) -> IssuedToken:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._settings.app_id,
            "scope": self._scope,
            **await self._credential(),
        }
        try:
            async with self._session.post(
                self._settings.token_endpoint, data=form, timeout=self._timeout
            ) as response:
                status = response.status
                body = await response.content.read(MAX_TOKEN_RESPONSE_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenUnavailableError(f"token request failed: {type(exc).__name__}") from None
        if status in (400, 401, 403):
            raise TokenRefusedError(f"the authority refused the credentials (HTTP {status})")
        if status != 200:
            raise TokenUnavailableError(f"token request failed: HTTP {status}")
        return _issued(body)

    async def _credential(self) -> dict[str, str]:
        auth = self._settings.auth
        if auth.type == "workload_identity" and auth.federated_token_path:
            path = Path(auth.federated_token_path)
            assertion = (await asyncio.to_thread(path.read_text, encoding="utf-8")).strip()
            return {"client_assertion_type": JWT_BEARER_ASSERTION, "client_assertion": assertion}
        secret = auth.client_secret.get_secret_value() if auth.client_secret else ""
        return {"client_secret": secret}


def _issued(body: bytes) -> IssuedToken:
    try:
        document = json.loads(body)
        value = document["access_token"]
        expires_in = float(document.get("expires_in", 3600))
    except (ValueError, KeyError, TypeError):
        raise TokenUnavailableError("the token response is malformed") from None
    if not isinstance(value, str) or not value:
        raise TokenUnavailableError("the token response has no access token")
    return IssuedToken(value=value, expires_in_s=expires_in)


def token_provider_for(
    settings: TeamsSettings,
    *,
    session: aiohttp.ClientSession,
    clock: Clock,
    scope: str | None = None,
) -> CachingTokenProvider:
    """The provider the settings call for: MSAL, or the plain client for an emulator.

    ``scope`` is what the tokens are for: the Bot Connector (``teams.scope``) unless given.
    """
    source: TokenSource
    if settings.uses_loopback_authority:
        source = ClientCredentialsTokenSource(settings, session=session, scope=scope)
    else:
        source = MsalTokenSource(settings, clock=clock, scope=scope)
    return CachingTokenProvider(
        source,
        clock=clock,
        refresh_margin_s=settings.token_refresh_margin_s,
        timeout_s=settings.request_timeout_s,
    )
