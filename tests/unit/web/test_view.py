"""Folding edits, deletes and reactions into the messages they concern."""

from __future__ import annotations

from bridge.incidents.model import Action, IncidentChange
from bridge.model import IncidentID, Kind, Relation, RelationKind, RemoteMessageID, RemoteRef
from bridge.timeline.memory import MemoryTimelineStore
from bridge.web.view import fold
from tests.support.fakes import FakeClock
from tests.unit.web.builders import ALICE, BOB, INCIDENT_MATRIX, TimelineWriter, relation_to


async def test_edits_deletes_and_reactions_fold_into_their_messages() -> None:
    timeline = MemoryTimelineStore(clock=FakeClock())
    writer = TimelineWriter(timeline, IncidentID("INC-1"))
    first = await writer.add(Kind.MESSAGE, ALICE, "first")
    second = await writer.add(Kind.MESSAGE, BOB, "second")
    edit = await writer.add(
        Kind.EDIT, ALICE, "first, fixed", relations=(relation_to(RelationKind.EDIT, first),)
    )
    thumbs = await writer.add(
        Kind.REACTION, BOB, "", relations=(relation_to(RelationKind.REACTION, first, "👍"),)
    )
    await writer.add(
        Kind.REACTION, ALICE, "", relations=(relation_to(RelationKind.REACTION, first, "👍"),)
    )
    await writer.add(
        Kind.REACTION, ALICE, "", relations=(relation_to(RelationKind.REACTION, second, "🎉"),)
    )
    # Bob takes his reaction back by deleting it (Matrix: a redaction of the reaction).
    await writer.add(
        Kind.REDACTION, BOB, "", relations=(relation_to(RelationKind.REDACTION, thumbs),)
    )
    # Alice's 🎉 is taken back on Teams: a reaction event marked removed.
    await writer.add(
        Kind.REACTION,
        ALICE,
        "",
        relations=(relation_to(RelationKind.REACTION, second, "🎉"),),
        data={"removed": True},
    )
    await writer.add(
        Kind.REDACTION, BOB, "", relations=(relation_to(RelationKind.REDACTION, second),)
    )
    await writer.change(
        ALICE,
        IncidentChange(
            action=Action.KEY_EVENT,
            incident_id=IncidentID("INC-1"),
            text="first",
            marked_event=first.id,
        ),
    )
    orphan = await writer.add(
        Kind.EDIT,
        ALICE,
        "edit of something older",
        relations=(
            Relation(
                kind=RelationKind.EDIT,
                target=RemoteRef(room=INCIDENT_MATRIX, message_id=RemoteMessageID("$gone")),
            ),
        ),
    )
    events = (await timeline.timeline(incident_id=IncidentID("INC-1"))).events
    entries = fold(events)
    assert [e.event.id for e in entries] == [
        first.id,
        second.id,
        entries[2].event.id,
        orphan.id,
    ]
    one, two, key, lone = entries
    assert one.text == "first, fixed"
    assert one.edits[0].id == edit.id
    assert [(r.key, r.senders) for r in one.reactions] == [("👍", ("Alice",))]
    assert one.key_event
    assert key.key_event
    assert key.change is not None
    assert two.deleted is not None
    assert two.reactions == ()
    assert lone.orphan
    assert lone.text == "edit of something older"
