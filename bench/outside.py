"""The load process: Teams, a Matrix homeserver and the people posting, on loopback.

Runs in its own process (``bench.driver`` starts it), so the bridge's event loop
carries only the bridge. It builds the world (``WorldSpec``), reports where it
listens (``World``), then serves requests from the benchmark process: post a
load and report what was sent and what arrived, or wait for a backlog to arrive.

Requests are built before the clock starts (activities composed, bodies
serialised); Teams posts carry one channel token minted for the run (Teams, too,
reuses a token for its lifetime) instead of a fresh signature per post.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from bench.homeserver import SEQUENCE, FakeHomeserver
from bench.protocol import (
    APP_ID,
    APP_PASSWORD,
    SEQ_HEADER,
    SERVER_NAME,
    TENANT_ID,
    Ack,
    Arrival,
    Attach,
    Direction,
    Expect,
    Load,
    LoadReport,
    Pacing,
    Request,
    Sent,
    Stop,
    World,
    WorldSpec,
)
from bridge.logs import configure_logging
from devtools.teams_emulator import (
    CallRecord,
    Conversation,
    Operation,
    RateLimitPolicy,
    TeamsEmulator,
    User,
)

CREATES: Final = frozenset(
    {Operation.SEND_TO_CONVERSATION, Operation.REPLY_TO_ACTIVITY, Operation.CREATE_CONVERSATION}
)
REQUEST_TIMEOUT_S: Final = 60.0
START_DELAY_S: Final = 0.2
"""Between building the plan and the first request."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Planned:
    at: float
    seq: int
    direction: Direction
    room: int
    body: bytes = b""
    """A Teams activity, serialised."""
    event: dict[str, Any] | None = None
    """A Matrix room event, for the next transaction."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """How a platform re-sends what the bridge did not take."""

    timeout_s: float
    attempts: int
    pause_s: float
    """After an error answer; doubled each time, up to ``pause_cap_s``."""
    pause_cap_s: float = 60.0


TEAMS_RETRY: Final = Retry(timeout_s=15.0, attempts=3, pause_s=1.0)
"""Teams waits about 15 s for the bot's answer and sends an activity up to three times."""
MATRIX_RETRY: Final = Retry(timeout_s=60.0, attempts=1000, pause_s=2.0)
"""Synapse waits 60 s for an AS to answer a transaction and retries it with a doubling
pause until it is taken (bounded here by the load's deadline)."""
MAX_TRANSACTION_EVENTS: Final = 100
"""Synapse puts at most 100 events in one AS transaction."""


def _loop_time(monotonic: float) -> float:
    """A ``time.monotonic()`` instant on the event loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic - time.monotonic())


def _sent(
    item: _Planned, sent_at: float, answered_at: float, status: int | None, attempts: int
) -> Sent:
    return Sent(
        seq=item.seq,
        direction=item.direction,
        room=item.room,
        sent_at=sent_at,
        answered_at=answered_at,
        status=status,
        attempts=attempts,
    )


class Outside:
    """The world of one benchmark run; see the module docstring."""

    def __init__(
        self,
        spec: WorldSpec,
        emulator: TeamsEmulator,
        homeserver: FakeHomeserver,
        session: aiohttp.ClientSession,
    ) -> None:
        self._spec = spec
        self._emulator = emulator
        self._homeserver = homeserver
        self._session = session
        self._users: list[User] = [emulator.add_user(f"Bench User {n}") for n in range(spec.users)]
        self._channels: list[Conversation] = [
            emulator.add_channel("Bench", f"Room {n}", members=self._users)
            for n in range(spec.rooms)
        ]
        self._matrix_rooms = [f"!bench{n}:{SERVER_NAME}" for n in range(spec.rooms)]
        self._bridge_url = ""
        self._token = ""
        self._seen: set[tuple[Direction, int]] = set()
        self._matrix_read = 0
        self._calls_read = 0

    def world(self) -> World:
        emulator = self._emulator
        return World(
            openid_metadata_url=emulator.openid_metadata_url,
            token_authority=emulator.token_authority,
            service_host=urlsplit(emulator.service_url).netloc,
            homeserver_url=self._homeserver.url,
            teams_channels=tuple(c.conversation_id for c in self._channels),
            matrix_rooms=tuple(self._matrix_rooms),
            teams_users=tuple((u.aad_object_id, u.name) for u in self._users),
        )

    def attach(self, request: Attach) -> Ack:
        self._bridge_url = request.bridge_url
        self._emulator.bot_endpoint = f"{request.bridge_url}/api/messages"
        self._token = self._emulator.mint_token()
        return Ack()

    # -- posting -------------------------------------------------------------------

    def _plan(self, load: Load) -> list[_Planned]:
        times: list[tuple[float, Direction]] = []
        for direction, rate in (
            (Direction.TO_MATRIX, load.to_matrix_rate),
            (Direction.TO_TEAMS, load.to_teams_rate),
        ):
            if rate > 0:
                count = max(1, round(rate * load.seconds))
                times += [(n / rate, direction) for n in range(count)]
        times.sort(key=lambda item: item[0])
        per_direction = {Direction.TO_MATRIX: 0, Direction.TO_TEAMS: 0}
        plan = []
        for offset, (at, direction) in enumerate(times):
            room = per_direction[direction] % self._spec.rooms
            per_direction[direction] += 1
            plan.append(self._request(at, load.first_seq + offset, direction, room))
        return plan

    def _request(self, at: float, seq: int, direction: Direction, room: int) -> _Planned:
        text = f"bench {seq}"
        if direction is Direction.TO_MATRIX:
            user = self._users[room % len(self._users)]
            activity, _ = self._emulator.channel.compose_message(self._channels[room], user, text)
            return _Planned(
                at=at, seq=seq, direction=direction, room=room, body=json.dumps(activity).encode()
            )
        event = {
            "type": "m.room.message",
            "room_id": self._matrix_rooms[room],
            "sender": f"@bench{room % self._spec.users}:{SERVER_NAME}",
            "event_id": f"$m{seq}:{SERVER_NAME}",
            "origin_server_ts": int(datetime.now(UTC).timestamp() * 1000),
            "content": {"msgtype": "m.text", "body": text},
        }
        return _Planned(at=at, seq=seq, direction=direction, room=room, event=event)

    async def _call(
        self, method: str, url: str, body: bytes, headers: dict[str, str], retry: Retry
    ) -> tuple[float, float, int | None, int]:
        """(first sent, finally answered, final status or None, attempts), retrying as the
        platform does: again after no answer in time, or after an error answer."""
        sent_at = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=retry.timeout_s)
        status: int | None = None
        attempt = 0
        for attempt in range(1, retry.attempts + 1):
            try:
                async with self._session.request(
                    method, url, data=body, headers=headers, timeout=timeout
                ) as response:
                    await response.read()
                    status = response.status
            except TimeoutError:
                status = None
                continue  # the wait for the answer was the pause
            except aiohttp.ClientError:
                status = None
            if status is not None and 200 <= status < 300:
                break
            if attempt < retry.attempts:
                pause = min(retry.pause_cap_s, retry.pause_s * 2 ** min(attempt - 1, 16))
                await asyncio.sleep(pause)  # the platform's backoff
        return sent_at, time.monotonic(), status, attempt

    async def _post_activity(self, item: _Planned, sent: list[Sent]) -> None:
        """Teams delivers each activity in its own request, as it happens."""
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Authorization": f"Bearer {self._token}",
            SEQ_HEADER: str(item.seq),
        }
        url = f"{self._bridge_url}/api/messages"
        sent_at, answered_at, status, attempts = await self._call(
            "POST", url, item.body, headers, TEAMS_RETRY
        )
        sent.append(_sent(item, sent_at, answered_at, status, attempts))

    async def _push_transactions(
        self, queue: asyncio.Queue[_Planned | None], sent: list[Sent]
    ) -> None:
        """A homeserver has one transaction in flight per application service, and retries
        it until it is taken: events that happen meanwhile wait for the next one."""
        done = False
        while not done:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < MAX_TRANSACTION_EVENTS:
                batch.append(queue.get_nowait())
            done = batch[-1] is None
            items = [item for item in batch if item is not None]
            if not items:
                continue
            body = json.dumps({"events": [item.event for item in items]}).encode()
            headers = {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self._spec.hs_token}",
                SEQ_HEADER: ",".join(str(item.seq) for item in items),
            }
            url = f"{self._bridge_url}/_matrix/app/v1/transactions/bench-{items[0].seq}"
            sent_at, answered_at, status, attempts = await self._call(
                "PUT", url, body, headers, MATRIX_RETRY
            )
            sent.extend(_sent(item, sent_at, answered_at, status, attempts) for item in items)

    async def load(self, load: Load) -> LoadReport:
        """Post the plan, then wait for arrivals; everything ends by the load's deadline
        (``seconds + settle_s``): what is still unanswered then counts as not taken."""
        plan = self._plan(load)
        sent: list[Sent] = []
        transactions: asyncio.Queue[_Planned | None] = asyncio.Queue()
        start = time.monotonic() + START_DELAY_S
        deadline = start + load.seconds + load.settle_s
        try:
            async with asyncio.timeout_at(_loop_time(deadline)), asyncio.TaskGroup() as group:
                group.create_task(self._push_transactions(transactions, sent))
                for item in plan:
                    delay = start + item.at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)  # the schedule itself: an open-loop load
                    if item.direction is Direction.TO_MATRIX:
                        group.create_task(self._post_activity(item, sent))
                    else:
                        transactions.put_nowait(item)
                transactions.put_nowait(None)
        except TimeoutError:
            answered = {s.seq for s in sent}
            now = time.monotonic()
            sent += [_sent(item, now, now, None, 0) for item in plan if item.seq not in answered]
        expected = {
            (s.direction, s.seq) for s in sent if s.status is not None and 200 <= s.status < 300
        }
        remaining = max(0.0, deadline - time.monotonic()) if load.await_arrivals else 0.0
        complete = await self._wait_for(expected, remaining)
        last = load.first_seq + len(plan)
        return self._report(tuple(sent), load.first_seq, last, complete=complete)

    async def expect(self, request: Expect) -> LoadReport:
        last = request.first_seq + request.count
        expected = {(request.direction, seq) for seq in range(request.first_seq, last)}
        complete = await self._wait_for(expected, request.timeout_s)
        return self._report((), request.first_seq, last, complete=complete)

    # -- arrivals ------------------------------------------------------------------

    def _matrix_arrivals(self) -> Iterator[Arrival]:
        for arrival in self._homeserver.arrivals:
            yield Arrival(
                seq=arrival.seq,
                direction=Direction.TO_MATRIX,
                room_id=arrival.matrix_room_id,
                key=arrival.txn_id,
                at=arrival.at,
            )

    def _teams_arrivals(self, records: Sequence[CallRecord]) -> Iterator[Arrival]:
        for record in records:
            if record.operation not in CREATES or record.status not in (200, 201):
                continue
            body = record.body if isinstance(record.body, dict) else {}
            inner = body.get("activity")
            text = str((inner if isinstance(inner, dict) else body).get("text", ""))
            response = record.response if isinstance(record.response, dict) else {}
            for match in SEQUENCE.finditer(text):
                yield Arrival(
                    seq=int(match.group(1)),
                    direction=Direction.TO_TEAMS,
                    room_id=str(record.conversation_id or ""),
                    key=str(response.get("id", record.seq)),
                    at=record.monotonic,
                )

    def _arrived(self) -> set[tuple[Direction, int]]:
        """What has arrived so far; only records new since the last look are read."""
        matrix = self._homeserver.arrivals
        self._seen.update((Direction.TO_MATRIX, a.seq) for a in matrix[self._matrix_read :])
        self._matrix_read = len(matrix)
        calls = self._emulator.calls
        finished = self._calls_read
        while finished < len(calls) and calls[finished].status is not None:
            finished += 1
        arrivals = self._teams_arrivals(calls[self._calls_read : finished])
        self._seen.update((a.direction, a.seq) for a in arrivals)
        self._calls_read = finished
        return self._seen

    async def _wait_for(self, expected: set[tuple[Direction, int]], timeout_s: float) -> bool:
        """Whether everything expected arrived within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while not expected <= self._arrived():
                    await self._next_arrival()
        except TimeoutError:
            return False
        return True

    async def _next_arrival(self) -> None:
        """Return when the homeserver or the connector has served one more request."""
        finished = sum(1 for r in self._emulator.calls if r.status is not None)
        waiters = {
            asyncio.ensure_future(self._homeserver.changed()),
            asyncio.ensure_future(
                self._emulator.wait_for_calls(
                    finished + 1, where=lambda _: True, timeout_s=REQUEST_TIMEOUT_S
                )
            ),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    def _report(
        self, sent: tuple[Sent, ...], first: int, last: int, *, complete: bool
    ) -> LoadReport:
        every = (*self._matrix_arrivals(), *self._teams_arrivals(self._emulator.calls))
        arrivals = tuple(a for a in every if first <= a.seq < last)
        return LoadReport(
            sent=sent,
            arrivals=arrivals,
            pacing=self._pacing(),
            complete=complete,
            matrix_retried_transactions=self._homeserver.retried_transactions,
        )

    def _pacing(self) -> Pacing:
        emulator = self._emulator
        calls = emulator.connector_calls
        return Pacing(
            connector_calls=len(calls),
            violations=tuple(
                f"{v.scope.value} {v.key}: over {v.window.label} ({v.method} {v.path})"
                for v in emulator.violations
            ),
            rate_limited_calls=sum(1 for r in calls if r.rate_limited),
            peak_tenant_1s=emulator.peak_calls(1.0, bucket=None),
            peak_conversation_1s=max(
                (emulator.peak_calls(1.0, conversation=c) for c in self._channels), default=0
            ),
            peak_conversation_30s=max(
                (emulator.peak_calls(30.0, conversation=c) for c in self._channels), default=0
            ),
        )


async def _receive(connection: Connection) -> Request:
    request: Request = await asyncio.to_thread(connection.recv)
    return request


async def serve(connection: Connection, spec: WorldSpec) -> None:
    """Build the world, report it, then answer requests until ``Stop``."""
    policy = RateLimitPolicy() if spec.teams_rate_limits else RateLimitPolicy.off()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with (
        TeamsEmulator(APP_ID, APP_PASSWORD, TENANT_ID, rate_limits=policy) as emulator,
        FakeHomeserver(server_name=SERVER_NAME) as homeserver,
        aiohttp.ClientSession(timeout=timeout) as session,
    ):
        outside = Outside(spec, emulator, homeserver, session)
        connection.send(outside.world())
        while True:
            request = await _receive(connection)
            if isinstance(request, Stop):
                connection.send(Ack())
                return
            if isinstance(request, Attach):
                connection.send(outside.attach(request))
            elif isinstance(request, Load):
                connection.send(await outside.load(request))
            else:
                connection.send(await outside.expect(request))


def main(connection: Connection, spec: WorldSpec) -> None:
    """Entry point of the load process."""
    configure_logging(fmt="console", level="warning")
    try:
        asyncio.run(serve(connection, spec))
    finally:
        connection.close()
