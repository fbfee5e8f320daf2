"""The whole life of an incident, run from both chats through the real command layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from bridge.incidents.model import Action, Role, Severity, Status
from bridge.model import Kind, Platform, Relation, RelationKind, RemoteRoomID, RoomRef
from tests.support.fakes import ALICE, EPOCH, MATRIX_ROOM, TEAMS_ROOM
from tests.unit.incidents.rig import (
    BOB,
    CAROL,
    DAVE,
    OLGA,
    PAGE_BASE,
    RESPONDER,
    TEAMS_CHANNEL,
    Rig,
    build_rig,
)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with build_rig() as built:
        yield built


async def test_declare_opens_linked_rooms_with_responders_and_headers(rig: Rig) -> None:
    await rig.say("!incident declare sev2 Checkout errors")

    reply = await rig.last_reply()
    assert reply.data["outcome"] == "ok"
    assert "INC-1 declared (SEV2): Checkout errors" in reply.body.text
    assert "https://matrix.to/#/!incident-1:example.org" in reply.body.text
    # The answer goes to the room it was declared in and the room linked to it.
    assert {m.room for m in reply.mirrors} == {MATRIX_ROOM, TEAMS_ROOM}

    (created,) = rig.matrix.created
    assert created.invite == (RESPONDER, ALICE.user_id)
    assert "INC-1" in created.name
    assert "Checkout errors" in created.name
    (thread,) = rig.teams.created
    assert thread.room.room_id.startswith(TEAMS_CHANNEL + ";messageid=")

    (link,) = await rig.store.links_for(rig.matrix_room)
    assert link.incident_id == "INC-1"
    assert link.teams_room == rig.teams_room

    incident = await rig.incident()
    assert incident.title == "Checkout errors"
    assert incident.severity is Severity.SEV2
    assert incident.status is Status.INVESTIGATING
    assert incident.declared_by == ALICE
    assert incident.declared_in == MATRIX_ROOM
    assert incident.declared_at == EPOCH
    assert incident.rooms == (rig.matrix_room, rig.teams_room)
    for adapter, room in ((rig.matrix, rig.matrix_room), (rig.teams, rig.teams_room)):
        (header,) = adapter.headers_in(room)
        assert header.existing is None
        assert "INC-1 · SEV2 · investigating" in header.text
        assert "Checkout errors" in header.text
        assert "Commander: unassigned" in header.text
        assert incident.headers[room.key] == header.message_id

    ((event, change),) = await rig.changes()
    assert change.action is Action.DECLARE
    assert change.after == "sev2"
    assert change.text == "Checkout errors"
    assert event.sender == ALICE
    assert event.mirrors == ()  # recorded, not mirrored
    assert rig.sample("bridge_incidents_declared_total", {"severity": "sev2"}) == 1


async def test_the_whole_life_from_both_chats(rig: Rig) -> None:
    await rig.say('!incident declare 2 "Checkout errors"')
    matrix, teams = rig.matrix_room, rig.teams_room

    rig.clock.advance(60)
    await rig.say("!incident severity SEV1", room=matrix)
    assert await rig.last_text() == "INC-1 is now SEV1."
    header = rig.matrix.headers_in(matrix)[-1]
    assert header.existing is not None
    assert "SEV1" in header.text
    assert "SEV1" in rig.teams.headers_in(teams)[-1].text

    # Roles: by MXID, and by a Teams mention (the AAD id the message carries).
    rig.matrix.names[CAROL.user_id] = CAROL.display_name  # what Matrix calls her
    await rig.say("!incident assign scribe @carol:example.org", room=matrix)
    assert await rig.last_text() == "Carol is now scribe of INC-1."
    rig.clock.advance(60)
    await rig.say("!incident role assign commander Bob Smith", sender=OLGA, room=teams,
                  mentions=(BOB,))  # fmt: skip
    assert await rig.last_text() == "Bob Smith is now commander of INC-1."
    incident = await rig.incident()
    assert incident.roles[Role.COMMANDER] == BOB
    assert incident.roles[Role.SCRIBE] == CAROL
    assert incident.acknowledged_at == EPOCH + timedelta(seconds=120)  # the commander took it
    assert "Commander: Bob Smith" in rig.teams.headers_in(teams)[-1].text

    # The commander (no operator) runs the incident from Teams.
    rig.clock.advance(60)
    await rig.say("!incident status identified", sender=BOB, room=teams)
    assert await rig.last_text() == "INC-1 is now identified."
    await rig.say("!incident ack", sender=DAVE, room=matrix)
    assert (await rig.incident()).acknowledged_at == EPOCH + timedelta(seconds=120)
    await rig.say("!incident note rolled back the 14:02 deploy", sender=DAVE, room=matrix)
    await rig.say("!incident key error rate back under 1%", sender=CAROL, room=matrix)
    await rig.say("!incident action add an alert on checkout 5xx", sender=BOB, room=teams)
    await rig.say('!incident summary "A bad deploy broke checkout"', sender=BOB, room=teams)
    await rig.say('!incident impact customers=300 "regions=eu west"', sender=BOB, room=teams)
    assert await rig.last_text() == "Impact of INC-1: customers=300, regions=eu west."

    rig.clock.advance(600)
    await rig.say("!incident status monitoring", sender=BOB, room=teams)
    rig.clock.advance(300)
    await rig.say("!incident resolve", sender=BOB, room=teams)
    assert await rig.last_text() == "INC-1 resolved."
    resolved = await rig.incident()
    assert resolved.status is Status.RESOLVED
    assert not resolved.open
    assert resolved.mitigated_at == EPOCH + timedelta(seconds=780)
    assert resolved.resolved_at == EPOCH + timedelta(seconds=1080)

    rig.clock.advance(60)
    await rig.say("!incident reopen", room=matrix)
    assert await rig.last_text() == "INC-1 reopened (investigating)."
    reopened = await rig.incident()
    assert reopened.open
    assert reopened.resolved_at is None
    assert reopened.mitigated_at == EPOCH + timedelta(seconds=780)
    rig.clock.advance(60)
    await rig.say("!incident status resolved", sender=BOB, room=teams)
    final = await rig.incident()
    assert final.resolved_at == EPOCH + timedelta(seconds=1200)
    assert final.summary == "A bad deploy broke checkout"
    assert final.impact == {"customers": "300", "regions": "eu west"}
    (item,) = final.action_items
    assert item.text == "add an alert on checkout 5xx"
    assert item.by == BOB
    assert "🟢 INC-1 · SEV1 · resolved" in rig.matrix.headers_in(matrix)[-1].text
    # Each room has one header, updated in place.
    assert {h.message_id for h in rig.matrix.headers_in(matrix)} == {final.headers[matrix.key]}
    assert {h.message_id for h in rig.teams.headers_in(teams)} == {final.headers[teams.key]}

    changes = await rig.changes()
    assert [c.action for _, c in changes] == [
        Action.DECLARE, Action.SEVERITY, Action.ASSIGN, Action.ASSIGN, Action.STATUS,
        Action.ACKNOWLEDGE, Action.NOTE, Action.KEY_EVENT, Action.ACTION_ITEM, Action.SUMMARY,
        Action.IMPACT, Action.IMPACT, Action.STATUS, Action.RESOLVE, Action.REOPEN,
        Action.RESOLVE,
    ]  # fmt: skip
    by_action = {c.action: (e, c) for e, c in changes}
    severity_event, severity = by_action[Action.SEVERITY]
    assert (severity.before, severity.after) == ("sev2", "sev1")
    assert severity_event.occurred_at == EPOCH + timedelta(seconds=60)
    assert severity_event.incident_id == "INC-1"
    commander = next(c for _, c in changes if c.role is Role.COMMANDER)
    assert commander.subject == BOB
    assert by_action[Action.KEY_EVENT][1].text == "error rate back under 1%"
    assert by_action[Action.NOTE][0].sender == DAVE
    assert [c.before for _, c in changes if c.action is Action.IMPACT] == ["customers", "regions"]

    assert rig.sample("bridge_incident_acknowledge_seconds_count") == 1
    assert rig.sample("bridge_incident_acknowledge_seconds_sum") == 120
    assert rig.sample("bridge_incident_resolve_seconds_count") == 2
    # Command replies in the incident rooms go to both of them.
    reply = await rig.last_reply()
    assert {m.room for m in reply.mirrors} == {matrix, teams}
    assert reply.incident_id == "INC-1"


async def test_postmortem_is_posted_stored_and_recorded(rig: Rig) -> None:
    await rig.say("!incident declare sev3 Slow search")
    matrix = rig.matrix_room
    rig.clock.advance(30)
    await rig.say("!incident assign commander me", room=matrix)
    rig.clock.advance(30)
    await rig.say("!incident key cache flushed", room=matrix)
    rig.clock.advance(30)
    await rig.say("!incident resolve", room=matrix)
    await rig.say("!incident postmortem", room=matrix)

    assert (await rig.last_reply()).data["outcome"] == "ok"
    incident = await rig.incident()
    assert incident.postmortem is not None
    assert "Slow search" in incident.postmortem
    assert "cache flushed" in incident.postmortem
    page = f"{PAGE_BASE}/incidents/{incident.id}?key=k"
    expected = f"{incident.postmortem}\n\nTimeline and chart: {page}"
    posted = [r for r in await rig.replies() if r.body.text == expected]
    assert len(posted) == 1
    assert {m.room for m in posted[0].mirrors} == {matrix, rig.teams_room}
    # Both rooms show it formatted, not as Markdown source.
    formatted = posted[0].body.html
    assert formatted is not None
    assert formatted.startswith("<h1>Postmortem: INC-1 Slow search</h1>")
    assert "<li>Severity: <strong>SEV3</strong></li>" in formatted
    assert f'Timeline and chart: <a href="{page}">{page}</a>' in formatted
    assert (await rig.actions())[-1] is Action.POSTMORTEM


async def test_roles_are_taken_back_and_me_is_the_sender(rig: Rig) -> None:
    await rig.say("!incident declare sev4 Flaky test env")
    matrix = rig.matrix_room
    await rig.say("!incident assign comms me", room=matrix)
    assert (await rig.incident()).roles[Role.COMMUNICATIONS] == ALICE
    await rig.say("!incident assign comms me", room=matrix)
    assert "already communications" in await rig.last_text()
    await rig.say("!incident role unassign communications", room=matrix)
    assert await rig.last_text() == "Alice is no longer communications of INC-1."
    assert Role.COMMUNICATIONS not in (await rig.incident()).roles
    await rig.say("!incident unassign scribe", room=matrix)
    reply = await rig.last_reply()
    assert reply.data["outcome"] == "failed"
    assert reply.body.text == "Nobody is scribe of INC-1."
    assert (await rig.incident()).acknowledged_at is None  # only a commander acknowledges


async def test_a_key_event_command_in_reply_marks_that_message(rig: Rig) -> None:
    await rig.say("!incident declare sev2 Checkout errors")
    said = await rig.say("the 14:02 deploy changed the pool size", sender=CAROL,
                         room=rig.matrix_room)  # fmt: skip
    reply_to = Relation(kind=RelationKind.REPLY, target=said.origin)
    await rig.say("!incident key", sender=DAVE, room=rig.matrix_room, relations=(reply_to,))
    _, change = (await rig.changes())[-1]
    assert change.action is Action.KEY_EVENT
    assert change.marked_event == said.id


async def test_show_and_status_read_for_anyone(rig: Rig) -> None:
    await rig.say("!incident declare sev2 Checkout errors")
    await rig.say("!incident status", sender=DAVE, room=rig.matrix_room)
    reply = await rig.last_reply()
    assert reply.data["outcome"] == "ok"
    assert "INC-1 · SEV2 · investigating" in reply.body.text
    await rig.say("!incident show inc-1", sender=DAVE)
    assert "Checkout errors" in await rig.last_text()
    await rig.say("!incident show INC-9", sender=DAVE)
    assert await rig.last_text() == "There is no incident INC-9."


async def test_declare_only_from_a_linked_or_listed_room() -> None:
    listed = "!listed:example.org"
    async with build_rig(declare_rooms=(listed,)) as rig:
        lone = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!lone:example.org"))
        await rig.say("!incident declare sev2 Nope", room=lone)
        reply = await rig.last_reply()
        assert reply.data["outcome"] == "failed"
        assert "declare_rooms" in reply.body.text
        assert rig.matrix.created == []
        allowed = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(listed))
        await rig.say("!incident declare sev2 Yes", room=allowed)
        assert "INC-1 declared" in await rig.last_text()


async def test_a_room_that_cannot_be_created_is_reported_and_the_rest_goes_on(rig: Rig) -> None:
    rig.teams.fail_create = True
    await rig.say("!incident declare sev1 Outage")
    text = await rig.last_text()
    assert "INC-1 declared (SEV1): Outage" in text
    assert "the Teams room could not be created" in text
    incident = await rig.incident()
    assert incident.rooms == (rig.matrix_room,)
    assert await rig.store.links_for(rig.matrix_room) == []
    assert rig.matrix.headers_in(rig.matrix_room)


async def test_without_a_teams_channel_only_a_matrix_room_is_made() -> None:
    async with build_rig(teams_channel=None) as rig:
        await rig.say("!incident declare sev3 Matrix only")
        assert rig.teams.created == []
        assert (await rig.incident()).rooms == (rig.matrix_room,)


async def test_incident_events_are_never_mirrored(rig: Rig) -> None:
    await rig.say("!incident declare sev2 Checkout errors")
    await rig.say("!incident note hello", room=rig.matrix_room)
    page = await rig.store.timeline(incident_id=(await rig.incident()).id)
    assert all(e.mirrors == () for e in page.events if e.kind is Kind.INCIDENT)


async def test_declare_from_a_thread_of_a_linked_or_listed_teams_channel() -> None:
    listed = "19:listed@thread.tacv2"
    async with build_rig(declare_rooms=(listed,)) as rig:
        ops_channel = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID("19:ops@thread.tacv2"))
        ops_matrix = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!ops2:example.org"))
        await rig.link(ops_matrix, ops_channel)
        thread = RoomRef(
            platform=Platform.TEAMS, room_id=RemoteRoomID(f"{ops_channel.room_id};messageid=42")
        )
        await rig.say("!incident declare sev1 From Teams", sender=OLGA, room=thread)
        assert "INC-1 declared (SEV1): From Teams" in await rig.last_text()
        assert (await rig.incident()).declared_in == thread
        listed_thread = RoomRef(
            platform=Platform.TEAMS, room_id=RemoteRoomID(f"{listed};messageid=7")
        )
        await rig.say("!incident declare sev3 Listed", sender=OLGA, room=listed_thread)
        assert "INC-2 declared" in await rig.last_text()
        unlisted = RoomRef(
            platform=Platform.TEAMS, room_id=RemoteRoomID("19:x@thread.tacv2;messageid=9")
        )
        await rig.say("!incident declare sev3 Nope", sender=OLGA, room=unlisted)
        assert (await rig.last_reply()).data["outcome"] == "failed"
