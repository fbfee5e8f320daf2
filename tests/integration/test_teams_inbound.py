"""Teams inbound end to end: the emulator signs and posts, the adapter validates and stores.

Each test runs the Teams adapter (built by ``create_adapter``, as the daemon does)
with the relay intake on a fresh database of the session's MongoDB-protocol
server, served on a loopback port, with the Teams emulator as the channel, the
connector and the token authority.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern

from adapters.teams import TeamsAdapter, create_adapter
from adapters.teams.ids import TeamsConversationID
from adapters.teams.references import NAMESPACE, StoredConversationReferences
from bridge.clock import SystemClock
from bridge.config import Settings
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    Kind,
    Platform,
    RelationKind,
    RemoteRoomID,
    RoomRef,
    TimelineEvent,
)
from bridge.notices import bridge_notice
from bridge.ports import OutboundMessage
from bridge.relay.intake import Intake
from bridge.runtime import AdapterContext
from bridge.timeline.mongo import MongoTimelineStore
from bridge.timeline.state import MongoStateStore
from devtools.servers import MongoServer
from devtools.teams_emulator import (
    Conversation,
    EmulatorKeys,
    FileUpload,
    InlineImage,
    Operation,
    TeamsEmulator,
    User,
)

APP_ID = "3f0c6d2e-8a41-4b7e-9c15-2d6e8f1a0b93"
APP_PASSWORD = "emulator-app-password"
TENANT = "5b8e2f1c-0d3a-4c6b-9e7f-1a2b3c4d5e6f"
OTHER_TENANT = "c0ffee00-1111-4222-8333-444455556666"
KEY_DISCOVERY = frozenset({Operation.CHANNEL_OPENID, Operation.CHANNEL_KEYS})
ACK_BOUND_S = 2.0
"""Far inside Teams' ~15 s re-send window; the point is that nothing waits on delivery."""


@pytest.fixture(scope="module")
def emulator_keys() -> EmulatorKeys:
    return EmulatorKeys.generate(datetime.now(UTC))


@pytest.fixture
async def emulator(emulator_keys: EmulatorKeys) -> AsyncIterator[TeamsEmulator]:
    async with TeamsEmulator(APP_ID, APP_PASSWORD, TENANT, keys=emulator_keys) as emu:
        yield emu


@pytest.fixture
async def database(mongo_server: MongoServer) -> AsyncIterator[tuple[str, str]]:
    name = f"teams_{uuid.uuid4().hex[:12]}"
    yield mongo_server.uri, name
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
    await client.drop_database(name)
    await client.close()


@dataclass
class RunningBridge:
    """The Teams adapter, the intake and the stores of one bridge process."""

    adapter: TeamsAdapter
    store: MongoTimelineStore
    state: MongoStateStore
    client: AsyncMongoClient[dict[str, Any]]
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.adapter.stop()
        await self.client.close()

    async def events(self, conversation: str) -> list[TimelineEvent]:
        room = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(conversation))
        page = await self.store.timeline(room=room, limit=1000)
        return list(page.events)


def teams_settings(emu: TeamsEmulator, uri: str, database: str) -> Settings:
    return Settings.model_validate(
        {
            "mongo": {"uri": uri, "database": database},
            "teams": {
                "enabled": True,
                "app_id": APP_ID,
                "tenant_id": TENANT,
                "auth": {"type": "client_secret", "client_secret": APP_PASSWORD},
                "openid_metadata_url": emu.openid_metadata_url,
                "authority": emu.token_authority,
                "allowed_service_url_hosts": [urlsplit(emu.service_url).netloc],
            },
        }
    )


async def start_bridge(emu: TeamsEmulator, uri: str, database: str) -> RunningBridge:
    settings = teams_settings(emu, uri, database)
    clock = SystemClock()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    store = MongoTimelineStore(
        client, database, clock=clock, write_concern=WriteConcern(w=1, j=True)
    )
    await store.ensure_indexes()
    state = MongoStateStore(store.database)
    web_app = web.Application()
    ids, metrics = UlidFactory(), BridgeMetrics()
    adapter = create_adapter(
        AdapterContext(
            settings=settings,
            clock=clock,
            ids=ids,
            metrics=metrics,
            store=store,
            state=state,
            web_app=web_app,
        )
    )
    intake = Intake(  # links are made in the store directly: read them on every event
        store=store, clock=clock, ids=ids, metrics=metrics, adapters=[adapter], link_cache_ttl_s=0.0
    )
    await adapter.start(intake)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    emu.bot_endpoint = f"http://127.0.0.1:{port}/api/messages"
    return RunningBridge(adapter=adapter, store=store, state=state, client=client, runner=runner)


@pytest.fixture
async def bridge(
    emulator: TeamsEmulator, database: tuple[str, str]
) -> AsyncIterator[RunningBridge]:
    running = await start_bridge(emulator, *database)
    yield running
    await running.stop()


@dataclass
class World:
    alice: User
    bob: User
    channel: Conversation


@pytest.fixture
def world(emulator: TeamsEmulator) -> World:
    alice = emulator.add_user("Alice Ops")
    bob = emulator.add_user("Bob Oncall")
    channel = emulator.add_channel("Operations", "Incidents", members=[alice, bob])
    return World(alice=alice, bob=bob, channel=channel)


def thread_of(activity: Any) -> str:
    return str(activity["conversation"]["id"])


# -- (1) S2 / S3: forged, foreign and misdirected requests ------------------------------


async def test_forged_and_disallowed_requests_are_refused_without_side_effects(
    emulator: TeamsEmulator, bridge: RunningBridge, world: World
) -> None:
    assert bridge.adapter.ready  # signing keys fetched at start
    calls_before = len(emulator.calls)
    assert {c.operation for c in emulator.calls} <= KEY_DISCOVERY
    activity, _ = emulator.channel.compose_message(
        world.channel, world.alice, "disk full on db-1", mention_bot=True
    )
    refused: dict[str, int | None] = {}
    for name, token in emulator.forged_tokens(activity["serviceUrl"]).items():
        delivery = await emulator.deliver(activity, authorization=f"Bearer {token}")
        refused[name] = delivery.status
    refused["no_token"] = (await emulator.deliver(activity, unsigned=True)).status
    refused["basic_auth"] = (
        await emulator.deliver(activity, authorization="Basic YWxpY2U6cHc=")
    ).status
    assert refused == dict.fromkeys(refused, 401), refused

    # Valid tokens (the emulator signs for whatever serviceUrl the activity names),
    # but the serviceUrl host is not allow-listed: the bot's token must not go there.
    for url in ("http://127.0.0.1:27017", "http://169.254.169.254", "https://169.254.169.254/"):
        delivery = await emulator.deliver({**activity, "serviceUrl": url})
        assert delivery.status == 403, url

    foreign = copy.deepcopy(activity)
    foreign["conversation"]["tenantId"] = OTHER_TENANT
    foreign["channelData"]["tenant"]["id"] = OTHER_TENANT
    assert (await emulator.deliver(foreign)).status == 403

    assert await bridge.events(thread_of(activity)) == []
    assert await bridge.state.get(NAMESPACE, thread_of(activity)) is None
    assert emulator.connector_calls == ()
    assert emulator.token_calls == ()
    later = emulator.calls[calls_before:]
    assert {c.operation for c in later} <= KEY_DISCOVERY  # at most a bounded key refetch


# -- (2) R3: one record however often Teams delivers ------------------------------------


async def test_a_message_is_stored_once_and_acknowledged_quickly(
    emulator: TeamsEmulator, bridge: RunningBridge, world: World
) -> None:
    delivery = await emulator.post_message(
        world.channel, world.alice, "disk full on db-1", mention_bot=True, mentions=[world.bob]
    )
    assert delivery.status == 200
    assert delivery.elapsed_s < ACK_BOUND_S
    for _ in range(2):  # Teams re-sends a slow answer, sometimes twice
        again = await emulator.redeliver(delivery)
        assert again.status == 200
        assert again.elapsed_s < ACK_BOUND_S

    (event,) = await bridge.events(thread_of(delivery.activity))
    assert event.kind is Kind.MESSAGE
    assert event.origin.message_id == delivery.activity_id
    assert event.sender.user_id == str(world.alice.aad_object_id)
    assert event.sender.display_name == "Alice Ops"
    assert "disk full on db-1" in event.body.text
    assert "Incident Bridge" not in event.body.text  # the leading bot mention addressed it
    assert [m.user_id for m in event.body.mentions] == [str(world.bob.aad_object_id)]
    assert event.data["addressed_to_bot"] is True
    assert emulator.connector_calls == ()


async def test_thread_replies_chats_and_attachments(
    emulator: TeamsEmulator, bridge: RunningBridge, world: World
) -> None:
    root = await emulator.post_message(world.channel, world.alice, "db-1 down", mention_bot=True)
    reply = await emulator.post_message(
        world.channel,
        world.bob,
        "graph attached",
        thread_root=root.activity_id,
        images=[InlineImage(b"\x89PNG fake")],
        files=[FileUpload("report.pdf", b"%PDF-1.7", "application/pdf")],
    )
    assert (root.status, reply.status) == (200, 200)
    thread = thread_of(root.activity)
    assert thread_of(reply.activity) == thread
    first, second = await bridge.events(thread)
    assert first.origin.message_id == root.activity_id
    relation = second.relation(RelationKind.THREAD)
    assert relation is not None
    assert relation.target.message_id == root.activity_id
    assert relation.event_id == first.id
    kinds = sorted((a.is_image, a.name) for a in second.body.attachments)
    assert kinds == [(False, "report.pdf"), (True, "image")]
    stored = await bridge.store.get(second.id)
    assert stored is not None
    assert "tempauth" not in repr(stored)  # pre-authenticated download URLs are not kept

    chat = emulator.add_chat([world.alice, world.bob], topic="db-1 war room")
    personal = emulator.add_chat([world.alice], personal=True)
    for conversation in (chat, personal):
        delivery = await emulator.post_message(conversation, world.alice, "status?")
        assert delivery.status == 200
        (event,) = await bridge.events(conversation.conversation_id)
        assert event.body.text == "status?"


# -- (3) edits, deletes and reactions -----------------------------------------------------


async def test_edits_deletes_and_reactions_arrive_in_the_core_model(
    emulator: TeamsEmulator, bridge: RunningBridge, world: World
) -> None:
    posted = await emulator.post_message(world.channel, world.alice, "db-1 is down")
    message_id = posted.activity_id
    thread = thread_of(posted.activity)
    steps = [
        await emulator.edit_message(message_id, "db-1 is down (disk)"),
        await emulator.react(message_id, world.bob, "like"),
        await emulator.react(message_id, world.bob, "like", removed=True),
        await emulator.react(message_id, world.bob, "like"),
        await emulator.react(message_id, world.alice, "heart"),
        await emulator.edit_message(message_id, "db-1 is down"),  # back to the first text
        await emulator.delete_message(message_id),
        await emulator.undelete_message(message_id),
    ]
    assert [s.status for s in steps] == [200] * len(steps)
    for delivery in steps:  # every one re-sent by Teams: nothing changes
        assert (await emulator.redeliver(delivery)).status == 200

    events = await bridge.events(thread)
    original = events[0]
    assert original.kind is Kind.MESSAGE
    assert original.origin_variant == ""
    by_kind: dict[Kind, list[TimelineEvent]] = {}
    for event in events[1:]:
        by_kind.setdefault(event.kind, []).append(event)
        assert event.origin.message_id == message_id
    edits = by_kind[Kind.EDIT]
    assert [e.body.text for e in edits] == ["db-1 is down (disk)", "db-1 is down"]
    for edit in edits:
        relation = edit.relation(RelationKind.EDIT)
        assert relation is not None
        assert relation.event_id == original.id
    reactions = by_kind[Kind.REACTION]
    bob, alice = str(world.bob.aad_object_id), str(world.alice.aad_object_id)
    assert [
        (str(r.sender.user_id), r.body.text, bool(r.data.get("removed"))) for r in reactions
    ] == [(bob, "👍", False), (bob, "👍", True), (bob, "👍", False), (alice, "❤️", False)]
    for reaction in reactions:
        relation = reaction.relation(RelationKind.REACTION)
        assert relation is not None
        assert relation.event_id == original.id
    (redaction,) = by_kind[Kind.REDACTION]
    relation = redaction.relation(RelationKind.REDACTION)
    assert relation is not None
    assert relation.event_id == original.id
    (undeleted,) = by_kind[Kind.MESSAGE]
    assert undeleted.data["undelete"] is True
    assert undeleted.body.text == "db-1 is down"
    assert len(events) == 1 + 2 + 4 + 1 + 1


# -- (4) after a restart -------------------------------------------------------------------


async def test_conversation_references_survive_a_restart_and_serve_a_proactive_send(
    emulator: TeamsEmulator, database: tuple[str, str], world: World
) -> None:
    first = await start_bridge(emulator, *database)
    posted = await emulator.post_message(world.channel, world.alice, "incident opened")
    assert posted.status == 200
    await first.stop()
    assert (await emulator.redeliver(posted)).status is None  # nobody listening

    second = await start_bridge(emulator, *database)
    try:
        thread = TeamsConversationID(thread_of(posted.activity))
        references = StoredConversationReferences(second.state, clock=SystemClock(), cache_size=16)
        reference = await references.get(thread)
        assert reference is not None
        assert reference.service_url == emulator.service_url
        assert reference.tenant_id == TENANT
        assert reference.conversation_type == "channel"
        assert reference.bot_id == f"28:{APP_ID}"
        channel_reference = await references.get(TeamsConversationID(world.channel.conversation_id))
        assert channel_reference is not None

        (event,) = await second.events(thread)
        target = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(thread))
        sent = await second.adapter.send(
            OutboundMessage(event=event, target=target), idempotency_key=f"{event.id}:{thread}"
        )
        assert sent.room == target
        assert len(emulator.token_calls) == 1
        (call,) = [c for c in emulator.connector_calls if c.status is not None]
        assert call.status is not None
        assert 200 <= call.status < 300
        assert call.auth is not None
        assert call.auth.valid
        bot_messages = [m for m in emulator.messages(thread) if m.from_bot]
        assert [str(m.activity_id) for m in bot_messages] == [str(sent.message_id)]
        assert (await emulator.redeliver(posted)).status == 200
        assert len(await second.events(thread)) == 1
    finally:
        await second.stop()


# -- (5) membership and installation --------------------------------------------------------


async def test_installation_and_membership_are_recorded(
    emulator: TeamsEmulator, bridge: RunningBridge, world: World
) -> None:
    installed, bot_added = await emulator.install_bot(world.channel, by=world.alice)
    carol = emulator.add_user("Carol Sre")
    members_added = await emulator.add_members(world.channel, [carol], by=world.alice)
    members_removed = await emulator.remove_members(world.channel, [world.bob], by=world.alice)
    bot_removed, uninstalled = await emulator.uninstall_bot(world.channel, by=world.alice)
    deliveries = [installed, bot_added, members_added, members_removed, bot_removed, uninstalled]
    assert [d.status for d in deliveries] == [200] * len(deliveries)
    assert (await emulator.redeliver(bot_added)).status == 200

    team_channel = thread_of(installed.activity)
    events = await bridge.events(team_channel)
    assert [e.kind for e in events] == [Kind.MEMBERSHIP] * len(deliveries)
    summary = [
        (
            e.data["activity"],
            e.data.get("action"),
            e.data["bot_added"],
            e.data["bot_removed"],
            [m["user_id"] for m in e.data.get("members_added", [])],
            [m["user_id"] for m in e.data.get("members_removed", [])],
        )
        for e in events
    ]
    bot = f"28:{APP_ID}"
    assert summary == [
        ("installationUpdate", "add", True, False, [], []),
        ("conversationUpdate", None, True, False, [bot], []),
        ("conversationUpdate", None, False, False, [carol.aad_object_id], []),
        ("conversationUpdate", None, False, False, [], [world.bob.aad_object_id]),
        ("conversationUpdate", None, False, True, [], [bot]),
        ("installationUpdate", "remove", False, True, [], []),
    ]
    assert all(e.sender.user_id == str(world.alice.aad_object_id) for e in events)
    assert await bridge.state.get(NAMESPACE, team_channel) is not None
    assert emulator.connector_calls == ()


async def test_the_install_alone_lets_the_bot_post_in_another_channel_of_the_team(
    emulator: TeamsEmulator, database: tuple[str, str], world: World
) -> None:
    first = await start_bridge(emulator, *database)
    installed, _ = await emulator.install_bot(world.channel, by=world.alice)
    assert installed.status == 200
    assert thread_of(installed.activity) != world.channel.conversation_id  # on General
    await first.stop()

    second = await start_bridge(emulator, *database)  # nothing cached: from the store only
    try:
        incidents = RoomRef(
            platform=Platform.TEAMS, room_id=RemoteRoomID(world.channel.conversation_id)
        )
        notice = bridge_notice(
            ids=UlidFactory(), now=SystemClock().now(), key="opened", text="INC-1 opened"
        )
        sent = await second.adapter.send(
            OutboundMessage(event=notice, target=incidents), idempotency_key="install-only"
        )
        message = emulator.message(str(sent.message_id))
        assert message is not None
        assert message.from_bot
        assert "INC-1 opened" in message.text
        assert await second.events(world.channel.conversation_id) == []  # never heard from
    finally:
        await second.stop()


async def test_acks_stay_fast_under_a_burst(
    emulator: TeamsEmulator, bridge: RunningBridge, world: World
) -> None:
    started = time.monotonic()
    slowest = 0.0
    for index in range(50):
        delivery = await emulator.post_message(world.channel, world.alice, f"line {index}")
        assert delivery.status == 200
        slowest = max(slowest, delivery.elapsed_s)
    assert slowest < ACK_BOUND_S
    assert time.monotonic() - started < 50 * ACK_BOUND_S
