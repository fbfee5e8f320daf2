"""Incident threads on Teams against the Teams emulator: the thread the bot starts in the
incident channel, its root as the header, within Teams' rate limits.

The emulator and the sender share a ``ManualClock`` moved by the sender's sleeps, so the
emulator's rate limiter measures exactly the times the pacer chose.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from pydantic import SecretStr

from adapters.teams.ids import ConversationReference, TeamsConversationID, TeamsUserID, TenantID
from adapters.teams.incident_rooms import (
    THREADS_NAMESPACE,
    TeamsIncidentRooms,
    bridge_content,
    thread_key,
)
from adapters.teams.outbound import TeamsSender
from adapters.teams.pacing import PacingSettings
from adapters.teams.records import StateAmbiguousSends, StateLayouts
from adapters.teams.references import StoredConversationReferences
from adapters.teams.tokens import token_provider_for
from bridge.config.teams import TeamsAuthSettings, TeamsSettings
from bridge.errors import PermanentDeliveryError
from bridge.metrics import BridgeMetrics
from bridge.model import Platform, RemoteMessageID, RemoteRoomID, RoomRef
from bridge.timeline.memory import MemoryStateStore
from devtools.teams_emulator import (
    Bucket,
    Conversation,
    EmulatorKeys,
    ManualClock,
    Operation,
    TeamsEmulator,
)
from tests.integration.teams_fixtures import APP_ID, APP_PASSWORD, TENANT_ID

WAIT_S = 30.0
ATTRIBUTION = "<b>Incident Bridge</b> <i>(bridge)</i>: "


@pytest.fixture(scope="module")
def keys() -> EmulatorKeys:
    return EmulatorKeys.generate(datetime.now(UTC))


@dataclass
class World:
    emulator: TeamsEmulator
    rooms: TeamsIncidentRooms
    sender: TeamsSender
    channel: Conversation
    state: MemoryStateStore

    @property
    def channel_room(self) -> RoomRef:
        return RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(self.channel.conversation_id))

    def text(self, activity_id: str) -> str:
        message = self.emulator.message(activity_id)
        assert message is not None
        return message.text


class VirtualSleep:
    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock

    async def __call__(self, seconds: float) -> None:
        self._clock.advance(max(0.0, seconds))
        await asyncio.sleep(0)


@asynccontextmanager
async def world(keys: EmulatorKeys, *, channel_configured: bool = True) -> AsyncIterator[World]:
    clock = ManualClock()
    async with (
        TeamsEmulator(APP_ID, APP_PASSWORD, TENANT_ID, keys=keys, clock=clock) as emulator,
        aiohttp.ClientSession() as session,
    ):
        bob = emulator.add_user("Bob Jones")
        channel = emulator.add_channel("Operations", "Incidents", members=[bob])
        emulator.directory.set_bot_installed(channel, installed=True)
        teams = TeamsSettings(
            enabled=True,
            app_id=APP_ID,
            tenant_id=TENANT_ID,
            auth=TeamsAuthSettings(client_secret=SecretStr(APP_PASSWORD)),
            authority=emulator.token_authority,
            allowed_service_url_hosts=(str(urlsplit(emulator.service_url).netloc),),
            request_timeout_s=5.0,
        )
        state = MemoryStateStore()
        references = StoredConversationReferences(state, clock=clock, cache_size=100)
        await references.put(
            ConversationReference(
                conversation_id=TeamsConversationID(channel.conversation_id),
                service_url=emulator.service_url,
                tenant_id=TenantID(TENANT_ID),
                conversation_type="channel",
                bot_id=TeamsUserID(f"28:{APP_ID}"),
            )
        )
        sender = TeamsSender(
            session=session,
            tokens=token_provider_for(teams, session=session, clock=clock),
            conversations=references,
            clock=clock,
            metrics=BridgeMetrics(),
            settings=PacingSettings(safety_margin_s=0.0),
            ambiguous=StateAmbiguousSends(state, clock=clock),
            layouts=StateLayouts(state),
            sleep=VirtualSleep(clock),
        )
        rooms = TeamsIncidentRooms(
            poster=sender,
            state=state,
            channel=channel.conversation_id if channel_configured else None,
        )
        try:
            yield World(emulator, rooms, sender, channel, state)
        finally:
            await sender.close()


async def bounded(awaitable: Any) -> Any:
    async with asyncio.timeout(WAIT_S):
        return await awaitable


async def test_a_thread_is_started_in_the_channel_with_the_topic_as_its_root(
    keys: EmulatorKeys,
) -> None:
    async with world(keys) as w:
        room = await bounded(
            w.rooms.create_room(
                "incident INC-7: checkout errors",
                invite=["@oncall:example.org"],
                topic="INC-7 · SEV2 · investigating · checkout errors",
            )
        )
        assert room.platform is Platform.TEAMS
        base, marker, root = room.room_id.partition(";messageid=")
        assert (base, marker) == (w.channel.conversation_id, ";messageid=")
        posted = w.emulator.message(root)
        assert posted is not None
        assert posted.from_bot
        assert posted.thread_root == root
        assert posted.text == ATTRIBUTION + "INC-7 · SEV2 · investigating · checkout errors"
        assert [m.activity_id for m in w.emulator.messages(room.room_id)] == [root]
        [create] = [c for c in w.emulator.connector_calls if c.status is not None]
        assert create.operation is Operation.CREATE_CONVERSATION
        assert create.status == 201
        assert create.body is not None
        assert create.body["channelData"]["channel"]["id"] == w.channel.conversation_id
        assert create.body["isGroup"] is True
        assert create.body["activity"]["textFormat"] == "xml"

        # Asked again (the core retrying after a failure): the same thread, no second post.
        again = await bounded(
            w.rooms.create_room("incident INC-7: checkout errors", invite=[], topic="other")
        )
        assert again == room
        assert len(w.emulator.messages(w.channel)) == 1
        assert await w.state.get(THREADS_NAMESPACE, room.room_id) == {
            "root": root,
            "name": "incident INC-7: checkout errors",
        }


async def test_the_header_of_an_incident_thread_is_its_root_updated_in_place(
    keys: EmulatorKeys,
) -> None:
    async with world(keys) as w:
        room = await bounded(w.rooms.create_room("incident INC-8", invite=[], topic="INC-8"))
        root = room.room_id.partition(";messageid=")[2]
        header = await bounded(
            w.rooms.put_header(
                room, "INC-8 SEV2 investigating", "<b>INC-8</b> SEV2 investigating", existing=None
            )
        )
        assert header == root
        assert w.text(root) == ATTRIBUTION + "<b>INC-8</b> SEV2 investigating"
        again = await bounded(
            w.rooms.put_header(
                room, "INC-8 SEV1 resolved", "<b>INC-8</b> <s>SEV1</s> resolved", existing=header
            )
        )
        assert again == root
        assert w.text(root) == ATTRIBUTION + "<b>INC-8</b> <strike>SEV1</strike> resolved"
        # Put back as it was: updated again (updates are never taken for repeats).
        await bounded(
            w.rooms.put_header(
                room, "INC-8 SEV2 investigating", "<b>INC-8</b> SEV2 investigating", existing=root
            )
        )
        assert w.text(root) == ATTRIBUTION + "<b>INC-8</b> SEV2 investigating"
        message = w.emulator.message(root)
        assert message is not None
        assert message.edit_count == 3
        assert [m.activity_id for m in w.emulator.messages(w.channel)] == [root]
        updates = [
            c for c in w.emulator.connector_calls if c.operation is Operation.UPDATE_ACTIVITY
        ]
        assert [c.status for c in updates] == [200, 200, 200]

        # The emulator's page reads its messages from here: the thread, updated.
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{w.emulator.base_url}/_emulator/api/messages",
                params={"conversation": w.channel.conversation_id},
            ) as response,
        ):
            shown = await response.json()
        [entry] = shown["messages"]
        assert entry["threadRoot"] == root
        assert entry["from"]["isBot"] is True
        assert entry["editCount"] == 3


async def test_in_another_room_the_header_is_a_post_of_its_own_then_updated(
    keys: EmulatorKeys,
) -> None:
    async with world(keys) as w:
        ops = await bounded(
            w.sender.post(w.channel_room, bridge_content("ops"), idempotency_key="ops-root")
        )
        thread = RoomRef(
            platform=Platform.TEAMS,
            room_id=RemoteRoomID(f"{w.channel.conversation_id};messageid={ops.message_id}"),
        )
        header = await bounded(w.rooms.put_header(thread, "INC-9", "<b>INC-9</b>", existing=None))
        assert header != ops.message_id
        assert w.text(ops.message_id) == ATTRIBUTION + "ops"  # not a thread made for an incident
        posted = w.emulator.message(header)
        assert posted is not None
        assert posted.thread_root == ops.message_id
        assert posted.text == ATTRIBUTION + "<b>INC-9</b>"
        # Asked again with the same header (a retry): the same post.
        same = await bounded(w.rooms.put_header(thread, "INC-9", "<b>INC-9</b>", existing=None))
        assert same == header
        updated = await bounded(
            w.rooms.put_header(thread, "INC-9 resolved", "", existing=RemoteMessageID(header))
        )
        assert updated == header
        assert w.text(header) == ATTRIBUTION + "INC-9 resolved"
        assert len(w.emulator.messages(thread.room_id)) == 2


async def test_a_thread_create_that_failed_is_retried_once_and_recorded(
    keys: EmulatorKeys,
) -> None:
    async with world(keys) as w:
        w.emulator.faults.inject(method="POST", path=r"v3/conversations$", status=503)
        room = await bounded(w.rooms.create_room("incident INC-10", invite=[], topic="INC-10"))
        assert len(w.emulator.messages(w.channel)) == 1
        creates = [c.status for c in w.emulator.connector_calls]
        assert creates[-2:] == [503, 201]
        key = thread_key(w.channel.conversation_id, "incident INC-10")
        record = await StateAmbiguousSends(w.state, clock=ManualClock()).lookup(key)
        assert record is not None
        assert record.attempts == 1
        assert record.activity_id == room.room_id.partition(";messageid=")[2]


async def test_threads_and_headers_keep_within_the_rate_limits(keys: EmulatorKeys) -> None:
    async with world(keys) as w:

        async def incident(n: int) -> None:
            room = await w.rooms.create_room(f"incident INC-{n}", invite=[], topic=f"INC-{n}")
            header = await w.rooms.put_header(room, f"INC-{n} a", f"INC-{n} a", existing=None)
            await w.rooms.put_header(room, f"INC-{n} b", f"INC-{n} b", existing=header)

        await bounded(asyncio.gather(*(incident(n) for n in range(40))))
        assert w.emulator.violations == ()
        assert len(w.emulator.messages(w.channel)) == 40
        for bucket in (Bucket.SEND, Bucket.CREATE, None):
            assert w.emulator.peak_calls(1.0, conversation=w.channel, bucket=bucket) <= 7
            assert w.emulator.peak_calls(2.0, conversation=w.channel, bucket=bucket) <= 8
            assert w.emulator.peak_calls(30.0, conversation=w.channel, bucket=bucket) <= 60


async def test_without_an_incident_channel_no_thread_is_made(keys: EmulatorKeys) -> None:
    async with world(keys, channel_configured=False) as w:
        with pytest.raises(PermanentDeliveryError, match=r"incidents\.teams_channel"):
            await bounded(w.rooms.create_room("incident INC-11", invite=[], topic="t"))
        matrix_room = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!r:example.org"))
        with pytest.raises(PermanentDeliveryError, match="not a Teams room"):
            await w.rooms.put_header(matrix_room, "h", "h", existing=None)
        assert w.emulator.connector_calls == ()
