"""The Matrix side against a real Synapse: transactions, durability, auth, invites, conversion."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

import aiohttp
import pytest

from adapters.matrix.appservice import TRANSACTIONS_NAMESPACE
from bridge.clock import SystemClock
from bridge.ids import UlidFactory
from bridge.links import CONFIGURATION, LinkService
from bridge.model import (
    Body,
    EventID,
    Kind,
    MessageStyle,
    Platform,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomLink,
    RoomRef,
    Sender,
    TimelineEvent,
)
from bridge.ports import OutboundMessage
from devtools.servers import MongoServer, SynapseServer
from tests.integration.matrix_fixtures import MatrixAppService
from tests.integration.matrix_harness import MatrixBridgeHarness, RecordedTransaction
from tests.support.matrix_user import MatrixUser
from tests.support.waiting import eventually

TEAMS_ROOM = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID("19:inbound@thread.tacv2"))


@dataclass
class People:
    alice: MatrixUser
    mallory: MatrixUser


@pytest.fixture
async def people(synapse_server: SynapseServer) -> AsyncIterator[People]:
    tag = secrets.token_hex(3)
    alice_id, alice_token = synapse_server.register_user(f"alice{tag}", "pw-alice")
    mallory_id, mallory_token = synapse_server.register_user(f"mallory{tag}", "pw-mallory")
    async with aiohttp.ClientSession() as session:
        yield People(
            alice=MatrixUser(session, synapse_server.base_url, alice_id, alice_token),
            mallory=MatrixUser(session, synapse_server.base_url, mallory_id, mallory_token),
        )


@pytest.fixture
async def bridge(
    mongo_server: MongoServer,
    synapse_server: SynapseServer,
    matrix_app_service: MatrixAppService,
    people: People,
) -> AsyncIterator[MatrixBridgeHarness]:
    harness = MatrixBridgeHarness(
        mongo=mongo_server,
        synapse=synapse_server,
        appservice=matrix_app_service,
        invite_users=(people.alice.user_id,),
    )
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
        await harness.drop()


async def _room_with_bot(bridge: MatrixBridgeHarness, user: MatrixUser) -> str:
    bot = bridge.appservice.registration.namespace.bot
    room_id = await user.create_room(invite=[bot])

    async def bot_joined() -> bool:
        state = await user.member_state(room_id, bot)
        return state is not None and state.get("membership") == "join"

    await eventually(bot_joined, what="the bot to accept the invite")
    return room_id


async def _stored(bridge: MatrixBridgeHarness, room_id: str, count: int) -> list[TimelineEvent]:
    assert bridge.store is not None
    store = bridge.store
    room = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(room_id))

    async def enough() -> list[TimelineEvent] | None:
        events = list((await store.timeline(room=room, limit=500)).events)
        wanted = [e for e in events if e.kind is not Kind.MEMBERSHIP]
        return wanted if len(wanted) >= count else None

    return await eventually(enough, what=f"{count} events in the timeline")


def _txn_with(bridge: MatrixBridgeHarness, event_id: str) -> RecordedTransaction:
    for txn in bridge.transactions:
        if any(e.get("event_id") == event_id for e in txn.body.get("events", [])):
            return txn
    raise AssertionError(f"no recorded transaction carries {event_id}")


async def test_message_stored_once_through_replays_and_a_restart(
    bridge: MatrixBridgeHarness, people: People
) -> None:
    room_id = await _room_with_bot(bridge, people.alice)
    assert bridge.store is not None
    await bridge.store.save_link(
        RoomLink(
            matrix_room=RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(room_id)),
            teams_room=TEAMS_ROOM,
            created_at=datetime.now(UTC),
        )
    )
    event_id = await people.alice.send(room_id, {"msgtype": "m.text", "body": "checkout is down"})
    (stored,) = await _stored(bridge, room_id, 1)
    assert stored.origin.message_id == event_id
    assert stored.body.text == "checkout is down"
    assert stored.sender.user_id == people.alice.user_id

    txn = _txn_with(bridge, event_id)
    for _ in range(3):
        assert await bridge.replay(txn) == 200
    await bridge.stop()
    await bridge.start()
    assert await bridge.replay(txn) == 200
    assert bridge.state is not None
    assert await bridge.state.get(TRANSACTIONS_NAMESPACE, txn.txn_id) is not None

    # The same events under a transaction id never seen: still one record.
    fresh = RecordedTransaction(txn_id=f"fresh-{secrets.token_hex(4)}", body=txn.body, status=0)
    assert await bridge.replay(fresh) == 200

    assert bridge.store is not None
    events = await _stored(bridge, room_id, 1)
    assert [e.origin.message_id for e in events] == [event_id]
    assert len(await bridge.store.pending(TEAMS_ROOM, limit=10)) == 1


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({}, ""),
        ({"Authorization": "Bearer wrong-token"}, ""),
        ({"Authorization": "Basic abc"}, ""),
        ({}, "?access_token={hs}"),
    ],
    ids=["missing", "wrong", "other-scheme", "query-string"],
)
async def test_bad_homeserver_token_is_forbidden_and_stores_nothing(
    bridge: MatrixBridgeHarness, headers: dict[str, str], query: str
) -> None:
    hs = bridge.appservice.registration.hs_token
    txn_id = f"forged-{secrets.token_hex(4)}"
    event = {
        "type": "m.room.message",
        "room_id": "!forged:localhost",
        "event_id": f"$forged{secrets.token_hex(4)}",
        "sender": "@someone:localhost",
        "origin_server_ts": 1_700_000_000_000,
        "content": {"msgtype": "m.text", "body": "forged"},
    }
    url = f"{bridge.appservice.url}/_matrix/app/v1/transactions/{txn_id}{query.format(hs=hs)}"
    async with aiohttp.ClientSession() as session:
        async with session.put(url, json={"events": [event]}, headers=headers) as response:
            assert response.status == 403
            assert (await response.json())["errcode"] == "M_FORBIDDEN"
        ping = f"{bridge.appservice.url}/_matrix/app/v1/ping{query.format(hs=hs)}"
        async with session.post(ping, json={}, headers=headers) as response:
            assert response.status == 403
    assert bridge.state is not None
    assert bridge.store is not None
    assert await bridge.state.get(TRANSACTIONS_NAMESPACE, txn_id) is None
    room = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!forged:localhost"))
    assert (await bridge.store.timeline(room=room)).events == ()


async def test_every_kind_sent_by_a_user_arrives_in_the_core_model(
    bridge: MatrixBridgeHarness, people: People
) -> None:
    alice = people.alice
    room_id = await _room_with_bot(bridge, alice)
    first = await alice.send(room_id, {"msgtype": "m.text", "body": "first"})
    await alice.send(room_id, {"msgtype": "m.notice", "body": "a notice"})
    await alice.send(room_id, {"msgtype": "m.emote", "body": "waves"})
    mention = f'<b>hey</b> <a href="https://matrix.to/#/{people.mallory.user_id}">Mallory</a>'
    await alice.send(
        room_id,
        {
            "msgtype": "m.text",
            "body": "hey Mallory",
            "format": "org.matrix.custom.html",
            "formatted_body": mention + '<script>alert("x")</script>',
            "m.mentions": {"user_ids": [people.mallory.user_id]},
        },
    )
    await alice.send(
        room_id,
        {
            "msgtype": "m.text",
            "body": "a reply",
            "m.relates_to": {"m.in_reply_to": {"event_id": first}},
        },
    )
    await alice.send(
        room_id,
        {
            "msgtype": "m.text",
            "body": "in a thread",
            "m.relates_to": {
                "rel_type": "m.thread",
                "event_id": first,
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": first},
            },
        },
    )
    await alice.send(
        room_id,
        {
            "msgtype": "m.text",
            "body": "* first (edited)",
            "m.new_content": {"msgtype": "m.text", "body": "first (edited)"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": first},
        },
    )
    await alice.send(
        room_id,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": first, "key": "👍"}},
        event_type="m.reaction",
    )
    mxc = await alice.upload(b"\x89PNG fake image", "image/png", "graph.png")
    await alice.send(
        room_id,
        {"msgtype": "m.image", "body": "graph.png", "url": mxc,
         "info": {"mimetype": "image/png", "size": 15, "w": 4, "h": 3}},
    )  # fmt: skip
    await alice.redact(room_id, first)

    events = await _stored(bridge, room_id, 10)
    by_text = {e.body.text: e for e in events if e.kind is Kind.MESSAGE}
    original = by_text["first"]
    assert by_text["a notice"].body.style is MessageStyle.NOTICE
    assert by_text["waves"].body.style is MessageStyle.EMOTE

    html = by_text["hey Mallory"].body
    assert html.html is not None
    assert "<b>hey</b>" in html.html
    assert "script" not in html.html
    assert [m.user_id for m in html.mentions] == [people.mallory.user_id]
    assert html.mentions[0].display_name == "Mallory"

    reply = by_text["a reply"].relation(RelationKind.REPLY)
    assert reply is not None
    assert reply.event_id == original.id
    thread = by_text["in a thread"]
    thread_rel = thread.relation(RelationKind.THREAD)
    assert thread_rel is not None
    assert thread_rel.event_id == original.id
    assert thread.relation(RelationKind.REPLY) is None  # the fallback is not a real reply

    (edit,) = [e for e in events if e.kind is Kind.EDIT]
    assert edit.body.text == "first (edited)"
    edit_rel = edit.relation(RelationKind.EDIT)
    assert edit_rel is not None
    assert edit_rel.event_id == original.id

    (reaction,) = [e for e in events if e.kind is Kind.REACTION]
    reaction_rel = reaction.relation(RelationKind.REACTION)
    assert reaction_rel is not None
    assert (reaction_rel.key, reaction_rel.event_id) == ("👍", original.id)

    image = by_text["graph.png"].body.attachments[0]
    assert (image.url, image.mime_type, image.is_image, image.width) == (mxc, "image/png", True, 4)

    (redaction,) = [e for e in events if e.kind is Kind.REDACTION]
    redaction_rel = redaction.relation(RelationKind.REDACTION)
    assert redaction_rel is not None
    assert redaction_rel.event_id == original.id
    assert all(e.sender.display_name for e in events)


async def test_invite_from_a_user_not_on_the_allow_list_is_declined(
    bridge: MatrixBridgeHarness, people: People
) -> None:
    bot = bridge.appservice.registration.namespace.bot
    room_id = await people.mallory.create_room(invite=[bot])

    async def declined() -> dict[str, object] | None:
        state = await people.mallory.member_state(room_id, bot)
        return state if state is not None and state.get("membership") == "leave" else None

    state = await eventually(declined, what="the bot to decline")
    assert "may not invite" in str(state.get("reason", ""))


async def test_a_ghosts_own_message_coming_back_is_not_bridged_again(
    bridge: MatrixBridgeHarness, people: People
) -> None:
    room_id = await _room_with_bot(bridge, people.alice)
    matrix_room = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(room_id))
    dana = Sender(
        platform=Platform.TEAMS,
        user_id=RemoteUserID("0f1e2d3c-0000-4000-8000-00000000dana"),
        display_name="Dana",
    )
    now = datetime.now(UTC)
    source = TimelineEvent(
        id=EventID(UlidFactory().new()),
        incident_id=None,
        kind=Kind.MESSAGE,
        origin=RemoteRef(room=TEAMS_ROOM, message_id=RemoteMessageID("1700000000001")),
        origin_variant="",
        sender=dana,
        body=Body(text="from Teams"),
        occurred_at=now,
        received_at=now,
    )
    assert bridge.adapter is not None
    sent = await bridge.adapter.send(
        OutboundMessage(event=source, target=matrix_room), idempotency_key=f"echo-{source.id}"
    )
    # Something the user says afterwards proves the ghost's transaction was processed first.
    marker = await people.alice.send(room_id, {"msgtype": "m.text", "body": "after the ghost"})
    events = await _stored(bridge, room_id, 1)

    async def answered() -> RecordedTransaction | None:
        try:
            txn = _txn_with(bridge, sent.message_id)
        except AssertionError:
            return None
        return txn if txn.status == 200 else None

    await eventually(answered, what="the ghost's event to come back in a transaction")
    assert [e.origin.message_id for e in events] == [marker]
    assert bridge.store is not None
    ghost_events = await bridge.store.find_by_origin(
        RemoteRef(room=matrix_room, message_id=sent.message_id), Kind.MESSAGE
    )
    assert ghost_events is None


async def test_linking_a_room_marks_it_with_bridge_metadata(
    bridge: MatrixBridgeHarness, people: People
) -> None:
    alice = people.alice
    room_id = await _room_with_bot(bridge, alice)
    bot = bridge.appservice.registration.namespace.bot
    levels = await alice.call(
        "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.power_levels"
    )
    levels.setdefault("users", {})[bot] = 50
    await alice.call(
        "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.power_levels", json=levels
    )
    assert bridge.store is not None
    assert bridge.adapter is not None
    links = LinkService(
        store=bridge.store, clock=SystemClock(), ids=UlidFactory(), adapters=[bridge.adapter]
    )
    link = RoomLink(
        matrix_room=RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(room_id)),
        teams_room=TEAMS_ROOM,
        created_at=datetime.now(UTC),
    )
    await links.link(link, by=CONFIGURATION)
    key = quote(f"incident-bridge://msteams/{TEAMS_ROOM.room_id}", safe="")
    for event_type in ("m.bridge", "uk.half-shot.bridge"):
        state = await alice.call(
            "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/{event_type}/{key}"
        )
        assert state["bridgebot"] == bot
        assert state["channel"]["id"] == TEAMS_ROOM.room_id
        assert state["protocol"]["id"] == "msteams"


async def test_power_levels_are_read_and_follow_changes(
    bridge: MatrixBridgeHarness, people: People
) -> None:
    """Operators by Matrix power level: the room's creator outranks every level (the
    homeserver's default room version is 12 or later), an invitee has 0, and a promotion
    applies to the next lookup (taken from the state event as it passes)."""
    assert bridge.adapter is not None
    adapter = bridge.adapter
    room_id = await _room_with_bot(bridge, people.alice)
    room = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(room_id))
    mallory = RemoteUserID(people.mallory.user_id)
    assert await adapter.privilege(room, RemoteUserID(people.alice.user_id)) >= 100
    assert await adapter.privilege(room, mallory) == 0
    state = f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.power_levels/"
    levels = await people.alice.call("GET", state)
    levels["users"] = {**levels.get("users", {}), people.mallory.user_id: 50}
    await people.alice.call("PUT", state, json=levels)

    async def promoted() -> bool:
        return await adapter.privilege(room, mallory) == 50

    await eventually(promoted, within=20, what="the new level from the state event")
    teams_room = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID("19:x@thread.tacv2"))
    assert await adapter.privilege(teams_room, mallory) == 0
