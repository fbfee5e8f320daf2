"""The composition root: builds the object graph from settings and owns its lifecycle.

Start-up order: MongoDB -> stores -> adapters -> web server. Shutdown runs in
reverse: on SIGTERM or SIGINT readiness turns false at once, then (after the
configured grace) the web server stops taking requests and finishes those in
flight, adapters stop, and the MongoDB client closes.

This is the one module of ``bridge`` allowed to import ``adapters``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from aiohttp import web
from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern

from bridge.clock import SystemClock
from bridge.commands.bridge_commands import BridgeCommands
from bridge.commands.permissions import Authorizer
from bridge.commands.processor import CommandProcessor
from bridge.commands.queue import CommandQueue
from bridge.commands.registry import CommandRegistry
from bridge.config import Settings
from bridge.errors import DependencyUnavailableError
from bridge.gaps import GapRecorder
from bridge.ids import UlidFactory
from bridge.incidents.commands import IncidentCommands
from bridge.incidents.mongo_store import MongoIncidentStore
from bridge.incidents.reactions import KeyEventReactions
from bridge.incidents.service import IncidentService
from bridge.links import CONFIGURATION, LinkService
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    Platform,
    RemoteRoomID,
    RoomLink,
    RoomRef,
    ThreadStyle,
)
from bridge.ports import ChatAdapter, Clock, SupportsUpstreamHealth
from bridge.relay.delivery import DeliveryService, DeliverySettings
from bridge.relay.intake import Intake
from bridge.runbooks.assembly import Runbooks, build_runbooks
from bridge.runbooks.commands import RunbookCommands
from bridge.runtime import AdapterContext, CliCommand
from bridge.tasks import TaskOwner
from bridge.timeline.mongo import MongoTimelineStore
from bridge.timeline.state import MongoStateStore
from bridge.web.auth import incident_page_link
from bridge.web.health import Readiness
from bridge.web.server import add_incident_routes, bound_port, build_web_app, start_site

log = structlog.get_logger(__name__)
MONGO_MAX_IDLE_MS = 300_000


@dataclass
class Bridge:
    """The running object graph of one process."""

    settings: Settings
    clock: Clock
    ids: UlidFactory
    metrics: BridgeMetrics
    readiness: Readiness
    store: MongoTimelineStore
    state: MongoStateStore
    incidents: MongoIncidentStore
    web_app: web.Application
    adapters: list[ChatAdapter] = field(default_factory=list)
    port: int = 0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def request_stop(self) -> None:
        """Begin a graceful shutdown: readiness turns false at once."""
        if not self.stopping.is_set():
            self.readiness.draining = True
            self.stopping.set()


def _delivery_settings(settings: Settings) -> DeliverySettings:
    options = settings.delivery
    return DeliverySettings(
        max_rooms=options.max_rooms,
        lease_ttl_s=options.lease_ttl_s,
        backoff_base_s=options.retry_base_s,
        backoff_cap_s=options.retry_cap_s,
    )


def mongo_client(settings: Settings) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(
        settings.mongo.uri.get_secret_value(),
        tz_aware=True,
        appname="incident-bridge",
        serverSelectionTimeoutMS=int(settings.mongo.server_selection_timeout_s * 1000),
        # Connections idle this long are closed, so the pool shrinks after a burst.
        maxIdleTimeMS=MONGO_MAX_IDLE_MS,
        connect=False,
    )


async def wait_for_mongo(store: MongoTimelineStore, clock: Clock, timeout_s: float) -> None:
    """Ping until MongoDB answers or the start-up deadline passes."""
    deadline = clock.monotonic() + timeout_s
    while True:
        try:
            await store.ping()
        except DependencyUnavailableError:
            if clock.monotonic() >= deadline:
                raise
            log.warning("mongodb_unreachable_retrying")
            await asyncio.sleep(1.0)
        else:
            return


async def serve(settings: Settings, *, on_ready: Callable[[Bridge], None] | None = None) -> None:
    """Run the bridge until ``request_stop`` is called (by a signal or ``on_ready``'s owner)."""
    clock = SystemClock()
    metrics = BridgeMetrics(event_loop=asyncio.get_running_loop())
    async with AsyncExitStack() as stack:
        store = await open_store(settings, clock, stack)

        readiness = Readiness(timeout_s=settings.readiness.check_timeout_s, metrics=metrics)
        readiness.add("mongodb", store.ping)
        incidents = MongoIncidentStore(store.database)
        await incidents.ensure_indexes()
        bridge = Bridge(
            settings=settings,
            clock=clock,
            ids=UlidFactory(),
            metrics=metrics,
            readiness=readiness,
            store=store,
            state=MongoStateStore(store.database),
            incidents=incidents,
            web_app=build_web_app(readiness, metrics),
        )
        add_incident_routes(bridge.web_app, incidents, store, settings.api, clock)

        context = AdapterContext(
            settings=settings,
            clock=clock,
            ids=bridge.ids,
            metrics=metrics,
            store=store,
            state=bridge.state,
            web_app=bridge.web_app,
        )
        bridge.adapters = build_adapters(context)
        delivery = DeliveryService(
            store=store,
            clock=clock,
            adapters={a.platform: a for a in bridge.adapters},
            metrics=metrics,
            owner=instance_id(settings),
            settings=_delivery_settings(settings),
            ids=bridge.ids,
        )
        gaps = GapRecorder(store=store, state=bridge.state, clock=clock, ids=bridge.ids)

        async def on_stored(results: Sequence[AppendResult]) -> None:
            await gaps.on_stored(results)
            delivery.offer(results)
            await key_events.offer(results)
            await commands.offer(results)

        intake = Intake(
            store=store,
            clock=clock,
            ids=bridge.ids,
            metrics=metrics,
            adapters=bridge.adapters,
            on_stored=on_stored,
        )
        links = LinkService(
            store=store,
            clock=clock,
            ids=bridge.ids,
            adapters=bridge.adapters,
            on_change=intake.forget_links,
        )
        service = build_incidents(bridge, links, delivery)
        key_events = KeyEventReactions(service=service, key=settings.incidents.key_event_reaction)
        commands = build_commands(
            bridge, links, delivery, service, await start_runbooks(bridge, delivery, stack)
        )
        for adapter in bridge.adapters:
            _add_checks(readiness, adapter)
            await adapter.start(intake)
            stack.push_async_callback(adapter.stop)
            log.info("adapter_started", platform=adapter.platform.value)

        await apply_configured_links(links, settings, clock)

        tasks = TaskOwner("bridge")
        stack.push_async_callback(tasks.close)
        tasks.start(delivery.run(), name="delivery")
        stack.push_async_callback(delivery.stop, deadline_s=settings.shutdown.drain_timeout_s)
        commands.start()
        stack.push_async_callback(commands.stop)

        runner = await start_site(
            bridge.web_app,
            host=settings.http.host,
            port=settings.http.port,
            shutdown_timeout=settings.shutdown.drain_timeout_s,
        )
        stack.push_async_callback(_stop_web, runner)
        bridge.port = bound_port(runner)
        # The downtime gap ends once requests are taken: what Teams posted until then is lost.
        await gaps.on_start()
        tasks.start(gaps.run(), name="liveness")
        log.info("bridge_started", host=settings.http.host, port=bridge.port)

        _handle_signals(bridge, stack)
        if on_ready is not None:
            on_ready(bridge)
        await bridge.stopping.wait()
        if settings.shutdown.readiness_grace_s:
            await asyncio.sleep(settings.shutdown.readiness_grace_s)
        log.info("bridge_stopping")
    log.info("bridge_stopped")


async def open_store(settings: Settings, clock: Clock, stack: AsyncExitStack) -> MongoTimelineStore:
    """Connect to MongoDB (waiting up to the start-up timeout) and make sure of the indexes."""
    client = mongo_client(settings)
    stack.push_async_callback(client.close)
    store = MongoTimelineStore(
        client,
        settings.mongo.database,
        clock=clock,
        write_concern=WriteConcern(w=settings.mongo.write_concern, j=True),
    )
    await wait_for_mongo(store, clock, settings.mongo.startup_timeout_s)
    await store.ensure_indexes()
    log.info("mongodb_ready", database=settings.mongo.database)
    return store


def _handle_signals(bridge: Bridge, stack: AsyncExitStack) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, bridge, sig)
        stack.callback(loop.remove_signal_handler, sig)


def instance_id(settings: Settings) -> str:
    """This process's id as owner of leases and runs (stable across restarts if set)."""
    return settings.delivery.instance_id or f"{socket.gethostname()}-{os.getpid()}"


async def start_runbooks(
    bridge: Bridge, delivery: DeliveryService, stack: AsyncExitStack
) -> Runbooks:
    """The runbook feature, started: runs a dead process left are marked ``unknown``
    first; SIGHUP reloads the catalog; shutdown leaves in-flight runs for the next start
    to recognise (their heartbeat stops)."""
    runbooks = await build_runbooks(
        settings=bridge.settings,
        database=bridge.store.database,
        store=bridge.store,
        clock=bridge.clock,
        ids=bridge.ids,
        adapters=bridge.adapters,
        instance_id=instance_id(bridge.settings),
        on_stored=delivery.offer,
        web_app=bridge.web_app,
    )
    stack.push_async_callback(runbooks.close)
    await runbooks.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, _on_sighup, runbooks.reload)
    stack.callback(loop.remove_signal_handler, signal.SIGHUP)
    return runbooks


def _on_sighup(reload: Callable[[], object]) -> None:
    log.info("signal_received", signal="SIGHUP")
    reload()


async def apply_configured_links(links: LinkService, settings: Settings, clock: Clock) -> None:
    """Make the links listed in the settings (recorded once; a restart adds nothing)."""
    for configured in settings.links:
        await links.link(
            RoomLink(
                matrix_room=RoomRef(
                    platform=Platform.MATRIX, room_id=RemoteRoomID(configured.matrix_room)
                ),
                teams_room=RoomRef(
                    platform=Platform.TEAMS, room_id=RemoteRoomID(configured.teams_conversation)
                ),
                created_at=clock.now(),
                threads=ThreadStyle(configured.threads),
            ),
            by=CONFIGURATION,
        )


def build_incidents(
    bridge: Bridge, links: LinkService, delivery: DeliveryService
) -> IncidentService:
    """The incident lifecycle on the bridge's stores and adapters."""
    return IncidentService(
        store=bridge.store,
        incidents=bridge.incidents,
        links=links,
        clock=bridge.clock,
        ids=bridge.ids,
        metrics=bridge.metrics,
        adapters={a.platform: a for a in bridge.adapters},
        settings=bridge.settings.incidents,
        on_stored=delivery.offer,
        page_link=lambda incident_id: incident_page_link(
            bridge.settings.http.public_url, incident_id, bridge.settings.api
        ),
    )


def build_commands(
    bridge: Bridge,
    links: LinkService,
    delivery: DeliveryService,
    incidents: IncidentService,
    runbooks: Runbooks | None = None,
) -> CommandQueue:
    """The chat command layer: registry, permissions, processor, and its bounded queue."""
    settings = bridge.settings
    registry = CommandRegistry()
    incident_commands = IncidentCommands(service=incidents, settings=settings.incidents)
    incident_commands.register(registry)
    BridgeCommands(
        store=bridge.store,
        state=bridge.state,
        links=links,
        clock=bridge.clock,
        code_ttl=timedelta(seconds=settings.commands.pairing_code_ttl_s),
    ).register(registry)
    if runbooks is not None:
        RunbookCommands(service=runbooks.service).register(registry)
    processor = CommandProcessor(
        store=bridge.store,
        clock=bridge.clock,
        ids=bridge.ids,
        registry=registry,
        authorizer=Authorizer(
            settings.commands,
            {a.platform: a for a in bridge.adapters},
            commander=incident_commands.is_commander,
        ),
        metrics=bridge.metrics,
        on_stored=delivery.offer,
    )
    return CommandQueue(processor)


def build_adapters(context: AdapterContext) -> list[ChatAdapter]:
    """The adapters enabled in the settings, not yet started."""
    adapters: list[ChatAdapter] = []
    if context.settings.matrix.enabled:
        from adapters.matrix import create_adapter as create_matrix  # noqa: PLC0415

        adapters.append(create_matrix(context))
    if context.settings.teams.enabled:
        from adapters.teams import create_adapter as create_teams  # noqa: PLC0415

        adapters.append(create_teams(context))
    return adapters


def adapter_commands() -> list[CliCommand]:
    """Subcommands the adapters add to ``incident-bridge``."""
    from adapters.matrix import COMMANDS as MATRIX_COMMANDS  # noqa: PLC0415
    from adapters.teams import COMMANDS as TEAMS_COMMANDS  # noqa: PLC0415

    return [*MATRIX_COMMANDS, *TEAMS_COMMANDS]


def _add_checks(readiness: Readiness, adapter: ChatAdapter) -> None:
    readiness.add(adapter.platform.value, _adapter_check(adapter))
    if isinstance(adapter, SupportsUpstreamHealth):
        readiness.add_advisory(adapter.upstream, _upstream_check(adapter))


def _adapter_check(adapter: ChatAdapter) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        if not adapter.ready:
            raise DependencyUnavailableError(adapter.platform.value, "adapter not ready")

    return check


def _upstream_check(adapter: SupportsUpstreamHealth) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        if not adapter.upstream_reachable:
            raise DependencyUnavailableError(adapter.upstream, "unreachable; queuing for it")

    return check


def _on_signal(bridge: Bridge, sig: signal.Signals) -> None:
    log.info("signal_received", signal=sig.name)
    bridge.request_stop()


async def _stop_web(runner: web.AppRunner) -> None:
    await runner.cleanup()
