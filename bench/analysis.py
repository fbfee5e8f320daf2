"""From what was sent and what arrived to figures: latency, loss, duplicates, order."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bench.protocol import Arrival, Direction, LoadReport, Sent


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One direction of one load."""

    direction: Direction
    sent: int
    accepted: int
    """Answered 2xx by the bridge (stored durably, the platform will not resend)."""
    refused: int
    """Not answered 2xx by any of the platform's attempts."""
    retried: int
    """Needed more than one attempt (the platform re-sent them)."""
    arrived: int
    """Accepted messages that reached the target at least once."""
    lost: int
    """Accepted messages that had not reached the target when the load ended (lost, or
    still queued at the deadline)."""
    duplicates: int
    """Deliveries beyond the first of one message (distinct transactions or activities)."""
    order_inversions: int
    """Messages that reached their room after one the bridge received later."""
    latencies_s: tuple[float, ...]
    """Inbound request received by the bridge -> first arrival at the target."""
    acks_s: tuple[float, ...]
    """Inbound request received by the bridge -> the bridge's answer."""


def first_arrivals(arrivals: Iterable[Arrival], direction: Direction) -> dict[int, Arrival]:
    firsts: dict[int, Arrival] = {}
    for arrival in arrivals:
        if arrival.direction is direction:
            known = firsts.get(arrival.seq)
            if known is None or arrival.at < known.at:
                firsts[arrival.seq] = arrival
    return firsts


def duplicates(arrivals: Iterable[Arrival], direction: Direction) -> int:
    keys: dict[int, set[str]] = defaultdict(set)
    for arrival in arrivals:
        if arrival.direction is direction:
            keys[arrival.seq].add(arrival.key)
    return sum(len(k) - 1 for k in keys.values())


def order_inversions(
    arrivals: Iterable[Arrival], direction: Direction, order: Mapping[int, float] | None = None
) -> int:
    """In each room, messages that reached it after one that came later.

    "Later" is by ``order`` (a time per sequence number: when the bridge received
    the message) or, without it, by sequence number (the order of the backlog).
    """
    latest: dict[str, tuple[float, int]] = {}
    inversions = 0
    firsts = first_arrivals(arrivals, direction).values()
    for arrival in sorted(firsts, key=lambda a: a.at):
        received = 0.0 if order is None else order.get(arrival.seq)
        if received is None:
            continue
        rank = (received, arrival.seq)  # one request's messages are in sequence order
        top = latest.get(arrival.room_id)
        if top is not None and rank < top:
            inversions += 1
        latest[arrival.room_id] = rank if top is None else max(top, rank)
    return inversions


def outcome(
    report: LoadReport,
    direction: Direction,
    *,
    received: Mapping[int, float],
    answered: Mapping[int, float],
) -> Outcome:
    """Figures of ``direction``; ``received``/``answered`` are the bridge's stamps by sequence."""
    sent = [s for s in report.sent if s.direction is direction]
    accepted = [s for s in sent if _ok(s)]
    firsts = first_arrivals(report.arrivals, direction)
    latencies = tuple(
        firsts[s.seq].at - received[s.seq]
        for s in accepted
        if s.seq in firsts and s.seq in received
    )
    acks = tuple(answered[s.seq] - received[s.seq] for s in sent if s.seq in answered)
    arrived = sum(1 for s in accepted if s.seq in firsts)
    return Outcome(
        direction=direction,
        sent=len(sent),
        accepted=len(accepted),
        refused=len(sent) - len(accepted),
        retried=sum(1 for s in sent if s.attempts > 1),
        arrived=arrived,
        lost=len(accepted) - arrived,
        duplicates=duplicates(report.arrivals, direction),
        order_inversions=order_inversions(report.arrivals, direction, received),
        latencies_s=latencies,
        acks_s=acks,
    )


def _ok(sent: Sent) -> bool:
    return sent.status is not None and 200 <= sent.status < 300
