"""Edits and deletes both ways, of messages bridged before a crash and after it (R9).

Every edit must become an ``m.replace`` by the same ghost or an update of the
bot's Teams activity, every delete a redaction or a delete of that activity;
none may show up as a new message on either side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devtools.teams_emulator import Delivery, Message
from tests.e2e.arrivals import has_body, matrix_event, teams_message
from tests.e2e.observe import bot_messages, is_edit, new_messages, relation, room_history, token
from tests.e2e.stack import Pair, Stack
from tests.support.waiting import eventually


async def _teams_post(stack: Stack, pair: Pair, marker: str) -> tuple[Delivery, str]:
    avery, _ = stack.teams_users
    delivery = await stack.emulator.post_message(pair.teams, avery, f"teams says {marker}")
    assert delivery.ok, delivery
    mirrored = await matrix_event(stack, pair.matrix_room, has_body(marker), what=marker)
    return delivery, str(mirrored["event_id"])


async def _matrix_post(stack: Stack, pair: Pair, marker: str) -> tuple[str, Message]:
    event_id = await stack.matrix.send(
        pair.matrix_room, {"msgtype": "m.text", "body": f"matrix says {marker}"}
    )
    posted = await teams_message(stack, pair.teams_id, lambda m: marker in m.text, what=marker)
    return event_id, posted


async def _matrix_edit(stack: Stack, pair: Pair, event_id: str, text: str) -> None:
    await stack.matrix.send(
        pair.matrix_room,
        {
            "msgtype": "m.text",
            "body": f"* {text}",
            "m.new_content": {"msgtype": "m.text", "body": text},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        },
    )


def _bridge_messages(stack: Stack, events: list[dict[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in new_messages(events) if stack.is_bridge_user(str(e.get("sender")))]


def _redacts(event: Mapping[str, Any]) -> str | None:
    content = event.get("content")
    inner = content.get("redacts") if isinstance(content, Mapping) else None
    found = event.get("redacts") or inner
    return str(found) if found else None


async def test_edits_and_deletes_from_before_a_crash_stay_edits_and_deletes(
    chat_stack: Stack,
) -> None:
    stack = chat_stack
    pair = stack.pairs[0]
    avery, _ = stack.teams_users
    t_edit, t_delete, t_late = (token("t2m", "r9", n) for n in (1, 2, 3))
    m_edit, m_delete, m_late = (token("m2t", "r9", n) for n in (1, 2, 3))

    teams_edit, mirror_of_edit = await _teams_post(stack, pair, t_edit)
    teams_delete, mirror_of_delete = await _teams_post(stack, pair, t_delete)
    matrix_edit, posted_edit = await _matrix_post(stack, pair, m_edit)
    matrix_delete, posted_delete = await _matrix_post(stack, pair, m_delete)
    await stack.settled()

    await stack.kill_and_restart()

    teams_late, mirror_of_late = await _teams_post(stack, pair, t_late)
    matrix_late, posted_late = await _matrix_post(stack, pair, m_late)
    await stack.settled()
    bridge_before = len(_bridge_messages(stack, await room_history(stack.matrix, pair.matrix_room)))
    bot_before = len(bot_messages(stack.emulator, pair.teams_id))

    for delivery, marker in ((teams_edit, t_edit), (teams_late, t_late)):
        edited = await stack.emulator.edit_message(delivery.activity_id, f"edited {marker}")
        assert edited.ok, edited
    for event_id, marker in ((matrix_edit, m_edit), (matrix_late, m_late)):
        await _matrix_edit(stack, pair, event_id, f"edited {marker}")
    await stack.settled()
    for delivery in (teams_delete, teams_late):
        deleted = await stack.emulator.delete_message(delivery.activity_id)
        assert deleted.ok, deleted
    for event_id in (matrix_delete, matrix_late):
        await stack.matrix.redact(pair.matrix_room, event_id)

    gone = {posted_delete.activity_id, posted_late.activity_id}
    await teams_message(
        stack,
        pair.teams_id,
        lambda m: m.activity_id == posted_late.activity_id and m.deleted,
        what="the last delete in Teams",
    )
    redacted = {mirror_of_delete, mirror_of_late}

    async def all_redacted() -> bool:
        events = await room_history(stack.matrix, pair.matrix_room)
        return redacted <= {_redacts(e) for e in events if e.get("type") == "m.room.redaction"}

    await eventually(all_redacted, within=20, interval=0.1, what="the redactions in Matrix")
    await stack.settled()

    # Teams: the bot's activities were updated and deleted in place, none was added.
    messages = {m.activity_id: m for m in bot_messages(stack.emulator, pair.teams_id)}
    assert len(messages) == bot_before
    for posted, marker in ((posted_edit, m_edit), (posted_late, m_late)):
        assert messages[posted.activity_id].edit_count == 1, marker
    assert f"edited {m_edit}" in messages[posted_edit.activity_id].text
    assert {a for a, m in messages.items() if m.deleted} == gone

    # Matrix: each Teams edit is one m.replace by the ghost, each delete one redaction.
    events = await room_history(stack.matrix, pair.matrix_room)
    assert len(_bridge_messages(stack, events)) == bridge_before
    replaces = [e for e in events if is_edit(e)]
    by_target = {str(relation(e).get("event_id")): e for e in replaces}
    for mirror, marker in ((mirror_of_edit, t_edit), (mirror_of_late, t_late)):
        replacement = by_target[mirror]
        assert replacement["sender"] == stack.ghost_of(avery)
        assert replacement["content"]["m.new_content"]["body"] == f"edited {marker}"
    assert sum(1 for e in replaces if e["sender"] == stack.ghost_of(avery)) == 2
    ghost_redactions = [
        e
        for e in events
        if e.get("type") == "m.room.redaction" and stack.is_bridge_user(str(e.get("sender")))
    ]
    assert sorted(_redacts(e) or "" for e in ghost_redactions) == sorted(redacted)

    # The timeline: one record per edit and per delete, each delivered.
    for kind, expected in (("edit", 4), ("redaction", 4)):
        docs = await stack.timeline({"kind": kind})
        assert len(docs) == expected, (kind, [d.get("origin") for d in docs])
        statuses = [[m["status"] for m in d.get("mirrors", [])] for d in docs]
        assert statuses == [["sent"]] * expected, (kind, statuses)
