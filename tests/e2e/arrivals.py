"""Bounded waits for something to show up on one side of a running stack."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from devtools.teams_emulator import Message
from tests.e2e.observe import bot_messages, room_history
from tests.e2e.stack import Stack
from tests.support.waiting import eventually

ARRIVE_WITHIN_S: Final = 20.0
POLL_S: Final = 0.1

EventPredicate = Callable[[Mapping[str, Any]], bool]


async def matrix_event(
    stack: Stack,
    room_id: str,
    predicate: EventPredicate,
    *,
    what: str,
    within: float = ARRIVE_WITHIN_S,
) -> Mapping[str, Any]:
    """The first event of the room that matches, once there is one."""

    async def probe() -> Mapping[str, Any] | None:
        stack.daemon.ensure_alive()
        return next((e for e in await room_history(stack.matrix, room_id) if predicate(e)), None)

    return await eventually(probe, within=within, interval=POLL_S, what=what)


async def teams_message(
    stack: Stack,
    conversation: str,
    predicate: Callable[[Message], bool],
    *,
    what: str,
    within: float = ARRIVE_WITHIN_S,
) -> Message:
    """The first of the bot's messages in the conversation that matches, once there is one."""

    async def probe() -> Message | None:
        stack.daemon.ensure_alive()
        return next((m for m in bot_messages(stack.emulator, conversation) if predicate(m)), None)

    return await eventually(probe, within=within, interval=POLL_S, what=what)


def has_body(fragment: str) -> EventPredicate:
    """An ``m.room.message`` whose plain body contains ``fragment``."""

    def match(event: Mapping[str, Any]) -> bool:
        content = event.get("content")
        return (
            event.get("type") == "m.room.message"
            and isinstance(content, Mapping)
            and fragment in str(content.get("body", ""))
        )

    return match
