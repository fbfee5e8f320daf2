"""P3: drain a backlog of 6,000 outbox entries after an outage: >= 200 events/s, order kept.

The backlog is made by a bridge whose delivery never runs (the target is
unreachable, as in an outage): its intake stores the events, round-robin over
the linked rooms, each room's events in sequence. That bridge stops; a new one
(empty caches, as after a restart) starts on the same database and drains the
outbox. Measured from the moment its delivery starts: to the last arrival at
the target, and to the last entry settled in the outbox (mirror recorded, entry
done: the backlog is drained). The rate is over the latter. Per-room order is
checked on the arrivals (each room's messages must arrive in the order they
were stored).

Into Matrix (the default) the drain is the bridge's and the database's own
speed. Into Teams it is bounded by Teams: 50 calls/s per tenant and 60 per 30 s
per conversation; the bridge combines runs of plain messages into one activity
to get through.

Run: .venv/bin/python -m bench.p3_backlog [--entries 6000] [--rooms 50]
     [--direction teams->matrix|matrix->teams] [--trips] [--profile]

``--trips`` counts the drain's MongoDB round trips per event; ``--profile`` runs
cProfile over the drain too (which slows it: the rate is then not P3's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from bench.analysis import duplicates, first_arrivals, order_inversions
from bench.driver import Driver
from bench.pipeline import (
    RunningBridge,
    SettleCount,
    StoreKind,
    bridge_settings,
    fresh_mongo,
    quiet_logging,
    room_links,
    running_bridge,
)
from bench.profiling import CpuMeter, CpuUse, Profiler, RoundTrips
from bench.protocol import SERVER_NAME, Direction, Expect, Load, World, WorldSpec
from bench.scenario import WARM_UP_RATE, WARM_UP_SEQ, WARM_UP_SETTLE_S
from bench.stats import SummaryRow, machine_line, verdict
from bridge.config import Settings
from bridge.model import (
    Body,
    InboundEvent,
    Kind,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
)

RATE_TARGET: Final = 200.0
FIRST_SEQ: Final = 0
DRAIN_TIMEOUT_S: Final = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class P3Result:
    direction: Direction
    entries: int
    rooms: int
    enqueue_s: float
    first_arrival_s: float
    delivered_s: float
    """Delivery start to the last arrival at the target."""
    settled: int
    """Outbox entries settled (the backlog, plus any warm-up posts stored with it)."""
    drain_s: float
    """Delivery start to the last entry settled."""
    arrived: int
    duplicates: int
    order_inversions: int
    tenths: tuple[float, ...]
    """Events per second over each tenth of the backlog, in order."""
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.settled / self.drain_s if self.drain_s > 0 else 0.0

    @property
    def passed(self) -> bool:
        return (
            self.arrived == self.entries
            and self.drain_s > 0
            and self.duplicates == 0
            and self.order_inversions == 0
            and self.rate >= RATE_TARGET
        )

    def summary_rows(self) -> list[SummaryRow]:
        return [
            SummaryRow(
                benchmark="P3",
                figure=f"drain {self.entries:,} {self.direction.value} over {self.rooms} rooms",
                measured=(
                    f"{self.rate:.0f} events/s; missing {self.entries - self.arrived}, "
                    f"dup {self.duplicates}, order inversions {self.order_inversions}"
                ),
                target=f">= {RATE_TARGET:g}/s, 0 / 0 / 0",
                passed=self.passed,
            )
        ]


def _backlog_event(world: World, direction: Direction, seq: int, room: int) -> InboundEvent:
    """What the intake would get for message ``seq`` posted in room pair ``room``."""
    now = datetime.now(UTC)
    body = Body(text=f"bench {seq}")
    if direction is Direction.TO_MATRIX:
        channel = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(world.teams_channels[room]))
        user_id, name = world.teams_users[room % len(world.teams_users)]
        message_id = f"17{seq:011d}"
        thread = RoomRef(
            platform=Platform.TEAMS,
            room_id=RemoteRoomID(f"{channel.room_id};messageid={message_id}"),
        )
        return InboundEvent(
            kind=Kind.MESSAGE,
            origin=RemoteRef(room=thread, message_id=RemoteMessageID(message_id)),
            sender=Sender(
                platform=Platform.TEAMS, user_id=RemoteUserID(user_id), display_name=name
            ),
            occurred_at=now,
            body=body,
            parent_room=channel,
        )
    matrix_room = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(world.matrix_rooms[room]))
    user = f"@bench{room % len(world.teams_users)}:{SERVER_NAME}"
    return InboundEvent(
        kind=Kind.MESSAGE,
        origin=RemoteRef(room=matrix_room, message_id=RemoteMessageID(f"$m{seq}:{SERVER_NAME}")),
        sender=Sender(
            platform=Platform.MATRIX,
            user_id=RemoteUserID(user),
            display_name=user[1:].split(":", 1)[0].capitalize(),
        ),
        occurred_at=now,
        body=body,
    )


async def _enqueue(bridge: RunningBridge, world: World, direction: Direction, entries: int) -> None:
    """Store the backlog: every room's events in sequence, the rooms side by side."""
    rooms = len(world.teams_channels)

    async def fill(room: int) -> None:
        for seq in range(FIRST_SEQ + room, FIRST_SEQ + entries, rooms):
            await bridge.intake.accept([_backlog_event(world, direction, seq, room)])

    async with asyncio.TaskGroup() as group:
        for room in range(rooms):
            group.create_task(fill(room))


async def _make_backlog(
    driver: Driver, settings: Settings, direction: Direction, entries: int
) -> tuple[float, int]:
    """Seconds it took to store the backlog (by a bridge that never delivers), and how many
    outbox entries there are."""
    world = driver.world
    async with running_bridge(
        settings, store_kind=StoreKind.MONGODB, links=room_links(world), deliver=False
    ) as bridge:
        await driver.attach(bridge.url)
        if direction is Direction.TO_TEAMS:
            # One Teams post per channel, so the bridge holds each conversation's reference.
            rooms = len(world.teams_channels)
            await driver.load(
                Load(
                    to_matrix_rate=WARM_UP_RATE,
                    to_teams_rate=0.0,
                    seconds=rooms / WARM_UP_RATE,
                    first_seq=WARM_UP_SEQ,
                    settle_s=WARM_UP_SETTLE_S,
                    await_arrivals=False,
                )
            )
        started = time.perf_counter()
        await _enqueue(bridge, world, direction, entries)
        stored = entries + (len(world.teams_channels) if direction is Direction.TO_TEAMS else 0)
        return time.perf_counter() - started, stored


async def run(
    *,
    entries: int = 6000,
    rooms: int = 50,
    direction: Direction = Direction.TO_MATRIX,
    trips: bool = False,
    profile: bool = False,
) -> P3Result:
    print(f"P3: drain {entries:,} outbox entries ({direction.value}) over {rooms} room pairs")
    print(machine_line(), flush=True)
    hs_token, as_token = secrets.token_hex(16), secrets.token_hex(16)
    counter = RoundTrips() if trips or profile else None
    profiler = Profiler() if profile else None
    async with Driver(WorldSpec(rooms=rooms, hs_token=hs_token)) as driver:
        with fresh_mongo() as server:
            settings = bridge_settings(
                driver.world, hs_token=hs_token, as_token=as_token, mongo_uri=server.uri
            )
            enqueue_s, stored = await _make_backlog(driver, settings, direction, entries)
            print(
                f"  backlog of {stored:,} entries stored in {enqueue_s:.1f} s; "
                "a new bridge starts draining",
                flush=True,
            )
            settled = SettleCount(stored)
            async with running_bridge(
                settings,
                store_kind=StoreKind.MONGODB,
                links=room_links(driver.world),
                deliver=False,
                listeners=[counter] if counter is not None else [],
                settled=settled,
            ) as bridge:
                await driver.attach(bridge.url)
                meter = CpuMeter(load_pid=driver.pid, database_pid=server.pid)
                if profiler is not None:
                    profiler.start()
                started = time.perf_counter()
                bridge.start_delivery()
                report = await driver.expect(
                    Expect(
                        direction=direction,
                        first_seq=FIRST_SEQ,
                        count=entries,
                        timeout_s=DRAIN_TIMEOUT_S,
                    )
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(settled.reached.wait(), DRAIN_TIMEOUT_S)
                if profiler is not None:
                    profiler.stop()
                cpu = meter.stop()
    firsts = sorted(a.at for a in first_arrivals(report.arrivals, direction).values())
    result = P3Result(
        direction=direction,
        entries=entries,
        rooms=rooms,
        enqueue_s=enqueue_s,
        first_arrival_s=(firsts[0] - started) if firsts else 0.0,
        delivered_s=(firsts[-1] - started) if firsts else 0.0,
        settled=settled.count,
        drain_s=(settled.reached_at - started) if settled.reached.is_set() else 0.0,
        arrived=len(firsts),
        duplicates=duplicates(report.arrivals, direction),
        order_inversions=order_inversions(report.arrivals, direction),
        tenths=_tenths(firsts, started),
        cpu=cpu,
    )
    _print(result)
    if counter is not None:
        print(f"  MongoDB round trips per event{' (under cProfile)' if profile else ''}:")
        print(counter.table(entries))
    if profiler is not None:
        print(profiler.top())
    return result


def _tenths(arrivals: Sequence[float], started: float) -> tuple[float, ...]:
    """Events per second over each tenth of the arrivals."""
    if len(arrivals) < 10:
        return ()
    rates = []
    previous = started
    step = len(arrivals) / 10
    for n in range(1, 11):
        index = round(step * n) - 1
        count = index - round(step * (n - 1)) + 1
        rates.append(count / max(arrivals[index] - previous, 1e-9))
        previous = arrivals[index]
    return tuple(rates)


def _print(result: P3Result) -> None:
    print(
        f"  delivered {result.arrived:,} of {result.entries:,} in {result.delivered_s:.1f} s "
        f"(first after {result.first_arrival_s * 1000:.0f} ms); {result.settled:,} entries "
        f"settled in {result.drain_s:.1f} s: {result.rate:.0f} events/s"
    )
    print("  events/s by tenth of the backlog: " + " ".join(f"{r:.0f}" for r in result.tenths))
    print(
        f"  missing {result.entries - result.arrived}, duplicates {result.duplicates}, "
        f"per-room order inversions {result.order_inversions}"
    )
    print(
        f"  CPU: {result.cpu.utilisation()}; per event {result.cpu.per_message_ms(result.entries)}"
    )
    for row in result.summary_rows():
        print(f"  {verdict(passed=row.passed)} {row.figure}: {row.measured} (target {row.target})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=6000)
    parser.add_argument("--rooms", type=int, default=50, help="linked room pairs")
    parser.add_argument(
        "--direction", choices=[d.value for d in Direction], default=Direction.TO_MATRIX.value
    )
    parser.add_argument("--trips", action="store_true", help="count MongoDB round trips")
    parser.add_argument("--profile", action="store_true", help="run under cProfile (slower)")
    args = parser.parse_args()
    quiet_logging()
    asyncio.run(
        run(
            entries=args.entries,
            rooms=args.rooms,
            direction=Direction(args.direction),
            trips=args.trips,
            profile=args.profile,
        )
    )


if __name__ == "__main__":
    main()
