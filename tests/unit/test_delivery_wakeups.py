"""What delivery asks the store for: one lease per room visit, one queue read per wake-up."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest

from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    Body,
    EventID,
    InboundEvent,
    Kind,
    OutboxEntry,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RoomLink,
    RoomRef,
    TimelineEvent,
)
from bridge.relay.delivery import DeliveryService, DeliverySettings
from bridge.relay.intake import Intake
from bridge.timeline.memory import MemoryTimelineStore
from tests.support.adapters import FakeAdapter
from tests.support.fakes import ALICE, MATRIX_ROOM, TEAMS_ROOM, FakeClock
from tests.support.waiting import eventually


class CountingStore(MemoryTimelineStore):
    """The in-memory store, counting the outbox calls delivery makes."""

    def __init__(self, *, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.calls: Counter[str] = Counter()

    async def pending(self, room: RoomRef, *, limit: int) -> list[OutboxEntry]:
        self.calls["pending"] += 1
        return await super().pending(room, limit=limit)

    async def lease_room(self, room: RoomRef, owner: str, *, now: datetime, ttl: timedelta) -> bool:
        self.calls["lease_room"] += 1
        return await super().lease_room(room, owner, now=now, ttl=ttl)

    async def rooms_with_work(self, *, limit: int) -> list[RoomRef]:
        self.calls["rooms_with_work"] += 1
        return await super().rooms_with_work(limit=limit)

    async def append_many(
        self, batch: Sequence[tuple[TimelineEvent, Sequence[RoomRef]]]
    ) -> list[AppendResult]:
        self.calls["append_many"] += 1
        return await super().append_many(batch)


@dataclass
class Rig:
    clock: FakeClock
    store: CountingStore
    intake: Intake
    teams: FakeAdapter
    service: DeliveryService

    def message(self, message_id: str) -> InboundEvent:
        return InboundEvent(
            kind=Kind.MESSAGE,
            origin=RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID(message_id)),
            sender=ALICE,
            occurred_at=self.clock.now(),
            body=Body(text=message_id),
        )

    async def delivered(self, count: int) -> list[str]:
        async def enough() -> list[str] | None:
            texts = [m.event.body.text for m, _ in self.teams.sent]
            return texts if len(texts) >= count else None

        return await eventually(enough, within=5, what=f"{count} deliveries")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock()
    store = CountingStore(clock=clock)
    await store.save_link(
        RoomLink(matrix_room=MATRIX_ROOM, teams_room=TEAMS_ROOM, created_at=clock.now())
    )
    teams, matrix = FakeAdapter(Platform.TEAMS), FakeAdapter(Platform.MATRIX)
    metrics, ids = BridgeMetrics(), UlidFactory()
    service = DeliveryService(
        store=store,
        clock=clock,
        adapters={Platform.TEAMS: teams},
        metrics=metrics,
        owner="here",
        # Polling is slow here, so what is delivered fast was not found by polling.
        settings=DeliverySettings(poll_interval_s=30, linger_s=30),
    )

    async def offer(results: Sequence[AppendResult]) -> None:
        service.offer(results)

    intake = Intake(
        store=store,
        clock=clock,
        ids=ids,
        metrics=metrics,
        adapters=[matrix, teams],
        on_stored=offer,
    )
    runner = asyncio.get_running_loop().create_task(service.run())
    yield Rig(clock, store, intake, teams, service)
    await service.stop(deadline_s=1)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


async def test_a_busy_room_is_leased_once_and_read_once_per_message(rig: Rig) -> None:
    await rig.delivered(0)
    for n in range(10):
        await rig.intake.accept([rig.message(f"m{n}")])
        assert await rig.delivered(n + 1) == [f"m{i}" for i in range(n + 1)]
    assert rig.store.calls["lease_room"] == 1
    assert rig.store.calls["pending"] == 10
    assert rig.store.calls["append_many"] == 10
    assert rig.service.active_rooms == 1  # still lingering for more


async def test_a_burst_in_one_request_is_one_write_and_one_read(rig: Rig) -> None:
    await rig.intake.accept([rig.message(f"b{n}") for n in range(30)])
    assert await rig.delivered(30) == [f"b{n}" for n in range(30)]
    assert rig.store.calls["append_many"] == 1
    assert rig.store.calls["pending"] == 1


async def test_work_stored_elsewhere_for_a_room_worked_here_is_found_by_polling(
    rig: Rig,
) -> None:
    await rig.intake.accept([rig.message("here")])
    await rig.delivered(1)
    # Another replica stores an event for the same target: nothing offers it here.
    other = TimelineEvent(
        id=EventID(UlidFactory().new()),
        incident_id=None,
        kind=Kind.MESSAGE,
        origin_variant="",
        origin=RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID("elsewhere")),
        sender=ALICE,
        body=Body(text="elsewhere"),
        occurred_at=rig.clock.now(),
        received_at=rig.clock.now(),
    )
    await rig.store.append(other, [TEAMS_ROOM])
    polls = rig.store.calls["rooms_with_work"]
    rig.service.notify()  # what the next poll does, without waiting 30 s for it
    assert await rig.delivered(2) == ["here", "elsewhere"]
    assert rig.store.calls["rooms_with_work"] == polls + 1
    assert rig.store.calls["lease_room"] == 1  # the lingering worker took it
