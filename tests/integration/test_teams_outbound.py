"""The Teams sender against the Teams emulator: real HTTP on loopback, real tokens.

Most tests share one ``ManualClock`` between the emulator and the sender, and the
sender's sleep moves that clock: the emulator's rate limiter then measures exactly
the times the pacer chose, a flood that takes minutes of Teams time runs in a
moment, and a violation would be the pacer's fault alone. One test runs on the
real clock with the default safety margin.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from pydantic import SecretStr

from adapters.teams.ids import (
    ConversationReference,
    TeamsConversationID,
    TeamsUserID,
    TenantID,
)
from adapters.teams.outbound import TeamsSender
from adapters.teams.pacing import PacingSettings
from adapters.teams.records import AMBIGUOUS_NAMESPACE, StateAmbiguousSends, StateLayouts
from adapters.teams.references import StoredConversationReferences
from adapters.teams.tokens import token_provider_for
from bridge.clock import SystemClock
from bridge.config.teams import TeamsAuthSettings, TeamsSettings
from bridge.errors import PermanentDeliveryError
from bridge.metrics import BridgeMetrics
from bridge.model import (
    Body,
    EventID,
    IncidentID,
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
from bridge.ports import Clock, OutboundMessage
from bridge.timeline.memory import MemoryStateStore
from devtools.teams_emulator import (
    Conversation,
    EmulatorKeys,
    ManualClock,
    Operation,
    TeamsEmulator,
    User,
)
from tests.integration.teams_fixtures import APP_ID, APP_PASSWORD, TENANT_ID

EXACT = PacingSettings(safety_margin_s=0.0)
ALICE = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@alice:example.org"), display_name="Alice"
)
WAIT_S = 30.0
"""The most any one test waits on real time."""


@pytest.fixture(scope="session")
def emulator_keys() -> EmulatorKeys:
    return EmulatorKeys.generate(datetime.now(UTC))


@dataclass
class World:
    emulator: TeamsEmulator
    sender: TeamsSender
    channel: Conversation
    bob: User
    state: MemoryStateStore
    metrics: BridgeMetrics
    clock: Clock
    serial: list[int]

    def event(self, text: str, *, body: Body | None = None, **changes: Any) -> TimelineEvent:
        self.serial[0] += 1
        n = self.serial[0]
        now = self.clock.now()
        event = TimelineEvent(
            id=EventID(f"01J{n:023d}"),
            incident_id=IncidentID("inc-1"),
            kind=Kind.MESSAGE,
            origin=RemoteRef(
                room=RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!ops:example.org")),
                message_id=RemoteMessageID(f"$e{n}"),
            ),
            origin_variant="",
            sender=ALICE,
            body=body or Body(text=text),
            occurred_at=now,
            received_at=now,
        )
        return replace(event, **changes)

    def message(
        self,
        text: str = "",
        *,
        body: Body | None = None,
        conversation: str | None = None,
        reply_to: str | None = None,
    ) -> OutboundMessage:
        room = RoomRef(
            platform=Platform.TEAMS,
            room_id=RemoteRoomID(conversation or self.channel.conversation_id),
        )
        return OutboundMessage(
            event=self.event(text, body=body),
            target=room,
            reply_to=RemoteMessageID(reply_to) if reply_to else None,
        )

    def edit_of(self, original: TimelineEvent, text: str) -> OutboundMessage:
        relation = Relation(kind=RelationKind.EDIT, target=original.origin, event_id=original.id)
        edit = self.event(text, kind=Kind.EDIT, relations=(relation,))
        room = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(self.channel.conversation_id))
        return OutboundMessage(event=edit, target=room)

    def texts(self) -> list[str]:
        return [m.text for m in self.emulator.messages(self.channel) if not m.deleted]

    def lines(self) -> list[str]:
        """Every bridged line Teams shows, in order, without its attribution."""
        return [
            re.sub(r"^<b>Alice</b> <i>\(Matrix\)</i>: ", "", line)
            for text in self.texts()
            for line in text.split("<br>")
        ]


class VirtualSleep:
    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock

    async def __call__(self, seconds: float) -> None:
        self._clock.advance(max(0.0, seconds))
        await asyncio.sleep(0)


@asynccontextmanager
async def world(
    keys: EmulatorKeys, *, settings: PacingSettings = EXACT, virtual: bool = True
) -> AsyncIterator[World]:
    manual = ManualClock() if virtual else None
    clock: Clock = manual if manual is not None else SystemClock()
    async with (
        TeamsEmulator(APP_ID, APP_PASSWORD, TENANT_ID, keys=keys, clock=clock) as emulator,
        aiohttp.ClientSession() as session,
    ):
        bob = emulator.add_user("Bob Jones")
        channel = emulator.add_channel("Operations", "Incidents", members=[bob])
        emulator.directory.set_bot_installed(channel, installed=True)
        teams = TeamsSettings(
            enabled=True,
            app_id=APP_ID,
            tenant_id=TENANT_ID,
            auth=TeamsAuthSettings(client_secret=SecretStr(APP_PASSWORD)),
            authority=emulator.token_authority,
            allowed_service_url_hosts=(str(urlsplit(emulator.service_url).netloc),),
            request_timeout_s=5.0,
        )
        state = MemoryStateStore()
        references = StoredConversationReferences(state, clock=clock, cache_size=100)
        await references.put(
            ConversationReference(
                conversation_id=TeamsConversationID(channel.conversation_id),
                service_url=emulator.service_url,
                tenant_id=TenantID(TENANT_ID),
                conversation_type="channel",
                bot_id=TeamsUserID(f"28:{APP_ID}"),
            )
        )
        metrics = BridgeMetrics()
        sender = TeamsSender(
            session=session,
            tokens=token_provider_for(teams, session=session, clock=clock),
            conversations=references,
            clock=clock,
            metrics=metrics,
            settings=settings,
            ambiguous=StateAmbiguousSends(state, clock=clock),
            layouts=StateLayouts(state),
            sleep=VirtualSleep(manual) if manual is not None else None,
        )
        try:
            yield World(emulator, sender, channel, bob, state, metrics, clock, [0])
        finally:
            await sender.close()


async def bounded(awaitable: Any) -> Any:
    async with asyncio.timeout(WAIT_S):
        return await awaitable


async def send_all(w: World, messages: Sequence[OutboundMessage], prefix: str) -> list[RemoteRef]:
    sends = (w.sender.send(m, idempotency_key=f"{prefix}{n}") for n, m in enumerate(messages))
    refs: list[RemoteRef] = await bounded(asyncio.gather(*sends))
    return refs


async def test_messages_replies_edits_and_deletes_reach_teams(emulator_keys: EmulatorKeys) -> None:
    async with world(emulator_keys) as w:
        bob = Sender(
            platform=Platform.TEAMS,
            user_id=RemoteUserID(w.bob.aad_object_id),
            display_name="Bob Jones",
        )
        body = Body(
            text="Bob Jones: db-1 is down",
            html='<a href="https://matrix.to/#/@teams_bob:example.org">Bob Jones</a>: '
            "db-1 is <b>down</b>",
            mentions=(bob,),
        )
        first = w.message(body=body)
        root = await bounded(w.sender.send(first, idempotency_key="root"))
        posted = w.emulator.message(root.message_id)
        assert posted is not None
        assert (
            posted.text == "<b>Alice</b> <i>(Matrix)</i>: <at>Bob Jones</at>: db-1 is <b>down</b>"
        )
        assert posted.text_format == "xml"
        assert [dict(e) for e in posted.entities] == [
            {
                "type": "mention",
                "text": "<at>Bob Jones</at>",
                "mentioned": {"id": w.bob.aad_object_id, "name": "Bob Jones"},
            }
        ]

        thread = f"{w.channel.conversation_id};messageid={root.message_id}"
        in_thread = await bounded(
            w.sender.send(w.message("looking", conversation=thread), idempotency_key="t")
        )
        reply = await bounded(
            w.sender.send(w.message("on it", reply_to=root.message_id), idempotency_key="r")
        )
        for ref in (in_thread, reply):
            message = w.emulator.message(ref.message_id)
            assert message is not None
            assert message.thread_root == root.message_id
        assert [m.text for m in w.emulator.messages(thread)] == [
            posted.text,
            "<b>Alice</b> <i>(Matrix)</i>: looking",
            "<b>Alice</b> <i>(Matrix)</i>: on it",
        ]

        await bounded(w.sender.edit(reply, w.edit_of(first.event, "on it!"), idempotency_key="e"))
        edited = w.emulator.message(reply.message_id)
        assert edited is not None
        assert (edited.text, edited.edit_count) == ("<b>Alice</b> <i>(Matrix)</i>: on it!", 1)
        await bounded(w.sender.delete(reply, idempotency_key="d"))
        deleted = w.emulator.message(reply.message_id)
        assert deleted is not None
        assert deleted.deleted


async def test_a_flood_is_paced_coalesced_and_complete_and_honours_429s(
    emulator_keys: EmulatorKeys,
) -> None:
    settings = replace(EXACT, max_coalesced_lines=4)  # 50 activities: the limits bind
    async with world(emulator_keys, settings=settings) as w:
        w.emulator.faults.inject(method="POST", path="/activities$", status=429, retry_after_s=3)
        messages = [w.message(f"line {n:03d}") for n in range(200)]
        start = w.clock.monotonic()

        async def throttle_again_midway() -> None:
            await w.emulator.wait_for_calls(20, timeout_s=WAIT_S)
            w.emulator.faults.inject(
                method="POST", path="/activities$", status=429, retry_after_s=2
            )

        midway = asyncio.ensure_future(throttle_again_midway())
        refs = await send_all(w, messages, "f")
        await bounded(midway)

        assert w.emulator.violations == ()
        assert w.lines() == [f"line {n:03d}" for n in range(200)]
        carrier = {
            line: str(message.activity_id)
            for message in w.emulator.messages(w.channel)
            for line in message.text.split("<br>")
        }
        assert [str(ref.message_id) for ref in refs] == [
            carrier[f"<b>Alice</b> <i>(Matrix)</i>: line {n:03d}"] for n in range(200)
        ]

        calls = [
            c for c in w.emulator.connector_calls if c.operation is Operation.SEND_TO_CONVERSATION
        ]
        throttled = [c for c in calls if c.status == 429]
        assert len(throttled) == 2
        for refused, retry_after in zip(throttled, (3.0, 2.0), strict=True):
            following = [c for c in calls if c.seq > refused.seq]
            assert following
            assert following[0].monotonic - refused.monotonic >= retry_after
        assert w.emulator.peak_calls(1.0, conversation=w.channel) <= 7
        assert w.emulator.peak_calls(2.0, conversation=w.channel) <= 8
        assert w.emulator.peak_calls(30.0, conversation=w.channel) <= 60
        assert w.clock.monotonic() - start >= (50 - 8) / 4  # 8 per 2 s once the bursts are spent


async def test_an_unthrottled_flood_is_coalesced_into_few_activities(
    emulator_keys: EmulatorKeys,
) -> None:
    async with world(emulator_keys) as w:
        await send_all(w, [w.message(f"line {n}") for n in range(200)], "u")
        assert w.lines() == [f"line {n}" for n in range(200)]
        assert len(w.texts()) <= 3
        assert w.emulator.violations == ()


async def test_pacing_holds_on_the_real_clock(emulator_keys: EmulatorKeys) -> None:
    async with world(emulator_keys, settings=PacingSettings(), virtual=False) as w:
        root = await bounded(w.sender.send(w.message("root"), idempotency_key="root"))
        replies = [w.message(f"reply {n}", reply_to=root.message_id) for n in range(16)]
        await send_all(w, replies, "r")  # replies are never coalesced: 17 calls
        assert w.emulator.violations == ()
        assert len(w.texts()) == 17
        assert w.emulator.peak_calls(1.0, conversation=w.channel) <= 7
        assert w.emulator.peak_calls(2.0, conversation=w.channel) <= 8


async def test_a_5xx_on_create_is_retried_once_and_recorded(emulator_keys: EmulatorKeys) -> None:
    async with world(emulator_keys) as w:
        w.emulator.faults.inject(method="POST", path="/activities$", status=502, committed=True)
        ref = await bounded(w.sender.send(w.message("maybe twice"), idempotency_key="a"))
        assert w.texts() == ["<b>Alice</b> <i>(Matrix)</i>: maybe twice"] * 2
        record = await w.state.get(AMBIGUOUS_NAMESPACE, "a")
        assert record is not None
        assert (record["attempts"], record["activity_id"]) == (1, ref.message_id)
        sample = w.metrics.registry.get_sample_value(
            "bridge_teams_ambiguous_creates_total", {"reason": "http_502"}
        )
        assert sample == 1

        w.emulator.faults.inject(method="POST", path="/activities$", status=504, times=2)
        with pytest.raises(PermanentDeliveryError):
            await bounded(w.sender.send(w.message("lost?"), idempotency_key="b"))
        posts = [
            c for c in w.emulator.connector_calls if c.operation is Operation.SEND_TO_CONVERSATION
        ]
        assert len(posts) == 4  # two for each message, never a third
        with pytest.raises(PermanentDeliveryError):
            await bounded(w.sender.send(w.message("lost?"), idempotency_key="b"))
        assert len(w.emulator.connector_calls) == len(posts)


async def test_a_timed_out_create_is_retried_once(emulator_keys: EmulatorKeys) -> None:
    settings = replace(EXACT, request_timeout_s=0.5)
    async with world(emulator_keys, settings=settings) as w:
        w.emulator.faults.inject(
            method="POST", path="/activities$", timeout=True, hold_s=2.0, committed=True
        )
        await bounded(w.sender.send(w.message("slow"), idempotency_key="s"))
        assert len(w.texts()) == 2  # the timed-out create was carried out after all
        record = await w.state.get(AMBIGUOUS_NAMESPACE, "s")
        assert record is not None
        assert record["reasons"] == ["timeout"]


async def test_an_oversize_message_is_split_and_stays_addressable(
    emulator_keys: EmulatorKeys,
) -> None:
    async with world(emulator_keys) as w:
        words = [f"w{n}" for n in range(60_000)]
        big = w.message(" ".join(words))
        ref = await bounded(w.sender.send(big, idempotency_key="big"))
        texts = w.texts()
        assert len(texts) >= 4
        assert all(len(t.encode()) < 80_000 for t in texts)
        assert not [c for c in w.emulator.connector_calls if c.status == 413]
        assert " ".join(t.split("</i>: ", 1)[1] for t in texts).split() == words
        assert w.emulator.messages(w.channel)[0].activity_id == ref.message_id

        await bounded(w.sender.edit(ref, w.edit_of(big.event, "never mind"), idempotency_key="e"))
        assert w.texts() == ["<b>Alice</b> <i>(Matrix)</i>: never mind"]
        await bounded(w.sender.delete(ref, idempotency_key="d"))
        assert w.texts() == []
