"""The timeline store on MongoDB (pymongo's ``AsyncMongoClient``).

Writes that lead to acknowledging a platform use a journaled write concern,
so an acknowledged event survives a crash of the database primary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

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
from bridge.timeline.indexes import ensure_indexes
from bridge.timeline.rules import scope_query, with_pending_mirrors

Doc = dict[str, Any]

_DUPLICATE_KEY = 11000
_MIRROR_CANDIDATES = 8


@asynccontextmanager
async def store_errors(operation: str) -> AsyncIterator[None]:
    """Turn driver errors into ``StoreError`` (retryable), never leaking the URI."""
    try:
        yield
    except DuplicateKeyError:
        raise
    except PyMongoError as exc:
        raise StoreError(f"{operation} failed: {type(exc).__name__}") from exc


class MongoTimelineStore:
    """``TimelineStore`` on one MongoDB database."""

    def __init__(
        self,
        client: AsyncMongoClient[Doc],
        database: str,
        *,
        clock: Clock,
        write_concern: WriteConcern,
    ) -> None:
        self._client = client
        self._clock = clock
        self._db: AsyncDatabase[Doc] = client.get_database(database, write_concern=write_concern)
        self._timeline: AsyncCollection[Doc] = self._db["timeline"]
        self._leases: AsyncCollection[Doc] = self._db["outbox_leases"]
        self._links: AsyncCollection[Doc] = self._db["room_links"]

    @property
    def database(self) -> AsyncDatabase[Doc]:
        return self._db

    async def ping(self) -> None:
        try:
            await self._client.admin.command("ping")
        except PyMongoError as exc:
            raise DependencyUnavailableError("MongoDB", type(exc).__name__) from exc

    async def ensure_indexes(self) -> None:
        async with store_errors("creating indexes"):
            await ensure_indexes(self._db)

    # -- timeline -------------------------------------------------------------
    async def append(self, event: TimelineEvent, targets: Sequence[RoomRef]) -> AppendResult:
        (result,) = await self.append_many([(event, targets)])
        return result

    async def append_many(
        self, batch: Sequence[tuple[TimelineEvent, Sequence[RoomRef]]]
    ) -> list[AppendResult]:
        if not batch:
            return []
        now = self._clock.now()
        events = [with_pending_mirrors(event, targets, now) for event, targets in batch]
        async with store_errors("appending events"):
            try:
                await self._timeline.insert_many(
                    [codec.event_doc(e) for e in events], ordered=False
                )
                failed: set[int] = set()
            except BulkWriteError as exc:
                failed = _duplicate_positions(exc)
            results: list[AppendResult] = []
            for index, event in enumerate(events):
                if index in failed:
                    existing = await self.find_by_origin(
                        event.origin, event.kind, event.origin_variant
                    )
                    if existing is None:
                        raise StoreError("event id collision on append")
                    results.append(AppendResult(event=existing, duplicate=True))
                else:
                    results.append(AppendResult(event=event, duplicate=False))
        return results

    async def get(self, event_id: EventID) -> TimelineEvent | None:
        async with store_errors("reading an event"):
            doc = await self._timeline.find_one({"_id": event_id})
        return codec.event_from(doc) if doc else None

    async def find_by_origin(
        self, origin: RemoteRef, kind: Kind, variant: str = ""
    ) -> TimelineEvent | None:
        query = {
            "origin.platform": origin.platform.value,
            "origin.room_id": origin.room.room_id,
            "origin.message_id": origin.message_id,
            "kind": kind.value,
            "origin_variant": variant,
        }
        async with store_errors("looking up an origin"):
            doc = await self._timeline.find_one(query)
        return codec.event_from(doc) if doc else None

    async def find_by_mirror(self, message: RemoteRef) -> TimelineEvent | None:
        # Dotted fields rather than $elemMatch: some servers only use the index for these.
        # Both may match different mirrors of one event, so each hit is checked here.
        query = {"mirrors.room_key": message.room.key, "mirrors.message_id": message.message_id}
        async with store_errors("looking up a mirror"):
            docs = await self._timeline.find(query).limit(_MIRROR_CANDIDATES).to_list()
        for doc in docs:
            event = codec.event_from(doc)
            mirror = event.mirror_in(message.room)
            if mirror is not None and mirror.message_id == message.message_id:
                return event
        return None

    async def timeline(
        self,
        *,
        incident_id: IncidentID | None = None,
        room: RoomRef | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        query: Doc = scope_query(incident_id, room)
        if cursor is not None:
            after, after_id = codec.decode_cursor(cursor)
            query = {
                "$and": [
                    query,
                    {
                        "$or": [
                            {"occurred_at": {"$gt": after}},
                            {"occurred_at": after, "_id": {"$gt": after_id}},
                        ]
                    },
                ]
            }
        async with store_errors("reading a timeline"):
            docs = await (
                self._timeline.find(query)
                .sort([("occurred_at", ASCENDING), ("_id", ASCENDING)])
                .limit(limit + 1)
                .to_list()
            )
        events = tuple(codec.event_from(d) for d in docs[:limit])
        next_cursor = (
            codec.encode_cursor(events[-1].occurred_at, events[-1].id)
            if len(docs) > limit
            else None
        )
        return Page(events=events, next_cursor=next_cursor)

    async def set_mirror(self, event_id: EventID, mirror: Mirror) -> None:
        await self.set_mirrors([(event_id, mirror)])

    async def set_mirrors(self, updates: Sequence[tuple[EventID, Mirror]]) -> None:
        if not updates:
            return
        # Addressed by _id with an array filter: some servers scan the collection for a
        # positional update matched on the array field.
        ops = [
            UpdateOne(
                {"_id": event_id},
                {"$set": {"mirrors.$[m]": codec.mirror_doc(mirror)}, **_queue_change(mirror)},
                array_filters=[{"m.room_key": mirror.room.key}],
            )
            for event_id, mirror in updates
        ]
        async with store_errors("recording mirrors"):
            result = await self._timeline.bulk_write(ops, ordered=False)
            if result.modified_count < len(ops):  # unchanged, or a mirror not stored yet
                for event_id, mirror in updates:
                    await self._timeline.update_one(
                        {"_id": event_id, "mirrors.room_key": {"$ne": mirror.room.key}},
                        {"$push": {"mirrors": codec.mirror_doc(mirror)}, **_queue_change(mirror)},
                    )

    async def set_incident(self, event_id: EventID, incident_id: IncidentID) -> None:
        async with store_errors("setting an incident"):
            await self._timeline.update_one(
                {"_id": event_id}, {"$set": {"incident_id": incident_id}}
            )

    # -- outbox ---------------------------------------------------------------
    async def pending(self, room: RoomRef, *, limit: int) -> list[OutboxEntry]:
        async with store_errors("reading the outbox"):
            docs = await (
                self._timeline.find({"queue": room.key})
                .sort("_id", ASCENDING)
                .limit(limit)
                .to_list()
            )
        return [codec.outbox_from(d, room) for d in docs]

    async def rooms_with_work(self, *, limit: int) -> list[RoomRef]:
        async with store_errors("looking for outbox work"):
            keys = await self._timeline.distinct("queue")
        return [codec.room_from_key(k) for k in sorted(keys)[:limit]]

    async def lease_room(self, room: RoomRef, owner: str, *, now: datetime, ttl: timedelta) -> bool:
        now = codec.to_ms(now)
        async with store_errors("leasing an outbox room"):
            try:
                await self._leases.update_one(
                    {"_id": room.key, "$or": [{"until": {"$lte": now}}, {"owner": owner}]},
                    {"$set": {"owner": owner, "until": now + ttl}},
                    upsert=True,
                )
            except DuplicateKeyError:
                return False  # another owner holds a live lease
        return True

    async def renew_rooms(
        self, rooms: Sequence[RoomRef], owner: str, *, now: datetime, ttl: timedelta
    ) -> set[str]:
        if not rooms:
            return set()
        now = codec.to_ms(now)
        keys = [r.key for r in rooms]
        live = {"_id": {"$in": keys}, "owner": owner, "until": {"$gt": now}}
        async with store_errors("renewing outbox leases"):
            result = await self._leases.update_many(live, {"$set": {"until": now + ttl}})
            if result.matched_count == len(keys):
                return set(keys)
            held = await self._leases.find(
                {"_id": {"$in": keys}, "owner": owner, "until": {"$gt": now}}, {"_id": 1}
            ).to_list()
        return {d["_id"] for d in held}

    async def release_room(
        self, room: RoomRef, owner: str, *, until: datetime | None = None
    ) -> None:
        async with store_errors("releasing an outbox room"):
            if until is None:
                await self._leases.delete_one({"_id": room.key, "owner": owner})
            else:
                await self._leases.update_one(
                    {"_id": room.key, "owner": owner},
                    {"$set": {"owner": "", "until": codec.to_ms(until)}},
                )

    # -- room links -----------------------------------------------------------
    async def save_link(self, link: RoomLink) -> None:
        doc = codec.link_doc(link)
        async with store_errors("saving a room link"):
            await self._links.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    async def remove_link(self, link: RoomLink) -> None:
        async with store_errors("removing a room link"):
            await self._links.delete_one({"_id": codec.link_id(link)})

    async def links_for(self, room: RoomRef) -> list[RoomLink]:
        async with store_errors("reading room links"):
            docs = await self._links.find({"room_keys": room.key}).to_list()
        return [codec.link_from(d) for d in docs]

    async def all_links(self) -> list[RoomLink]:
        async with store_errors("reading room links"):
            docs = await self._links.find({}).sort("_id", ASCENDING).to_list()
        return [codec.link_from(d) for d in docs]


def _duplicate_positions(exc: BulkWriteError) -> set[int]:
    """The batch positions refused as duplicates; any other write error is re-raised."""
    errors = exc.details.get("writeErrors", [])
    if any(e.get("code") != _DUPLICATE_KEY for e in errors):
        raise exc
    return {int(e["index"]) for e in errors}


def _queue_change(mirror: Mirror) -> Doc:
    """Off the event's queue once settled, on it while still owed."""
    return {"$pull" if mirror.settled else "$addToSet": {"queue": mirror.room.key}}
