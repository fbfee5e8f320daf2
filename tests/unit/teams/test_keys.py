"""The signing-key source: OpenID metadata -> jwks_uri -> keys, cached, bounded refetches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.teams.keys import MAX_KEYS, OpenIdKeySource, parse_key_set
from bridge.errors import DependencyUnavailableError
from tests.support.fakes import FakeClock
from tests.unit.teams import support as s

METADATA_PATH = "/v1/.well-known/openidconfiguration"


@dataclass
class Channel:
    """A loopback stand-in for login.botframework.com."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    jwks_uri: str | None = None
    hits: list[str] = field(default_factory=list)
    status: int = 200
    delay_s: float = 0.0
    server: TestServer | None = None

    @property
    def metadata_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url(METADATA_PATH))

    async def metadata(self, request: web.Request) -> web.Response:
        self.hits.append("metadata")
        if self.status != 200:
            return web.Response(status=self.status)
        uri = self.jwks_uri or str(request.url.with_path("/v1/.well-known/keys"))
        return web.json_response({"issuer": s.ISSUER, "jwks_uri": uri})

    async def jwks(self, _request: web.Request) -> web.Response:
        self.hits.append("keys")
        await asyncio.sleep(self.delay_s)
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def channel() -> AsyncIterator[Channel]:
    channel = Channel()
    app = web.Application()
    app.router.add_get(METADATA_PATH, channel.metadata)
    app.router.add_get("/v1/.well-known/keys", channel.jwks)
    channel.server = TestServer(app, host="127.0.0.1")
    await channel.server.start_server()
    yield channel
    await channel.server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
def pair() -> s.KeyPair:
    return s.KeyPair(key_id="k1")


def source(channel: Channel, session: aiohttp.ClientSession, clock: FakeClock) -> OpenIdKeySource:
    return OpenIdKeySource(
        session=session,
        metadata_url=channel.metadata_url,
        clock=clock,
        max_age_s=3600,
        min_refresh_s=60,
        timeout_s=5,
    )


async def test_keys_are_fetched_once_and_served_from_memory(
    channel: Channel, session: aiohttp.ClientSession, pair: s.KeyPair
) -> None:
    channel.keys = [pair.jwk()]
    keys = source(channel, session, FakeClock())
    assert not keys.loaded
    await keys.refresh()
    assert keys.loaded
    for _ in range(5):
        found = await keys.signing_key("k1")
        assert found is not None
        assert found.endorsements == frozenset({"msteams"})
    assert channel.hits == ["metadata", "keys"]


async def test_an_unknown_key_id_refetches_at_most_once_per_interval(
    channel: Channel, session: aiohttp.ClientSession, pair: s.KeyPair
) -> None:
    clock = FakeClock()
    keys = source(channel, session, clock)
    await keys.refresh()
    assert await keys.signing_key("k1") is None  # within the interval: no fetch
    assert channel.hits == ["metadata", "keys"]
    channel.keys = [pair.jwk()]  # the channel rotates in a new key
    clock.advance(61)
    assert await keys.signing_key("k1") is not None
    assert await keys.signing_key("forged") is None
    assert await keys.signing_key("forged-2") is None
    assert channel.hits == ["metadata", "keys"] * 2


async def test_concurrent_lookups_share_one_fetch(
    channel: Channel, session: aiohttp.ClientSession, pair: s.KeyPair
) -> None:
    channel.keys = [pair.jwk()]
    channel.delay_s = 0.05
    keys = source(channel, session, FakeClock())
    found = await asyncio.gather(*(keys.signing_key("k1") for _ in range(20)))
    assert all(k is not None for k in found)
    assert channel.hits == ["metadata", "keys"]


async def test_old_keys_are_renewed_and_kept_if_the_host_is_down(
    channel: Channel, session: aiohttp.ClientSession, pair: s.KeyPair
) -> None:
    channel.keys = [pair.jwk()]
    clock = FakeClock()
    keys = source(channel, session, clock)
    await keys.refresh()
    clock.advance(3601)
    channel.status = 500
    assert await keys.signing_key("k1") is not None  # stale but known beats refusing all
    assert keys.loaded
    with pytest.raises(DependencyUnavailableError):
        await keys.refresh()


async def test_unreachable_metadata_is_a_dependency_error(
    channel: Channel, session: aiohttp.ClientSession
) -> None:
    channel.status = 503
    keys = source(channel, session, FakeClock())
    with pytest.raises(DependencyUnavailableError):
        await keys.signing_key("k1")
    assert not keys.loaded


async def test_a_plain_http_jwks_uri_off_loopback_is_refused(
    channel: Channel, session: aiohttp.ClientSession
) -> None:
    channel.jwks_uri = "http://keys.attacker.example/keys"
    with pytest.raises(DependencyUnavailableError, match="jwks_uri"):
        await source(channel, session, FakeClock()).refresh()
    assert channel.hits == ["metadata"]


async def test_a_plain_http_metadata_url_off_loopback_is_refused(
    session: aiohttp.ClientSession,
) -> None:
    with pytest.raises(ValueError, match="https"):
        OpenIdKeySource(
            session=session,
            metadata_url="http://login.botframework.com/v1/.well-known/openidconfiguration",
            clock=FakeClock(),
            max_age_s=3600,
            min_refresh_s=60,
            timeout_s=5,
        )


def test_only_rsa_signing_keys_are_kept_and_their_number_is_bounded(pair: s.KeyPair) -> None:
    good = pair.jwk()
    entries: list[Any] = [
        good,
        {**good, "kid": "enc", "use": "enc"},
        {"kid": "ec", "kty": "EC", "crv": "P-256", "x": "a", "y": "b"},
        {"kty": "RSA", "n": "x", "e": "AQAB"},  # no kid
        {**good, "kid": "broken", "n": "%%%"},
        "not a key",
    ]
    assert set(parse_key_set({"keys": entries})) == {"k1"}
    many = [{**good, "kid": f"k{i}"} for i in range(MAX_KEYS + 10)]
    assert len(parse_key_set({"keys": many})) == MAX_KEYS
    with pytest.raises(DependencyUnavailableError):
        parse_key_set({"nokeys": []})


async def test_while_no_keys_were_ever_fetched_lookups_are_unavailable_not_unknown(
    channel: Channel, session: aiohttp.ClientSession, pair: s.KeyPair
) -> None:
    clock = FakeClock()
    keys = source(channel, session, clock)
    channel.status = 503
    with pytest.raises(DependencyUnavailableError):
        await keys.signing_key("k1")
    with pytest.raises(DependencyUnavailableError):  # within the interval: no fetch, still 503
        await keys.signing_key("k1")
    assert channel.hits == ["metadata"]
    channel.status = 200
    channel.keys = [pair.jwk()]
    clock.advance(61)
    assert await keys.signing_key("k1") is not None


async def test_the_generation_moves_only_when_the_keys_change(
    channel: Channel, session: aiohttp.ClientSession, pair: s.KeyPair
) -> None:
    clock = FakeClock()
    keys = source(channel, session, clock)
    channel.keys = [pair.jwk()]
    await keys.refresh()
    first = keys.generation
    clock.advance(3601)  # old keys: fetched again, the same set
    assert await keys.signing_key("k1") is not None
    assert channel.hits == ["metadata", "keys"] * 2
    assert keys.generation == first
    successor = s.KeyPair(key_id="k2")
    channel.keys = [pair.jwk(), successor.jwk()]  # a key added
    clock.advance(61)
    assert await keys.signing_key("k2") is not None
    assert keys.generation == first + 1
    channel.keys = [successor.jwk()]  # a key removed
    await keys.refresh()
    assert keys.generation == first + 2
    channel.keys = [{**successor.jwk(), "endorsements": ["skype"]}]  # a key changed
    await keys.refresh()
    assert keys.generation == first + 3
