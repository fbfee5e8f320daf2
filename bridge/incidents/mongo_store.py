"""The incident store on MongoDB: collection ``incidents``, ids from collection ``counters``.

Every write uses the database's journaled write concern (as the timeline does). ``save``
is a conditional replace on ``version``: two replicas changing one incident at once
cannot lose either change; the second one reads again and reapplies.
"""

from __future__ import annotations

from typing import Any, Final

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from bridge.errors import StoreError
from bridge.incidents import codec
from bridge.incidents.model import Incident, IncidentFilter, IncidentPage
from bridge.model import IncidentID
from bridge.timeline.counters import next_number
from bridge.timeline.mongo import store_errors

Doc = dict[str, Any]

COUNTER_ID: Final = "incidents"
"""The counter document whose ``n`` numbers incidents."""


class MongoIncidentStore:
    """``IncidentStore`` on one MongoDB database (the timeline's, with its write concern)."""

    def __init__(self, database: AsyncDatabase[Doc]) -> None:
        self._incidents: AsyncCollection[Doc] = database["incidents"]
        self._counters: AsyncCollection[Doc] = database["counters"]

    async def ensure_indexes(self) -> None:
        async with store_errors("creating incident indexes"):
            await self._incidents.create_indexes(
                [
                    IndexModel([("room_keys", ASCENDING)], name="incident_rooms"),
                    IndexModel([("open", ASCENDING), ("declared_at", DESCENDING)], name="open"),
                    IndexModel(
                        [("severity", ASCENDING), ("declared_at", DESCENDING)], name="severity"
                    ),
                    IndexModel([("declared_at", DESCENDING), ("_id", DESCENDING)], name="declared"),
                ]
            )

    async def next_id(self) -> IncidentID:
        return IncidentID(f"INC-{await next_number(self._counters, COUNTER_ID)}")

    async def create(self, incident: Incident) -> None:
        doc = codec.incident_doc(incident)
        doc["version"] = 0
        async with store_errors("creating an incident"):
            try:
                await self._incidents.insert_one(doc)
            except DuplicateKeyError as exc:
                raise StoreError(f"incident {incident.id} exists") from exc

    async def get(self, incident_id: IncidentID) -> Incident | None:
        async with store_errors("reading an incident"):
            doc = await self._incidents.find_one({"_id": incident_id})
        return codec.incident_from(doc) if doc is not None else None

    async def save(self, incident: Incident) -> Incident | None:
        doc = codec.incident_doc(incident)
        doc["version"] = incident.version + 1
        async with store_errors("saving an incident"):
            result = await self._incidents.replace_one(
                {"_id": incident.id, "version": incident.version}, doc
            )
        if result.matched_count == 0:
            return None
        return codec.incident_from(doc)

    async def find(
        self, query: IncidentFilter, *, cursor: str | None = None, limit: int = 50
    ) -> IncidentPage:
        wanted = codec.filter_query(query)
        if cursor is not None:
            at, after_id = codec.decode_cursor(cursor)
            wanted = {
                "$and": [
                    wanted,
                    {
                        "$or": [
                            {"declared_at": {"$lt": at}},
                            {"declared_at": at, "_id": {"$lt": after_id}},
                        ]
                    },
                ]
            }
        async with store_errors("finding incidents"):
            docs = await (
                self._incidents.find(wanted)
                .sort([("declared_at", DESCENDING), ("_id", DESCENDING)])
                .limit(limit + 1)
                .to_list()
            )
        incidents = tuple(codec.incident_from(d) for d in docs[:limit])
        next_cursor = (
            codec.encode_cursor(incidents[-1].declared_at, incidents[-1].id)
            if len(docs) > limit
            else None
        )
        return IncidentPage(incidents=incidents, next_cursor=next_cursor)
