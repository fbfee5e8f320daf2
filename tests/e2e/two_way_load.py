"""Steady traffic both ways in every linked pair, and the verdict on it: each message once
on the other side, in the order it was sent.

Pair ``i`` gets Matrix messages ``m2t-<stream><i>-NNNN`` and Teams messages
``t2m-<stream><i>-NNNN`` at ``rate`` per second each way (the Teams ones half a period
later). Hooks run after each send (to trigger a fault at a given message, or to deliver
a Teams activity again). The verdict follows the platforms' rules: the homeserver sends
every transaction again until the bridge acknowledges it, so every Matrix message is
owed to Teams exactly once; Teams never sends again an activity whose delivery failed,
so only the acknowledged ones are owed to Matrix, exactly once, and an unacknowledged
one that was stored anyway (the answer follows the durable write) is mirrored exactly
when it is in the timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from devtools.teams_emulator import Delivery
from tests.e2e.observe import (
    body_of,
    duplicates,
    new_messages,
    room_history,
    teams_tokens_in_order,
    token,
    tokens_in,
)
from tests.e2e.stack import Stack
from tests.e2e.tally import tally, timeline_message_counts
from tests.support.waiting import eventually

AfterMatrix = Callable[[int, int], Awaitable[None]]
"""Called with the pair's index and the message's number after each Matrix message."""
AfterTeams = Callable[[int, int, Delivery], Awaitable[None]]
"""Called with the pair's index, the message's number and its delivery after each post."""
STORED_POLL_S: Final = 0.5
MAX_MESSAGES: Final = 10_000
"""Tokens number messages with four digits."""


class TwoWayLoad:
    """Messages both ways in every pair of ``stack``: ``count`` each way per pair, or
    until ``stop`` is set (see the module documentation)."""

    def __init__(
        self,
        stack: Stack,
        *,
        stream: str,
        rate: float,
        count: int | None = None,
        after_matrix: AfterMatrix | None = None,
        after_teams: AfterTeams | None = None,
    ) -> None:
        self._stack = stack
        self.stream = stream
        self._rate = rate
        self._count = count
        self._after_matrix = after_matrix
        self._after_teams = after_teams
        self.matrix_sent: list[list[str]] = [[] for _ in stack.pairs]
        """Per pair, the Matrix messages' tokens in the order sent."""
        self.teams_sent: list[list[tuple[str, Delivery]]] = [[] for _ in stack.pairs]
        """Per pair, each Teams message's token and its first delivery, in order."""
        self.redeliveries: list[tuple[str, Delivery]] = []
        """Deliveries of an activity again (recorded by ``redelivered``)."""

    def prefix(self, direction: str, pair: int) -> str:
        return f"{direction}-{self.stream}{pair}-"

    def redelivered(self, marker: str, delivery: Delivery) -> None:
        self.redeliveries.append((marker, delivery))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        if self._count is None and stop is None:
            raise ValueError("give a count or a stop event")
        started = time.monotonic() + 0.2
        async with asyncio.TaskGroup() as group:
            for index in range(len(self._stack.pairs)):
                group.create_task(self._matrix(index, started, stop))
                group.create_task(self._teams(index, started, stop))

    def _numbers(self) -> range:
        return range(self._count if self._count is not None else MAX_MESSAGES)

    async def _pace(self, at: float, stop: asyncio.Event | None) -> bool:
        """Wait until ``at`` (monotonic); False when ``stop`` was set first."""
        delay = max(0.0, at - time.monotonic())
        if stop is None:
            await asyncio.sleep(delay)
            return True
        if not stop.is_set() and delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return not stop.is_set()

    async def _matrix(self, index: int, started: float, stop: asyncio.Event | None) -> None:
        room = self._stack.pairs[index].matrix_room
        for n in self._numbers():
            if not await self._pace(started + n / self._rate, stop):
                return
            marker = token("m2t", f"{self.stream}{index}", n)
            await self._stack.matrix.send(room, {"msgtype": "m.text", "body": marker})
            self.matrix_sent[index].append(marker)
            if self._after_matrix is not None:
                await self._after_matrix(index, n)

    async def _teams(self, index: int, started: float, stop: asyncio.Event | None) -> None:
        conversation = self._stack.pairs[index].teams
        for n in self._numbers():
            if not await self._pace(started + (n + 0.5) / self._rate, stop):
                return
            marker = token("t2m", f"{self.stream}{index}", n)
            user = self._stack.teams_users[n % 2]
            delivery = await self._stack.emulator.post_message(conversation, user, marker)
            self.teams_sent[index].append((marker, delivery))
            if self._after_teams is not None:
                await self._after_teams(index, n, delivery)

    # -- what was acknowledged ------------------------------------------------------
    def acknowledged(self) -> set[str]:
        """Teams messages some delivery of which got a 2xx."""
        firsts = {m for sent in self.teams_sent for m, d in sent if d.ok}
        return firsts | {m for m, d in self.redeliveries if d.ok}

    def deliveries(self) -> list[Delivery]:
        return [d for sent in self.teams_sent for _, d in sent] + [d for _, d in self.redeliveries]


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What the load came to, once delivery settled (the assertions have passed)."""

    m2t: int
    t2m: int
    t2m_unacknowledged: int
    t2m_unacknowledged_stored: int
    max_teams_ack_s: float
    """The slowest acknowledged Teams delivery (through whatever was in front)."""


async def assert_once_and_in_order(
    stack: Stack, load: TwoWayLoad, *, within: float, context: str
) -> Verdict:
    """Wait until every Matrix message is stored and delivery settled; then assert that
    each message is on the other side once (see the module documentation) and that each
    room shows its messages in the order sent."""
    acknowledged = load.acknowledged()

    async def all_matrix_messages_stored() -> bool:
        stack.ensure_alive()
        for index, pair in enumerate(stack.pairs):
            stored = await timeline_message_counts(stack, pair)
            if any(stored[m] < 1 for m in load.matrix_sent[index]):
                return False
        return True

    await eventually(
        all_matrix_messages_stored,
        within=within,
        interval=STORED_POLL_S,
        what=f"every Matrix message in the timeline ({context})",
    )
    await stack.settled(within=within)
    unacknowledged_stored = 0
    for index, pair in enumerate(stack.pairs):
        counts = await tally(stack, pair)
        where = f"pair {index} ({context})"
        assert duplicates(counts.timeline_messages) == {}, f"timeline duplicates in {where}"
        assert duplicates(counts.teams_by_bot) == {}, f"Teams duplicates in {where}"
        assert duplicates(counts.matrix_by_bridge) == {}, f"Matrix duplicates in {where}"
        assert counts.misplaced() == {k: [] for k in counts.misplaced()}, where
        m2t = load.matrix_sent[index]
        missing_in_teams = [m for m in m2t if counts.teams_by_bot[m] != 1]
        assert missing_in_teams == [], f"Matrix messages missing in Teams, {where}"
        t2m = [m for m, _ in load.teams_sent[index]]
        missing = [
            m
            for m in t2m
            if m in acknowledged
            and (counts.timeline_messages[m] != 1 or counts.matrix_by_bridge[m] != 1)
        ]
        assert missing == [], f"acknowledged Teams messages missing in Matrix, {where}"
        unacknowledged = [m for m in t2m if m not in acknowledged]
        inconsistent = [
            m for m in unacknowledged if counts.timeline_messages[m] != counts.matrix_by_bridge[m]
        ]
        assert inconsistent == [], f"stored but not mirrored, or mirrored unstored, {where}"
        unacknowledged_stored += sum(1 for m in unacknowledged if counts.timeline_messages[m])
        await _assert_order(stack, load, index, where)
    acks = [d.elapsed_s for d in load.deliveries() if d.ok]
    return Verdict(
        m2t=sum(len(s) for s in load.matrix_sent),
        t2m=sum(len(s) for s in load.teams_sent),
        t2m_unacknowledged=sum(
            1 for sent in load.teams_sent for m, _ in sent if m not in acknowledged
        ),
        t2m_unacknowledged_stored=unacknowledged_stored,
        max_teams_ack_s=max(acks, default=0.0),
    )


async def _assert_order(stack: Stack, load: TwoWayLoad, index: int, where: str) -> None:
    pair = stack.pairs[index]
    in_teams = [
        t
        for t in teams_tokens_in_order(stack.emulator, pair.teams_id)
        if t.startswith(f"m2t-{load.stream}")
    ]
    assert in_teams == load.matrix_sent[index], f"order in Teams broken, {where}"
    events = new_messages(await room_history(stack.matrix, pair.matrix_room))
    in_matrix = [
        t
        for e in events
        if stack.is_bridge_user(str(e.get("sender")))
        for t in tokens_in(body_of(e))
        if t.startswith(f"t2m-{load.stream}")
    ]
    shown = set(in_matrix)
    expected = [m for m, _ in load.teams_sent[index] if m in shown]
    assert in_matrix == expected, f"order in Matrix broken, {where}"
