"""Counting every token on both sides and in the timeline, to check "once, and only there"."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.e2e.observe import (
    body_of,
    new_messages,
    room_history,
    teams_token_counts,
    tokens_in,
)
from tests.e2e.stack import Pair, Stack


@dataclass(frozen=True, slots=True, kw_only=True)
class Tally:
    """Token counts of one linked pair."""

    matrix_by_bridge: Counter[str]
    """New Matrix messages posted by the bridge (its bot or a ghost)."""
    matrix_by_people: Counter[str]
    """New Matrix messages posted by real Matrix users."""
    teams_by_bot: Counter[str]
    """Live messages of the bot in the Teams conversation (one per line of a combined one)."""
    timeline_messages: Counter[str]
    """Message records in the bridge's timeline whose origin is in this pair."""

    def misplaced(self) -> dict[str, list[str]]:
        """Tokens on a side they must never reach: the bridge echoing itself back."""
        return {
            "Teams-sent tokens posted into Teams by the bot": sorted(
                t for t in self.teams_by_bot if t.startswith("t2m")
            ),
            "Matrix-sent tokens posted into Matrix by the bridge": sorted(
                t for t in self.matrix_by_bridge if t.startswith("m2t")
            ),
        }


def _count(texts: Iterable[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokens_in(text))
    return counts


async def timeline_message_counts(stack: Stack, pair: Pair) -> Counter[str]:
    """Tokens of message records whose origin is the pair's Matrix room or Teams side."""
    docs = await stack.timeline({"kind": "message"})
    return _count(str(doc.get("body", {}).get("text", "")) for doc in docs if _in_pair(doc, pair))


def _in_pair(doc: Mapping[str, Any], pair: Pair) -> bool:
    room = str(doc.get("origin", {}).get("room_id", ""))
    return room == pair.matrix_room or room.split(";messageid=", maxsplit=1)[0] == pair.teams_id


async def mirror_statuses(stack: Stack, token: str) -> list[list[str]]:
    """For each message record carrying ``token``: the delivery status of each of its mirrors."""
    docs = await stack.timeline({"kind": "message"})
    return [
        [str(m.get("status")) for m in doc.get("mirrors", [])]
        for doc in docs
        if token in tokens_in(str(doc.get("body", {}).get("text", "")))
    ]


async def tally(stack: Stack, pair: Pair) -> Tally:
    events = new_messages(await room_history(stack.matrix, pair.matrix_room))
    by_bridge = [e for e in events if stack.is_bridge_user(str(e.get("sender")))]
    by_people = [e for e in events if not stack.is_bridge_user(str(e.get("sender")))]
    return Tally(
        matrix_by_bridge=_count(body_of(e) for e in by_bridge),
        matrix_by_people=_count(body_of(e) for e in by_people),
        teams_by_bot=teams_token_counts(stack.emulator, pair.teams_id),
        timeline_messages=await timeline_message_counts(stack, pair),
    )
