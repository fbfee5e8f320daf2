"""The Teams sender: pacing, coalescing, retries, ambiguous creates, split messages.

Real HTTP to a scripted fake connector on loopback; time is virtual (sleeping
moves the shared clock), so the limits are checked exactly and the tests are
instant.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest

from adapters.teams.ids import TeamsConversationID
from adapters.teams.outbound import TeamsSender
from adapters.teams.pacing import CONVERSATION_LIMITS, PacingSettings
from adapters.teams.records import AMBIGUOUS_NAMESPACE, StateAmbiguousSends, StateLayouts
from bridge.errors import PermanentDeliveryError, RetryableDeliveryError, StoreError
from bridge.metrics import BridgeMetrics
from bridge.model import (
    Kind,
    Platform,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
    TimelineEvent,
)
from bridge.ports import OutboundMessage
from bridge.timeline.memory import MemoryStateStore
from tests.support.fakes import EventBuilder, FakeClock
from tests.unit.teams.connector_fake import (
    CHANNEL,
    CHAT,
    FakeConnector,
    References,
    StaticTokens,
    VirtualTime,
    running,
)

EXACT = PacingSettings(safety_margin_s=0.0)
BOB = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-bob"), display_name="Bob")


def room(conversation: str) -> RoomRef:
    return RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(conversation))


@dataclass
class Rig:
    sender: TeamsSender
    fake: FakeConnector
    clock: FakeClock
    time: VirtualTime
    state: MemoryStateStore
    metrics: BridgeMetrics
    session: aiohttp.ClientSession
    references: References
    events: EventBuilder

    def message(
        self,
        text: str = "hello",
        *,
        conversation: str = CHANNEL,
        reply_to: str | None = None,
        thread_root: str | None = None,
        sender: Sender | None = None,
    ) -> OutboundMessage:
        event = self.events.message(text)
        if sender is not None:
            event = replace(event, sender=sender)
        return OutboundMessage(
            event=event,
            target=room(conversation),
            reply_to=RemoteMessageID(reply_to) if reply_to else None,
            thread_root=RemoteMessageID(thread_root) if thread_root else None,
        )

    def edit_of(self, original: TimelineEvent, text: str) -> OutboundMessage:
        edit = self.events.message(
            text,
            kind=Kind.EDIT,
            relations=(
                Relation(kind=RelationKind.EDIT, target=original.origin, event_id=original.id),
            ),
        )
        return OutboundMessage(event=edit, target=room(CHANNEL))

    def another_sender(self, **changes: object) -> TeamsSender:
        """A second sender on the same state: the process after a restart."""
        return TeamsSender(
            session=self.session,
            tokens=StaticTokens(),
            conversations=self.references,
            clock=self.clock,
            metrics=BridgeMetrics(),
            settings=replace(EXACT, **changes),  # type: ignore[arg-type]
            ambiguous=StateAmbiguousSends(self.state, clock=self.clock),
            layouts=StateLayouts(self.state),
            sleep=self.time.sleep,
            jitter=lambda: 0.0,
        )

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


@asynccontextmanager
async def rig(settings: PacingSettings = EXACT) -> AsyncIterator[Rig]:
    clock = FakeClock()
    time = VirtualTime(clock)
    fake = FakeConnector(clock)
    async with running(fake) as url, aiohttp.ClientSession() as session:
        references = References()
        references.add(CHANNEL, url)
        references.add(CHAT, url)
        state = MemoryStateStore()
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
                sender, fake, clock, time, state, metrics, session, references, EventBuilder(clock)
            )
        finally:
            await sender.close()


def lines_of(text: str) -> list[str]:
    return [re.sub(r"^<b>Alice</b> <i>\(Matrix\)</i>: ", "", line) for line in text.split("<br>")]


async def test_a_message_arrives_attributed() -> None:
    async with rig() as r:
        message = r.message("disk full")
        ref = await r.sender.send(message, idempotency_key="k1")
        (call,) = r.fake.calls
        assert (call.method, call.conversation_id, call.activity_id) == ("POST", CHANNEL, None)
        assert call.body == {
            "type": "message",
            "textFormat": "xml",
            "text": "<b>Alice</b> <i>(Matrix)</i>: disk full",
        }
        assert ref == RemoteRef(room=message.target, message_id=RemoteMessageID(r.fake.order[0]))
        assert await r.sender.send(message, idempotency_key="k1") == ref  # a repeat sends nothing
        assert len(r.fake.calls) == 1


async def test_replies_and_threads() -> None:
    async with rig() as r:
        root = await r.sender.send(r.message("root"), idempotency_key="root")
        thread = f"{CHANNEL};messageid={root.message_id}"
        await r.sender.send(r.message("in thread", conversation=thread), idempotency_key="t1")
        await r.sender.send(r.message("rooted", thread_root=root.message_id), idempotency_key="t2")
        await r.sender.send(r.message("reply", reply_to=root.message_id), idempotency_key="t3")
        calls = r.fake.calls[1:]
        assert [(c.conversation_id, c.activity_id) for c in calls] == [
            (thread, None),
            (thread, None),
            (CHANNEL, root.message_id),
        ]
        assert calls[2].body is not None
        assert calls[2].body["replyToId"] == root.message_id


async def test_a_flood_is_coalesced_in_order_and_every_caller_gets_its_activity() -> None:
    async with rig() as r:
        messages = [r.message(f"line {n}") for n in range(200)]
        refs = await asyncio.gather(
            *(r.sender.send(m, idempotency_key=f"f{n}") for n, m in enumerate(messages))
        )
        creates = r.fake.creates()
        assert len(creates) < 10
        posted = [(i, lines_of(r.fake.messages[i]["text"])) for i in r.fake.order]
        flat = [line for _, lines in posted for line in lines]
        assert flat == [f"line {n}" for n in range(200)]
        carrier = {line: activity_id for activity_id, lines in posted for line in lines}
        assert [ref.message_id for ref in refs] == [carrier[f"line {n}"] for n in range(200)]
        assert r.metric("bridge_teams_coalesced_messages_total") >= 190
        assert r.fake.violations(CONVERSATION_LIMITS) == []


async def test_a_paced_flood_never_exceeds_the_limits() -> None:
    async with rig(replace(EXACT, max_coalesced_lines=2)) as r:
        start = r.clock.monotonic()
        messages = [r.message(f"line {n}") for n in range(200)]
        await asyncio.gather(
            *(r.sender.send(m, idempotency_key=f"p{n}") for n, m in enumerate(messages))
        )
        creates = r.fake.creates()
        assert len(creates) == 100
        assert r.fake.violations(CONVERSATION_LIMITS) == []
        assert creates[60].at - start == 30.0  # the 61st call waits for the 60/30 s window
        flat = [line for i in r.fake.order for line in lines_of(r.fake.messages[i]["text"])]
        assert flat == [f"line {n}" for n in range(200)]


async def test_replies_are_not_coalesced_but_are_paced() -> None:
    async with rig() as r:
        root = await r.sender.send(r.message("root"), idempotency_key="root")
        replies = [r.message(f"r{n}", reply_to=root.message_id) for n in range(20)]
        await asyncio.gather(
            *(r.sender.send(m, idempotency_key=f"r{n}") for n, m in enumerate(replies))
        )
        assert len(r.fake.creates()) == 21
        assert r.fake.violations(CONVERSATION_LIMITS) == []


async def test_coalesced_activities_stay_under_the_size_limit() -> None:
    async with rig() as r:
        big = [r.message(f"{n} " + "y" * 30_000) for n in range(6)]
        await asyncio.gather(
            *(r.sender.send(m, idempotency_key=f"b{n}") for n, m in enumerate(big))
        )
        sizes = [len(r.fake.messages[i]["text"]) for i in r.fake.order]
        assert all(size < 80_000 for size in sizes)
        assert len(sizes) == 3  # two 30 KB lines per activity, never three


async def test_a_429_pauses_the_conversation_for_retry_after() -> None:
    async with rig() as r:
        r.fake.fail_next(429, headers={"Retry-After": "7"})
        await r.sender.send(r.message("x"), idempotency_key="k")
        first, second = r.fake.calls
        assert second.at - first.at == 7.0
        assert r.metric("bridge_teams_rate_limited_total") == 1


async def test_412_and_502_back_off_exponentially() -> None:
    async with rig() as r:
        sent = await r.sender.send(r.message("x"), idempotency_key="k")
        r.fake.fail_next(412)
        r.fake.fail_next(502)
        await r.sender.edit(sent, r.edit_of(r.events.message("x"), "y"), idempotency_key="e")
        assert r.time.slept[-2:] == [0.25, 0.5]  # jitter 0: half of 0.5 s, then of 1 s
        assert len(r.fake.calls) == 4


async def test_retries_are_bounded() -> None:
    async with rig() as r:
        r.fake.fail_next(412, times=20)
        with pytest.raises(RetryableDeliveryError) as caught:
            await r.sender.send(r.message("x"), idempotency_key="k")
        assert not isinstance(caught.value, PermanentDeliveryError)
        assert len(r.fake.calls) == EXACT.max_attempts
        assert caught.value.retry_after is not None


async def test_an_ambiguous_create_is_retried_once_and_recorded() -> None:
    async with rig() as r:
        r.fake.fail_next(502, commit=True)
        ref = await r.sender.send(r.message("maybe twice"), idempotency_key="amb")
        assert len(r.fake.creates()) == 2
        assert len(r.fake.messages) == 2  # Teams has no idempotency key: a duplicate
        record = await r.state.get(AMBIGUOUS_NAMESPACE, "amb")
        assert record is not None
        assert (record["attempts"], record["reasons"], record["activity_id"]) == (
            1,
            ["http_502"],
            ref.message_id,
        )
        assert r.metric("bridge_teams_ambiguous_creates_total", reason="http_502") == 1
        later = r.another_sender()
        try:  # after a restart the recorded activity answers, nothing is sent
            assert await later.send(r.message("maybe twice"), idempotency_key="amb") == replace(
                ref, room=ref.room
            )
        finally:
            await later.close()
        assert len(r.fake.creates()) == 2


async def test_a_second_ambiguous_failure_is_final() -> None:
    async with rig() as r:
        r.fake.fail_next(504, times=2)
        with pytest.raises(PermanentDeliveryError):
            await r.sender.send(r.message("x"), idempotency_key="amb")
        assert len(r.fake.creates()) == 2
        record = await r.state.get(AMBIGUOUS_NAMESPACE, "amb")
        assert record is not None
        assert record["attempts"] == 2
        later = r.another_sender()
        try:
            with pytest.raises(PermanentDeliveryError):
                await later.send(r.message("x"), idempotency_key="amb")
        finally:
            await later.close()
        assert len(r.fake.creates()) == 2


async def test_the_ambiguous_budget_survives_outbox_retries() -> None:
    async with rig() as r:
        r.fake.fail_next(500)
        r.fake.fail_next(412, times=EXACT.max_attempts - 1)  # refused for sure, until given up
        with pytest.raises(RetryableDeliveryError):
            await r.sender.send(r.message("x"), idempotency_key="amb")
        assert len(r.fake.creates()) == EXACT.max_attempts
        r.fake.fail_next(503)  # the outbox's next try is ambiguous again: that is the last
        with pytest.raises(PermanentDeliveryError):
            await r.sender.send(r.message("x"), idempotency_key="amb")
        assert len(r.fake.creates()) == EXACT.max_attempts + 1


async def test_a_429_after_an_ambiguous_create_does_not_use_up_the_retry() -> None:
    async with rig() as r:
        r.fake.fail_next(502)
        r.fake.fail_next(429, headers={"Retry-After": "2"})
        await r.sender.send(r.message("x"), idempotency_key="k")
        assert len(r.fake.creates()) == 3


async def test_a_timed_out_create_is_retried_once() -> None:
    async with rig(replace(EXACT, request_timeout_s=0.2)) as r:
        r.fake.fail_next(201, hold_s=0.5, commit=True)
        await r.sender.send(r.message("x"), idempotency_key="slow")
        assert len(r.fake.creates()) == 2
        assert r.metric("bridge_teams_ambiguous_creates_total", reason="timeout") == 1


async def test_an_oversize_message_is_split_and_edits_and_deletes_reach_every_part() -> None:
    async with rig() as r:
        original = r.message(" ".join(f"word{n}" for n in range(40_000)))
        ref = await r.sender.send(original, idempotency_key="big")
        parts = list(r.fake.order)
        assert len(parts) == 5  # about 390 KB
        assert ref.message_id == parts[0]
        texts = [r.fake.messages[p]["text"] for p in parts]
        assert all(len(t.encode()) < 80_000 for t in texts)
        assert texts[1].startswith("<b>Alice</b> <i>(Matrix, part 2 of 5)</i>: ")
        words = " ".join(t.split("</i>: ", 1)[1] for t in texts).split()
        assert words == [f"word{n}" for n in range(40_000)]
        assert r.metric("bridge_teams_split_messages_total") == 1

        later = r.another_sender()  # edits and deletes find the parts after a restart
        try:
            await later.edit(ref, r.edit_of(original.event, "short now"), idempotency_key="e")
            assert list(r.fake.messages) == [parts[0]]
            assert r.fake.messages[parts[0]]["text"] == "<b>Alice</b> <i>(Matrix)</i>: short now"
            await later.delete(ref, idempotency_key="d")
            assert r.fake.messages == {}
        finally:
            await later.close()


async def test_edits_and_deletes_of_coalesced_lines_keep_the_others() -> None:
    async with rig() as r:
        carol = Sender(platform=Platform.MATRIX, user_id=RemoteUserID("@c:x"), display_name="Carol")
        first = r.message("warm-up")
        await r.sender.send(first, idempotency_key="w")
        batch = [r.message("one"), r.message("two"), r.message("three", sender=carol)]
        refs = await asyncio.gather(
            *(r.sender.send(m, idempotency_key=f"c{n}") for n, m in enumerate(batch))
        )
        assert len({ref.message_id for ref in refs}) == 1
        combined = refs[0]

        await r.sender.edit(combined, r.edit_of(batch[1].event, "TWO"), idempotency_key="e")
        assert lines_of(r.fake.messages[combined.message_id]["text"]) == [
            "one",
            "TWO",
            "<b>Carol</b> <i>(Matrix)</i>: three",
        ]
        with pytest.raises(PermanentDeliveryError):  # whose line? Alice has two
            await r.sender.delete(combined, idempotency_key="d0", sender=RemoteUserID("@a:x"))
        await r.sender.delete(combined, idempotency_key="d1", original=batch[0].event.id)
        assert lines_of(r.fake.messages[combined.message_id]["text"]) == [
            "TWO",
            "<b>Carol</b> <i>(Matrix)</i>: three",
        ]
        await r.sender.delete(combined, idempotency_key="d2", sender=carol.user_id)
        assert lines_of(r.fake.messages[combined.message_id]["text"]) == ["TWO"]
        await r.sender.delete(combined, idempotency_key="d3")  # the last line: the activity
        assert combined.message_id not in r.fake.messages


async def test_a_plain_edit_and_delete() -> None:
    async with rig() as r:
        message = r.message("typo", sender=BOB)
        ref = await r.sender.send(message, idempotency_key="s")
        await r.sender.edit(ref, r.edit_of(message.event, "fixed"), idempotency_key="e")
        put = r.fake.calls[-1]
        assert (put.method, put.activity_id) == ("PUT", ref.message_id)
        assert r.fake.messages[ref.message_id]["text"] == "<b>Alice</b> <i>(Matrix)</i>: fixed"
        await r.sender.edit(ref, r.edit_of(message.event, "fixed"), idempotency_key="e")
        assert len(r.fake.calls) == 2  # the same key twice: one update
        await r.sender.delete(ref, idempotency_key="d")
        assert r.fake.calls[-1].method == "DELETE"
        assert r.fake.messages == {}


async def test_an_unknown_conversation_is_refused_for_good() -> None:
    async with rig() as r:
        with pytest.raises(PermanentDeliveryError):
            await r.sender.send(
                r.message("x", conversation="19:unknown@thread.v2"), idempotency_key="k"
            )
        assert r.sender.queued == 0


async def test_a_thread_uses_the_channel_reference_and_the_channel_limits() -> None:
    async with rig() as r:
        thread = TeamsConversationID(f"{CHANNEL};messageid=42")
        messages = [r.message(f"t{n}", conversation=thread, reply_to="42") for n in range(10)]
        messages += [r.message(f"c{n}", reply_to="42") for n in range(10)]
        await asyncio.gather(
            *(r.sender.send(m, idempotency_key=f"k{n}") for n, m in enumerate(messages))
        )
        assert r.fake.violations(CONVERSATION_LIMITS) == []  # one budget for the channel


async def test_waiting_too_long_goes_back_to_the_outbox() -> None:
    async with rig(replace(EXACT, queue_timeout_s=10.0)) as r:
        r.fake.fail_next(429, headers={"Retry-After": "60"})
        first = asyncio.ensure_future(r.sender.send(r.message("a"), idempotency_key="a"))
        second = asyncio.ensure_future(
            r.sender.send(r.message("b", reply_to="1"), idempotency_key="b")
        )
        await first
        with pytest.raises(RetryableDeliveryError):
            await second


async def test_closing_fails_what_is_pending() -> None:
    async with rig() as r:
        r.fake.fail_next(201, hold_s=1.0)
        first = asyncio.ensure_future(r.sender.send(r.message("a"), idempotency_key="a"))
        second = asyncio.ensure_future(
            r.sender.send(r.message("b", reply_to="1"), idempotency_key="b")
        )
        await asyncio.sleep(0.1)
        await asyncio.wait_for(r.sender.close(), 2.0)
        for pending in (first, second):
            with pytest.raises(RetryableDeliveryError):
                await pending
        with pytest.raises(RetryableDeliveryError):
            await r.sender.send(r.message("c"), idempotency_key="c")


async def test_a_caller_that_gives_up_withdraws_its_message() -> None:
    async with rig() as r:
        r.fake.fail_next(201, hold_s=0.3)
        first = asyncio.ensure_future(r.sender.send(r.message("a"), idempotency_key="a"))
        second = asyncio.ensure_future(
            r.sender.send(r.message("b", reply_to="1"), idempotency_key="b")
        )
        await asyncio.sleep(0.05)
        second.cancel()
        await first
        assert len(r.fake.calls) == 1
        assert r.sender.queued == 0


async def test_an_unavailable_store_is_retryable() -> None:
    async with rig() as r:

        async def down(_: str) -> None:
            raise StoreError("mongodb is down")

        r.references.get = down  # type: ignore[method-assign,assignment]
        with pytest.raises(RetryableDeliveryError) as caught:
            await r.sender.send(r.message("x"), idempotency_key="k")
        assert not isinstance(caught.value, PermanentDeliveryError)
        assert r.sender.queued == 0
        assert r.fake.calls == []


async def test_call_order_is_kept_when_preparing_takes_different_times() -> None:
    async with rig(replace(EXACT, coalesce=False)) as r:
        lookup = r.references.get
        delays = iter([0.05, 0.04, 0.03, 0.02, 0.01, 0.0])

        async def slow_first(conversation_id: TeamsConversationID) -> Any:
            await asyncio.sleep(next(delays, 0.0))  # real time: the first call prepares last
            return await lookup(conversation_id)

        r.references.get = slow_first  # type: ignore[method-assign]
        messages = [r.message(f"m{n}") for n in range(6)]
        await asyncio.gather(
            *(r.sender.send(m, idempotency_key=f"o{n}") for n, m in enumerate(messages))
        )
        assert [lines_of(r.fake.messages[i]["text"]) for i in r.fake.order] == [
            [f"m{n}"] for n in range(6)
        ]
