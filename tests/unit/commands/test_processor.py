from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from bridge.commands.bridge_commands import BridgeCommands
from bridge.commands.permissions import Authorizer
from bridge.commands.processor import CommandProcessor
from bridge.commands.queue import CommandQueue
from bridge.commands.registry import (
    CommandRegistry,
    CommandRequest,
    CommandSpec,
    Permission,
)
from bridge.config.core import CommandSettings, OperatorSettings
from bridge.ids import UlidFactory
from bridge.links import LinkService
from bridge.metrics import BridgeMetrics
from bridge.model import (
    Body,
    InboundEvent,
    Kind,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomLink,
    RoomRef,
    Sender,
    ThreadStyle,
    TimelineEvent,
)
from bridge.notices import BRIDGE_ROOM
from bridge.relay.intake import Intake
from bridge.timeline.memory import MemoryStateStore, MemoryTimelineStore
from tests.support.adapters import FakeAdapter
from tests.support.fakes import ALICE, MATRIX_ROOM, TEAMS_ROOM, FakeClock

OPERATOR_TEAMS = Sender(
    platform=Platform.TEAMS, user_id=RemoteUserID("aad-operator"), display_name="Olga"
)
STRANGER_TEAMS = Sender(
    platform=Platform.TEAMS, user_id=RemoteUserID("aad-stranger"), display_name="Olga"
)  # the same display name: permissions must not care


@dataclass
class Rig:
    clock: FakeClock
    store: MemoryTimelineStore
    intake: Intake
    queue: CommandQueue
    counter: list[int]

    async def say(
        self,
        text: str,
        *,
        sender: Sender = ALICE,
        room: RoomRef = MATRIX_ROOM,
        parent: RoomRef | None = None,
    ) -> TimelineEvent:
        self.counter[0] += 1
        (result,) = await self.intake.accept(
            [
                InboundEvent(
                    kind=Kind.MESSAGE,
                    origin=RemoteRef(room=room, message_id=RemoteMessageID(f"m{self.counter[0]}")),
                    sender=sender,
                    occurred_at=self.clock.now(),
                    body=Body(text=text),
                    parent_room=parent,
                )
            ]
        )
        await self.queue.drain()
        assert result is not None
        return result.event

    async def replies(self) -> list[TimelineEvent]:
        return list((await self.store.timeline(room=BRIDGE_ROOM, limit=100)).events)

    async def last_reply(self) -> str:
        return (await self.replies())[-1].body.text


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock()
    store = MemoryTimelineStore(clock=clock)
    state = MemoryStateStore()
    ids = UlidFactory()
    metrics = BridgeMetrics()
    adapters = [FakeAdapter(Platform.MATRIX), FakeAdapter(Platform.TEAMS)]
    links = LinkService(store=store, clock=clock, ids=ids, adapters=adapters)
    registry = CommandRegistry()
    BridgeCommands(
        store=store, state=state, links=links, clock=clock, code_ttl=timedelta(minutes=10)
    ).register(registry)

    async def boom(_request: CommandRequest) -> str:
        raise RuntimeError("secret internals")

    registry.add(
        CommandSpec(group="test", verb="boom", usage="!test boom", summary="fails",
                    permission=Permission.ANYONE, handler=boom)
    )  # fmt: skip
    settings = CommandSettings(
        operators=OperatorSettings(matrix=(ALICE.user_id,), teams=(OPERATOR_TEAMS.user_id,))
    )
    processor = CommandProcessor(
        store=store,
        clock=clock,
        ids=ids,
        registry=registry,
        authorizer=Authorizer(settings, {a.platform: a for a in adapters}),
        metrics=metrics,
    )
    queue = CommandQueue(processor)
    queue.start()
    intake = Intake(
        store=store, clock=clock, ids=ids, metrics=metrics, adapters=adapters, on_stored=queue.offer
    )
    rig = Rig(clock, store, intake, queue, [0])
    yield rig
    await queue.stop()


async def test_pairing_links_two_rooms_and_replies_go_to_both(rig: Rig) -> None:
    await rig.say("!bridge link")
    reply = await rig.last_reply()
    code = reply.split()[2]
    await rig.say(f"!bridge confirm {code}", sender=OPERATOR_TEAMS, room=TEAMS_ROOM)
    assert (
        await rig.last_reply()
        == f"Linked matrix {MATRIX_ROOM.room_id} with teams {TEAMS_ROOM.room_id}."
    )
    assert len(await rig.store.all_links()) == 1
    await rig.say("!bridge status")
    last = (await rig.replies())[-1]
    assert "Linked to teams" in last.body.text
    assert {m.room for m in last.mirrors} == {MATRIX_ROOM, TEAMS_ROOM}
    # The code is single use.
    await rig.say(f"!bridge confirm {code}", sender=OPERATOR_TEAMS, room=TEAMS_ROOM)
    assert "unknown or expired" in await rig.last_reply()


async def test_a_command_in_a_thread_of_a_linked_channel_is_answered_on_both_sides(
    rig: Rig,
) -> None:
    await rig.store.save_link(
        RoomLink(matrix_room=MATRIX_ROOM, teams_room=TEAMS_ROOM, created_at=rig.clock.now())
    )
    thread = RoomRef(
        platform=Platform.TEAMS, room_id=RemoteRoomID(f"{TEAMS_ROOM.room_id};messageid=42")
    )
    await rig.say("!bridge status", sender=OPERATOR_TEAMS, room=thread, parent=TEAMS_ROOM)
    last = (await rig.replies())[-1]
    assert "Linked to matrix" in last.body.text
    assert {m.room for m in last.mirrors} == {thread, MATRIX_ROOM}


async def test_a_link_made_with_replies_shows_threads_as_reply_chains(rig: Rig) -> None:
    await rig.say("!bridge link --replies")
    code = (await rig.last_reply()).split()[2]
    await rig.say(f"!bridge confirm {code}", sender=OPERATOR_TEAMS, room=TEAMS_ROOM)
    (link,) = await rig.store.all_links()
    assert link.threads is ThreadStyle.REPLY


async def test_expired_code_and_same_platform_are_refused(rig: Rig) -> None:
    await rig.say("!bridge link")
    code = (await rig.last_reply()).split()[2]
    await rig.say(f"!bridge confirm {code}")
    assert "other platform" in await rig.last_reply()
    rig.clock.advance(11 * 60)
    await rig.say(f"!bridge confirm {code}", sender=OPERATOR_TEAMS, room=TEAMS_ROOM)
    assert "unknown or expired" in await rig.last_reply()


async def test_denied_on_platform_id_not_display_name_and_recorded(rig: Rig) -> None:
    await rig.say("!bridge unlink", sender=STRANGER_TEAMS, room=TEAMS_ROOM)
    replies = await rig.replies()
    assert "not allowed" in replies[-1].body.text
    assert replies[-1].data["outcome"] == "denied"
    commands = [
        e for e in (await rig.store.timeline(room=TEAMS_ROOM)).events if e.kind is Kind.COMMAND
    ]
    assert len(commands) == 1


async def test_relinking_needs_replace_and_is_recorded(rig: Rig) -> None:
    await rig.say("!bridge link")
    await rig.say(
        f"!bridge confirm {(await rig.last_reply()).split()[2]}",
        sender=OPERATOR_TEAMS,
        room=TEAMS_ROOM,
    )
    other_teams = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(TEAMS_ROOM.room_id + "x"))
    await rig.say("!bridge link")
    code = (await rig.last_reply()).split()[2]
    await rig.say(f"!bridge confirm {code}", sender=OPERATOR_TEAMS, room=other_teams)
    assert "--replace" in await rig.last_reply()
    await rig.say(f"!bridge confirm {code} --replace", sender=OPERATOR_TEAMS, room=other_teams)
    assert "replacing 1" in await rig.last_reply()
    (link,) = await rig.store.all_links()
    assert link.teams_room == other_teams
    actions = [
        e.data.get("action")
        for e in (await rig.store.timeline(room=MATRIX_ROOM, limit=200)).events
        if e.kind is Kind.NOTICE
    ]
    assert actions == ["linked", "unlinked", "linked"]


async def test_usage_help_and_errors_never_leak_a_traceback(rig: Rig) -> None:
    await rig.say("!bridge confirm")
    assert "Usage: !bridge confirm CODE" in await rig.last_reply()
    await rig.say("!help bridge")
    assert "!bridge status" in await rig.last_reply()
    await rig.say("!bridge 'oops")
    assert "Could not read that command" in await rig.last_reply()
    await rig.say("!test boom")
    reply = await rig.last_reply()
    assert "failed (reference" in reply
    assert "secret internals" not in reply
    await rig.say("!unknown thing")
    assert "Could not" not in await rig.last_reply()  # not ours: no reply


async def test_a_redelivered_command_runs_once(rig: Rig) -> None:
    event = await rig.say("!bridge status")
    before = len(await rig.replies())
    (again,) = await rig.intake.accept(
        [InboundEvent(kind=Kind.MESSAGE, origin=event.origin, sender=event.sender,
                      occurred_at=event.occurred_at, body=event.body)]
    )  # fmt: skip
    await rig.queue.drain()
    assert again is not None
    assert again.duplicate
    assert len(await rig.replies()) == before
