"""Intake: the ``InboundSink`` every adapter hands its events to.

For each event: drop echoes of the bridge's own bot and ghosts, resolve the
room link (the targets) and relation targets, and append it with a pending
mirror per target (its outbox queue). A request's events are stored in one
write. Event ids are minted when the request reaches the intake, before any
lookup, so a room's events are ordered as they arrived. It returns only when
everything is durable; a failure raises ``StoreError`` so the adapter answers
its platform with an error and the platform delivers again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

import structlog

from bridge.errors import OverloadedError, StoreError
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    EventID,
    InboundEvent,
    Kind,
    Relation,
    RemoteRef,
    RoomLink,
    RoomRef,
    TimelineEvent,
)
from bridge.ports import ChatAdapter, Clock, TimelineStore
from bridge.relay.link_table import LinkTable

log = structlog.get_logger(__name__)

PARENT_ROOM = "parent_room"
"""``TimelineEvent.data`` key: the room (key) whose links cover the event's room, if any
(a Teams channel, for a thread in it)."""
OVERLOAD_RETRY_S = 2.0
"""The Retry-After suggested with a request refused because of overload."""

MIRRORED_KINDS = frozenset({Kind.MESSAGE, Kind.EDIT, Kind.REDACTION, Kind.REACTION})
"""Kinds that are copied to the linked room; the rest are recorded only."""


class Intake:
    """Stores what adapters receive; see the module docstring."""

    def __init__(
        self,
        *,
        store: TimelineStore,
        clock: Clock,
        ids: UlidFactory,
        metrics: BridgeMetrics,
        adapters: Sequence[ChatAdapter],
        on_stored: Callable[[Sequence[AppendResult]], Awaitable[None]] | None = None,
        link_cache_ttl_s: float = 1.0,
        max_in_flight: int = 256,
    ) -> None:
        """``on_stored`` gets each batch of stored events (to wake delivery, run commands);
        past ``max_in_flight`` requests being stored, another is refused at once
        (``OverloadedError``) instead of queueing past the platforms' ack deadlines."""
        self._store = store
        self._clock = clock
        self._ids = ids
        self._metrics = metrics
        self._adapters = {a.platform: a for a in adapters}
        self._on_stored = on_stored
        self._links = LinkTable(store, max_age_s=link_cache_ttl_s)
        self._max_in_flight = max_in_flight
        self._in_flight = 0

    def forget_links(self) -> None:
        """Links changed: look them up afresh (called by the link service of this process)."""
        self._links.forget()

    async def _links_of(self, room: RoomRef) -> list[RoomLink]:
        return await self._links.links_of(room)

    def is_echo(self, event: InboundEvent) -> bool:
        adapter = self._adapters.get(event.sender.platform)
        return adapter is not None and adapter.is_own(event.sender)

    async def accept(self, events: Sequence[InboundEvent]) -> list[AppendResult | None]:
        """Store each event in order; ``None`` stands for a dropped echo."""
        if self._in_flight >= self._max_in_flight:
            platform = events[0].origin.platform.value if events else "none"
            self._metrics.requests_refused.labels(platform=platform).inc()
            log.warning("intake_overloaded", in_flight=self._in_flight, events=len(events))
            raise OverloadedError("too many requests being stored", retry_after=OVERLOAD_RETRY_S)
        self._in_flight += 1
        try:
            return await self._accept(events)
        finally:
            self._in_flight -= 1

    async def _accept(self, events: Sequence[InboundEvent]) -> list[AppendResult | None]:
        ids = [EventID(self._ids.new()) for _ in events]  # arrival order, before any await
        started = time.perf_counter()
        prepared: list[tuple[int, TimelineEvent, list[RoomRef]]] = []
        batch: dict[RemoteRef, EventID] = {}
        try:
            for index, (inbound, event_id) in enumerate(zip(events, ids, strict=True)):
                if self.is_echo(inbound):
                    log.debug("echo_dropped", message=inbound.origin.message_id)
                    continue
                with structlog.contextvars.bound_contextvars(
                    platform=inbound.origin.platform.value,
                    room=inbound.origin.room.room_id,
                    message=inbound.origin.message_id,
                ):
                    event, targets = await self._prepare(inbound, event_id, batch)
                prepared.append((index, event, targets))
                if event.kind is Kind.MESSAGE:
                    batch.setdefault(event.origin, event.id)
            appended = await self._store.append_many([(e, t) for _, e, t in prepared])
        except StoreError:
            self._metrics.store_errors.labels(operation="append").inc()
            log.warning("events_not_stored", events=len(events))
            raise
        if prepared:
            self._metrics.append_seconds.observe(time.perf_counter() - started)
        results: list[AppendResult | None] = [None] * len(events)
        for (index, _, targets), result in zip(prepared, appended, strict=True):
            results[index] = result
            self._count(result, len(targets))
        stored = [r for r in results if r is not None]
        if self._on_stored is not None and stored:
            await self._on_stored(stored)
        return results

    async def _prepare(
        self, inbound: InboundEvent, event_id: EventID, batch: Mapping[RemoteRef, EventID]
    ) -> tuple[TimelineEvent, list[RoomRef]]:
        """The event to store and its target rooms (``batch``: messages of the same request
        stored before it, which its relations may refer to)."""
        platform = inbound.origin.platform.value
        self._metrics.events_received.labels(platform=platform, kind=inbound.kind.value).inc()
        links = await self._links_of(inbound.origin.room)
        if not links and inbound.parent_room is not None:
            links = await self._links_of(inbound.parent_room)
        targets: list[RoomRef] = (
            [_target(link, inbound) for link in links] if inbound.kind in MIRRORED_KINDS else []
        )
        relations = tuple(
            [await self._resolve(r, inbound.parent_room, batch) for r in inbound.relations]
        )
        event = TimelineEvent(
            id=event_id,
            incident_id=next((lnk.incident_id for lnk in links if lnk.incident_id), None),
            kind=inbound.kind,
            origin=inbound.origin,
            origin_variant=inbound.origin_variant,
            sender=inbound.sender,
            body=inbound.body,
            occurred_at=inbound.occurred_at,
            received_at=self._clock.now(),
            relations=relations,
            data=(
                {**inbound.data, PARENT_ROOM: inbound.parent_room.key}
                if inbound.parent_room is not None
                else inbound.data
            ),
        )
        return event, targets

    def _count(self, result: AppendResult, targets: int) -> None:
        origin = result.event.origin
        with structlog.contextvars.bound_contextvars(
            platform=origin.platform.value, room=origin.room.room_id, message=origin.message_id
        ):
            if result.duplicate:
                self._metrics.events_duplicate.labels(platform=origin.platform.value).inc()
                log.info("event_redelivered", event_id=result.event.id)
            else:
                log.debug("event_stored", event_id=result.event.id, targets=targets)

    async def _resolve(
        self, relation: Relation, parent: RoomRef | None, batch: Mapping[RemoteRef, EventID]
    ) -> Relation:
        """Attach the timeline event id of a relation's target, when the bridge knows it.

        A message the bridge posted into a channel is recorded under the channel; the
        thread that grows under it names the thread's room, so the parent is tried too.
        """
        if relation.event_id is not None:
            return relation
        in_batch = batch.get(relation.target)
        if in_batch is not None:
            return replace(relation, event_id=in_batch)
        target = await self._store.find_by_origin(relation.target, Kind.MESSAGE)
        if target is None:
            target = await self._store.find_by_mirror(relation.target)
        if target is None and parent is not None:
            target = await self._store.find_by_mirror(replace(relation.target, room=parent))
        return replace(relation, event_id=target.id) if target is not None else relation


def _target(link: RoomLink, inbound: InboundEvent) -> RoomRef:
    """The linked room on the other side of the room (or parent room) the event came from."""
    if inbound.origin.room in (link.matrix_room, link.teams_room):
        return link.other(inbound.origin.room)
    assert inbound.parent_room is not None
    return link.other(inbound.parent_room)
