"""The soak's traffic: steady messages both ways, some edited or reacted to, runbook commands,
and now and then a new Teams user joining the chats.

Both streams are open loop at a constant rate, round-robin over the room pairs: a
slow answer delays nothing that follows (each post is its own task), up to
``MAX_IN_FLIGHT`` per stream. Teams posts go to the bridge as the emulator delivers
them (signed activities); Matrix messages are sent by the operator through Synapse,
which hands them to the bridge in application-service transactions. Every message
carries a token (``t2m-000042``) so each side can be counted exactly. Every
``edit_every``-th message of each room is edited and every ``react_every``-th one
reacted to (other messages), ``FOLLOW_UP_S`` after it was accepted. Every
``runbook_every`` seconds an operator commands ``!runbook run`` in one of the rooms,
from Teams and from Matrix in turn.

``Ledger`` is what was sent and how each side answered; client errors (a request
that failed or was refused) are counted by kind, never raised.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from bench.soak_matrix import MatrixError, token
from bench.soak_stack import RUNBOOK, SoakStack
from devtools.teams_emulator import User

MAX_IN_FLIGHT: Final = 200
FOLLOW_UP_S: Final = 2.0
"""From a message being accepted to its edit or reaction."""
EDITED: Final = " (edited)"
MATRIX_REACTION: Final = "👍"
TEAMS_REACTION: Final = "like"
RUNBOOK_COMMAND: Final = f"!runbook run {RUNBOOK} lines=3"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficOptions:
    to_matrix_rate: float
    """Teams posts per second."""
    to_teams_rate: float
    """Matrix messages per second."""
    edit_every: int
    react_every: int
    runbook_every_s: float
    newcomer_every_s: float
    """0: the Teams senders stay the same."""


@dataclass(slots=True)
class Ledger:
    """What the soak sent and how it was taken (filled in as the traffic runs)."""

    t2m_sent: int = 0
    t2m_accepted: set[str] = field(default_factory=set)
    """Tokens the bridge answered 2xx."""
    t2m_refused: Counter[str] = field(default_factory=Counter)
    """Teams posts the bridge did not take, by status."""
    m2t_sent: int = 0
    m2t_accepted: set[str] = field(default_factory=set)
    """Tokens Synapse took (the bridge gets them in transactions, retried until taken)."""
    t2m_edited: set[str] = field(default_factory=set)
    m2t_edited: set[str] = field(default_factory=set)
    t2m_reacted: set[str] = field(default_factory=set)
    m2t_reacted: set[str] = field(default_factory=set)
    runs_asked: int = 0
    newcomers: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    """Client-side failures by kind (a post or send that failed)."""


class Traffic:
    """See the module docstring."""

    def __init__(self, stack: SoakStack, options: TrafficOptions, ledger: Ledger) -> None:
        self._stack = stack
        self._options = options
        self._ledger = ledger
        self._senders: list[User] = list(stack.teams_users)
        self._limits = {
            "t2m": asyncio.Semaphore(MAX_IN_FLIGHT),
            "m2t": asyncio.Semaphore(MAX_IN_FLIGHT),
        }

    async def run(self, seconds: float) -> None:
        """Send for ``seconds``; return once every request made has been answered."""
        start = time.monotonic()
        deadline = start + seconds
        async with asyncio.TaskGroup() as group:
            for direction, rate in (
                ("t2m", self._options.to_matrix_rate),
                ("m2t", self._options.to_teams_rate),
            ):
                if rate > 0:
                    group.create_task(self._stream(direction, rate, start, deadline, group))
            if self._options.runbook_every_s > 0:
                group.create_task(self._runbooks(start, deadline))
            if self._options.newcomer_every_s > 0:
                group.create_task(self._newcomers(start, deadline))

    async def _stream(
        self, direction: str, rate: float, start: float, deadline: float, group: asyncio.TaskGroup
    ) -> None:
        n = 0
        while (at := start + n / rate) < deadline:
            await _sleep_until(at)  # the schedule itself: an open-loop load
            n += 1
            await self._limits[direction].acquire()
            post = self._teams_post(n) if direction == "t2m" else self._matrix_message(n)
            group.create_task(self._released(direction, post))

    async def _released(self, direction: str, post: Coroutine[Any, Any, None]) -> None:
        try:
            await post
        finally:
            self._limits[direction].release()

    async def _teams_post(self, n: int) -> None:
        pair = self._stack.pairs[n % len(self._stack.pairs)]
        senders = self._senders
        sender = senders[(n // len(self._stack.pairs)) % len(senders)]
        text = f"soak {token('t2m', n)}"
        emulator = self._stack.emulator
        self._ledger.t2m_sent += 1
        try:
            delivery = await emulator.post_message(pair.teams, sender, text)
            if not delivery.ok:
                self._ledger.t2m_refused[str(delivery.status)] += 1
                return
            self._ledger.t2m_accepted.add(token("t2m", n))
            activity_id = delivery.activity_id
            if self._edited(n):
                await asyncio.sleep(FOLLOW_UP_S)  # a person edits a little later
                edited = await emulator.edit_message(activity_id, text + EDITED)
                self._count(edited.ok, "teams edit", token("t2m", n), self._ledger.t2m_edited)
            if self._reacted(n):
                await asyncio.sleep(FOLLOW_UP_S)
                reactor = senders[0] if sender != senders[0] else senders[1]
                reacted = await emulator.react(activity_id, reactor, TEAMS_REACTION)
                self._count(reacted.ok, "teams reaction", token("t2m", n), self._ledger.t2m_reacted)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._ledger.errors[f"teams post: {type(exc).__name__}"] += 1

    async def _matrix_message(self, n: int) -> None:
        pair = self._stack.pairs[n % len(self._stack.pairs)]
        matrix = self._stack.matrix
        text = f"soak {token('m2t', n)}"
        self._ledger.m2t_sent += 1
        try:
            event_id = await matrix.say(pair.matrix_room, text)
            self._ledger.m2t_accepted.add(token("m2t", n))
            if self._edited(n):
                await asyncio.sleep(FOLLOW_UP_S)
                await matrix.edit(pair.matrix_room, event_id, text + EDITED)
                self._ledger.m2t_edited.add(token("m2t", n))
            if self._reacted(n):
                await asyncio.sleep(FOLLOW_UP_S)
                await matrix.react(pair.matrix_room, event_id, MATRIX_REACTION)
                self._ledger.m2t_reacted.add(token("m2t", n))
        except (aiohttp.ClientError, TimeoutError, MatrixError) as exc:
            self._ledger.errors[f"matrix send: {type(exc).__name__}"] += 1

    def _edited(self, n: int) -> bool:
        """Every ``edit_every``-th message of each room (whatever the number of rooms)."""
        return (n // len(self._stack.pairs)) % self._options.edit_every == 0

    def _reacted(self, n: int) -> bool:
        """Every ``react_every``-th message of each room, half a period after the edits."""
        every = self._options.react_every
        return (n // len(self._stack.pairs)) % every == every // 2

    def _count(self, ok: bool, what: str, sent: str, into: set[str]) -> None:  # noqa: FBT001
        if ok:
            into.add(sent)
        else:
            self._ledger.errors[f"{what} refused"] += 1

    async def _runbooks(self, start: float, deadline: float) -> None:
        """A run every ``runbook_every_s``, the first half an interval in."""
        every = self._options.runbook_every_s
        k = 0
        while (at := start + every / 2 + k * every) < deadline:
            await _sleep_until(at)
            await self._command_run(k)
            k += 1

    async def _command_run(self, k: int) -> None:
        """Even runs are commanded from Teams, odd ones from Matrix."""
        pair = self._stack.pairs[k % len(self._stack.pairs)]
        try:
            if k % 2 == 0:
                delivery = await self._stack.emulator.post_message(
                    pair.teams, self._stack.teams_users[0], RUNBOOK_COMMAND, mention_bot=True
                )
                if not delivery.ok:
                    self._ledger.errors[f"runbook command refused ({delivery.status})"] += 1
                    return
            else:
                await self._stack.matrix.say(pair.matrix_room, RUNBOOK_COMMAND)
            self._ledger.runs_asked += 1
        except (aiohttp.ClientError, TimeoutError, MatrixError) as exc:
            self._ledger.errors[f"runbook command: {type(exc).__name__}"] += 1

    async def _newcomers(self, start: float, deadline: float) -> None:
        """A new Teams user joins every chat and starts posting among the others."""
        every = self._options.newcomer_every_s
        k = 1
        while (at := start + k * every) < deadline:
            await _sleep_until(at)
            emulator = self._stack.emulator
            user = emulator.add_user(f"Soak Newcomer {k}")
            try:
                for pair in self._stack.pairs:
                    added = await emulator.add_members(pair.teams, [user])
                    if not added.ok:
                        self._ledger.errors[f"member added refused ({added.status})"] += 1
                self._senders.append(user)
                self._ledger.newcomers += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._ledger.errors[f"member added: {type(exc).__name__}"] += 1
            k += 1


async def _sleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
