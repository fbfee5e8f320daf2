"""What each side shows: a Matrix room's whole history, the bot's Teams messages, tokens.

Every message an end-to-end test sends carries a token (``m2t-a-0007``: direction,
stream, sequence number) so each side can be counted exactly, whatever the bridge
does to the text around it (attribution, combining several lines into one Teams
activity).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote

from devtools.teams_emulator import Message, TeamsEmulator
from tests.support.matrix_user import MatrixUser

TOKEN: Final = re.compile(r"\b(?P<token>(?:m2t|t2m)-[a-z0-9]+-\d{4})\b")
HISTORY_PAGE: Final = 500


def token(direction: str, stream: str, n: int) -> str:
    """``m2t`` (Matrix to Teams) or ``t2m``; ``stream`` names the sender or room."""
    return f"{direction}-{stream}-{n:04d}"


def tokens_in(text: str) -> list[str]:
    return [m.group("token") for m in TOKEN.finditer(text)]


async def room_history(user: MatrixUser, room_id: str) -> list[dict[str, Any]]:
    """Every event of a room the user can see, oldest first."""
    events: list[dict[str, Any]] = []
    params = {"dir": "b", "limit": str(HISTORY_PAGE)}
    path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages"
    while True:
        page = await user.call("GET", path, params=params)
        chunk = page.get("chunk", [])
        events.extend(chunk)
        end = page.get("end")
        if not chunk or not isinstance(end, str):
            break
        params = {**params, "from": end}
    events.reverse()
    return events


def relation(event: Mapping[str, Any]) -> Mapping[str, Any]:
    content = event.get("content")
    relates = content.get("m.relates_to") if isinstance(content, Mapping) else None
    return relates if isinstance(relates, Mapping) else {}


def is_edit(event: Mapping[str, Any]) -> bool:
    return relation(event).get("rel_type") == "m.replace"


def new_messages(events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``m.room.message`` events that are messages of their own (not edits)."""
    return [e for e in events if e.get("type") == "m.room.message" and not is_edit(e)]


def body_of(event: Mapping[str, Any]) -> str:
    content = event.get("content")
    body = content.get("body") if isinstance(content, Mapping) else None
    return body if isinstance(body, str) else ""


def matrix_token_counts(
    events: Iterable[Mapping[str, Any]], *, senders: frozenset[str] | None = None
) -> Counter[str]:
    """How many new messages carry each token (optionally only from ``senders``)."""
    counts: Counter[str] = Counter()
    for event in new_messages(events):
        if senders is not None and event.get("sender") not in senders:
            continue
        counts.update(tokens_in(body_of(event)))
    return counts


def bot_messages(emulator: TeamsEmulator, conversation: str) -> list[Message]:
    """The bot's messages in a conversation (deleted ones included), oldest first."""
    return [m for m in emulator.messages(conversation) if m.from_bot]


def teams_token_counts(emulator: TeamsEmulator, conversation: str) -> Counter[str]:
    """How many times each token appears in the bot's live (not deleted) messages."""
    counts: Counter[str] = Counter()
    for message in bot_messages(emulator, conversation):
        if not message.deleted:
            counts.update(tokens_in(message.text))
    return counts


def teams_tokens_in_order(emulator: TeamsEmulator, conversation: str) -> list[str]:
    """Tokens of the bot's live messages, in the order Teams shows them."""
    ordered: list[str] = []
    for message in bot_messages(emulator, conversation):
        if not message.deleted:
            ordered.extend(tokens_in(message.text))
    return ordered


def duplicates(counts: Counter[str]) -> dict[str, int]:
    return {t: n for t, n in sorted(counts.items()) if n > 1}
