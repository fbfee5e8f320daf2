"""Delivery: per-room ordered workers that drain the outbox into the other platform.

One loop leases target rooms with due work (leases live in MongoDB, so each
room is drained by one process at a time and a dead process's rooms are taken
over when its leases expire). Each leased room gets one worker that sends its
pending entries in event order; an entry that fails with a retryable error is
rescheduled with capped, jittered exponential backoff (or the platform's
Retry-After) and the room waits for it, so order is never broken. A permanent
failure is recorded on the mirror and the room moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
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


HINTS: Final = 4096
"""Freshly stored events kept in memory for their delivery (spares a read each)."""
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
    poll_interval_s: float = 0.5
    max_rooms: int = 64
    batch: int = 50
    repair_interval_s: float = 30.0
    repair_age_s: float = 10.0
    """Only events older than this are repaired: younger ones may still be mid-append."""
    max_hold_s: float = 10.0
    """A busy room is given back (and leased again) after this long, so that more busy
    rooms than ``max_rooms`` all get turns instead of some starving."""
    linger_s: float = 2.0
    """An idle worker keeps its room this long, so the next message skips the lease round trip."""
    max_batch: int = 20
    """At most this many plain messages are handed over at once to an adapter that batches."""
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0


def idempotency_key(event: TimelineEvent, room: RoomRef) -> str:
    """Stable across retries and restarts, unique per (event, target room)."""
    digest = hashlib.sha256(room.key.encode()).hexdigest()[:12]
    return f"ib{event.id}{digest}"


def backoff_delay(
    attempts: int, retry_after: float | None, settings: DeliverySettings, jitter: float
) -> float:
    """Capped exponential backoff with jitter, never shorter than the platform asked."""
    delay = min(settings.backoff_cap_s, settings.backoff_base_s * 2.0**attempts)
    delay *= 0.5 + jitter
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, settings.backoff_cap_s)


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
        """``ids`` mints the notices posted after a permanent failure (none without it)."""
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
        self._room_wakes: dict[str, asyncio.Event] = {}
        self._hints: OrderedDict[EventID, TimelineEvent] = OrderedDict()
        self._wake = asyncio.Event()
        self._stopping = False

    def notify(self) -> None:
        """New work may be due somewhere: every worker and the lease loop look now."""
        for wake in self._room_wakes.values():
            wake.set()
        self._wake.set()

    def offer(self, results: Sequence[AppendResult]) -> None:
        """Freshly stored events: wake their rooms' workers and spare them a read."""
        for result in results:
            if result.duplicate or not result.event.mirrors:
                continue
            self._hints[result.event.id] = result.event
            while len(self._hints) > HINTS:
                self._hints.popitem(last=False)
            for mirror in result.event.mirrors:
                wake = self._room_wakes.get(mirror.room.key)
                if wake is not None:
                    wake.set()
        self._wake.set()

    async def _event(self, event_id: EventID) -> TimelineEvent | None:
        hinted = self._hints.pop(event_id, None)
        return hinted if hinted is not None else await self._store.get(event_id)

    @property
    def active_rooms(self) -> int:
        return len(self._active)

    async def run(self) -> None:
        """Lease and drain rooms until ``stop``."""
        ttl = timedelta(seconds=self._settings.lease_ttl_s)
        next_repair = 0.0
        while not self._stopping:
            if self._clock.monotonic() >= next_repair:
                next_repair = self._clock.monotonic() + self._settings.repair_interval_s
                await self._repair()
            self._wake.clear()
            free = self._settings.max_rooms - len(self._active)
            if free > 0:
                try:
                    rooms = await self._store.lease_rooms(
                        self._owner, now=self._clock.now(), ttl=ttl, limit=free
                    )
                except StoreError:
                    log.warning("outbox_lease_failed")
                    rooms = []
                for room in rooms:
                    if room.key not in self._active and not self._stopping:
                        task = self._workers.start(self._drain(room), name=room.key)
                        self._active[room.key] = task
                        task.add_done_callback(self._forget(room.key))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.poll_interval_s)

    async def _repair(self) -> None:
        """Re-queue events whose outbox entries a crash lost (any replica's)."""
        cutoff = self._clock.now() - timedelta(seconds=self._settings.repair_age_s)
        try:
            await self._store.repair_outbox(received_before=cutoff, limit=1000)
        except StoreError:
            log.warning("outbox_repair_failed")

    def _forget(self, key: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._active.pop(key, None)

        return done

    async def stop(self, *, deadline_s: float) -> None:
        """Stop leasing; let workers finish the entry in hand within the deadline."""
        self._stopping = True
        self._wake.set()
        for wake in self._room_wakes.values():
            wake.set()  # lingering workers leave at once
        pending = list(self._active.values())
        if pending:
            _, still = await asyncio.wait(pending, timeout=deadline_s)
            if still:
                log.warning("delivery_drain_deadline", rooms=len(still))
        await self._workers.close()

    async def _drain(self, room: RoomRef) -> None:
        """Deliver a leased room's entries; linger a little for more, then release it."""
        wake = asyncio.Event()
        self._room_wakes[room.key] = wake
        lost = asyncio.Event()
        renewer = self._workers.start(self._keep_lease(room, lost), name=f"lease:{room.key}")
        held_until = self._clock.monotonic() + self._settings.max_hold_s
        with structlog.contextvars.bound_contextvars(target=room.key):
            try:
                while not self._stopping and not lost.is_set():
                    wake.clear()
                    entries = await self._store.pending_entries(room, limit=self._settings.batch)
                    if entries:
                        if not await self._deliver_in_order(room, entries, lost):
                            break
                        if self._clock.monotonic() >= held_until:
                            break  # give the slot back: other rooms may be waiting for one
                        continue
                    try:
                        await asyncio.wait_for(wake.wait(), self._settings.linger_s)
                    except TimeoutError:
                        break
            except StoreError:
                log.warning("delivery_store_failed")
            finally:
                self._room_wakes.pop(room.key, None)
                renewer.cancel()
                try:
                    await self._store.release_room(room, self._owner)
                except StoreError:
                    log.warning("outbox_release_failed")  # the lease expires on its own

    async def _keep_lease(self, room: RoomRef, lost: asyncio.Event) -> None:
        """Renew the room's lease while its worker runs; flag it if the lease is lost."""
        ttl = timedelta(seconds=self._settings.lease_ttl_s)
        while True:
            await asyncio.sleep(self._settings.lease_ttl_s / 3)
            try:
                held = await self._store.renew_room(
                    room, self._owner, now=self._clock.now(), ttl=ttl
                )
            except StoreError:
                continue  # try again; the lease outlives a few missed renewals
            if not held:
                log.warning("outbox_lease_lost")
                lost.set()
                return

    async def _deliver_in_order(
        self, room: RoomRef, entries: list[OutboxEntry], lost: asyncio.Event
    ) -> bool:
        """Deliver entries in order; False when the room must wait (head not due)."""
        adapter = self._adapters.get(room.platform)
        index = 0
        while index < len(entries):
            if self._stopping or lost.is_set():
                return False
            entry = entries[index]
            if not self._due(entry):
                return False
            if isinstance(adapter, SupportsBatchSend):
                batch = await self._batchable_run(room, entries[index:])
                if len(batch) >= 2:
                    if not await self._deliver_batch(adapter, room, batch):
                        return False
                    index += len(batch)
                    continue
            if not await self._deliver_one(room, entry):
                return False
            index += 1
        return True

    def _due(self, entry: OutboxEntry) -> bool:
        return entry.not_before is None or entry.not_before <= self._clock.now()

    async def _prepare(
        self, room: RoomRef, entry: OutboxEntry
    ) -> tuple[TimelineEvent, Mirror, ChatAdapter] | None:
        """The event, its mirror and the adapter, or None when the entry is already settled."""
        event = await self._event(entry.event_id)
        if event is None:
            await self._store.fail_entry(entry.id, error="event missing")
            return None
        mirror = event.mirror_in(room) or Mirror(room=room)
        if mirror.status in (MirrorStatus.SENT, MirrorStatus.FAILED):
            await self._store.complete_entry(entry.id)  # settled before a crash
            return None
        adapter = self._adapters.get(room.platform)
        if adapter is None:
            await self._settle(event, entry, mirror, error=f"no {room.platform.value} adapter")
            return None
        return event, mirror, adapter

    async def _deliver_one(self, room: RoomRef, entry: OutboxEntry) -> bool:
        prepared = await self._prepare(room, entry)
        if prepared is None:
            return True
        event, mirror, adapter = prepared
        with structlog.contextvars.bound_contextvars(event_id=event.id, kind=event.kind.value):
            outcome: RemoteMessageID | DeliveryError | None
            try:
                outcome = await self._dispatcher.dispatch(
                    adapter, event, room, idempotency_key(event, room)
                )
            except DeliveryError as exc:
                outcome = exc
            return await self._record(room, entry, event, mirror, outcome)

    async def _batchable_run(
        self, room: RoomRef, entries: list[OutboxEntry]
    ) -> list[tuple[OutboxEntry, TimelineEvent, Mirror]]:
        """The leading due entries that are plain new messages (no reply, thread, relation
        or attachment)."""
        run: list[tuple[OutboxEntry, TimelineEvent, Mirror]] = []
        for entry in entries[: self._settings.max_batch]:
            if not self._due(entry):
                break
            event = await self._event(entry.event_id)
            if (
                event is None
                or event.kind not in _BATCHABLE
                or event.relations
                or event.body.attachments  # files are carried by the dispatcher, one by one
            ):
                if event is not None:
                    self._hints[event.id] = event  # not batched: keep it for the next step
                break
            mirror = event.mirror_in(room) or Mirror(room=room)
            if mirror.status not in (MirrorStatus.PENDING, MirrorStatus.RETRYING):
                break
            run.append((entry, event, mirror))
        return run

    async def _deliver_batch(
        self,
        adapter: SupportsBatchSend,
        room: RoomRef,
        batch: list[tuple[OutboxEntry, TimelineEvent, Mirror]],
    ) -> bool:
        """Hand several plain messages to the adapter at once (it may combine them)."""
        messages = [OutboundMessage(event=event, target=room) for _, event, _ in batch]
        keys = [idempotency_key(event, room) for _, event, _ in batch]
        outcomes = await adapter.send_batch(messages, idempotency_keys=keys)
        keep_going = True
        for (entry, event, mirror), outcome in zip(batch, outcomes, strict=True):
            result: RemoteMessageID | DeliveryError = (
                outcome if isinstance(outcome, DeliveryError) else outcome.message_id
            )
            keep_going = await self._record(room, entry, event, mirror, result) and keep_going
        return keep_going

    async def _record(
        self,
        room: RoomRef,
        entry: OutboxEntry,
        event: TimelineEvent,
        mirror: Mirror,
        outcome: RemoteMessageID | DeliveryError | None,
    ) -> bool:
        """Settle one entry by its outcome; False when the room must wait (a retry is due)."""
        if isinstance(outcome, PermanentDeliveryError) or (
            isinstance(outcome, DeliveryError) and not outcome.retryable
        ):
            await self._settle(event, entry, mirror, error=str(outcome))
            return True
        now = self._clock.now()
        if isinstance(outcome, DeliveryError):
            delay = backoff_delay(
                entry.attempts, outcome.retry_after, self._settings, self._jitter()
            )
            await self._store.set_mirror(
                event.id,
                replace(
                    mirror,
                    status=MirrorStatus.RETRYING,
                    attempts=mirror.attempts + 1,
                    error=str(outcome),
                    updated_at=now,
                ),
            )
            await self._store.retry_entry(
                entry.id, not_before=now + timedelta(seconds=delay), error=str(outcome)
            )
            self._metrics.deliveries.labels(platform=room.platform.value, outcome="retry").inc()
            log.info("delivery_retry_scheduled", delay_s=round(delay, 3), error=str(outcome))
            return False
        await self._store.set_mirror(
            event.id,
            replace(
                mirror,
                status=MirrorStatus.SENT,
                message_id=outcome,
                attempts=mirror.attempts + 1,
                error=None,
                updated_at=now,
            ),
        )
        await self._store.complete_entry(entry.id)
        self._metrics.deliveries.labels(platform=room.platform.value, outcome="sent").inc()
        self._metrics.delivery_seconds.labels(platform=room.platform.value).observe(
            max(0.0, (now - event.received_at).total_seconds())
        )
        return True

    async def _settle(
        self, event: TimelineEvent, entry: OutboxEntry, mirror: Mirror, *, error: str
    ) -> None:
        await self._store.set_mirror(
            event.id,
            replace(
                mirror,
                status=MirrorStatus.FAILED,
                attempts=mirror.attempts + 1,
                error=error,
                updated_at=self._clock.now(),
            ),
        )
        await self._store.fail_entry(entry.id, error=error)
        self._metrics.deliveries.labels(
            platform=entry.target.platform.value, outcome="failed"
        ).inc()
        log.warning("delivery_failed", error=error)
        await self._tell_origin(event, entry.target, error)

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
        await self._store.append(notice, [event.origin.room])
        self.notify()
