"""Two room pairs bridged both ways for a minute: nothing comes back (R8).

People talk on both sides of two linked pairs at once; the bridge's own posts
(ghosts and bot in Matrix, the bot in Teams) are seen by the platforms and must
never be bridged again. Every message is counted on both sides and in the
timeline: each exactly once where it belongs, none anywhere else.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from devtools.teams_emulator import Delivery
from tests.e2e.observe import room_history, tokens_in
from tests.e2e.stack import Pair, Stack, StackServers, open_stack
from tests.e2e.tally import Tally, tally

EXCHANGE_S: Final = 60.0
"""How long both sides keep talking (the bar asks for minutes; 60-120 s here)."""
INTERVAL_S: Final = 1.0
"""Each person's pace: one message a second on each side of each pair."""
SETTLE_S: Final = 60.0


async def _talk_matrix(stack: Stack, pair: Pair, stream: str, started: float) -> list[str]:
    sent: list[str] = []
    for n in range(int(EXCHANGE_S / INTERVAL_S)):
        await asyncio.sleep(max(0.0, started + n * INTERVAL_S - time.monotonic()))
        marker = f"m2t-{stream}-{n:04d}"
        await stack.matrix.send(pair.matrix_room, {"msgtype": "m.text", "body": f"mx {marker}"})
        sent.append(marker)
    return sent


async def _talk_teams(
    stack: Stack, pair: Pair, stream: str, started: float
) -> list[tuple[str, Delivery]]:
    sent: list[tuple[str, Delivery]] = []
    offset = INTERVAL_S / 2  # interleaved with the Matrix side
    for n in range(int(EXCHANGE_S / INTERVAL_S)):
        await asyncio.sleep(max(0.0, started + offset + n * INTERVAL_S - time.monotonic()))
        marker = f"t2m-{stream}-{n:04d}"
        user = stack.teams_users[n % 2]
        sent.append((marker, await stack.emulator.post_message(pair.teams, user, f"tm {marker}")))
    return sent


def _assert_exact(counts: Tally, m2t: set[str], t2m: set[str]) -> None:
    assert dict(counts.teams_by_bot) == dict.fromkeys(m2t, 1), "Teams side"
    assert dict(counts.matrix_by_bridge) == dict.fromkeys(t2m, 1), "Matrix side (bridge posts)"
    assert dict(counts.matrix_by_people) == dict.fromkeys(m2t, 1), "Matrix side (people)"
    assert dict(counts.timeline_messages) == dict.fromkeys(m2t | t2m, 1), "timeline"


async def test_a_minute_of_two_way_traffic_is_never_bridged_back(
    servers: StackServers,
) -> None:
    async with open_stack(servers, chats=2) as stack:
        started = time.monotonic() + 0.5
        streams = ("a", "b")
        async with asyncio.TaskGroup() as group:
            matrix_tasks = [
                group.create_task(_talk_matrix(stack, pair, s, started))
                for pair, s in zip(stack.pairs, streams, strict=True)
            ]
            teams_tasks = [
                group.create_task(_talk_teams(stack, pair, s, started))
                for pair, s in zip(stack.pairs, streams, strict=True)
            ]
        for task in teams_tasks:
            refused = [(m, d.status, d.error) for m, d in task.result() if not d.ok]
            assert refused == [], refused
        await stack.settled(within=SETTLE_S)

        for pair, matrix_task, teams_task in zip(
            stack.pairs, matrix_tasks, teams_tasks, strict=True
        ):
            m2t = set(matrix_task.result())
            t2m = {marker for marker, _ in teams_task.result()}
            _assert_exact(await tally(stack, pair), m2t, t2m)
            lines = [m for m in stack.emulator.messages(pair.teams_id) if m.from_bot]
            assert all("<i>(Matrix)</i>" in m.text for m in lines)
            assert not any("<i>(Teams)</i>" in m.text for m in lines)
            events = await room_history(stack.matrix, pair.matrix_room)
            others = {t for e in events for t in tokens_in(str(e.get("content", {})))}
            assert others <= m2t | t2m, "a message of the other pair leaked in"

        echoes = [
            doc for doc in await stack.timeline({}) if _bridge_sender(stack, doc.get("sender", {}))
        ]
        assert echoes == [], "records of the bridge's own posts"


def _bridge_sender(stack: Stack, sender: dict[str, str]) -> bool:
    user = sender.get("user_id", "")
    if sender.get("platform") == "matrix":
        return stack.is_bridge_user(user)
    if sender.get("platform") == "teams":
        return user in (stack.emulator.bot.account_id, stack.emulator.app_id)
    return False
