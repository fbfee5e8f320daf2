"""Refusals: without permission (decided on platform ids, recorded), and malformed commands."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.incidents.model import Role, Severity
from bridge.model import Kind, TimelineEvent
from tests.support.fakes import MATRIX_ROOM
from tests.unit.incidents.rig import BOB, BOB_IMPOSTOR, CAROL, DAVE, OLGA, Rig, build_rig


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with build_rig() as built:
        await built.say("!incident declare sev2 Checkout errors")
        await built.say("!incident assign commander Bob Smith", sender=OLGA,
                        room=built.teams_room, mentions=(BOB,))  # fmt: skip
        yield built


async def command_records(rig: Rig) -> list[str]:
    events: list[TimelineEvent] = []
    for room in (rig.matrix_room, rig.teams_room, MATRIX_ROOM):
        events += (await rig.store.timeline(room=room, limit=1000)).events
    return [e.body.text for e in events if e.kind is Kind.COMMAND]


@pytest.mark.parametrize(
    "command",
    [
        "!incident severity sev1",
        "!incident status monitoring",
        "!incident assign commander me",
        "!incident unassign commander",
        "!incident resolve",
        "!incident summary mine now",
        "!incident impact customers=1",
        "!incident postmortem",
    ],
)
async def test_changes_need_an_operator_or_the_commander(rig: Rig, command: str) -> None:
    before = await rig.incident()
    await rig.say(command, sender=DAVE, room=rig.matrix_room)
    reply = await rig.last_reply()
    assert reply.data["outcome"] == "denied"
    assert "Dave is not allowed" in reply.body.text
    assert "operator or incident commander only" in reply.body.text
    assert await rig.incident() == before
    # Recorded: the command as said, and the refusal in both incident rooms.
    assert command in await command_records(rig)
    assert {m.room for m in reply.mirrors} == {rig.matrix_room, rig.teams_room}
    assert rig.sample("bridge_commands_total", {"outcome": "denied"}) == 1


async def test_the_commander_is_known_by_platform_id_not_by_name(rig: Rig) -> None:
    await rig.say("!incident severity sev1", sender=BOB_IMPOSTOR, room=rig.teams_room)
    assert (await rig.last_reply()).data["outcome"] == "denied"
    await rig.say("!incident severity sev1", sender=BOB, room=rig.teams_room)
    assert (await rig.last_reply()).data["outcome"] == "ok"
    assert (await rig.incident()).severity is Severity.SEV1


async def test_commander_of_one_incident_has_no_say_over_another(rig: Rig) -> None:
    await rig.say("!incident declare sev3 Second one")  # INC-2, in its own rooms
    await rig.say("!incident severity sev1", sender=BOB, room=rig.teams_room)
    assert (await rig.last_reply()).data["outcome"] == "denied"


async def test_declaring_needs_an_operator(rig: Rig) -> None:
    await rig.say("!incident declare sev1 Mine", sender=CAROL)
    assert (await rig.last_reply()).data["outcome"] == "denied"
    assert len(rig.matrix.created) == 1


async def test_anyone_in_the_rooms_may_ack_note_mark_and_add_actions(rig: Rig) -> None:
    for command in ("!incident ack", "!incident note n", "!incident key k", "!incident action a"):
        await rig.say(command, sender=DAVE, room=rig.matrix_room)
        assert (await rig.last_reply()).data["outcome"] == "ok", command


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("!incident declare", "give a severity and a title"),
        ("!incident declare sev2", "give a severity and a title"),
        ("!incident declare sev9 Title", "'sev9' is not one of sev1, sev2, sev3 or sev4"),
        ("!incident severity", "give one severity"),
        ("!incident severity loud", "is not one of"),
        ("!incident status done", "'done' is not one of investigating"),
        ("!incident status monitoring now", "give one status"),
        ("!incident assign commander", "give a role"),
        ("!incident assign pilot me", "'pilot' is not a role"),
        ("!incident assign commander Somebody Else", "name the person as me"),
        ("!incident role", "say assign or unassign"),
        ("!incident unassign", "give one role"),
        ("!incident note", "give the text"),
        ('!incident note ""', "give the text"),
        ("!incident summary", "give the summary"),
        ("!incident impact", "give at least one KEY=VALUE"),
        ("!incident impact loud", "'loud' is not KEY=VALUE"),
        ("!incident impact a.b=1", "a field name is letters"),
        ("!incident ack now", "ack takes no arguments"),
        ("!incident resolve please", "resolve takes no arguments"),
        ("!incident show INC-1 INC-2", "give at most an incident id"),
        ("!incident show nope", "is not an incident id"),
    ],
)
async def test_malformed_commands_get_usage_help(rig: Rig, command: str, expected: str) -> None:
    await rig.say(command, room=rig.matrix_room)
    reply = await rig.last_reply()
    assert reply.data["outcome"] == "usage", reply.body.text
    assert expected in reply.body.text
    assert "Usage: !incident" in reply.body.text
    assert "Traceback" not in reply.body.text


async def test_unknown_verbs_and_broken_quoting_answer_with_help(rig: Rig) -> None:
    await rig.say("!incident", room=rig.matrix_room)
    assert "!incident declare SEVERITY TITLE" in await rig.last_text()
    await rig.say("!incident dance", room=rig.matrix_room)
    assert (await rig.last_reply()).data["outcome"] == "usage"
    await rig.say('!incident note "unclosed', room=rig.matrix_room)
    reply = await rig.last_reply()
    assert reply.data["outcome"] == "usage"
    assert "quote is not closed" in reply.body.text
    await rig.say("!incident severity --help", room=rig.matrix_room)
    assert "!incident severity sev1|sev2|sev3|sev4" in await rig.last_text()


async def test_incident_commands_outside_an_incident_room_say_where_to_go(rig: Rig) -> None:
    await rig.say("!incident note hello")
    reply = await rig.last_reply()
    assert reply.data["outcome"] == "failed"
    assert "not an incident's room" in reply.body.text


async def test_changes_that_change_nothing_are_refused_with_a_reason(rig: Rig) -> None:
    for command, expected in (
        ("!incident severity sev2", "INC-1 is already sev2."),
        ("!incident status investigating", "INC-1 is already investigating."),
        ("!incident reopen", "INC-1 is not resolved."),
        ("!incident assign commander @bob:example.org", None),
    ):
        await rig.say(command, room=rig.matrix_room)
        if expected is not None:
            reply = await rig.last_reply()
            assert reply.data["outcome"] == "failed"
            assert reply.body.text == expected
    assert (await rig.incident()).roles[Role.COMMANDER].user_id == "@bob:example.org"
    await rig.say("!incident resolve", room=rig.matrix_room)
    await rig.say("!incident resolve", room=rig.matrix_room)
    assert await rig.last_text() == "INC-1 is already resolved."
