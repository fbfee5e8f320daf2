"""P2: 200 msg/s across 50 rooms for 60 s: no loss, no duplicates, p99 <= 100 ms, Teams paced.

The load is open loop at a constant total rate, round-robin over the linked room
pairs, in both directions at once: Teams posts to the bridge's messaging
endpoint mirrored into Matrix (the fake homeserver), and Matrix messages in AS
transactions mirrored into Teams (the emulator's connector, Teams' documented
rate limits on). The Teams-bound share defaults to 40 msg/s: Teams allows a bot
50 calls/s per tenant and 60 per 30 s (2/s sustained) per conversation, so 200
msg/s into 50 Teams conversations (4/s each) cannot be delivered one message
per call within 100 ms; the bridge would have to pace and combine them.

Latency is end to end inside the bridge: inbound request received (middleware
stamp) to the bridge's call received by the target. The platforms re-send what
the bridge does not take in time (Teams: 15 s, three attempts; Synapse: 60 s,
at most 100 events per transaction, one transaction in flight, retried with
backoff). Undelivered: a message the bridge answered 2xx that had not reached
its target when the load ended (``--seconds`` + ``--settle``): lost, or still
queued. Refused: never answered 2xx. Duplicates: a message delivered under two
transaction ids (Matrix) or in two activities (Teams). Pacing: the emulator's
list of rate-limit violations must stay empty.

Run: .venv/bin/python -m bench.p2_throughput [--seconds 60] [--rate 200]
     [--teams-rate 40] [--rooms 50] [--store mongodb|memory] [--trips] [--profile]

``--trips`` counts MongoDB round trips per message during the run; ``--profile``
runs cProfile over it too (which slows the bridge: the figures are then not P2's).
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from typing import Final

from bench.analysis import Outcome, outcome
from bench.pipeline import StoreKind, quiet_logging
from bench.profiling import CpuUse
from bench.protocol import Direction, Load, Pacing
from bench.scenario import Measured, measure_load
from bench.stats import Percentiles, SummaryRow, machine_line, percentiles, verdict

P99_TARGET_MS: Final = 100.0
FIRST_SEQ: Final = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class P2Result:
    rate: float
    rooms: int
    seconds: float
    store: StoreKind
    outcomes: tuple[Outcome, ...]
    overall: Percentiles
    pacing: Pacing
    cpu: CpuUse
    delivered_per_s: float
    """Arrivals per second from the first request to the last arrival."""
    drained_after_s: float
    """From the last message's first request to the last arrival."""

    @property
    def lost(self) -> int:
        return sum(o.lost for o in self.outcomes)

    @property
    def duplicates(self) -> int:
        return sum(o.duplicates for o in self.outcomes)

    @property
    def refused(self) -> int:
        return sum(o.refused for o in self.outcomes)

    @property
    def paced(self) -> bool:
        return not self.pacing.violations and self.pacing.rate_limited_calls == 0

    def summary_rows(self) -> list[SummaryRow]:
        label = f"{self.rate:g} msg/s, {self.rooms} rooms, {self.seconds:g} s"
        if self.store is StoreKind.MEMORY:
            label += " (bare relay)"
        return [
            SummaryRow(
                benchmark="P2",
                figure=f"{label}: undelivered / duplicates / refused",
                measured=f"{self.lost} / {self.duplicates} / {self.refused}",
                target="0 / 0 / 0",
                passed=self.lost == 0 and self.duplicates == 0 and self.refused == 0,
            ),
            SummaryRow(
                benchmark="P2",
                figure=f"{label}: end-to-end p99",
                measured=f"{self.overall.p99_ms:.1f} ms (p50 {self.overall.p50_ms:.1f})",
                target=f"<= {P99_TARGET_MS:g} ms",
                passed=self.overall.p99_ms <= P99_TARGET_MS,
            ),
            SummaryRow(
                benchmark="P2",
                figure=f"{label}: Teams limit violations",
                measured=str(len(self.pacing.violations) + self.pacing.rate_limited_calls),
                target="0",
                passed=self.paced,
            ),
        ]


def _result(
    measured: Measured, *, rate: float, rooms: int, seconds: float, store: StoreKind
) -> P2Result:
    report = measured.report
    stamps = measured.stamps
    outcomes = tuple(
        outcome(report, d, received=stamps.received, answered=stamps.answered)
        for d in Direction
        if any(s.direction is d for s in report.sent)
    )
    latencies = [t for o in outcomes for t in o.latencies_s]
    made = [s for s in report.sent if s.attempts > 0] or list(report.sent)
    first_sent = min(s.sent_at for s in made)
    last_sent = max(s.sent_at for s in made)
    last_arrival = max((a.at for a in report.arrivals), default=last_sent)
    arrived = sum(o.arrived for o in outcomes)
    return P2Result(
        rate=rate,
        rooms=rooms,
        seconds=seconds,
        store=store,
        outcomes=outcomes,
        overall=percentiles(latencies),
        pacing=report.pacing,
        cpu=measured.cpu,
        delivered_per_s=arrived / max(last_arrival - first_sent, 1e-9),
        drained_after_s=max(0.0, last_arrival - last_sent),
    )


def _print(result: P2Result) -> None:
    for o in result.outcomes:
        print(
            f"  {o.direction.value:<14} sent {o.sent}, accepted {o.accepted} "
            f"({o.retried} after a re-send), refused {o.refused}, "
            f"arrived {o.arrived}, undelivered at the end {o.lost}, duplicates {o.duplicates}, "
            f"order inversions {o.order_inversions}"
        )
        if len(o.latencies_s) >= 2:
            print(f"  {'':<14} end to end {percentiles(o.latencies_s)}")
        if len(o.acks_s) >= 2:
            print(f"  {'':<14} ack        {percentiles(o.acks_s)}")
    print(f"  all            end to end {result.overall}")
    print(
        f"  delivered {result.delivered_per_s:.0f} msg/s; last arrival "
        f"{result.drained_after_s:.1f} s after the last request"
    )
    pacing = result.pacing
    print(
        f"  Teams connector: {pacing.connector_calls} calls, violations "
        f"{len(pacing.violations)}, 429s {pacing.rate_limited_calls}, peak per tenant "
        f"{pacing.peak_tenant_1s}/1 s, peak per conversation {pacing.peak_conversation_1s}/1 s "
        f"and {pacing.peak_conversation_30s}/30 s"
    )
    for violation in pacing.violations[:10]:
        print(f"    {violation}")
    messages = sum(o.sent for o in result.outcomes)
    print(f"  CPU: {result.cpu.utilisation()}; per message {result.cpu.per_message_ms(messages)}")
    for row in result.summary_rows():
        print(f"  {verdict(passed=row.passed)} {row.figure}: {row.measured} (target {row.target})")


async def run(
    *,
    seconds: float = 60.0,
    rate: float = 200.0,
    teams_rate: float = 40.0,
    rooms: int = 50,
    store: StoreKind = StoreKind.MONGODB,
    settle_s: float = 120.0,
    trips: bool = False,
    profile: bool = False,
) -> P2Result:
    teams_rate = min(teams_rate, rate)
    print(
        f"P2: {rate:g} msg/s ({rate - teams_rate:g} teams->matrix, {teams_rate:g} matrix->teams) "
        f"across {rooms} room pairs for {seconds:g} s, {store.value} stores"
    )
    print(machine_line(), flush=True)
    load = Load(
        to_matrix_rate=rate - teams_rate,
        to_teams_rate=teams_rate,
        seconds=seconds,
        first_seq=FIRST_SEQ,
        settle_s=settle_s,
    )
    measured = await measure_load(
        store_kind=store, rooms=rooms, load=load, trips=trips, profile=profile
    )
    result = _result(measured, rate=rate, rooms=rooms, seconds=seconds, store=store)
    _print(result)
    messages = sum(o.sent for o in result.outcomes)
    if measured.round_trips is not None:
        print(f"  MongoDB round trips per message{' (under cProfile)' if profile else ''}:")
        print(measured.round_trips.table(messages))
    if measured.profile is not None:
        print(measured.profile)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second in all")
    parser.add_argument("--teams-rate", type=float, default=40.0, help="of which into Teams")
    parser.add_argument("--rooms", type=int, default=50, help="linked room pairs")
    parser.add_argument("--store", choices=[k.value for k in StoreKind], default="mongodb")
    parser.add_argument("--settle", type=float, default=120.0, help="wait for stragglers, s")
    parser.add_argument("--trips", action="store_true", help="count MongoDB round trips")
    parser.add_argument("--profile", action="store_true", help="run under cProfile (slower)")
    args = parser.parse_args()
    quiet_logging()
    asyncio.run(
        run(
            seconds=args.seconds,
            rate=args.rate,
            teams_rate=args.teams_rate,
            rooms=args.rooms,
            store=StoreKind(args.store),
            settle_s=args.settle,
            trips=args.trips,
            profile=args.profile,
        )
    )


if __name__ == "__main__":
    main()
