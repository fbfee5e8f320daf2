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
    OutboxEntryID,
    Page,
    RemoteRef,
    RoomLink,
    RoomRef,
    TimelineEvent,
)
from bridge.ports import Clock
from bridge.timeline import codec
from bridge.timeline.rules import scope_query, unsettled, with_pending_mirrors

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
        self._outbox: dict[str, Doc] = {}
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
        self._check()
        event = with_pending_mirrors(event, targets, self._clock.now())
        doc = codec.event_doc(event)
        key = _origin_key(doc)
        existing_id = self._by_origin.get(key)
        duplicate = existing_id is not None
        if existing_id is not None:
            event = codec.event_from(copy.deepcopy(self._events[existing_id]))
        else:
            if doc["_id"] in self._events:
                raise StoreError("event id collision on append")
            self._events[doc["_id"]] = doc
            self._by_origin[key] = doc["_id"]
            event = codec.event_from(copy.deepcopy(doc))
        for target in targets:
            if unsettled(event.mirror_in(target)):
                self._outbox.setdefault(
                    codec.outbox_id(event.id, target), codec.outbox_doc(event, target)
                )
        return AppendResult(event=event, duplicate=duplicate)

    async def repair_outbox(self, *, received_before: datetime, limit: int) -> int:
        self._check()
        cutoff = codec.to_ms(received_before)
        looked = 0
        for doc in list(self._events.values()):
            if looked >= limit:
                break
            if doc["received_at"] > cutoff:
                continue
            event = codec.event_from(copy.deepcopy(doc))
            due = [m.room for m in event.mirrors if unsettled(m)]
            if not due:
                continue
            looked += 1
            for target in due:
                self._outbox.setdefault(
                    codec.outbox_id(event.id, target), codec.outbox_doc(event, target)
                )
        return looked

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
        for doc in self._events.values():
            for mirror in doc["mirrors"]:
                if (
                    mirror["room_key"] == message.room.key
                    and mirror["message_id"] == message.message_id
                ):
                    return codec.event_from(copy.deepcopy(doc))
        return None

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
        self._check()
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

    async def set_incident(self, event_id: EventID, incident_id: IncidentID) -> None:
        self._check()
        if event_id in self._events:
            self._events[event_id]["incident_id"] = incident_id

    # -- outbox ---------------------------------------------------------------
    def _heads(self) -> dict[str, Doc]:
        heads: dict[str, Doc] = {}
        for doc in self._outbox.values():
            if doc["state"] != "pending":
                continue
            head = heads.get(doc["room_key"])
            if head is None or doc["event_id"] < head["event_id"]:
                heads[doc["room_key"]] = doc
        return heads

    async def lease_rooms(
        self, owner: str, *, now: datetime, ttl: timedelta, limit: int
    ) -> list[RoomRef]:
        self._check()
        now = codec.to_ms(now)
        leased: list[RoomRef] = []
        for room_key, head in sorted(self._heads().items()):
            if len(leased) >= limit:
                break
            if head["not_before"] > now:
                continue
            holder = self._leases.get(room_key)
            if holder is not None and holder[0] != owner and holder[1] > now:
                continue
            self._leases[room_key] = (owner, now + ttl)
            leased.append(codec.room_from(head["target"]))
        return leased

    async def renew_room(self, room: RoomRef, owner: str, *, now: datetime, ttl: timedelta) -> bool:
        self._check()
        now = codec.to_ms(now)
        holder = self._leases.get(room.key)
        if holder is None or holder[0] != owner or holder[1] <= now:
            return False
        self._leases[room.key] = (owner, now + ttl)
        return True

    async def release_room(self, room: RoomRef, owner: str) -> None:
        self._check()
        holder = self._leases.get(room.key)
        if holder is not None and holder[0] == owner:
            del self._leases[room.key]

    async def pending_entries(self, room: RoomRef, *, limit: int) -> list[OutboxEntry]:
        self._check()
        docs = sorted(
            (
                d
                for d in self._outbox.values()
                if d["room_key"] == room.key and d["state"] == "pending"
            ),
            key=lambda d: d["event_id"],
        )
        return [codec.outbox_from(copy.deepcopy(d)) for d in docs[:limit]]

    async def complete_entry(self, entry_id: OutboxEntryID) -> None:
        self._finish(entry_id, "done", None)

    async def fail_entry(self, entry_id: OutboxEntryID, *, error: str) -> None:
        self._finish(entry_id, "failed", error)

    def _finish(self, entry_id: OutboxEntryID, state: str, error: str | None) -> None:
        self._check()
        doc = self._outbox.get(entry_id)
        if doc is not None:
            doc.update(state=state, done_at=codec.to_ms(self._clock.now()), last_error=error)

    async def retry_entry(
        self, entry_id: OutboxEntryID, *, not_before: datetime, error: str
    ) -> None:
        self._check()
        doc = self._outbox.get(entry_id)
        if doc is not None:
            doc.update(not_before=codec.to_ms(not_before), last_error=error)
            doc["attempts"] += 1

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
