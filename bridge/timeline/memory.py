"""An in-memory ``TimelineStore`` and ``StateStore`` with the MongoDB store's behaviour.

For tests and for trying the bridge without a database. It stores the same
documents as the MongoDB store (through ``codec``), so precision and
ordering match; the contract suite runs against both.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from bridge.errors import DependencyUnavailableError, StoreError
from bridge.model import (
    AppendResult,
    EventID,
    IncidentID,
    Kind,
    Mirror,
    OutboxEntry,
    Page,
    RemoteRef,
    RoomLink,
    RoomRef,
    TimelineEvent,
)
from bridge.ports import Clock
from bridge.timeline import codec
from bridge.timeline.rules import scope_query, with_pending_mirrors

Doc = dict[str, Any]


def _origin_key(doc: Mapping[str, Any]) -> tuple[str, ...]:
    origin = doc["origin"]
    return (
        origin["platform"],
        origin["room_id"],
        origin["message_id"],
        doc["kind"],
        doc["origin_variant"],
    )


def _sort_key(doc: Mapping[str, Any]) -> tuple[datetime, str]:
    return doc["occurred_at"], doc["_id"]


class MemoryTimelineStore:
    """A fake of ``MongoTimelineStore`` that keeps everything in dictionaries."""

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self._events: dict[str, Doc] = {}
        self._by_origin: dict[tuple[str, ...], str] = {}
        self._queues: dict[str, set[str]] = {}
        """Room key -> ids of the events queued for it (the stored ``queue`` fields)."""
        self._by_mirror: dict[tuple[str, str], str] = {}
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._links: dict[str, Doc] = {}
        self.available = True
        """Set to False to make every call fail as if the database were down."""

    def _check(self) -> None:
        if not self.available:
            raise StoreError("the in-memory store is switched off")

    async def ping(self) -> None:
        if not self.available:
            raise DependencyUnavailableError("MongoDB", "the in-memory store is switched off")

    async def ensure_indexes(self) -> None:
        self._check()

    async def append(self, event: TimelineEvent, targets: Sequence[RoomRef]) -> AppendResult:
        (result,) = await self.append_many([(event, targets)])
        return result

    async def append_many(
        self, batch: Sequence[tuple[TimelineEvent, Sequence[RoomRef]]]
    ) -> list[AppendResult]:
        self._check()
        now = self._clock.now()
        return [self._append_one(with_pending_mirrors(e, t, now)) for e, t in batch]

    def _append_one(self, event: TimelineEvent) -> AppendResult:
        doc = codec.event_doc(event)
        key = _origin_key(doc)
        existing_id = self._by_origin.get(key)
        if existing_id is not None:
            stored = codec.event_from(copy.deepcopy(self._events[existing_id]))
            return AppendResult(event=stored, duplicate=True)
        if doc["_id"] in self._events:
            raise StoreError("event id collision on append")
        self._events[doc["_id"]] = doc
        self._by_origin[key] = doc["_id"]
        for room_key in doc["queue"]:
            self._queues.setdefault(room_key, set()).add(doc["_id"])
        for mirror in doc["mirrors"]:
            self._index_mirror(doc["_id"], mirror)
        return AppendResult(event=codec.event_from(copy.deepcopy(doc)), duplicate=False)

    def _index_mirror(self, event_id: str, mirror: Doc) -> None:
        if mirror["message_id"] is not None:
            self._by_mirror.setdefault((mirror["room_key"], mirror["message_id"]), event_id)

    async def get(self, event_id: EventID) -> TimelineEvent | None:
        self._check()
        doc = self._events.get(event_id)
        return codec.event_from(copy.deepcopy(doc)) if doc else None

    async def find_by_origin(
        self, origin: RemoteRef, kind: Kind, variant: str = ""
    ) -> TimelineEvent | None:
        self._check()
        key = (origin.platform.value, origin.room.room_id, origin.message_id, kind.value, variant)
        event_id = self._by_origin.get(key)
        return await self.get(EventID(event_id)) if event_id else None

    async def find_by_mirror(self, message: RemoteRef) -> TimelineEvent | None:
        self._check()
        event_id = self._by_mirror.get((message.room.key, message.message_id))
        return await self.get(EventID(event_id)) if event_id else None

    async def timeline(
        self,
        *,
        incident_id: IncidentID | None = None,
        room: RoomRef | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        self._check()
        scope = scope_query(incident_id, room)
        field, value = next(iter(scope.items()))
        docs = sorted((d for d in self._events.values() if d[field] == value), key=_sort_key)
        if cursor is not None:
            after = codec.decode_cursor(cursor)
            docs = [d for d in docs if _sort_key(d) > after]
        page = docs[: limit + 1]
        events = tuple(codec.event_from(copy.deepcopy(d)) for d in page[:limit])
        next_cursor = (
            codec.encode_cursor(events[-1].occurred_at, events[-1].id)
            if len(page) > limit
            else None
        )
        return Page(events=events, next_cursor=next_cursor)

    async def set_mirror(self, event_id: EventID, mirror: Mirror) -> None:
        await self.set_mirrors([(event_id, mirror)])

    def _set_mirror(self, event_id: EventID, mirror: Mirror) -> None:
        doc = self._events.get(event_id)
        if doc is None:
            return
        new = codec.mirror_doc(mirror)
        mirrors = [m for m in doc["mirrors"] if m["room_key"] != new["room_key"]]
        position = next(
            (i for i, m in enumerate(doc["mirrors"]) if m["room_key"] == new["room_key"]),
            len(mirrors),
        )
        mirrors.insert(position, new)
        doc["mirrors"] = mirrors
        self._index_mirror(event_id, new)
        queue = self._queues.setdefault(new["room_key"], set())
        if mirror.settled:
            queue.discard(event_id)
            doc["queue"] = [k for k in doc["queue"] if k != new["room_key"]]
        else:
            queue.add(event_id)
            if new["room_key"] not in doc["queue"]:
                doc["queue"] = [*doc["queue"], new["room_key"]]

    async def set_mirrors(self, updates: Sequence[tuple[EventID, Mirror]]) -> None:
        self._check()
        for event_id, mirror in updates:
            self._set_mirror(event_id, mirror)

    async def set_incident(self, event_id: EventID, incident_id: IncidentID) -> None:
        self._check()
        if event_id in self._events:
            self._events[event_id]["incident_id"] = incident_id

    # -- outbox ---------------------------------------------------------------
    async def pending(self, room: RoomRef, *, limit: int) -> list[OutboxEntry]:
        self._check()
        queued = sorted(self._queues.get(room.key, ()))[:limit]
        return [codec.outbox_from(copy.deepcopy(self._events[i]), room) for i in queued]

    async def rooms_with_work(self, *, limit: int) -> list[RoomRef]:
        self._check()
        keys = sorted(k for k, queued in self._queues.items() if queued)
        return [codec.room_from_key(k) for k in keys[:limit]]

    async def lease_room(self, room: RoomRef, owner: str, *, now: datetime, ttl: timedelta) -> bool:
        self._check()
        now = codec.to_ms(now)
        holder = self._leases.get(room.key)
        if holder is not None and holder[0] != owner and holder[1] > now:
            return False
        self._leases[room.key] = (owner, now + ttl)
        return True

    async def renew_rooms(
        self, rooms: Sequence[RoomRef], owner: str, *, now: datetime, ttl: timedelta
    ) -> set[str]:
        self._check()
        now = codec.to_ms(now)
        held: set[str] = set()
        for room in rooms:
            holder = self._leases.get(room.key)
            if holder is not None and holder[0] == owner and holder[1] > now:
                self._leases[room.key] = (owner, now + ttl)
                held.add(room.key)
        return held

    async def release_room(
        self, room: RoomRef, owner: str, *, until: datetime | None = None
    ) -> None:
        self._check()
        holder = self._leases.get(room.key)
        if holder is None or holder[0] != owner:
            return
        if until is None:
            del self._leases[room.key]
        else:
            self._leases[room.key] = ("", codec.to_ms(until))

    # -- room links -----------------------------------------------------------
    async def save_link(self, link: RoomLink) -> None:
        self._check()
        doc = codec.link_doc(link)
        self._links[doc["_id"]] = doc

    async def remove_link(self, link: RoomLink) -> None:
        self._check()
        self._links.pop(codec.link_id(link), None)

    async def links_for(self, room: RoomRef) -> list[RoomLink]:
        self._check()
        return [codec.link_from(d) for d in self._links.values() if room.key in d["room_keys"]]

    async def all_links(self) -> list[RoomLink]:
        self._check()
        return [codec.link_from(self._links[k]) for k in sorted(self._links)]


class MemoryStateStore:
    """A fake of ``MongoStateStore``."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], Doc] = {}

    async def insert_once(self, namespace: str, key: str, value: Mapping[str, Any]) -> bool:
        if (namespace, key) in self._data:
            return False
        self._data[namespace, key] = copy.deepcopy(dict(value))
        return True

    async def put(self, namespace: str, key: str, value: Mapping[str, Any]) -> None:
        self._data[namespace, key] = copy.deepcopy(dict(value))

    async def get(self, namespace: str, key: str) -> dict[str, Any] | None:
        value = self._data.get((namespace, key))
        return copy.deepcopy(value) if value is not None else None

    async def delete(self, namespace: str, key: str) -> None:
        self._data.pop((namespace, key), None)
