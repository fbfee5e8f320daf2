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
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

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
from bridge.timeline.indexes import ensure_indexes
from bridge.timeline.rules import scope_query, unsettled, with_pending_mirrors

Doc = dict[str, Any]


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
        outbox_retention: timedelta = timedelta(days=7),
    ) -> None:
        self._client = client
        self._clock = clock
        self._db: AsyncDatabase[Doc] = client.get_database(database, write_concern=write_concern)
        self._timeline: AsyncCollection[Doc] = self._db["timeline"]
        self._outbox: AsyncCollection[Doc] = self._db["outbox"]
        self._leases: AsyncCollection[Doc] = self._db["outbox_leases"]
        self._links: AsyncCollection[Doc] = self._db["room_links"]
        self._retention = outbox_retention

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
            await ensure_indexes(self._db, outbox_retention=self._retention)

    # -- timeline -------------------------------------------------------------
    async def append(self, event: TimelineEvent, targets: Sequence[RoomRef]) -> AppendResult:
        event = with_pending_mirrors(event, targets, self._clock.now())
        duplicate = False
        async with store_errors("appending an event"):
            try:
                await self._timeline.insert_one(codec.event_doc(event))
            except DuplicateKeyError:
                existing = await self.find_by_origin(event.origin, event.kind, event.origin_variant)
                if existing is None:
                    raise StoreError("event id collision on append") from None
                event, duplicate = existing, True
            await self._ensure_outbox(event, targets)
        return AppendResult(event=event, duplicate=duplicate)

    async def _ensure_outbox(self, event: TimelineEvent, targets: Sequence[RoomRef]) -> None:
        # A target whose mirror is settled (sent or failed) is never queued again,
        # even if its outbox entry has since expired: a replay must not resend.
        due = [t for t in targets if unsettled(event.mirror_in(t))]
        if not due:
            return
        ops = [
            UpdateOne(
                {"_id": codec.outbox_id(event.id, target)},
                {"$setOnInsert": codec.outbox_doc(event, target)},
                upsert=True,
            )
            for target in due
        ]
        await self._outbox.bulk_write(ops, ordered=False)

    async def repair_outbox(self, *, received_before: datetime, limit: int) -> int:
        query = {
            "mirrors.status": {"$in": ["pending", "retrying"]},
            "received_at": {"$lte": codec.to_ms(received_before)},
        }
        async with store_errors("repairing the outbox"):
            docs = await self._timeline.find(query).limit(limit).to_list()
            for doc in docs:
                event = codec.event_from(doc)
                await self._ensure_outbox(event, [m.room for m in event.mirrors])
        return len(docs)

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
        query = {
            "mirrors": {
                "$elemMatch": {"room_key": message.room.key, "message_id": message.message_id}
            }
        }
        async with store_errors("looking up a mirror"):
            doc = await self._timeline.find_one(query)
        return codec.event_from(doc) if doc else None

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
        doc = codec.mirror_doc(mirror)
        async with store_errors("recording a mirror"):
            result = await self._timeline.update_one(
                {"_id": event_id, "mirrors.room_key": mirror.room.key},
                {"$set": {"mirrors.$": doc}},
            )
            if result.matched_count == 0:
                await self._timeline.update_one({"_id": event_id}, {"$push": {"mirrors": doc}})

    async def set_incident(self, event_id: EventID, incident_id: IncidentID) -> None:
        async with store_errors("setting an incident"):
            await self._timeline.update_one(
                {"_id": event_id}, {"$set": {"incident_id": incident_id}}
            )

    # -- outbox ---------------------------------------------------------------
    async def lease_rooms(
        self, owner: str, *, now: datetime, ttl: timedelta, limit: int
    ) -> list[RoomRef]:
        now = codec.to_ms(now)
        pipeline: list[Doc] = [
            {"$match": {"state": "pending"}},
            {"$sort": {"room_key": ASCENDING, "event_id": ASCENDING}},
            {
                "$group": {
                    "_id": "$room_key",
                    "target": {"$first": "$target"},
                    "not_before": {"$first": "$not_before"},
                }
            },
            {"$match": {"not_before": {"$lte": now}}},
        ]
        leased: list[RoomRef] = []
        async with store_errors("leasing outbox rooms"):
            candidates = await (await self._outbox.aggregate(pipeline)).to_list()
            for candidate in candidates:
                if len(leased) >= limit:
                    break
                if await self._acquire(candidate["_id"], owner, now, ttl):
                    leased.append(codec.room_from(candidate["target"]))
        return leased

    async def _acquire(self, room_key: str, owner: str, now: datetime, ttl: timedelta) -> bool:
        try:
            await self._leases.update_one(
                {"_id": room_key, "$or": [{"until": {"$lte": now}}, {"owner": owner}]},
                {"$set": {"owner": owner, "until": now + ttl}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False  # another owner holds a live lease
        return True

    async def renew_room(self, room: RoomRef, owner: str, *, now: datetime, ttl: timedelta) -> bool:
        now = codec.to_ms(now)
        async with store_errors("renewing an outbox lease"):
            result = await self._leases.update_one(
                {"_id": room.key, "owner": owner, "until": {"$gt": now}},
                {"$set": {"until": now + ttl}},
            )
        return result.matched_count == 1

    async def release_room(self, room: RoomRef, owner: str) -> None:
        async with store_errors("releasing an outbox room"):
            await self._leases.delete_one({"_id": room.key, "owner": owner})

    async def pending_entries(self, room: RoomRef, *, limit: int) -> list[OutboxEntry]:
        async with store_errors("reading the outbox"):
            docs = await (
                self._outbox.find({"room_key": room.key, "state": "pending"})
                .sort("event_id", ASCENDING)
                .limit(limit)
                .to_list()
            )
        return [codec.outbox_from(d) for d in docs]

    async def complete_entry(self, entry_id: OutboxEntryID) -> None:
        await self._finish(entry_id, "done", None)

    async def fail_entry(self, entry_id: OutboxEntryID, *, error: str) -> None:
        await self._finish(entry_id, "failed", error)

    async def _finish(self, entry_id: OutboxEntryID, state: str, error: str | None) -> None:
        update = {"state": state, "done_at": codec.to_ms(self._clock.now()), "last_error": error}
        async with store_errors("settling an outbox entry"):
            await self._outbox.update_one({"_id": entry_id}, {"$set": update})

    async def retry_entry(
        self, entry_id: OutboxEntryID, *, not_before: datetime, error: str
    ) -> None:
        async with store_errors("rescheduling an outbox entry"):
            await self._outbox.update_one(
                {"_id": entry_id},
                {
                    "$set": {"not_before": codec.to_ms(not_before), "last_error": error},
                    "$inc": {"attempts": 1},
                },
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
