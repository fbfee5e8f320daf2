"""The homeserver is unreachable for the bridge for two minutes, then back (R6).

The bridge reaches Synapse through a ``TcpGate`` (its ``matrix.homeserver_url`` is
the gate's), and the test closes the gate: every connection the bridge opens is
refused and those it had are cut, while Synapse itself keeps running and still
reaches the bridge (transactions do not pass the gate). Teams users keep chatting:
their messages are stored and wait in the Matrix room's outbox, whose head is retried
with capped exponential backoff with jitter; Matrix users keep chatting too, and
their messages keep reaching Teams. ``/readyz`` stays 200 throughout (a replica out of
its Service would turn Teams messages away) and its advisory report says the homeserver
is gone within one health check, and back within one after the gate opens. Then every
Teams message is in Matrix once, in the order it was sent.

The retry schedule is read from the head event's mirror in the timeline: each failed
attempt records ``attempts``, ``updated_at`` and ``not_before``, so the delay the bridge
chose and the time it actually tried again are both on record. The backoff keeps its
defaults (``delivery.retry_base_s`` 1 s, ``delivery.retry_cap_s`` 60 s), so a two-minute
outage reaches the cap.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import yaml

from adapters.matrix.adapter import HEALTH_INTERVAL_S
from bridge.relay.delivery import DeliverySettings
from tests.e2e.observe import duplicates, room_history, teams_token_counts, token, tokens_in
from tests.e2e.readiness_watch import ReadinessWatch
from tests.e2e.stack import Pair, Stack
from tests.e2e.tally import tally
from tests.support.tcp_gate import TcpGate
from tests.support.waiting import eventually

OUTAGE_S: Final = 120.0
LEAD_S: Final = 5.0
TAIL_S: Final = 5.0
TEAMS_RATE: Final = 2.0
"""Teams messages per second (two users taking turns)."""
MATRIX_RATE: Final = 1.0
BACKOFF: Final = DeliverySettings()
READINESS_WITHIN_S: Final = HEALTH_INTERVAL_S + 10.0
"""One health check of the homeserver, plus the client's own retries of it."""
MS: Final = 0.002
"""Stored times are cut to the millisecond."""
RETRY_LATE_BY_S: Final = 10.0
"""A retry starts at most one outbox poll after it is due, and takes the client's own
few retries (about 2 s) before it is recorded."""
M2T_DURING_OUTAGE_WITHIN_S: Final = 10.0
DELIVERED_AFTER_DUE_S: Final = 60.0
POLL_S: Final = 0.25


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryRecord:
    """One failed delivery attempt, as the head event's mirror recorded it."""

    event_id: str
    attempts: int
    updated_at: datetime
    not_before: datetime
    error: str

    @property
    def delay_s(self) -> float:
        return (self.not_before - self.updated_at).total_seconds()


def _nominal_delay(attempts: int) -> float:
    """The delay before jitter after ``attempts`` failed attempts (see ``backoff_delay``)."""
    return min(BACKOFF.backoff_cap_s, BACKOFF.backoff_base_s * 2.0 ** (attempts - 1))


async def _route_homeserver_through(stack: Stack, gate: TcpGate) -> None:
    """Point the daemon's ``matrix.homeserver_url`` at the gate and restart it."""
    settings: dict[str, Any] = yaml.safe_load(stack.daemon.config.read_text())
    settings["matrix"]["homeserver_url"] = gate.url
    stack.daemon.config.write_text(yaml.safe_dump(settings, sort_keys=False))
    await stack.restart()


async def _retrying_mirrors(stack: Stack, room_key: str) -> list[RetryRecord]:
    query = {"mirrors": {"$elemMatch": {"room_key": room_key, "status": "retrying"}}}
    records: list[RetryRecord] = []
    async for doc in stack.database["timeline"].find(query, {"mirrors": 1}):
        records.extend(
            RetryRecord(
                event_id=str(doc["_id"]),
                attempts=int(mirror["attempts"]),
                updated_at=mirror["updated_at"],
                not_before=mirror["not_before"],
                error=str(mirror.get("error")),
            )
            for mirror in doc["mirrors"]
            if mirror["room_key"] == room_key and mirror["status"] == "retrying"
        )
    return records


async def _watch_retries(
    stack: Stack, room_key: str, seen: dict[tuple[str, int], RetryRecord]
) -> None:
    """Keep every distinct failed attempt of the room's mirrors until cancelled."""
    while True:
        for record in await _retrying_mirrors(stack, room_key):
            seen.setdefault((record.event_id, record.attempts), record)
        await asyncio.sleep(POLL_S)


async def _delivered_at(stack: Stack, event_id: str, room_key: str) -> Mapping[str, Any]:
    doc = await stack.database["timeline"].find_one({"_id": event_id})
    assert doc is not None
    return next(m for m in doc["mirrors"] if m["room_key"] == room_key)


def _t2m_in_matrix_order(events: list[dict[str, Any]], stack: Stack) -> list[str]:
    ordered: list[str] = []
    for event in events:
        content = event.get("content")
        if (
            event.get("type") == "m.room.message"
            and stack.is_bridge_user(str(event.get("sender")))
            and isinstance(content, Mapping)
            and "m.relates_to" not in content
        ):
            ordered.extend(t for t in tokens_in(str(content.get("body", ""))) if t[:3] == "t2m")
    return ordered


async def _warm_up(stack: Stack, pair: Pair) -> None:
    """Both Teams users and the Matrix user speak once, so ghosts and names are known."""
    for n, user in enumerate(stack.teams_users):
        delivery = await stack.emulator.post_message(pair.teams, user, token("t2m", "warm", n))
        assert delivery.ok, delivery.status
    await stack.matrix.send(
        pair.matrix_room, {"msgtype": "m.text", "body": token("m2t", "warm", 0)}
    )
    await stack.settled()


async def test_homeserver_unreachable_for_minutes_loses_duplicates_and_reorders_nothing(
    chat_stack: Stack,
) -> None:
    stack = chat_stack
    pair = stack.pairs[0]
    matrix_key = f"matrix|{pair.matrix_room}"
    async with TcpGate(stack.servers.synapse.port) as gate:
        await _route_homeserver_through(stack, gate)
        await _warm_up(stack, pair)

        traffic_done = asyncio.Event()
        marks: dict[str, float] = {}
        m2t_in_teams_at_open: dict[str, int] = {}
        retries: dict[tuple[str, int], RetryRecord] = {}
        started = time.monotonic() + 0.2

        async def teams_traffic() -> list[str]:
            sent: list[str] = []
            for n in itertools.count():
                await asyncio.sleep(max(0.0, started + n / TEAMS_RATE - time.monotonic()))
                if traffic_done.is_set():
                    return sent
                marker = token("t2m", "hs", n)
                user = stack.teams_users[n % 2]
                delivery = await stack.emulator.post_message(pair.teams, user, marker)
                assert delivery.ok, (marker, delivery.status, delivery.error)
                sent.append(marker)
            raise AssertionError("unreachable")

        async def matrix_traffic() -> list[tuple[str, float]]:
            sent: list[tuple[str, float]] = []
            for n in itertools.count():
                await asyncio.sleep(max(0.0, started + (n + 0.5) / MATRIX_RATE - time.monotonic()))
                if traffic_done.is_set():
                    return sent
                marker = token("m2t", "hs", n)
                await stack.matrix.send(pair.matrix_room, {"msgtype": "m.text", "body": marker})
                sent.append((marker, time.monotonic()))
            raise AssertionError("unreachable")

        async def outage() -> None:
            await asyncio.sleep(max(0.0, started + LEAD_S - time.monotonic()))
            await gate.close()
            marks["closed"] = time.monotonic()
            await asyncio.sleep(OUTAGE_S)
            m2t_in_teams_at_open.update(teams_token_counts(stack.emulator, pair.teams_id))
            await gate.open()
            marks["opened"] = time.monotonic()
            await asyncio.sleep(TAIL_S)
            traffic_done.set()

        async with ReadinessWatch(stack.session, stack.daemon.base_url) as readiness:
            async with asyncio.TaskGroup() as watchers:
                watcher = watchers.create_task(_watch_retries(stack, matrix_key, retries))
                async with asyncio.timeout(LEAD_S + OUTAGE_S + TAIL_S + 60):
                    async with asyncio.TaskGroup() as group:
                        teams_task = group.create_task(teams_traffic())
                        matrix_task = group.create_task(matrix_traffic())
                        group.create_task(outage())
                closed, opened = marks["closed"], marks["opened"]
                # The head of the Matrix room's queue waits for its next retry: delivery
                # resumes then, so the bound on recovery is read from the timeline.
                pending = await _retrying_mirrors(stack, matrix_key)
                now = datetime.now(UTC)
                due_in = max([(r.not_before - now).total_seconds() for r in pending], default=0.0)
                t2m = teams_task.result()

                async def all_in_matrix() -> bool:
                    stack.daemon.ensure_alive()
                    counts = await tally(stack, pair)
                    return all(counts.matrix_by_bridge[m] >= 1 for m in t2m)

                await eventually(
                    all_in_matrix,
                    within=max(0.0, due_in) + DELIVERED_AFTER_DUE_S,
                    interval=0.5,
                    what="every Teams message in Matrix",
                )
                recovered = time.monotonic()
                watcher.cancel()
            not_ready = await readiness.wait_for_advisory(
                "homeserver", ok=False, after=closed, within=READINESS_WITHIN_S
            )
            ready_again = await readiness.wait_for_advisory(
                "homeserver", ok=True, after=opened, within=READINESS_WITHIN_S
            )
            samples = readiness.samples
        await stack.settled()

    m2t = matrix_task.result()
    counts = await tally(stack, pair)
    history = await room_history(stack.matrix, pair.matrix_room)
    attempts = sorted(retries.values(), key=lambda r: (r.event_id, r.attempts))
    head = attempts[0].event_id if attempts else ""
    schedule = [r for r in attempts if r.event_id == head]
    success = await _delivered_at(stack, head, matrix_key) if head else {}
    delays = [r.delay_s for r in schedule]
    gaps = [(b.updated_at - a.updated_at).total_seconds() for a, b in itertools.pairwise(schedule)]
    jitter = [r.delay_s / _nominal_delay(r.attempts) for r in schedule]
    reconnected = gate.accepted_since(opened)
    sent_during = [m for m, at in m2t if closed <= at <= opened - M2T_DURING_OUTAGE_WITHIN_S]
    print(
        f"e2e-measure: homeserver outage: gate closed {opened - closed:.1f} s; "
        f"{len(t2m)} Teams and {len(m2t)} Matrix messages; readiness stayed true, the "
        f"homeserver reported unreachable {not_ready.at - closed:.1f} s after the gate "
        f"closed ({not_ready.advisory}), reachable again "
        f"{ready_again.at - opened:.1f} s after it opened; retry delays "
        f"{[round(d, 2) for d in delays]} s (jitter factors {[round(j, 2) for j in jitter]}), "
        f"attempts {[round(g, 1) for g in gaps]} s apart, the last one failed "
        f"{(schedule[-1].updated_at - schedule[0].updated_at).total_seconds():.1f} s after the "
        f"first; first connection through the gate {reconnected[0].accepted_at - opened:.1f} s "
        f"after it opened; the head delivered on attempt {success.get('attempts')}, every "
        f"Teams message in Matrix {recovered - opened:.1f} s after the gate opened"
    )

    # The homeserver's state is reported; readiness (Teams keeps being taken) is not lost.
    assert not_ready.advisory["homeserver"] != "ok", not_ready
    assert all(s.ready for s in samples if closed <= s.at < opened), [
        s for s in samples if closed <= s.at < opened and not s.ready
    ]
    # Retries: capped exponential backoff with jitter, never early, one after another.
    assert len(schedule) >= 5, schedule
    assert [r.attempts for r in schedule] == list(range(1, len(schedule) + 1)), schedule
    for record in schedule:
        nominal = _nominal_delay(record.attempts)
        assert (
            0.5 * nominal - MS <= record.delay_s <= min(1.5 * nominal, BACKOFF.backoff_cap_s) + MS
        )
    assert all(d <= BACKOFF.backoff_cap_s for d in delays)
    assert all(later > earlier for earlier, later in zip(delays, delays[2:], strict=False))
    assert delays[-1] > delays[0]
    assert max(jitter) - min(jitter) >= 0.05, jitter
    for record, gap in zip(schedule, gaps, strict=False):
        assert record.delay_s - MS <= gap <= record.delay_s + RETRY_LATE_BY_S, (record, gap)
    assert success.get("status") == "sent"
    # Matrix messages kept reaching Teams while the homeserver was out of the bridge's reach.
    assert [m for m in sent_during if m2t_in_teams_at_open.get(m) != 1] == []
    # Nothing lost, nothing twice, nothing out of order.
    assert duplicates(counts.timeline_messages) == {}
    assert duplicates(counts.matrix_by_bridge) == {}
    assert duplicates(counts.teams_by_bot) == {}
    assert sorted(m for m in t2m if counts.timeline_messages[m] != 1) == []
    assert sorted(m for m in t2m if counts.matrix_by_bridge[m] != 1) == []
    assert [t for t in _t2m_in_matrix_order(history, stack) if t in set(t2m)] == t2m
    assert sorted(m for m, _ in m2t if counts.teams_by_bot[m] != 1) == []
    stack.daemon.ensure_alive()
    assert "Traceback" not in stack.daemon.log_text()
