"""Platforms deliver more than once; the bridge stores and mirrors once (R1, R3).

R1: the homeserver retries an application-service transaction with the same txnId
(and a transaction may carry an event the bridge already has): replayed three
times, before and after a restart, it stays one timeline record and one Teams
activity. R3: Teams re-sends an activity it thinks the bot missed, after the
first was mirrored and also while the first is still being answered: one
record, one Matrix event, and every answer comes back within a second.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

from devtools.teams_emulator import Delivery, Operation
from tests.e2e.arrivals import has_body, matrix_event, teams_message
from tests.e2e.observe import token
from tests.e2e.stack import Pair, Stack
from tests.e2e.tally import mirror_statuses, tally
from tests.support.waiting import eventually

REPLAYS: Final = 3
ACK_BOUND_S: Final = 1.0
BURST_RATE: Final = 50.0
"""Teams activities per second in the acknowledgement burst."""
BURST_SIZE: Final = 100
CREATES: Final = frozenset({Operation.SEND_TO_CONVERSATION, Operation.REPLY_TO_ACTIVITY})


async def _transaction_ids(stack: Stack) -> set[str]:
    docs = stack.database["state_matrix_transactions"].find({}, {"_id": 1})
    return {str(doc["_id"]) async for doc in docs}


async def _put_transaction(stack: Stack, txn_id: str, events: list[Mapping[str, Any]]) -> int:
    """PUT a transaction to the daemon as the homeserver does."""
    hs_token = stack.servers.appservice.registration.hs_token
    url = f"{stack.daemon.base_url}/_matrix/app/v1/transactions/{quote(txn_id, safe='')}"
    async with stack.session.put(
        url, json={"events": events}, headers={"Authorization": f"Bearer {hs_token}"}
    ) as response:
        await response.read()
        return response.status


def _creates_carrying(stack: Stack, marker: str) -> int:
    """Accepted connector calls that created a message carrying ``marker``."""
    return sum(
        1
        for call in stack.emulator.connector_calls
        if call.operation in CREATES and call.accepted and marker in json.dumps(call.body)
    )


async def _assert_once_m2t(stack: Stack, pair: Pair, marker: str) -> None:
    await stack.settled()
    counts = await tally(stack, pair)
    assert counts.timeline_messages[marker] == 1, counts.timeline_messages
    assert counts.teams_by_bot[marker] == 1, counts.teams_by_bot
    assert _creates_carrying(stack, marker) == 1
    assert await mirror_statuses(stack, marker) == [["sent"]]


async def test_replayed_transactions_make_one_record_and_one_teams_activity(
    chat_stack: Stack,
) -> None:
    stack = chat_stack
    pair = stack.pairs[0]
    marker = token("m2t", "replay", 1)
    before = await _transaction_ids(stack)

    event_id = await stack.matrix.send(
        pair.matrix_room, {"msgtype": "m.text", "body": f"paging db on-call {marker}"}
    )
    await teams_message(stack, pair.teams_id, lambda m: marker in m.text, what="the message")

    async def carried() -> set[str] | None:
        return (await _transaction_ids(stack) - before) or None

    transactions = await eventually(carried, within=10, what="the transaction on record")
    event = await stack.matrix.call(
        "GET",
        f"/_matrix/client/v3/rooms/{quote(pair.matrix_room, safe='')}/event/"
        f"{quote(event_id, safe='')}",
    )
    for restarted in (False, True):
        if restarted:
            await stack.restart()
        for attempt in range(REPLAYS):
            for txn_id in sorted(transactions):
                assert await _put_transaction(stack, txn_id, [event]) == 200
            # The same event in a transaction the bridge has never seen.
            fresh = f"replay-{int(restarted)}-{attempt}"
            assert await _put_transaction(stack, fresh, [event]) == 200
        await _assert_once_m2t(stack, pair, marker)


async def test_redelivered_activities_make_one_record_and_one_matrix_event(
    chat_stack: Stack,
) -> None:
    stack = chat_stack
    pair = stack.pairs[0]
    avery, blake = stack.teams_users
    late, racing = token("t2m", "redeliver", 1), token("t2m", "redeliver", 2)

    first = await stack.emulator.post_message(pair.teams, avery, f"checkout errors {late}")
    assert first.ok, first
    await matrix_event(stack, pair.matrix_room, has_body(late), what="the first delivery")
    again = [await stack.emulator.redeliver(first) for _ in range(2)]

    # Teams re-sends while the first delivery is still being answered.
    activity, _message = stack.emulator.channel.compose_message(
        pair.teams, blake, f"checkout errors too {racing}"
    )
    together = await asyncio.gather(*(stack.emulator.deliver(activity) for _ in range(3)))

    deliveries: list[Delivery] = [first, *again, *together]
    assert all(d.ok for d in deliveries), [(d.status, d.error) for d in deliveries]
    slowest = max(d.elapsed_s for d in deliveries)
    assert slowest < ACK_BOUND_S, f"an acknowledgement took {slowest:.3f} s"
    await matrix_event(stack, pair.matrix_room, has_body(racing), what="the raced delivery")
    await stack.settled()
    counts = await tally(stack, pair)
    for marker in (late, racing):
        assert counts.matrix_by_bridge[marker] == 1, counts.matrix_by_bridge
        assert counts.timeline_messages[marker] == 1, counts.timeline_messages
        assert await mirror_statuses(stack, marker) == [["sent"]]


async def test_acknowledgements_stay_under_a_second_at_fifty_per_second(
    chat_stack: Stack,
) -> None:
    stack = chat_stack
    pair = stack.pairs[0]
    avery, _ = stack.teams_users
    started = time.monotonic()

    async def post(n: int) -> Delivery:
        await asyncio.sleep(max(0.0, started + n / BURST_RATE - time.monotonic()))
        return await stack.emulator.post_message(
            pair.teams, avery, f"burst {token('t2m', 'burst', n)}"
        )

    deliveries = await asyncio.gather(*(post(n) for n in range(BURST_SIZE)))
    assert all(d.ok for d in deliveries), [(d.status, d.error) for d in deliveries if not d.ok]
    acks = sorted(d.elapsed_s for d in deliveries)
    p50, p99 = acks[len(acks) // 2], acks[int(len(acks) * 0.99) - 1]
    print(f"e2e-measure: ack at {BURST_RATE:.0f}/s p50={p50 * 1000:.1f}ms "
          f"p99={p99 * 1000:.1f}ms max={acks[-1] * 1000:.1f}ms")  # fmt: skip
    assert acks[-1] < ACK_BOUND_S, f"the slowest acknowledgement took {acks[-1]:.3f} s"

    await stack.settled(within=60)
    counts = await tally(stack, pair)
    wanted = {token("t2m", "burst", n) for n in range(BURST_SIZE)}
    assert {t: counts.matrix_by_bridge[t] for t in wanted} == dict.fromkeys(wanted, 1)
