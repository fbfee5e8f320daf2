"""A pin (the configured reaction) on any message of an incident room marks a key event."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.incidents.model import Action
from bridge.model import InboundEvent, TimelineEvent
from bridge.notices import BRIDGE_ROOM
from tests.support.fakes import MATRIX_ROOM
from tests.unit.incidents.rig import BOB, CAROL, DAVE, Rig, build_rig


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with build_rig() as built:
        await built.say("!incident declare sev2 Checkout errors")
        yield built


async def test_a_pin_reaction_records_the_reacted_message_as_key_event(rig: Rig) -> None:
    said = await rig.say("pool size went from 50 to 5", sender=CAROL, room=rig.matrix_room)
    rig.clock.advance(90)
    reaction = await rig.react(said, "📌", sender=DAVE)

    event, change = (await rig.changes())[-1]
    assert change.action is Action.KEY_EVENT
    assert change.marked_event == said.id
    assert event.sender == DAVE
    assert event.occurred_at == reaction.occurred_at
    assert event.incident_id == "INC-1"
    notices = (await rig.store.timeline(room=BRIDGE_ROOM, limit=1000)).events
    notice = notices[-1]
    assert notice.body.text == (
        '📌 Key event marked by Dave ("pool size went from 50 to 5" by Carol).'
    )
    assert {m.room for m in notice.mirrors} == {rig.matrix_room, rig.teams_room}


async def test_a_pin_in_the_teams_thread_counts_too(rig: Rig) -> None:
    said = await rig.say("rolling back now", sender=BOB, room=rig.teams_room)
    await rig.react(said, "📌", sender=BOB)
    assert (await rig.changes())[-1][1].marked_event == said.id


async def test_other_reactions_and_other_rooms_mark_nothing(rig: Rig) -> None:
    said = await rig.say("hello", sender=CAROL, room=rig.matrix_room)
    await rig.react(said, "👍", sender=DAVE)
    outside = await rig.say("not an incident room", sender=CAROL, room=MATRIX_ROOM)
    await rig.react(outside, "📌", sender=DAVE)
    assert Action.KEY_EVENT not in await rig.actions()


async def test_a_redelivered_reaction_records_once(rig: Rig) -> None:
    said = await rig.say("the fix is out", sender=CAROL, room=rig.matrix_room)
    reaction = await rig.react(said, "📌", sender=DAVE)
    # The same platform event again: stored once, its key event recorded once.
    (again,) = await rig.intake.accept([_inbound_of(reaction)])
    assert again is not None
    assert again.duplicate
    assert (await rig.actions()).count(Action.KEY_EVENT) == 1


def _inbound_of(event: TimelineEvent) -> InboundEvent:
    return InboundEvent(
        kind=event.kind,
        origin=event.origin,
        sender=event.sender,
        occurred_at=event.occurred_at,
        body=event.body,
        relations=event.relations,
    )
