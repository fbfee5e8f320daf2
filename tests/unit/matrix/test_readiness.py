"""Readiness: started and the bot registered. Whether the homeserver still answers is
reported apart; the AS ping is sent until answered, and again after a refused
transaction, without gating readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from adapters.matrix.adapter import MatrixAdapter
from adapters.matrix.client import MatrixClient
from adapters.matrix.ghosts import GhostManager
from adapters.matrix.ids import GhostNamespace
from adapters.matrix.media import MatrixMediaDownloader
from adapters.matrix.outbound import MatrixSender
from bridge.config import MatrixSettings
from bridge.errors import StoreError
from bridge.model import AppendResult, InboundEvent
from bridge.timeline.memory import MemoryStateStore
from tests.support.fakes import FakeClock
from tests.support.waiting import eventually


@dataclass
class FakeHomeserver:
    up: bool = True
    ping_up: bool = True
    pings: int = 0
    requests: int = 0

    def app(self) -> web.Application:
        async def ok(_request: web.Request) -> web.Response:
            self.requests += 1
            if not self.up:
                return web.json_response({"errcode": "M_UNKNOWN"}, status=502)
            return web.json_response({})

        async def ping(request: web.Request) -> web.Response:
            self.pings += 1
            if not self.ping_up:  # the homeserver could not call the AS back
                return web.json_response({"errcode": "M_CONNECTION_FAILED"}, status=502)
            return await ok(request)

        app = web.Application()
        app.router.add_post("/_matrix/client/v3/register", ok)
        app.router.add_put("/_matrix/client/v3/profile/{user}/displayname", ok)
        app.router.add_post("/_matrix/client/v1/appservice/{id}/ping", ping)
        app.router.add_get("/_matrix/client/versions", ok)
        return app


class StoreDownSink:
    async def accept(self, events: Sequence[InboundEvent]) -> list[AppendResult | None]:
        raise StoreError("the store is down")


class NoSink:
    async def accept(self, events: Sequence[InboundEvent]) -> list[AppendResult | None]:
        return []


@pytest.fixture
async def rig() -> AsyncIterator[tuple[FakeHomeserver, MatrixAdapter]]:
    homeserver = FakeHomeserver()
    server = TestServer(homeserver.app())
    await server.start_server()
    settings = MatrixSettings(
        enabled=True,
        homeserver_url=str(server.make_url("")),
        server_name="example.org",
        as_token=SecretStr("as"),
        hs_token=SecretStr("hs"),
    )
    namespace = GhostNamespace(prefix="teams_", server_name="example.org", bot_localpart="b")
    session = aiohttp.ClientSession()
    client = MatrixClient(
        session=session, base_url=settings.homeserver_url, as_token="as", max_attempts=1
    )
    ghosts = GhostManager(client=client, namespace=namespace, cache_size=16)
    sender = MatrixSender(
        client=client,
        ghosts=ghosts,
        namespace=namespace,
        max_media_bytes=1024,
        media=MatrixMediaDownloader(
            session=session, base_url=settings.homeserver_url, as_token="as"
        ),
    )
    adapter = MatrixAdapter(
        settings=settings,
        client=client,
        sender=sender,
        namespace=namespace,
        state=MemoryStateStore(),
        clock=FakeClock(),
        owned_session=session,
        health_interval_s=0.02,
        nudge_delay_s=0.05,
    )
    yield homeserver, adapter
    await adapter.stop()
    await server.close()


async def test_reachability_is_tracked_apart_from_readiness(
    rig: tuple[FakeHomeserver, MatrixAdapter],
) -> None:
    homeserver, adapter = rig
    assert not adapter.ready
    await adapter.start(NoSink())

    async def ready() -> bool:
        return adapter.ready and adapter.upstream_reachable

    async def unreachable() -> bool:
        return not adapter.upstream_reachable

    await eventually(ready, within=5, what="ready once registered")

    async def pinged_once() -> bool:
        return homeserver.pings == 1

    await eventually(pinged_once, within=5, what="the AS ping")
    homeserver.up = False
    await eventually(unreachable, within=5, what="unreachable while the homeserver fails")
    assert adapter.ready  # Teams messages are still taken and queued for it
    homeserver.up = True
    await eventually(ready, within=5, what="reachable again")


async def test_not_ready_until_the_homeserver_answers_the_ping(
    rig: tuple[FakeHomeserver, MatrixAdapter],
) -> None:
    homeserver, adapter = rig
    homeserver.up = False
    await adapter.start(NoSink())

    async def tried() -> bool:
        return homeserver.requests > 0

    await eventually(tried, within=5, what="a first attempt")
    assert not adapter.ready


async def test_ready_while_the_homeserver_cannot_call_back_and_ping_is_retried(
    rig: tuple[FakeHomeserver, MatrixAdapter],
) -> None:
    """At a cold start behind a Service no replica is ready, so the homeserver's
    callback reaches none: readiness must not wait for it."""
    homeserver, adapter = rig
    homeserver.ping_up = False
    await adapter.start(NoSink())

    async def ready_and_retrying() -> bool:
        return adapter.ready and homeserver.pings >= 2

    await eventually(ready_and_retrying, within=10, what="ready, the ping retried")
    homeserver.ping_up = True
    answered = homeserver.pings + 1

    async def answered_then_stopped() -> bool:
        return homeserver.pings >= answered

    await eventually(answered_then_stopped, within=10, what="the ping answered")
    settled, checks = homeserver.pings, homeserver.requests

    async def checked_again() -> bool:
        return homeserver.requests >= checks + 5

    await eventually(checked_again, within=5, what="more reachability checks")
    assert adapter.ready
    assert homeserver.pings == settled  # no more pings once answered


async def test_a_refused_transaction_is_followed_by_a_ping(
    rig: tuple[FakeHomeserver, MatrixAdapter],
) -> None:
    """The homeserver backs off for minutes after a refused transaction; a ping a
    little later makes it retry at once."""
    homeserver, adapter = rig
    await adapter.start(StoreDownSink())

    async def pinged_once() -> bool:
        return homeserver.pings == 1

    await eventually(pinged_once, within=5, what="the start-up ping")
    homeserver.ping_up = False
    app = web.Application()
    app.add_routes(adapter.endpoints.routes())
    async with (
        TestServer(app) as bridge,
        aiohttp.ClientSession() as session,
        session.put(
            bridge.make_url("/_matrix/app/v1/transactions/t1"),
            json={"events": [{"type": "m.room.message", "event_id": "$e", "room_id": "!r:x"}]},
            headers={"Authorization": "Bearer hs"},
        ) as response,
    ):
        assert response.status == 503

    async def nudged_until_answered() -> bool:
        return homeserver.pings >= 3

    await eventually(nudged_until_answered, within=5, what="nudges retried while failing")
    homeserver.ping_up = True
    before = homeserver.pings

    async def answered() -> bool:
        return homeserver.pings > before

    await eventually(answered, within=5, what="a nudge answered")
    settled, checks = homeserver.pings, homeserver.requests

    async def checked_again() -> bool:
        return homeserver.requests >= checks + 10

    await eventually(checked_again, within=5, what="more reachability checks")
    assert homeserver.pings == settled  # nothing refused since: no more pings
