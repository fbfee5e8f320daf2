"""R7 through the real relay: a flood from Matrix into one Teams conversation.

The outbox, the per-room delivery worker and the Teams adapter run for real
against the Teams emulator, which enforces Teams' documented rate limits and
injects 429s. Nothing may be dropped, the limits may never be exceeded, and
the lines must arrive in order (combined into fewer activities).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from bridge.clock import SystemClock
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    Body,
    InboundEvent,
    Kind,
    MirrorStatus,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomLink,
    RoomRef,
    Sender,
)
from bridge.relay.delivery import DeliveryService, DeliverySettings
from bridge.relay.intake import Intake
from devtools.servers import MongoServer
from devtools.teams_emulator import EmulatorKeys, TeamsEmulator
from tests.integration.test_teams_inbound import APP_ID, APP_PASSWORD, TENANT, start_bridge
from tests.support.waiting import eventually

FLOOD = 200
MATRIX_ROOM = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!flood:localhost"))
MAYA = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@maya:localhost"), display_name="Maya"
)


@pytest.fixture
async def emulator() -> AsyncIterator[TeamsEmulator]:
    keys = EmulatorKeys.generate(datetime.now(UTC))
    async with TeamsEmulator(APP_ID, APP_PASSWORD, TENANT, keys=keys) as emu:
        yield emu


@pytest.fixture
async def database(mongo_server: MongoServer) -> AsyncIterator[tuple[str, str]]:
    name = f"flood_{uuid.uuid4().hex[:12]}"
    yield mongo_server.uri, name
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
    await client.drop_database(name)
    await client.close()


async def test_flood_into_one_teams_conversation_is_paced_combined_and_complete(
    emulator: TeamsEmulator, database: tuple[str, str]
) -> None:
    alice = emulator.add_user("Alice Ops")
    bob = emulator.add_user("Bob SRE")
    chat = emulator.add_chat([alice, bob], topic="Flood room")
    bridge = await start_bridge(emulator, *database)
    delivery_task: asyncio.Task[None] | None = None
    try:
        await emulator.install_bot(chat, by=alice)  # the bridge learns the conversation
        teams_room = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(chat.conversation_id))
        clock = SystemClock()
        await bridge.store.save_link(
            RoomLink(matrix_room=MATRIX_ROOM, teams_room=teams_room, created_at=clock.now())
        )
        metrics = BridgeMetrics()
        ids = UlidFactory()
        delivery = DeliveryService(
            store=bridge.store,
            clock=clock,
            adapters={Platform.TEAMS: bridge.adapter},
            metrics=metrics,
            owner="flood-test",
            settings=DeliverySettings(poll_interval_s=0.05),
            ids=ids,
        )
        intake = Intake(
            store=bridge.store,
            clock=clock,
            ids=ids,
            metrics=metrics,
            adapters=[bridge.adapter],
        )
        emulator.faults.inject(method="POST", path="/v3/conversations/.*", status=429,
                               retry_after_s=1, times=2)  # fmt: skip
        for n in range(FLOOD):
            await intake.accept(
                [
                    InboundEvent(
                        kind=Kind.MESSAGE,
                        origin=RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID(f"$f{n}")),
                        sender=MAYA,
                        occurred_at=clock.now(),
                        body=Body(text=f"line {n:03d}"),
                    )
                ]
            )
        delivery_task = asyncio.get_running_loop().create_task(delivery.run())

        async def all_sent() -> bool:
            page = await bridge.store.timeline(room=MATRIX_ROOM, limit=FLOOD + 10)
            return len(page.events) == FLOOD and all(
                e.mirrors[0].status is MirrorStatus.SENT for e in page.events
            )

        await eventually(all_sent, within=120, interval=0.25, what="every line delivered")
        await delivery.stop(deadline_s=5)
    finally:
        if delivery_task is not None:
            delivery_task.cancel()
            await asyncio.gather(delivery_task, return_exceptions=True)
        await bridge.stop()

    assert emulator.violations == ()
    posted = [m for m in emulator.messages(chat) if m.from_bot]
    text = "\n".join(m.text for m in posted)
    positions = [text.find(f"line {n:03d}") for n in range(FLOOD)]
    assert all(p >= 0 for p in positions), "a line was lost"
    assert positions == sorted(positions), "lines arrived out of order"
    assert len(posted) < FLOOD, "nothing was combined"
    rate_limited = [c for c in emulator.connector_calls if c.status == 429]
    assert len(rate_limited) >= 2
