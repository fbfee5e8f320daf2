"""The channel's token-signing keys, from its OpenID metadata.

``OpenIdKeySource`` reads the metadata document (``openid_metadata_url``), follows
its ``jwks_uri`` and keeps the keys in memory: at most ``MAX_KEYS`` of them, for at
most ``max_age_s``. A token signed with a key id it does not know makes it fetch
again, at most once per ``min_refresh_s`` (so forged key ids cannot make it hammer
the metadata host), with one fetch shared by all concurrent callers.

``generation`` counts the key sets: it moves whenever a fetch brings keys that differ
from the ones held (a key added, removed or changed), so whoever remembers what a key
verified (the inbound token cache) knows to forget it.

Both URLs must be https, or http towards a loopback host (a local emulator);
see ``bridge.config.teams.check_trusted_url``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import structlog
from jwt import PyJWK
from jwt.exceptions import PyJWKError, PyJWTError

from bridge.config.teams import check_trusted_url
from bridge.errors import DependencyUnavailableError
from bridge.ports import Clock

log = structlog.get_logger(__name__)

MAX_KEYS = 64
"""More keys than this in one JWKS is not a real channel; the rest are ignored."""
MAX_DOCUMENT_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKey:
    key_id: str
    key: PyJWK
    endorsements: frozenset[str] | None
    """The channels the key is endorsed for, or None when the key lists none."""
    fingerprint: str = ""
    """The key's JWK entry, canonical JSON: two keys with equal fingerprints verify alike."""


class KeySource(Protocol):
    """Where the inbound validator finds the key a token was signed with."""

    @property
    def generation(self) -> int:
        """Moves whenever the keys change; what a key verified is valid for one generation."""

    async def signing_key(self, key_id: str) -> SigningKey | None:
        """The key with this id, fetching the keys again if it is unknown; None if absent."""


class OpenIdKeySource:
    """Keys from OpenID metadata, cached and bounded; see the module docstring."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        metadata_url: str,
        clock: Clock,
        max_age_s: float,
        min_refresh_s: float,
        timeout_s: float,
    ) -> None:
        problem = check_trusted_url(metadata_url)
        if problem is not None:
            raise ValueError(f"openid metadata URL {problem}")
        self._session = session
        self._metadata_url = metadata_url
        self._clock = clock
        self._max_age_s = max_age_s
        self._min_refresh_s = min_refresh_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._keys: dict[str, SigningKey] = {}
        self._fingerprint: frozenset[tuple[str, str]] = frozenset()
        self._generation = 0
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        """Whether a key set has been fetched (an old one is renewed on the next use)."""
        return self._fetched_at is not None

    @property
    def generation(self) -> int:
        return self._generation

    async def signing_key(self, key_id: str) -> SigningKey | None:
        key = self._keys.get(key_id)
        if key is not None and not self._expired():
            return key
        async with self._lock:
            key = self._keys.get(key_id)
            if key is not None and not self._expired():
                return key  # fetched by a caller we waited for
            if not self._may_refetch():
                if self._fetched_at is None:  # never loaded: cannot judge the token at all
                    raise DependencyUnavailableError("teams signing keys", "not fetched yet")
                return key
            try:
                await self._refresh_locked()
            except DependencyUnavailableError:
                if key is None:
                    raise
                log.warning("teams_signing_keys_stale", key_id=key_id)
                return key  # the host is down: a known key beats refusing everyone
            return self._keys.get(key_id)

    async def refresh(self) -> None:
        """Fetch the keys now (at start-up); raise ``DependencyUnavailableError`` on failure."""
        async with self._lock:
            await self._refresh_locked()

    def _expired(self) -> bool:
        return (
            self._fetched_at is None
            or self._clock.monotonic() - self._fetched_at >= self._max_age_s
        )

    def _may_refetch(self) -> bool:
        return (
            self._attempted_at is None
            or self._clock.monotonic() - self._attempted_at >= self._min_refresh_s
        )

    async def _refresh_locked(self) -> None:
        self._attempted_at = self._clock.monotonic()
        metadata = await self._get_json(self._metadata_url)
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise DependencyUnavailableError("teams signing keys", "metadata has no jwks_uri")
        problem = check_trusted_url(jwks_uri)
        if problem is not None:
            raise DependencyUnavailableError("teams signing keys", f"jwks_uri {problem}")
        keys = parse_key_set(await self._get_json(jwks_uri))
        fingerprint = key_set_fingerprint(keys)
        if fingerprint != self._fingerprint:
            self._generation += 1
            self._fingerprint = fingerprint
        self._keys = keys
        self._fetched_at = self._clock.monotonic()
        log.info("teams_signing_keys_fetched", keys=len(keys))

    async def _get_json(self, url: str) -> Mapping[str, Any]:
        try:
            async with self._session.get(
                url, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.status != 200:
                    raise DependencyUnavailableError(
                        "teams signing keys", f"HTTP {response.status} from {url}"
                    )
                body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DependencyUnavailableError(
                "teams signing keys", f"{type(exc).__name__} from {url}"
            ) from exc
        if len(body) > MAX_DOCUMENT_BYTES:
            raise DependencyUnavailableError("teams signing keys", f"oversized document at {url}")
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise DependencyUnavailableError("teams signing keys", f"not JSON at {url}") from exc
        if not isinstance(document, dict):
            raise DependencyUnavailableError("teams signing keys", f"not a JSON object at {url}")
        return document


def parse_key_set(document: Mapping[str, Any]) -> dict[str, SigningKey]:
    """The usable RSA signing keys of a JWKS document, by key id (others are skipped)."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise DependencyUnavailableError("teams signing keys", "the key set has no keys")
    keys: dict[str, SigningKey] = {}
    for entry in entries:
        if len(keys) >= MAX_KEYS:
            log.warning("teams_signing_keys_truncated", limit=MAX_KEYS)
            break
        key = _parse_key(entry)
        if key is not None:
            keys[key.key_id] = key
    return keys


def key_set_fingerprint(keys: Mapping[str, SigningKey]) -> frozenset[tuple[str, str]]:
    """What identifies a key set: each key's id, endorsements and public JWK material."""
    return frozenset((key_id, key.fingerprint) for key_id, key in keys.items())


def _parse_key(entry: Any) -> SigningKey | None:
    if not isinstance(entry, dict):
        return None
    key_id = entry.get("kid")
    if not isinstance(key_id, str) or not key_id or entry.get("kty") != "RSA":
        return None
    if entry.get("use", "sig") != "sig":
        return None
    raw_endorsements = entry.get("endorsements")
    endorsements: frozenset[str] | None = None
    if isinstance(raw_endorsements, list):
        endorsements = frozenset(e for e in raw_endorsements if isinstance(e, str))
    try:
        jwk = PyJWK(entry, algorithm="RS256")
    except (PyJWKError, PyJWTError, ValueError, TypeError):
        log.warning("teams_signing_key_unusable", key_id=key_id)
        return None
    fingerprint = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)
    return SigningKey(key_id=key_id, key=jwk, endorsements=endorsements, fingerprint=fingerprint)
