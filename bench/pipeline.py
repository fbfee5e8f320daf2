"""The bridge's real pipeline, built in this process the way ``bridge.app.serve`` wires it.

``running_bridge`` builds the timeline and state stores (MongoDB on a fresh
SecantusDB, or the in-memory stores for the bare relay), the web application,
both real adapters (``bridge.app.build_adapters``: the Teams endpoint with its
token validation and paced sender, the Matrix application service and client),
the intake and the delivery service, saves the room links, and serves on a
loopback port. Stored events go to the gap recorder and the delivery service as
in ``serve``. Not wired: the chat command layer (plain messages are not
commands: it would only look at them), readiness checks and signal handling.

``Stamps`` is an aiohttp middleware on the bridge's own application: it takes
``time.perf_counter()`` as a request enters the handler chain (headers parsed,
body not yet read): "inbound request received". Requests name the benchmark
sequence numbers they carry in the ``X-Bench-Seq`` header.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler
from pymongo import AsyncMongoClient
from pymongo.monitoring import CommandListener
from pymongo.write_concern import WriteConcern

from bench.protocol import APP_ID, APP_PASSWORD, SEQ_HEADER, SERVER_NAME, TENANT_ID, World
from bridge.app import build_adapters
from bridge.clock import SystemClock
from bridge.config import Settings
from bridge.gaps import GapRecorder
from bridge.ids import UlidFactory
from bridge.logs import configure_logging
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    EventID,
    Mirror,
    MirrorStatus,
    Platform,
    RemoteRoomID,
    RoomLink,
    RoomRef,
)
from bridge.ports import StateStore, TimelineStore
from bridge.relay.delivery import DeliveryService
from bridge.relay.intake import Intake
from bridge.runtime import AdapterContext
from bridge.tasks import TaskOwner
from bridge.timeline.memory import MemoryStateStore, MemoryTimelineStore
from bridge.timeline.mongo import MongoTimelineStore
from bridge.timeline.state import MongoStateStore
from bridge.web.health import Readiness
from bridge.web.server import bound_port, build_web_app, start_site
from devtools.servers import MongoServer

DATABASE: Final = "incident_bridge_bench"
SHUTDOWN_S: Final = 5.0


class StoreKind(StrEnum):
    MONGODB = "mongodb"
    """The production stores on a MongoDB-protocol server (durable, journaled writes)."""
    MEMORY = "memory"
    """The in-memory stores: the bare relay, nothing persisted."""


def quiet_logging() -> None:
    """The bridge's logging as configured in production, at warning level.

    Per-message info lines would cost formatting time and flood the figures; the
    structlog processors still run for every call, as in production.
    """
    configure_logging(fmt="json", level="warning")


@contextmanager
def fresh_mongo() -> Iterator[MongoServer]:
    """A new SecantusDB daemon on its own data directory, for one figure."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-mongo-") as tmp,
        MongoServer(Path(tmp) / "db") as server,
    ):
        yield server


def bridge_settings(world: World, *, hs_token: str, as_token: str, mongo_uri: str) -> Settings:
    """The settings of a bridge that talks to the load process's world."""
    return Settings.model_validate(
        {
            "mongo": {"uri": mongo_uri, "database": DATABASE},
            "http": {"host": "127.0.0.1", "port": 0},
            "matrix": {
                "enabled": True,
                "homeserver_url": world.homeserver_url,
                "server_name": SERVER_NAME,
                "as_token": as_token,
                "hs_token": hs_token,
            },
            "teams": {
                "enabled": True,
                "app_id": APP_ID,
                "tenant_id": TENANT_ID,
                "auth": {"type": "client_secret", "client_secret": APP_PASSWORD},
                "openid_metadata_url": world.openid_metadata_url,
                "authority": world.token_authority,
                "allowed_service_url_hosts": [world.service_host],
            },
        }
    )


def room_links(world: World) -> list[RoomLink]:
    """Teams channel ``n`` linked with Matrix room ``n``."""
    now = datetime.now(UTC)
    return [
        RoomLink(
            matrix_room=RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(matrix)),
            teams_room=RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(teams)),
            created_at=now,
        )
        for teams, matrix in zip(world.teams_channels, world.matrix_rooms, strict=True)
    ]


@dataclass(frozen=True)
class Stamps:
    """When each benchmark request entered the bridge, and when it was answered."""

    received: dict[int, float] = field(default_factory=dict)
    answered: dict[int, float] = field(default_factory=dict)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        received = time.perf_counter()
        header = request.headers.get(SEQ_HEADER)
        try:
            return await handler(request)
        finally:
            if header is not None:
                answered = time.perf_counter()
                for part in header.split(","):
                    self.received.setdefault(int(part), received)
                    self.answered.setdefault(int(part), answered)


@dataclass(frozen=True)
class RunningBridge:
    url: str
    store: TimelineStore
    intake: Intake
    delivery: DeliveryService
    stamps: Stamps
    tasks: TaskOwner

    def start_delivery(self) -> None:
        """Start draining the outbox (already running unless built with ``deliver=False``)."""
        self.tasks.start(self.delivery.run(), name="delivery")


class SettleCount:
    """Counts mirrors recorded as sent; ``reached`` is set at ``expected``."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.reached = asyncio.Event()
        self.reached_at = 0.0
        """``time.perf_counter()`` when the count reached ``expected``."""

    def add(self) -> None:
        self.count += 1
        if self.count == self.expected:
            self.reached_at = time.perf_counter()
            self.reached.set()


class _CountingMongoStore(MongoTimelineStore):
    settled: SettleCount | None = None

    async def set_mirrors(self, updates: Sequence[tuple[EventID, Mirror]]) -> None:
        await super().set_mirrors(updates)
        for _, mirror in updates:
            if self.settled is not None and mirror.status is MirrorStatus.SENT:
                self.settled.add()


class _CountingMemoryStore(MemoryTimelineStore):
    settled: SettleCount | None = None

    async def set_mirrors(self, updates: Sequence[tuple[EventID, Mirror]]) -> None:
        await super().set_mirrors(updates)
        for _, mirror in updates:
            if self.settled is not None and mirror.status is MirrorStatus.SENT:
                self.settled.add()


async def _stores(
    stack: AsyncExitStack,
    kind: StoreKind,
    settings: Settings,
    *,
    retry_writes: bool,
    listeners: Sequence[CommandListener],
    settled: SettleCount | None,
) -> tuple[TimelineStore, StateStore]:
    clock = SystemClock()
    if kind is StoreKind.MEMORY:
        memory = _CountingMemoryStore(clock=clock)
        memory.settled = settled
        return memory, MemoryStateStore()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo.uri.get_secret_value(),
        tz_aware=True,
        appname="incident-bridge-bench",
        retryWrites=retry_writes,
        event_listeners=list(listeners),
    )
    stack.push_async_callback(client.close)
    store = _CountingMongoStore(
        client,
        settings.mongo.database,
        clock=clock,
        write_concern=WriteConcern(w=settings.mongo.write_concern, j=True),
    )
    store.settled = settled
    await store.ensure_indexes()
    return store, MongoStateStore(store.database)


@asynccontextmanager
async def running_bridge(
    settings: Settings,
    *,
    store_kind: StoreKind,
    links: Sequence[RoomLink],
    deliver: bool = True,
    retry_writes: bool = False,
    listeners: Sequence[CommandListener] = (),
    settled: SettleCount | None = None,
) -> AsyncIterator[RunningBridge]:
    """The bridge, serving on loopback until the context exits (then stopped in reverse).

    ``settled``, when given, counts the outbox entries the delivery settles as sent.
    """
    clock = SystemClock()
    metrics = BridgeMetrics()
    ids = UlidFactory()
    async with AsyncExitStack() as stack:
        store, state = await _stores(
            stack,
            store_kind,
            settings,
            retry_writes=retry_writes,
            listeners=listeners,
            settled=settled,
        )
        for link in links:
            await store.save_link(link)
        web_app = build_web_app(Readiness(timeout_s=2.0, metrics=metrics), metrics)
        stamps = Stamps()
        web_app.middlewares.append(stamps.middleware)
        adapters = build_adapters(
            AdapterContext(
                settings=settings,
                clock=clock,
                ids=ids,
                metrics=metrics,
                store=store,
                state=state,
                web_app=web_app,
            )
        )
        delivery = DeliveryService(
            store=store,
            clock=clock,
            adapters={a.platform: a for a in adapters},
            metrics=metrics,
            owner="bench",
            ids=ids,
        )

        gaps = GapRecorder(store=store, state=state, clock=clock, ids=ids)

        async def on_stored(results: Sequence[AppendResult]) -> None:
            await gaps.on_stored(results)
            delivery.offer(results)

        intake = Intake(
            store=store,
            clock=clock,
            ids=ids,
            metrics=metrics,
            adapters=adapters,
            on_stored=on_stored,
        )
        for adapter in adapters:
            await adapter.start(intake)
            stack.push_async_callback(adapter.stop)
        await gaps.on_start()
        tasks = TaskOwner("bench-bridge")
        stack.push_async_callback(tasks.close)
        tasks.start(gaps.run(), name="liveness")
        stack.push_async_callback(delivery.stop, deadline_s=SHUTDOWN_S)
        runner = await start_site(web_app, host="127.0.0.1", port=0, shutdown_timeout=SHUTDOWN_S)
        stack.push_async_callback(runner.cleanup)
        bridge = RunningBridge(
            url=f"http://127.0.0.1:{bound_port(runner)}",
            store=store,
            intake=intake,
            delivery=delivery,
            stamps=stamps,
            tasks=tasks,
        )
        if deliver:
            bridge.start_delivery()
        yield bridge
