"""Delivery: per-room ordered workers that drain the outbox into the other platform.

The outbox is the queued mirrors of stored events (see ``TimelineStore``). One
loop leases target rooms with queued events (leases live in MongoDB, so each
room is drained by one process at a time and a dead process's rooms are taken
over when its leases expire): rooms this process just stored events for at
once, the others (work of other replicas, or left by a dead process) by polling.
Each leased room gets one worker that sends its queue in event order; an event
that fails with a retryable error is rescheduled with capped, jittered
exponential backoff (or the platform's Retry-After) and the room waits for it,
so order is never broken. A permanent failure is recorded on the mirror and the
room moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

import structlog

from bridge.errors import DeliveryError, PermanentDeliveryError, StoreError
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    EventID,
    Kind,
    Mirror,
    MirrorStatus,
    OutboxEntry,
    Platform,
    RemoteMessageID,
    RoomRef,
    TimelineEvent,
)
from bridge.notices import bridge_notice
from bridge.ports import (
    ChatAdapter,
    Clock,
    OutboundMessage,
    SupportsBatchSend,
    TimelineStore,
)
from bridge.relay.dispatch import Dispatcher
from bridge.tasks import TaskOwner

log = structlog.get_logger(__name__)


_BATCHABLE: Final = frozenset({Kind.MESSAGE, Kind.NOTICE, Kind.GAP})

_WHAT: Final = {
    Kind.MESSAGE: "message",
    Kind.EDIT: "edit",
    Kind.REDACTION: "deletion",
    Kind.REACTION: "reaction",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySettings:
    lease_ttl_s: float = 30.0
    poll_interval_s: float = 1.0
    """How often the database is asked for rooms with work this process did not store."""
    max_rooms: int = 512
    """Rooms worked at once; each costs a task and a share of one lease renewal."""
    batch: int = 50
    max_hold_s: float = 10.0
    """While rooms wait for a slot, a busy room is given back (and leased again) after
    this long, so that more busy rooms than ``max_rooms`` all get turns."""
    linger_s: float = 2.0
    """An idle worker keeps its room this long, so the next message skips the lease round trip."""
    max_batch: int = 20
    """At most this many plain messages are handed over at once to an adapter that batches."""
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    """The longest wait between two attempts (unless the platform asks for longer): also
    the most a room waits after its target platform is back."""


def idempotency_key(event: TimelineEvent, room: RoomRef) -> str:
    """Stable across retries and restarts, unique per (event, target room)."""
    digest = hashlib.sha256(room.key.encode()).hexdigest()[:12]
    return f"ib{event.id}{digest}"


def backoff_delay(
    attempts: int, retry_after: float | None, settings: DeliverySettings, jitter: float
) -> float:
    """Capped exponential backoff with jitter, never shorter than the platform asked."""
    delay = min(settings.backoff_cap_s, settings.backoff_base_s * 2.0**attempts)
    delay = min(delay * (0.5 + jitter), settings.backoff_cap_s)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class DeliveryService:
    def __init__(
        self,
        *,
        store: TimelineStore,
        clock: Clock,
        adapters: Mapping[Platform, ChatAdapter],
        metrics: BridgeMetrics,
        owner: str,
        settings: DeliverySettings = DeliverySettings(),
        jitter: Callable[[], float] = random.random,
        ids: UlidFactory | None = None,
    ) -> None:
        """``owner`` names this process on its leases; ``ids`` mints the notices posted
        after a permanent failure (none without it)."""
        self._store = store
        self._clock = clock
        self._adapters = adapters
        self._metrics = metrics
        self._owner = owner
        self._settings = settings
        self._jitter = jitter
        self._ids = ids
        self._dispatcher = Dispatcher(store, adapters=adapters)
        self._workers = TaskOwner("delivery")
        self._active: dict[str, asyncio.Task[None]] = {}
        self._rooms: dict[str, _Room] = {}
        self._hot: dict[str, RoomRef] = {}
        """Rooms with fresh work and no worker here: leased without asking the database."""
        self._blocked: dict[str, float] = {}
        """Room key -> monotonic time before which its head is not due (a retry waits)."""
        self._elsewhere: dict[str, float] = {}
        """Room key -> monotonic time until which polling leaves it to the replica holding it."""
        self._wake = asyncio.Event()
        self._poll_now = False
        self._starved = False
        self._stopping = False

    def notify(self) -> None:
        """New work may be due anywhere: every worker looks now, and the database is asked."""
        for room in self._rooms.values():
            room.wake.set()
        self._poll_now = True
        self._wake.set()

    def offer(self, results: Sequence[AppendResult]) -> None:
        """Freshly stored events: wake their rooms' workers, or lease their rooms now."""
        for result in results:
            if result.duplicate:
                continue
            for mirror in result.event.mirrors:
                if mirror.settled:
                    continue
                worked = self._rooms.get(mirror.room.key)
                if worked is not None:
                    worked.wake.set()
                else:
                    self._hot[mirror.room.key] = mirror.room
                    self._wake.set()

    @property
    def active_rooms(self) -> int:
        return len(self._active)

    async def run(self) -> None:
        """Lease and drain rooms until ``stop``."""
        renewer = self._workers.start(self._keep_leases(), name="delivery-leases")
        loop = asyncio.get_running_loop()  # polling is paced in real time
        next_poll = 0.0
        try:
            while not self._stopping:
                self._wake.clear()
                await self._lease(dict(self._hot), polled=False)
                if self._poll_now or loop.time() >= next_poll:
                    self._poll_now = False
                    next_poll = loop.time() + self._settings.poll_interval_s
                    polled = await self._rooms_with_work()
                    await self._lease({r.key: r for r in polled}, polled=True)
                timeout = max(0.0, next_poll - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            renewer.cancel()

    async def _rooms_with_work(self) -> list[RoomRef]:
        try:
            return await self._store.rooms_with_work(limit=10 * self._settings.max_rooms)
        except StoreError:
            log.warning("outbox_poll_failed")
            return []

    async def _lease(self, candidates: Mapping[str, RoomRef], *, polled: bool) -> None:
        """Start a worker for each candidate room that is due, free and leasable.

        ``polled``: found in the database rather than stored here; such a room that
        another replica holds is not asked for again until a third of a lease later."""
        ttl = timedelta(seconds=self._settings.lease_ttl_s)
        for key, room in candidates.items():
            if self._stopping:
                return
            worked = self._rooms.get(key)
            if worked is not None:
                worked.wake.set()  # work another replica stored for a room worked here
                self._hot.pop(key, None)
                continue
            if key in self._active or len(self._active) >= self._settings.max_rooms:
                self._starved = True  # a worker is finishing, or no slot: tried again
                continue
            self._hot.pop(key, None)
            now = self._clock.monotonic()
            if self._blocked.get(key, 0.0) > now or (
                polled and self._elsewhere.get(key, 0.0) > now
            ):
                continue
            try:
                leased = await self._store.lease_room(
                    room, self._owner, now=self._clock.now(), ttl=ttl
                )
            except StoreError:
                log.warning("outbox_lease_failed")
                if not polled:
                    self._hot[key] = room
                return
            if not leased:
                self._elsewhere[key] = now + self._settings.lease_ttl_s / 3
            elif key not in self._active:
                self._elsewhere.pop(key, None)
                self._rooms[key] = _Room(room)
                task = self._workers.start(self._drain(self._rooms[key]), name=key)
                self._active[key] = task
                task.add_done_callback(self._forget(key))

    def _forget(self, key: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._active.pop(key, None)
            if self._starved:  # a slot is free, and some room waited for one
                self._starved = False
                self._poll_now = True
                self._wake.set()

        return done

    async def _keep_leases(self) -> None:
        """Renew the leases of every room worked here, in one call; flag the lost ones."""
        ttl = timedelta(seconds=self._settings.lease_ttl_s)
        while True:
            await asyncio.sleep(self._settings.lease_ttl_s / 3)
            rooms = list(self._rooms.values())
            try:
                held = await self._store.renew_rooms(
                    [r.room for r in rooms], self._owner, now=self._clock.now(), ttl=ttl
                )
            except StoreError:
                continue  # try again; the leases outlive a few missed renewals
            for worked in rooms:
                if worked.room.key not in held and not worked.lost:
                    log.warning("outbox_lease_lost", target=worked.room.key)
                    worked.lost = True
                    worked.wake.set()

    async def stop(self, *, deadline_s: float) -> None:
        """Stop leasing; let workers finish the event in hand within the deadline."""
        self._stopping = True
        self._wake.set()
        for room in self._rooms.values():
            room.wake.set()  # lingering workers leave at once
        pending = list(self._active.values())
        if pending:
            _, still = await asyncio.wait(pending, timeout=deadline_s)
            if still:
                log.warning("delivery_drain_deadline", rooms=len(still))
        await self._workers.close()

    async def _drain(self, worked: _Room) -> None:
        """Deliver a leased room's queue; linger a little for more, then release it.

        The queue is read again only when the worker was woken (new work) or the last
        read was full, so a busy room costs one read per batch, not per message."""
        room = worked.room
        held_until = self._clock.monotonic() + self._settings.max_hold_s
        blocked_until: datetime | None = None
        with structlog.contextvars.bound_contextvars(target=room.key):
            try:
                while not self._stopping and not worked.lost:
                    if not worked.wake.is_set():
                        try:
                            await asyncio.wait_for(worked.wake.wait(), self._settings.linger_s)
                        except TimeoutError:
                            break
                        continue
                    worked.wake.clear()
                    entries = await self._store.pending(room, limit=self._settings.batch)
                    if len(entries) >= self._settings.batch:
                        worked.wake.set()  # more behind this batch
                    blocked_until = await self._deliver_in_order(room, entries, worked)
                    if blocked_until is not None or (
                        self._starved and self._clock.monotonic() >= held_until
                    ):
                        break  # a retry waits, or give the slot to rooms that wait for one
            except StoreError:
                log.warning("delivery_store_failed")
            finally:
                await self._leave(worked, blocked_until)

    async def _leave(self, worked: _Room, blocked_until: datetime | None) -> None:
        room = worked.room
        self._rooms.pop(room.key, None)
        if blocked_until is not None:
            wait = (blocked_until - self._clock.now()).total_seconds()
            self._blocked[room.key] = self._clock.monotonic() + max(0.0, wait)
        else:
            self._blocked.pop(room.key, None)
        if worked.wake.is_set() and blocked_until is None and not self._stopping:
            self._hot[room.key] = room  # woken meanwhile: lease it again at once
            self._wake.set()
        try:
            await self._store.release_room(room, self._owner, until=blocked_until)
        except StoreError:
            log.warning("outbox_release_failed")  # the lease expires on its own

    async def _deliver_in_order(
        self, room: RoomRef, entries: list[OutboxEntry], worked: _Room
    ) -> datetime | None:
        """Deliver entries in order; the time the room must wait for, when its head is not
        due (None when every entry was settled).

        Deliveries are recorded together, in one write, before returning: a crash before
        that write sends them again under the same idempotency keys, which the adapters
        turn into no-ops (Matrix transaction ids, Teams create records)."""
        sent: list[tuple[EventID, Mirror]] = []
        try:
            return await self._deliver_entries(room, entries, worked, sent)
        finally:
            try:
                if sent:
                    await self._store.set_mirrors(sent)
            finally:
                self._dispatcher.recorded(room)

    async def _deliver_entries(
        self,
        room: RoomRef,
        entries: list[OutboxEntry],
        worked: _Room,
        sent: list[tuple[EventID, Mirror]],
    ) -> datetime | None:
        adapter = self._adapters.get(room.platform)
        index = 0
        while index < len(entries):
            if self._stopping or worked.lost:
                return None
            entry = entries[index]
            if not self._due(entry):
                return entry.not_before
            if isinstance(adapter, SupportsBatchSend):
                batch = self._batchable_run(entries[index:])
                if len(batch) >= 2:
                    blocked = await self._deliver_batch(adapter, room, batch, sent)
                    if blocked is not None:
                        return blocked
                    index += len(batch)
                    continue
            blocked = await self._deliver_one(room, entry, sent)
            if blocked is not None:
                return blocked
            index += 1
        return None

    def _due(self, entry: OutboxEntry) -> bool:
        return entry.not_before is None or entry.not_before <= self._clock.now()

    async def _deliver_one(
        self, room: RoomRef, entry: OutboxEntry, sent: list[tuple[EventID, Mirror]]
    ) -> datetime | None:
        event, mirror = entry.event, entry.mirror
        if mirror.settled:
            await self._store.set_mirror(event.id, mirror)  # takes it off the queue
            return None
        adapter = self._adapters.get(room.platform)
        if adapter is None:
            await self._settle(event, mirror, error=f"no {room.platform.value} adapter")
            return None
        with structlog.contextvars.bound_contextvars(event_id=event.id, kind=event.kind.value):
            outcome: RemoteMessageID | DeliveryError | None
            try:
                outcome = await self._dispatcher.dispatch(
                    adapter, event, room, idempotency_key(event, room)
                )
            except DeliveryError as exc:
                outcome = exc
            return await self._record(room, event, mirror, outcome, sent)

    def _batchable_run(self, entries: list[OutboxEntry]) -> list[OutboxEntry]:
        """The leading due entries that are plain new messages (no reply, thread, relation
        or attachment)."""
        run: list[OutboxEntry] = []
        for entry in entries[: self._settings.max_batch]:
            event = entry.event
            if (
                not self._due(entry)
                or event.kind not in _BATCHABLE
                or event.relations
                or event.body.attachments  # files are carried by the dispatcher, one by one
                or entry.mirror.settled
            ):
                break
            run.append(entry)
        return run

    async def _deliver_batch(
        self,
        adapter: SupportsBatchSend,
        room: RoomRef,
        batch: list[OutboxEntry],
        sent: list[tuple[EventID, Mirror]],
    ) -> datetime | None:
        """Hand several plain messages to the adapter at once (it may combine them)."""
        messages = [OutboundMessage(event=e.event, target=room) for e in batch]
        keys = [idempotency_key(e.event, room) for e in batch]
        outcomes = await adapter.send_batch(messages, idempotency_keys=keys)
        blocked: datetime | None = None
        for entry, outcome in zip(batch, outcomes, strict=True):
            result: RemoteMessageID | DeliveryError = (
                outcome if isinstance(outcome, DeliveryError) else outcome.message_id
            )
            wait = await self._record(room, entry.event, entry.mirror, result, sent)
            blocked = blocked or wait
        return blocked

    async def _record(
        self,
        room: RoomRef,
        event: TimelineEvent,
        mirror: Mirror,
        outcome: RemoteMessageID | DeliveryError | None,
        sent: list[tuple[EventID, Mirror]],
    ) -> datetime | None:
        """Record one outcome on the mirror (a delivery: in ``sent``, written later); the
        time the room must wait for a retry."""
        if isinstance(outcome, PermanentDeliveryError) or (
            isinstance(outcome, DeliveryError) and not outcome.retryable
        ):
            await self._settle(event, mirror, error=str(outcome))
            return None
        now = self._clock.now()
        if isinstance(outcome, DeliveryError):
            delay = backoff_delay(
                mirror.attempts, outcome.retry_after, self._settings, self._jitter()
            )
            not_before = now + timedelta(seconds=delay)
            await self._store.set_mirror(
                event.id,
                replace(
                    mirror,
                    status=MirrorStatus.RETRYING,
                    attempts=mirror.attempts + 1,
                    error=str(outcome),
                    updated_at=now,
                    not_before=not_before,
                ),
            )
            self._metrics.deliveries.labels(platform=room.platform.value, outcome="retry").inc()
            log.info("delivery_retry_scheduled", delay_s=round(delay, 3), error=str(outcome))
            return not_before
        delivered = replace(
            mirror,
            status=MirrorStatus.SENT,
            message_id=outcome,
            attempts=mirror.attempts + 1,
            error=None,
            updated_at=now,
            not_before=None,
        )
        sent.append((event.id, delivered))
        if outcome is not None:
            self._dispatcher.delivered(room, event.id, outcome)
        self._metrics.deliveries.labels(platform=room.platform.value, outcome="sent").inc()
        self._metrics.delivery_seconds.labels(platform=room.platform.value).observe(
            max(0.0, (now - event.received_at).total_seconds())
        )
        return None

    async def _settle(self, event: TimelineEvent, mirror: Mirror, *, error: str) -> None:
        await self._store.set_mirror(
            event.id,
            replace(
                mirror,
                status=MirrorStatus.FAILED,
                attempts=mirror.attempts + 1,
                error=error,
                updated_at=self._clock.now(),
                not_before=None,
            ),
        )
        self._metrics.deliveries.labels(platform=mirror.room.platform.value, outcome="failed").inc()
        log.warning("delivery_failed", error=error)
        await self._tell_origin(event, mirror.room, error)

    async def _tell_origin(self, event: TimelineEvent, target: RoomRef, error: str) -> None:
        """A visible notice in the room the event came from: it did not reach the other side."""
        if event.origin.platform is Platform.BRIDGE or self._ids is None:
            return  # the bridge's own notices do not beget more notices
        what = _WHAT.get(event.kind, event.kind.value)
        excerpt = event.body.text if len(event.body.text) <= 80 else event.body.text[:77] + "..."
        suffix = f' ("{excerpt}")' if excerpt and event.kind is Kind.MESSAGE else ""
        notice = bridge_notice(
            ids=self._ids,
            now=self._clock.now(),
            key=f"undelivered:{event.id}:{target.key}",
            text=(
                f"⚠ The {what} by {event.sender.display_name}{suffix} could not be delivered "
                f"to {target.platform.value.capitalize()}: {error}"
            ),
            incident_id=event.incident_id,
            data={"undelivered": event.id, "target": target.key, "error": error},
        )
        self.offer([await self._store.append(notice, [event.origin.room])])


class _Room:
    """A room worked by this process: its wake-up and whether its lease was lost."""

    __slots__ = ("lost", "room", "wake")

    def __init__(self, room: RoomRef) -> None:
        self.room = room
        self.wake = asyncio.Event()
        self.wake.set()  # read the queue first thing
        self.lost = False
