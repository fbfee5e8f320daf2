"""P1: bridge-internal latency per hop at 20 msg/s, durable write included, beside a bare relay.

A hop is "inbound request received" (a middleware stamp in the bridge's web
application, before the body is read) to "outbound call made" (the stamp of the
target's handler when the bridge's call arrives: the fake homeserver for the
Matrix direction, the Teams emulator's connector for the Teams direction; both
in the load process, over loopback). Messages go round-robin over the linked
rooms at a constant rate (open loop). Each direction is measured twice in the
same run: with the MongoDB stores on a fresh SecantusDB (the durable pipeline),
and with the in-memory stores (the bare relay); the ratio is printed.

Targets (on the durable pipeline): p50 <= 3 ms, p99 <= 15 ms.

Run: .venv/bin/python -m bench.p1_latency [--seconds 30] [--rate 20] [--rooms 20]
     [--direction teams->matrix|matrix->teams|both] [--trips] [--profile]

``--trips`` adds a run of the durable pipeline per direction that counts MongoDB
round trips per message; ``--profile`` runs cProfile over it too (slower).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from bench.analysis import Outcome, outcome
from bench.pipeline import StoreKind, quiet_logging
from bench.profiling import CpuUse
from bench.protocol import Direction, Load
from bench.scenario import Measured, measure_load
from bench.stats import Percentiles, SummaryRow, machine_line, percentiles, ratio, verdict

P50_TARGET_MS: Final = 3.0
P99_TARGET_MS: Final = 15.0
FIRST_SEQ: Final = 1
SETTLE_S: Final = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HopRow:
    direction: Direction
    store: StoreKind
    hop: Percentiles
    ack: Percentiles
    outcome: Outcome
    cpu: CpuUse

    def line(self) -> str:
        o = self.outcome
        return (
            f"  {self.direction.value:<14} {self.store.value:<8} hop {self.hop}\n"
            f"  {'':<23} ack {self.ack}\n"
            f"  {'':<23} lost {o.lost}, duplicates {o.duplicates}, refused {o.refused}, "
            f"re-sent {o.retried}; "
            f"CPU per message: {self.cpu.per_message_ms(o.sent)}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class P1Result:
    rate: float
    rows: tuple[HopRow, ...]

    def durable(self) -> list[HopRow]:
        return [r for r in self.rows if r.store is StoreKind.MONGODB]

    def bare(self, direction: Direction) -> HopRow | None:
        return next(
            (r for r in self.rows if r.store is StoreKind.MEMORY and r.direction is direction),
            None,
        )

    def summary_rows(self) -> list[SummaryRow]:
        rows = []
        for row in self.durable():
            bare = self.bare(row.direction)
            versus = (
                f" ({ratio(row.hop.p50_ms, bare.hop.p50_ms)} / "
                f"{ratio(row.hop.p99_ms, bare.hop.p99_ms)} bare)"
                if bare is not None
                else ""
            )
            rows.append(
                SummaryRow(
                    benchmark="P1",
                    figure=f"hop {row.direction.value} at {self.rate:g} msg/s, p50 / p99",
                    measured=f"{row.hop.p50_ms:.1f} / {row.hop.p99_ms:.1f} ms{versus}",
                    target=f"<= {P50_TARGET_MS:g} / <= {P99_TARGET_MS:g} ms",
                    passed=row.hop.p50_ms <= P50_TARGET_MS
                    and row.hop.p99_ms <= P99_TARGET_MS
                    and row.outcome.lost == 0,
                )
            )
        return rows


def _row(direction: Direction, store: StoreKind, measured: Measured) -> HopRow:
    result = outcome(
        measured.report,
        direction,
        received=measured.stamps.received,
        answered=measured.stamps.answered,
    )
    return HopRow(
        direction=direction,
        store=store,
        hop=percentiles(result.latencies_s),
        ack=percentiles(result.acks_s),
        outcome=result,
        cpu=measured.cpu,
    )


def _load(direction: Direction, rate: float, seconds: float) -> Load:
    return Load(
        to_matrix_rate=rate if direction is Direction.TO_MATRIX else 0.0,
        to_teams_rate=rate if direction is Direction.TO_TEAMS else 0.0,
        seconds=seconds,
        first_seq=FIRST_SEQ,
        settle_s=SETTLE_S,
    )


async def run(
    *,
    seconds: float = 30.0,
    rate: float = 20.0,
    rooms: int = 20,
    directions: Sequence[Direction] = (Direction.TO_MATRIX, Direction.TO_TEAMS),
    trips: bool = False,
    profile: bool = False,
) -> P1Result:
    print(f"P1: latency per hop at {rate:g} msg/s over {rooms} room pairs, {seconds:g} s each")
    print(machine_line(), flush=True)
    rows = []
    for direction in directions:
        for store in (StoreKind.MEMORY, StoreKind.MONGODB):
            measured = await measure_load(
                store_kind=store, rooms=rooms, load=_load(direction, rate, seconds)
            )
            row = _row(direction, store, measured)
            rows.append(row)
            print(row.line(), flush=True)
    result = P1Result(rate=rate, rows=tuple(rows))
    for row in result.durable():
        bare = result.bare(row.direction)
        if bare is not None:
            print(
                f"  {row.direction.value}: durable / bare = "
                f"p50 {ratio(row.hop.p50_ms, bare.hop.p50_ms)}"
                f", p95 {ratio(row.hop.p95_ms, bare.hop.p95_ms)}"
                f", p99 {ratio(row.hop.p99_ms, bare.hop.p99_ms)}"
            )
    for summary in result.summary_rows():
        print(
            f"  {verdict(passed=summary.passed)} {summary.figure}: {summary.measured} "
            f"(target {summary.target})"
        )
    if trips or profile:
        for direction in directions:
            await _insight(direction, rate=rate, seconds=seconds, rooms=rooms, profile=profile)
    return result


async def _insight(
    direction: Direction, *, rate: float, seconds: float, rooms: int, profile: bool
) -> None:
    """A separate run of the durable pipeline counting round trips (and profiling)."""
    measured = await measure_load(
        store_kind=StoreKind.MONGODB,
        rooms=rooms,
        load=_load(direction, rate, seconds),
        trips=True,
        profile=profile,
    )
    messages = sum(1 for s in measured.report.sent if s.direction is direction)
    hop = _row(direction, StoreKind.MONGODB, measured).hop
    print(
        f"\nP1 where the time goes, {direction.value}, durable pipeline ({messages} messages"
        f"{'; slowed by cProfile' if profile else ''}): hop {hop}"
    )
    print(f"  CPU per message: {measured.cpu.per_message_ms(messages)}")
    if measured.round_trips is not None:
        print("  MongoDB round trips per message:")
        print(measured.round_trips.table(messages))
    if measured.profile is not None:
        print(measured.profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=30.0, help="per measured run")
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second")
    parser.add_argument("--rooms", type=int, default=20, help="linked room pairs")
    parser.add_argument(
        "--direction", choices=[d.value for d in Direction] + ["both"], default="both"
    )
    parser.add_argument("--trips", action="store_true", help="add a run counting round trips")
    parser.add_argument("--profile", action="store_true", help="add a run under cProfile")
    args = parser.parse_args()
    directions = list(Direction) if args.direction == "both" else [Direction(args.direction)]
    quiet_logging()
    asyncio.run(
        run(
            seconds=args.seconds,
            rate=args.rate,
            rooms=args.rooms,
            directions=directions,
            trips=args.trips,
            profile=args.profile,
        )
    )


if __name__ == "__main__":
    main()
