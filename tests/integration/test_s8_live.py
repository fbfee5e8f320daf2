"""S8 through real servers: hostile HTML both ways between Synapse and the Teams emulator.

Matrix -> Teams: a Matrix user sends each payload as a ``formatted_body`` to the
session's Synapse; the bridge's Matrix adapter (``MatrixBridgeHarness``) receives
it in an application-service transaction, converts and stores it; the Teams
adapter sends the stored event to the Teams emulator, whose recorded message is
checked. Teams -> Matrix: the emulator posts each payload as a Teams user's
message (signed, with the ``text/html`` twin); the Teams adapter validates,
converts and stores it; the Matrix adapter sends the stored event as the user's
ghost, and the Matrix user reads the event back from Synapse. The checks are the
corpus's (see ``tests.support.xss_corpus``).

Sends go through each adapter's ``send`` (the delivery service's call), one at a
time per Teams channel, six channels at once: Teams' pacing (8 calls in 2 s per
conversation) holds without coalescing lines.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from aiohttp import web
from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern

from adapters.teams import TeamsAdapter, create_adapter
from bridge.clock import SystemClock
from bridge.config import Settings
from bridge.errors import PermanentDeliveryError
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import Kind, Platform, RemoteRoomID, RoomRef, TimelineEvent
from bridge.ports import ChatAdapter, OutboundMessage
from bridge.relay.intake import Intake
from bridge.runtime import AdapterContext
from bridge.timeline.mongo import MongoTimelineStore
from bridge.timeline.state import MongoStateStore
from devtools.servers import MongoServer, SynapseServer
from devtools.teams_emulator import Conversation, EmulatorKeys, Message, TeamsEmulator, User
from tests.integration.matrix_fixtures import MatrixAppService
from tests.integration.matrix_harness import MatrixBridgeHarness
from tests.support.matrix_user import MatrixUser
from tests.support.waiting import eventually
from tests.support.xss_corpus import (
    MATRIX_TAGS,
    TEAMS_TAGS,
    Payload,
    assert_allowed,
    assert_nothing_forbidden,
    assert_text_kept,
    corpus,
    sample,
    visible_text,
)

APP_ID: Final = "0d5c7f3a-8b19-4e2d-a6f4-3c9e1b7d2a58"
APP_PASSWORD: Final = "s8-emulator-password"
TENANT: Final = "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b"
CHANNELS: Final = 6
DEADLINE_S: Final = 25.0
"""The whole exchange, both ways, stays within this."""
MAX_PAYLOAD_BYTES: Final = 40_000
"""Larger payloads are left to the unit test (events stay far below Matrix's 64 KiB)."""
_FITTING: Final = [p for p in corpus() if len(p.html.encode()) <= MAX_PAYLOAD_BYTES]
_STRUCTURES: Final = [p for p in _FITTING if p.name.startswith(("nested:", "huge:"))]
PAYLOADS: Final = [
    *sample([p for p in _FITTING if p not in _STRUCTURES], 52),
    *sample(_STRUCTURES, 8),
]
"""Sixty payloads: every kind of the corpus, deep nesting and huge markup among them."""


@dataclass
class TeamsSide:
    adapter: TeamsAdapter
    store: MongoTimelineStore
    client: AsyncMongoClient[dict[str, Any]]
    runner: web.AppRunner


async def start_teams_side(emulator: TeamsEmulator, mongo: MongoServer) -> TeamsSide:
    database = f"s8_teams_{uuid.uuid4().hex[:10]}"
    settings = Settings.model_validate(
        {
            "mongo": {"uri": mongo.uri, "database": database},
            "teams": {
                "enabled": True,
                "app_id": APP_ID,
                "tenant_id": TENANT,
                "auth": {"type": "client_secret", "client_secret": APP_PASSWORD},
                "openid_metadata_url": emulator.openid_metadata_url,
                "authority": emulator.token_authority,
                "allowed_service_url_hosts": [urlsplit(emulator.service_url).netloc],
            },
        }
    )
    clock = SystemClock()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.uri, tz_aware=True)
    store = MongoTimelineStore(
        client, database, clock=clock, write_concern=WriteConcern(w=1, j=True)
    )
    await store.ensure_indexes()
    web_app = web.Application()
    ids, metrics = UlidFactory(), BridgeMetrics()
    context = AdapterContext(
        settings=settings,
        clock=clock,
        ids=ids,
        metrics=metrics,
        store=store,
        state=MongoStateStore(store.database),
        web_app=web_app,
    )
    adapter = create_adapter(context)
    await adapter.start(
        Intake(  # links are made in the store directly: read them on every event
            store=store,
            clock=clock,
            ids=ids,
            metrics=metrics,
            adapters=[adapter],
            link_cache_ttl_s=0.0,
        )
    )
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    emulator.bot_endpoint = f"http://127.0.0.1:{port}/api/messages"
    return TeamsSide(adapter=adapter, store=store, client=client, runner=runner)


@dataclass
class Bridge:
    """Both adapters of one bridge, the Teams channels and the Matrix room they face."""

    matrix: MatrixBridgeHarness
    teams: TeamsSide
    emulator: TeamsEmulator
    alice: MatrixUser
    eve: User
    channels: list[Conversation]
    room_id: str

    @property
    def matrix_room(self) -> RoomRef:
        return RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(self.room_id))

    def channel_of(self, index: int) -> Conversation:
        return self.channels[index % len(self.channels)]


@pytest.fixture
async def bridge(
    mongo_server: MongoServer,
    synapse_server: SynapseServer,
    matrix_app_service: MatrixAppService,
) -> AsyncIterator[Bridge]:
    tag = secrets.token_hex(3)
    alice_id, alice_token = await asyncio.to_thread(
        synapse_server.register_user, f"s8alice{tag}", "pw-alice"
    )
    harness = MatrixBridgeHarness(
        mongo=mongo_server,
        synapse=synapse_server,
        appservice=matrix_app_service,
        invite_users=(alice_id,),
    )
    keys = await asyncio.to_thread(EmulatorKeys.generate, datetime.now(UTC))
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as session,
        TeamsEmulator(APP_ID, APP_PASSWORD, TENANT, keys=keys) as emulator,
    ):
        await harness.start()
        teams = await start_teams_side(emulator, mongo_server)
        try:
            alice = MatrixUser(session, synapse_server.base_url, alice_id, alice_token)
            bot = matrix_app_service.registration.namespace.bot
            room_id = await alice.create_room(invite=[bot], name="s8")

            async def bot_joined() -> bool:
                state = await alice.member_state(room_id, bot)
                return state is not None and state.get("membership") == "join"

            await eventually(bot_joined, what="the bot to join")
            eve = emulator.add_user("Eve Hostile")
            channels = [
                emulator.add_channel("S8", f"Payloads {n}", members=[eve]) for n in range(CHANNELS)
            ]
            for channel in channels:  # the bot learns a channel from a message in it
                emulator.directory.set_bot_installed(channel, installed=True)
                hello = await emulator.post_message(channel, eve, "S8 starts here")
                assert hello.status == 200
            yield Bridge(harness, teams, emulator, alice, eve, channels, room_id)
        finally:
            await teams.runner.cleanup()
            await teams.adapter.stop()
            await teams.client.drop_database(teams.store.database.name)
            await teams.client.close()
            await harness.stop()
            await harness.drop()


async def send_by_channel(
    adapter: ChatAdapter, messages: Sequence[tuple[int, OutboundMessage]]
) -> dict[int, str | PermanentDeliveryError]:
    """Send each (index, message) through ``adapter``: in order per target, targets at once.

    The result maps each index to the remote message id, or to the refusal.
    """
    results: dict[int, str | PermanentDeliveryError] = {}
    by_target: dict[str, list[tuple[int, OutboundMessage]]] = {}
    for index, message in messages:
        by_target.setdefault(message.target.room_id, []).append((index, message))

    async def one_target(queue: list[tuple[int, OutboundMessage]]) -> None:
        for index, message in queue:
            try:
                ref = await adapter.send(message, idempotency_key=f"s8-{message.event.id}")
            except PermanentDeliveryError as exc:
                results[index] = exc
            else:
                results[index] = ref.message_id

    async with asyncio.TaskGroup() as group:
        for queue in by_target.values():
            group.create_task(one_target(queue))
    return results


async def test_hostile_html_from_teams_reaches_matrix_sanitized(bridge: Bridge) -> None:
    async with asyncio.timeout(DEADLINE_S):
        stored: list[tuple[int, OutboundMessage]] = []
        for index, payload in enumerate(PAYLOADS):
            delivery = await bridge.emulator.post_message(
                bridge.channel_of(index), bridge.eve, "(plain twin)", html=payload.html
            )
            assert delivery.status == 200, payload.name
            thread = RoomRef(
                platform=Platform.TEAMS,
                room_id=RemoteRoomID(str(delivery.activity["conversation"]["id"])),
            )
            (event,) = (await bridge.teams.store.timeline(room=thread, limit=10)).events
            stored.append((index, OutboundMessage(event=event, target=bridge.matrix_room)))

        assert bridge.matrix.adapter is not None
        sent = await send_by_channel(bridge.matrix.adapter, stored)

        room = quote(bridge.room_id, safe="")
        for index, payload in enumerate(PAYLOADS):
            event_id = sent[index]
            if isinstance(event_id, PermanentDeliveryError):  # "nothing to send" only
                assert visible_text(payload.html) == [] or not payload.check_text, payload.name
                assert "nothing to send" in str(event_id), payload.name
                continue
            path = f"/_matrix/client/v3/rooms/{room}/event/{quote(event_id, safe='')}"
            seen = await bridge.alice.call("GET", path)
            check_matrix_content(payload, seen["content"])


def check_matrix_content(payload: Payload, content: dict[str, Any]) -> None:
    assert_nothing_forbidden(payload, content)
    assert isinstance(content["body"], str), payload.name
    if "formatted_body" in content:
        assert content["format"] == "org.matrix.custom.html"
        reading = assert_allowed(content["formatted_body"], MATRIX_TAGS)
        if payload.check_text:
            assert_text_kept(payload, "".join(reading.text))
    if payload.check_text:
        assert_text_kept(payload, content["body"])


async def test_hostile_html_from_matrix_reaches_teams_sanitized(bridge: Bridge) -> None:
    async with asyncio.timeout(DEADLINE_S):
        origins: dict[str, int] = {}
        for index, payload in enumerate(PAYLOADS):
            content = {
                "msgtype": "m.text",
                "body": "plain fallback",
                "format": "org.matrix.custom.html",
                "formatted_body": payload.html,
            }
            origins[await bridge.alice.send(bridge.room_id, content)] = index

        store = bridge.matrix.store
        assert store is not None

        async def all_stored() -> list[TimelineEvent] | None:
            page = await store.timeline(room=bridge.matrix_room, limit=500)
            events = [e for e in page.events if e.kind is Kind.MESSAGE]
            return events if len(events) >= len(PAYLOADS) else None

        events = await eventually(all_stored, within=DEADLINE_S, what="every payload stored")
        messages: list[tuple[int, OutboundMessage]] = []
        for event in events:
            index = origins[event.origin.message_id]
            target = RoomRef(
                platform=Platform.TEAMS,
                room_id=RemoteRoomID(bridge.channel_of(index).conversation_id),
            )
            messages.append((index, OutboundMessage(event=event, target=target)))
        sent = await send_by_channel(bridge.teams.adapter, messages)

        assert bridge.emulator.violations == ()
        author = bridge.alice.user_id[1:].split(":")[0]
        header = re.compile(rf"^{re.escape(author)} \(Matrix(, part \d+ of \d+)?\): ")
        for index, payload in enumerate(PAYLOADS):
            activity_id = sent[index]
            assert isinstance(activity_id, str), (payload.name, activity_id)
            shown: list[str] = []
            for posted in parts_of(bridge, index, activity_id, sent):
                assert posted.text_format == "xml"
                assert_nothing_forbidden(payload, posted.text)
                reading = assert_allowed(posted.text, TEAMS_TAGS)
                text = "".join(reading.text)
                assert header.match(text), (payload.name, text[:80])
                shown.append(header.sub("", text))
            if payload.check_text:
                assert_text_kept(payload, "".join(shown))


def parts_of(
    bridge: Bridge, index: int, first: str, sent: dict[int, str | PermanentDeliveryError]
) -> list[Message]:
    """The activities of one bridged message: a long one is split into several posts.

    Sends to a channel go one at a time, so a message's parts are the bot's posts
    from its first one up to the next message's first one.
    """
    channel = bridge.channel_of(index)
    posts = [m for m in bridge.emulator.messages(channel) if m.from_bot]
    firsts = {v for k, v in sent.items() if isinstance(v, str) and bridge.channel_of(k) == channel}
    start = next(i for i, m in enumerate(posts) if m.activity_id == first)
    end = next(
        (i for i in range(start + 1, len(posts)) if posts[i].activity_id in firsts), len(posts)
    )
    return posts[start:end]
