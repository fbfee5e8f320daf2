"""Incident rooms on Matrix against the session's Synapse: the room the bridge creates, as a
real Matrix user sees it, and the header pinned in it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from adapters.matrix.client import CLIENT_V3, MatrixClient, MatrixRequestError, path
from adapters.matrix.ghosts import GhostManager
from adapters.matrix.ids import GhostNamespace
from adapters.matrix.rooms import CREATION_KEY_FIELD, ROOMS_NAMESPACE, MatrixRooms, creation_key
from bridge.errors import PermanentDeliveryError
from bridge.model import Platform, RemoteRoomID, RoomRef
from bridge.timeline.memory import MemoryStateStore
from devtools.servers import MongoServer, SynapseServer
from tests.integration.matrix_fixtures import MatrixAppService
from tests.integration.matrix_harness import MatrixBridgeHarness
from tests.support.matrix_user import MatrixUser
from tests.support.waiting import eventually

DEADLINE_S = 20.0


@dataclass(frozen=True)
class Scene:
    rooms: MatrixRooms
    client: MatrixClient
    state: MemoryStateStore
    namespace: GhostNamespace
    responder: MatrixUser
    other: MatrixUser
    tag: str

    async def state_event(self, user: MatrixUser, room_id: str, event_type: str) -> dict[str, Any]:
        room = quote(room_id, safe="")
        return await user.call("GET", f"/_matrix/client/v3/rooms/{room}/state/{event_type}/")

    async def membership(self, room_id: str, user_id: str) -> str | None:
        """``user_id``'s membership in the room as the bot reads it."""
        api_path = path(CLIENT_V3, "rooms", room_id, "state", "m.room.member", user_id)
        try:
            member = await self.client.request("GET", api_path)
        except MatrixRequestError:
            return None
        return str(member["membership"])

    async def invited(self, room_id: str) -> bool:
        """Whether the responder is invited, as the bot and the responder's own sync see it."""
        if await self.membership(room_id, self.responder.user_id) != "invite":
            return False
        sync = await self.responder.call("GET", "/_matrix/client/v3/sync", params={"timeout": "0"})
        return room_id in sync.get("rooms", {}).get("invite", {})

    async def messages(self, room_id: str) -> list[dict[str, Any]]:
        return await self.responder.messages(room_id, limit=100)


@pytest.fixture
async def scene(
    synapse_server: SynapseServer, matrix_app_service: MatrixAppService
) -> AsyncIterator[Scene]:
    registration = matrix_app_service.registration
    tag = uuid.uuid4().hex[:8]
    responder_id, responder_token = await asyncio.to_thread(
        synapse_server.register_user, f"responder-{tag}", "responder-password"
    )
    other_id, other_token = await asyncio.to_thread(
        synapse_server.register_user, f"other-{tag}", "other-password"
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as http:
        client = MatrixClient(
            session=http,
            base_url=synapse_server.base_url,
            as_token=registration.as_token,
            timeout_s=DEADLINE_S,
            max_attempts=2,
        )
        state = MemoryStateStore()
        namespace = registration.namespace
        yield Scene(
            rooms=MatrixRooms(
                client=client,
                ghosts=GhostManager(client=client, namespace=namespace, cache_size=32),
                namespace=namespace,
                state=state,
            ),
            client=client,
            state=state,
            namespace=namespace,
            responder=MatrixUser(http, synapse_server.base_url, responder_id, responder_token),
            other=MatrixUser(http, synapse_server.base_url, other_id, other_token),
            tag=tag,
        )


async def test_the_room_is_private_named_and_the_responders_are_invited_and_can_join(
    scene: Scene,
) -> None:
    name = f"incident INC-{scene.tag}: checkout errors"
    room = await scene.rooms.create_room(
        name,
        invite=[scene.responder.user_id, "@someone:elsewhere.invalid", scene.responder.user_id],
        topic="SEV2 · investigating · checkout errors",
    )
    assert room.platform is Platform.MATRIX
    assert await scene.invited(room.room_id)
    assert await scene.membership(room.room_id, "@someone:elsewhere.invalid") is None

    await scene.responder.call("POST", f"/_matrix/client/v3/join/{quote(room.room_id, safe='')}")
    joined = await scene.state_event(scene.responder, room.room_id, "m.room.name")
    assert joined == {"name": name}
    topic = await scene.state_event(scene.responder, room.room_id, "m.room.topic")
    assert topic["topic"] == "SEV2 · investigating · checkout errors"
    rules = await scene.state_event(scene.responder, room.room_id, "m.room.join_rules")
    assert rules["join_rule"] == "invite"
    create = await scene.state_event(scene.responder, room.room_id, "m.room.create")
    assert create[CREATION_KEY_FIELD] == creation_key(name)
    bot = scene.namespace.bot
    history = await scene.messages(room.room_id)
    assert [e["sender"] for e in history if e["type"] == "m.room.create"] == [bot]
    power = await scene.state_event(scene.responder, room.room_id, "m.room.power_levels")
    if int(create.get("room_version", "1")) < 12:
        assert power["users"][bot] == 100
    else:  # room v12: the creator outranks every power level and is not listed
        assert bot not in power.get("users", {})

    # A user who was not invited cannot get in.
    with pytest.raises(AssertionError, match="403"):
        await scene.other.call("POST", f"/_matrix/client/v3/join/{quote(room.room_id, safe='')}")

    # Asked again (the core retrying after a failure): the same room, nobody invited twice.
    again = await scene.rooms.create_room(name, invite=[scene.responder.user_id], topic="x")
    assert again == room
    record = await scene.state.get(ROOMS_NAMESPACE, creation_key(name))
    assert record is not None
    assert record["invited"] is True


async def test_a_room_claimed_without_an_answer_is_found_by_its_creation_key(
    scene: Scene,
) -> None:
    name = f"incident INC-{scene.tag}: lost answer"
    room = await scene.rooms.create_room(name, invite=[], topic="t")
    # A process that died after claiming the name, before recording the room.
    await scene.state.put(ROOMS_NAMESPACE, creation_key(name), {"name": name})
    found = await scene.rooms.create_room(name, invite=[scene.responder.user_id], topic="t")
    assert found == room
    assert await scene.invited(room.room_id)


async def test_the_header_is_pinned_and_updated_in_place(scene: Scene) -> None:
    room = await scene.rooms.create_room(
        f"incident INC-{scene.tag}: header", invite=[scene.responder.user_id], topic="t"
    )
    await scene.responder.call("POST", f"/_matrix/client/v3/join/{quote(room.room_id, safe='')}")
    # Something pinned before the header (by a moderator: here the bot) stays pinned.
    earlier = await scene.responder.send(room.room_id, {"msgtype": "m.text", "body": "runbook"})
    await scene.client.request(
        "PUT",
        path(CLIENT_V3, "rooms", room.room_id, "state", "m.room.pinned_events", ""),
        json={"pinned": [earlier]},
    )

    header = await scene.rooms.put_header(
        room, "INC-1 SEV2 investigating", "<b>INC-1</b> SEV2 investigating", existing=None
    )
    pinned = await scene.state_event(scene.responder, room.room_id, "m.room.pinned_events")
    assert pinned["pinned"] == [earlier, header]
    posted = await scene.responder.call(
        "GET",
        f"/_matrix/client/v3/rooms/{quote(room.room_id, safe='')}/event/{quote(header, safe='')}",
    )
    assert posted["sender"] == scene.namespace.bot
    assert posted["content"]["msgtype"] == "m.notice"
    assert posted["content"]["body"] == "INC-1 SEV2 investigating"
    assert posted["content"]["formatted_body"] == "<b>INC-1</b> SEV2 investigating"

    # The same header again (a retry) is the same event, pinned once.
    same = await scene.rooms.put_header(
        room, "INC-1 SEV2 investigating", "<b>INC-1</b> SEV2 investigating", existing=None
    )
    assert same == header
    pinned = await scene.state_event(scene.responder, room.room_id, "m.room.pinned_events")
    assert pinned["pinned"] == [earlier, header]

    updated = await scene.rooms.put_header(
        room, "INC-1 SEV1 identified", "<b>INC-1</b> SEV1 identified", existing=header
    )
    assert updated == header

    async def the_edit() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in await scene.messages(room.room_id)
                if e["content"].get("m.relates_to", {}).get("rel_type") == "m.replace"
            ),
            None,
        )

    edit = await eventually(the_edit, within=DEADLINE_S, what="the header's edit")
    assert edit["sender"] == scene.namespace.bot
    assert edit["content"]["m.relates_to"]["event_id"] == header
    assert edit["content"]["m.new_content"]["msgtype"] == "m.notice"
    assert edit["content"]["m.new_content"]["body"] == "INC-1 SEV1 identified"
    assert edit["content"]["m.new_content"]["formatted_body"] == "<b>INC-1</b> SEV1 identified"
    # The server shows the edited header (what clients render in the pinned bar).
    shown = await scene.responder.call(
        "GET",
        f"/_matrix/client/v3/rooms/{quote(room.room_id, safe='')}/event/{quote(header, safe='')}",
    )
    replaced = shown.get("unsigned", {}).get("m.relations", {}).get("m.replace", {})
    assert replaced.get("event_id") == edit["event_id"]
    pinned = await scene.state_event(scene.responder, room.room_id, "m.room.pinned_events")
    assert pinned["pinned"] == [earlier, header]


async def test_the_adapter_creates_rooms_and_headers(
    mongo_server: MongoServer,
    synapse_server: SynapseServer,
    matrix_app_service: MatrixAppService,
    scene: Scene,
) -> None:
    harness = MatrixBridgeHarness(
        mongo=mongo_server, synapse=synapse_server, appservice=matrix_app_service
    )
    await harness.start()
    try:
        adapter = harness.adapter
        assert adapter is not None
        room = await adapter.create_room(
            f"incident INC-{scene.tag}: adapter", invite=[scene.responder.user_id], topic="t"
        )
        header = await adapter.put_header(room, "header", "<i>header</i>", existing=None)
        join_path = f"/_matrix/client/v3/join/{quote(room.room_id, safe='')}"
        await scene.responder.call("POST", join_path)
        pinned = await scene.state_event(scene.responder, room.room_id, "m.room.pinned_events")
        assert pinned["pinned"] == [header]
        assert harness.state is not None
        record = await harness.state.get(
            ROOMS_NAMESPACE, creation_key(f"incident INC-{scene.tag}: adapter")
        )
        assert record is not None
        assert record["room_id"] == room.room_id
        not_matrix = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID("19:x@thread.tacv2"))
        with pytest.raises(PermanentDeliveryError, match="not a Matrix room"):
            await adapter.put_header(not_matrix, "h", "h", existing=None)
    finally:
        await harness.stop()
        await harness.drop()
