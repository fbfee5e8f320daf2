"""What the Teams sender asks of the store per create: few round trips, crash-safe records.

The store is the in-memory fake, wrapped to count calls and "rounds" (a round starts
when a call starts while no other is under way: calls made together are one round).
Each call yields once, so calls made concurrently overlap and sequential ones do not.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.teams.ids import TeamsActivityID, TeamsConversationID
from adapters.teams.outbound import TeamsSender
from adapters.teams.pacing import PacingSettings
from adapters.teams.records import (
    AMBIGUOUS_NAMESPACE,
    LAYOUT_NAMESPACE,
    AmbiguousSend,
    StateAmbiguousSends,
    StateLayouts,
    ambiguous_document,
)
from adapters.teams.references import NAMESPACE, StoredConversationReferences
from bridge.errors import PermanentDeliveryError, RetryableDeliveryError, StoreError
from bridge.metrics import BridgeMetrics
from bridge.model import Platform, RemoteMessageID, RemoteRef, RemoteRoomID, RoomRef
from bridge.ports import OutboundMessage
from bridge.timeline.memory import MemoryStateStore
from tests.support.fakes import EventBuilder, FakeClock
from tests.unit.teams.connector_fake import (
    CHANNEL,
    TENANT,
    FakeConnector,
    StaticTokens,
    VirtualTime,
    running,
)

EXACT = PacingSettings(safety_margin_s=0.0)


class CountingState(MemoryStateStore):
    """The in-memory StateStore, counting calls and rounds; ``fail`` refuses chosen keys."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.rounds = 0
        self.under_way = 0
        self.fail: set[str] = set()

    async def _call(self, method: str, namespace: str, key: str) -> None:
        self.calls[method, namespace] += 1
        if self.under_way == 0:
            self.rounds += 1
        self.under_way += 1
        try:
            await asyncio.sleep(0)
        finally:
            self.under_way -= 1
        if key in self.fail:
            raise StoreError("mongodb is down")

    async def insert_once(self, namespace: str, key: str, value: Mapping[str, Any]) -> bool:
        await self._call("insert_once", namespace, key)
        return await super().insert_once(namespace, key, value)

    async def put(self, namespace: str, key: str, value: Mapping[str, Any]) -> None:
        await self._call("put", namespace, key)
        await super().put(namespace, key, value)

    async def get(self, namespace: str, key: str) -> dict[str, Any] | None:
        await self._call("get", namespace, key)
        return await super().get(namespace, key)

    async def delete(self, namespace: str, key: str) -> None:
        await self._call("delete", namespace, key)
        await super().delete(namespace, key)

    def count(self, namespace: str, method: str | None = None) -> int:
        return sum(n for (m, ns), n in self.calls.items() if ns == namespace and m == (method or m))

    def reset(self) -> None:
        self.calls.clear()
        self.rounds = 0


class SpyConnector(FakeConnector):
    """Notes the store's calls and rounds when each create arrives."""

    def __init__(self, clock: FakeClock, state: CountingState) -> None:
        super().__init__(clock)
        self.state = state
        self.seen: list[tuple[int, int]] = []
        self.arrived = asyncio.Event()

    async def _create(self, request: web.Request) -> web.Response:
        self.seen.append((sum(self.state.calls.values()), self.state.rounds))
        self.arrived.set()
        return await super()._create(request)


@dataclass
class Rig:
    sender: TeamsSender
    fake: SpyConnector
    state: CountingState
    clock: FakeClock
    time: VirtualTime
    session: aiohttp.ClientSession
    references: StoredConversationReferences
    events: EventBuilder
    metrics: BridgeMetrics

    def message(self, text: str, conversation: str = CHANNEL) -> OutboundMessage:
        return OutboundMessage(
            event=self.events.message(text),
            target=RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(conversation)),
        )

    def new_sender(self) -> TeamsSender:
        """The next process: a new sender on the same store."""
        return TeamsSender(
            session=self.session,
            tokens=StaticTokens(),
            conversations=StoredConversationReferences(
                self.state, clock=self.clock, cache_size=100
            ),
            clock=self.clock,
            metrics=BridgeMetrics(),
            settings=EXACT,
            ambiguous=StateAmbiguousSends(self.state, clock=self.clock),
            layouts=StateLayouts(self.state),
            sleep=self.time.sleep,
            jitter=lambda: 0.0,
        )

    async def record(self, key: str) -> AmbiguousSend | None:
        return await StateAmbiguousSends(self.state, clock=self.clock).lookup(key)

    async def lines(self) -> list[list[str]]:
        return [
            [line.split("</i>: ", 1)[1] for line in text.split("<br>")]
            for text in self.fake.texts()
        ]


@asynccontextmanager
async def rig(settings: PacingSettings = EXACT) -> AsyncIterator[Rig]:
    clock = FakeClock()
    time = VirtualTime(clock)
    state = CountingState()
    fake = SpyConnector(clock, state)
    async with running(fake) as url, aiohttp.ClientSession() as session:
        await MemoryStateStore.put(
            state,
            NAMESPACE,
            CHANNEL,
            {
                "conversation_id": CHANNEL,
                "service_url": url,
                "tenant_id": TENANT,
                "conversation_type": "channel",
                "bot_id": "28:bot",
            },
        )
        references = StoredConversationReferences(state, clock=clock, cache_size=100)
        metrics = BridgeMetrics()
        sender = TeamsSender(
            session=session,
            tokens=StaticTokens(),
            conversations=references,
            clock=clock,
            metrics=metrics,
            settings=settings,
            ambiguous=StateAmbiguousSends(state, clock=clock),
            layouts=StateLayouts(state),
            sleep=time.sleep,
            jitter=lambda: 0.0,
        )
        try:
            yield Rig(
                sender, fake, state, clock, time, session, references, EventBuilder(clock), metrics
            )
        finally:
            await sender.close()


async def test_a_first_send_makes_one_store_round_trip_before_the_create() -> None:
    async with rig() as r:
        await r.references.get(TeamsConversationID(CHANNEL))  # the reference is cached
        r.state.reset()
        ref = await r.sender.send(r.message("hello"), idempotency_key="k1")
        assert r.fake.seen == [(1, 1)]  # one call, one round, before the connector's
        assert r.state.calls == Counter(
            {("insert_once", AMBIGUOUS_NAMESPACE): 1, ("put", AMBIGUOUS_NAMESPACE): 1}
        )
        record = await r.record("k1")
        assert record is not None
        assert (record.activity_id, record.in_flight, record.attempts) == (
            str(ref.message_id),
            False,
            0,
        )


async def test_a_combined_activity_writes_its_keys_records_together() -> None:
    async with rig() as r:
        await r.sender.send(r.message("warm-up"), idempotency_key="w")
        r.state.reset()
        r.fake.seen.clear()
        refs = await asyncio.gather(
            *(r.sender.send(r.message(f"line {n}"), idempotency_key=f"c{n}") for n in range(10))
        )
        assert len({ref.message_id for ref in refs}) == 1  # one activity
        assert r.fake.seen == [(10, 1)]  # ten markers, one round
        assert r.state.count(AMBIGUOUS_NAMESPACE, "insert_once") == 10
        assert r.state.count(AMBIGUOUS_NAMESPACE, "get") == 0
        assert r.state.count(AMBIGUOUS_NAMESPACE, "put") == 10  # delivered, with the layout
        assert r.state.count(LAYOUT_NAMESPACE, "put") == 1
        assert r.state.rounds == 2  # before the create, and after it
        for n in range(10):
            record = await r.record(f"c{n}")
            assert record is not None
            assert (record.activity_id, record.in_flight) == (str(refs[0].message_id), False)


async def test_a_batch_into_one_conversation_reads_its_reference_once() -> None:
    async with rig(PacingSettings(safety_margin_s=0.0, coalesce=False)) as r:
        await asyncio.gather(
            *(r.sender.send(r.message(f"m{n}"), idempotency_key=f"m{n}") for n in range(20))
        )
        assert r.state.count(NAMESPACE, "get") == 1
        thread = f"{CHANNEL};messageid=1700000000000"
        await asyncio.gather(
            *(r.sender.send(r.message(f"t{n}", thread), idempotency_key=f"t{n}") for n in range(20))
        )
        assert r.state.count(NAMESPACE, "get") == 2  # the thread's own record: there is none


async def test_a_delivered_key_is_answered_from_its_record_after_a_restart() -> None:
    async with rig() as r:
        message = r.message("once")
        ref = await r.sender.send(message, idempotency_key="k")
        later = r.new_sender()
        try:
            r.state.reset()
            assert await later.send(message, idempotency_key="k") == ref
        finally:
            await later.close()
        assert len(r.fake.creates()) == 1
        assert r.state.count(AMBIGUOUS_NAMESPACE, "insert_once") == 1
        assert r.state.count(AMBIGUOUS_NAMESPACE, "get") == 1
        assert r.state.count(AMBIGUOUS_NAMESPACE, "put") == 0


async def test_a_create_in_flight_when_its_process_died_counts_as_ambiguous() -> None:
    async with rig() as r:
        r.fake.fail_next(201, hold_s=1.0)  # Teams takes the message, answers too late
        message = r.message("in flight")
        first = asyncio.ensure_future(r.sender.send(message, idempotency_key="k"))
        await asyncio.wait_for(r.fake.arrived.wait(), 5.0)
        await asyncio.wait_for(r.sender.close(), 5.0)  # the process dies during the create
        with pytest.raises(RetryableDeliveryError):
            await first
        record = await r.record("k")
        assert record is not None
        assert record.in_flight
        later = r.new_sender()
        try:
            ref = await later.send(message, idempotency_key="k")  # sent again, on record
        finally:
            await later.close()
        record = await r.record("k")
        assert record is not None
        assert (record.attempts, record.reasons, record.activity_id, record.in_flight) == (
            1,
            ("interrupted",),
            str(ref.message_id),
            False,
        )


async def test_an_interrupted_retry_of_an_ambiguous_create_is_not_sent_a_third_time() -> None:
    async with rig() as r:
        record = AmbiguousSend(
            idempotency_key="k",
            conversation_id=TeamsConversationID(CHANNEL),
            attempts=1,
            reasons=("http_502",),
            in_flight=True,  # the retry was under way when its process died
        )
        await MemoryStateStore.put(r.state, AMBIGUOUS_NAMESPACE, "k", ambiguous_document(record))
        with pytest.raises(PermanentDeliveryError):
            await r.sender.send(r.message("maybe twice"), idempotency_key="k")
        assert r.fake.creates() == []
        stored = await r.record("k")
        assert stored is not None
        assert (stored.attempts, stored.reasons, stored.in_flight) == (
            2,
            ("http_502", "interrupted"),
            False,
        )
        with pytest.raises(PermanentDeliveryError):
            await r.sender.send(r.message("maybe twice"), idempotency_key="k")
        assert r.fake.creates() == []


async def test_keys_with_a_past_go_alone_and_the_order_is_kept() -> None:
    async with rig() as r:
        await r.sender.send(r.message("warm-up"), idempotency_key="w")
        conversation = TeamsConversationID(CHANNEL)
        earlier = {
            "k2": AmbiguousSend(
                idempotency_key="k2", conversation_id=conversation, attempts=1, reasons=("x",)
            ),
            "k4": AmbiguousSend(  # refused for sure last time: may be combined
                idempotency_key="k4", conversation_id=conversation
            ),
            "k5": AmbiguousSend(
                idempotency_key="k5",
                conversation_id=conversation,
                activity_id=TeamsActivityID("1600000000000"),
            ),
        }
        for key, past in earlier.items():
            await MemoryStateStore.put(r.state, AMBIGUOUS_NAMESPACE, key, ambiguous_document(past))
        r.fake.seen.clear()
        refs = await asyncio.gather(
            *(r.sender.send(r.message(f"line {n}"), idempotency_key=f"k{n}") for n in range(7))
        )
        assert (await r.lines())[1:] == [
            ["line 0", "line 1"],
            ["line 2"],  # a create of unknown outcome before: alone, never combined
            ["line 3", "line 4", "line 6"],
        ]
        assert refs[5] == RemoteRef(
            room=r.message("x").target, message_id=RemoteMessageID("1600000000000")
        )
        assert refs[0].message_id == refs[1].message_id
        assert refs[3].message_id == refs[4].message_id == refs[6].message_id
        for key, attempts in (("k2", 1), ("k3", 0), ("k4", 0), ("k6", 0)):
            record = await r.record(key)
            assert record is not None
            assert (record.attempts, record.in_flight) == (attempts, False)
            assert record.activity_id is not None


async def test_a_store_failure_before_the_create_sends_nothing_and_clears_the_marks() -> None:
    async with rig() as r:
        await r.sender.send(r.message("warm-up"), idempotency_key="w")
        r.state.fail = {"k3"}
        outcomes = await asyncio.gather(
            *(r.sender.send(r.message(f"line {n}"), idempotency_key=f"k{n}") for n in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(o, RetryableDeliveryError) for o in outcomes)
        assert not any(isinstance(o, PermanentDeliveryError) for o in outcomes)
        assert len(r.fake.creates()) == 1  # the warm-up only
        for n in (0, 1, 2, 4):
            record = await r.record(f"k{n}")
            assert record is not None
            assert not record.in_flight  # never sent: not counted as possibly delivered
        r.state.fail = set()
        await asyncio.gather(
            *(r.sender.send(r.message(f"line {n}"), idempotency_key=f"k{n}") for n in range(5))
        )
        assert (await r.lines())[1:] == [[f"line {n}" for n in range(5)]]
