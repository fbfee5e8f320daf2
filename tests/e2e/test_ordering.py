"""Per-room order under random Teams latency, and one slow room holds back no other (R4).

Four Matrix rooms are linked to four Teams group chats. Phase A: every connector
call into Teams answers after a random delay (0-300 ms). Phase B: the same, and
every call into the last chat takes 5 s. Per-room order must hold on the Teams
side in both phases, and in phase B the other rooms' latency (Matrix send ->
message in Teams) must not include the slow room's 5 s. Phase C checks order the
other way: Teams users post into all four chats at once; each Matrix room shows
its chat's messages in order.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from datetime import UTC, datetime
from typing import Final

from tests.e2e.observe import (
    body_of,
    bot_messages,
    matrix_token_counts,
    new_messages,
    room_history,
    teams_tokens_in_order,
    token,
    tokens_in,
)
from tests.e2e.stack import Pair, Stack, StackServers, open_stack
from tests.support.waiting import eventually

ROOMS: Final = 4
PER_ROOM: Final = 30
"""Messages into each fast room per phase."""
SLOW_ROOM_MESSAGES: Final = 10
RATE_PER_ROOM: Final = 3.0
JITTER_MAX_S: Final = 0.3
SLOW_S: Final = 5.0
CONNECTOR_ACTIVITIES: Final = r"/v3/conversations/[^/]+/activities"
ARRIVE_WITHIN_S: Final = 90.0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def _arm_jitter(stack: Stack, rng: random.Random, calls: int) -> None:
    for _ in range(calls):
        stack.emulator.faults.inject(
            path=CONNECTOR_ACTIVITIES, delay_s=rng.uniform(0.0, JITTER_MAX_S), times=1
        )


async def _send_room(
    stack: Stack, pair: Pair, stream: str, count: int, sent_at: dict[str, datetime]
) -> list[str]:
    order: list[str] = []
    started = time.monotonic()
    for n in range(count):
        await asyncio.sleep(max(0.0, started + n / RATE_PER_ROOM - time.monotonic()))
        marker = token("m2t", stream, n)
        sent_at[marker] = datetime.now(UTC)
        await stack.matrix.send(pair.matrix_room, {"msgtype": "m.text", "body": marker})
        order.append(marker)
    return order


async def _phase(
    stack: Stack, name: str, counts: list[int]
) -> tuple[list[list[str]], dict[str, float]]:
    """Send ``counts[i]`` messages into room i at once; each room's order and each latency."""
    sent_at: dict[str, datetime] = {}
    orders = await asyncio.gather(
        *(
            _send_room(stack, pair, f"{name}{i}", count, sent_at)
            for i, (pair, count) in enumerate(zip(stack.pairs, counts, strict=True))
        )
    )
    wanted = [set(order) for order in orders]

    async def arrived() -> bool:
        stack.daemon.ensure_alive()
        return all(
            want <= set(teams_tokens_in_order(stack.emulator, pair.teams_id))
            for pair, want in zip(stack.pairs, wanted, strict=True)
        )

    await eventually(arrived, within=ARRIVE_WITHIN_S, interval=0.2, what=f"phase {name} in Teams")
    latency: dict[str, float] = {}
    for pair in stack.pairs:
        for message in bot_messages(stack.emulator, pair.teams_id):
            for marker in tokens_in(message.text):
                if marker in sent_at:
                    latency[marker] = (message.created_at - sent_at[marker]).total_seconds()
    return list(orders), latency


def _assert_order(stack: Stack, orders: list[list[str]], phase: str) -> None:
    for pair, order in zip(stack.pairs, orders, strict=True):
        shown = [
            t
            for t in teams_tokens_in_order(stack.emulator, pair.teams_id)
            if t.split("-")[1].startswith(phase)
        ]
        assert shown == order, f"phase {phase}: order broken in {pair.teams_id}"


async def test_order_holds_and_a_slow_room_holds_back_no_other(servers: StackServers) -> None:
    rng = random.Random(4)
    async with open_stack(servers, chats=ROOMS) as stack:
        slow = stack.pairs[-1]
        fast_markers = ("a0", "a1", "a2", "b0", "b1", "b2")

        _arm_jitter(stack, rng, calls=ROOMS * PER_ROOM)
        orders_a, latency_a = await _phase(stack, "a", [PER_ROOM] * ROOMS)
        _assert_order(stack, orders_a, "a")

        stack.emulator.faults.clear()
        stack.emulator.faults.inject(path=re.escape(slow.teams_id), delay_s=SLOW_S, times=1000)
        _arm_jitter(stack, rng, calls=ROOMS * PER_ROOM)
        counts = [PER_ROOM] * (ROOMS - 1) + [SLOW_ROOM_MESSAGES]
        orders_b, latency_b = await _phase(stack, "b", counts)
        _assert_order(stack, orders_b, "b")
        stack.emulator.faults.clear()

        others_a = [v for k, v in latency_a.items() if k.split("-")[1] in fast_markers]
        others_b = [v for k, v in latency_b.items() if k.split("-")[1] in fast_markers]
        slowest = max(v for k, v in latency_b.items() if k.split("-")[1] == f"b{ROOMS - 1}")
        print(
            "e2e-measure: other rooms' latency Matrix->Teams "
            f"without a slow room p50={_percentile(others_a, 0.5) * 1000:.0f}ms "
            f"p99={_percentile(others_a, 0.99) * 1000:.0f}ms; "
            f"with one room {SLOW_S:.0f} s slow p50={_percentile(others_b, 0.5) * 1000:.0f}ms "
            f"p99={_percentile(others_b, 0.99) * 1000:.0f}ms; slow room max={slowest:.1f}s"
        )
        assert slowest >= SLOW_S  # the fault did hold that room
        assert _percentile(others_b, 0.99) < SLOW_S / 2, "the slow room held the others back"

        await _teams_to_matrix_order(stack)


async def _teams_to_matrix_order(stack: Stack) -> None:
    async def post_all(index: int, pair: Pair) -> list[str]:
        order = []
        for n in range(PER_ROOM):
            marker = token("t2m", f"c{index}", n)
            delivery = await stack.emulator.post_message(
                pair.teams, stack.teams_users[n % 2], marker
            )
            assert delivery.ok, delivery
            order.append(marker)
        return order

    orders = await asyncio.gather(*(post_all(i, p) for i, p in enumerate(stack.pairs)))

    async def arrived() -> bool:
        for pair, order in zip(stack.pairs, orders, strict=True):
            counts = matrix_token_counts(await room_history(stack.matrix, pair.matrix_room))
            if any(counts[m] < 1 for m in order):
                return False
        return True

    await eventually(arrived, within=ARRIVE_WITHIN_S, interval=0.3, what="phase c in Matrix")
    for pair, order in zip(stack.pairs, orders, strict=True):
        events = new_messages(await room_history(stack.matrix, pair.matrix_room))
        shown = [t for e in events for t in tokens_in(body_of(e)) if t.startswith("t2m")]
        assert shown == order, f"order broken in {pair.matrix_room}"
