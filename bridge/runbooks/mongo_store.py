"""The run store on MongoDB: collection ``runbook_runs``, ids from collection ``counters``.

Every write uses the database's journaled write concern (as the timeline does). A run is
created once per command event (unique index ``command_event``); ``save`` is a
conditional update on ``version`` that never moves the heartbeat backwards (``$max``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from bridge.model import EventID
from bridge.runbooks import codec
from bridge.runbooks.model import Run, RunID, RunState
from bridge.timeline.counters import next_number
from bridge.timeline.mongo import store_errors

Doc = dict[str, Any]

COLLECTION: Final = "runbook_runs"
COUNTER_ID: Final = "runbook_runs"
"""The counter document whose ``n`` numbers runs."""


class MongoRunStore:
    """``RunStore`` on one MongoDB database (the timeline's, with its write concern)."""

    def __init__(self, database: AsyncDatabase[Doc]) -> None:
        self._runs: AsyncCollection[Doc] = database[COLLECTION]
        self._counters: AsyncCollection[Doc] = database["counters"]

    async def ensure_indexes(self) -> None:
        async with store_errors("creating run indexes"):
            await self._runs.create_indexes(
                [
                    IndexModel([("command_event", ASCENDING)], name="command_event", unique=True),
                    IndexModel(
                        [("state", ASCENDING), ("runbook", ASCENDING), ("created_at", ASCENDING)],
                        name="state_runbook",
                    ),
                ]
            )

    async def next_id(self) -> RunID:
        return RunID(f"R-{await next_number(self._counters, COUNTER_ID)}")

    async def create(self, run: Run) -> Run | None:
        doc = codec.run_doc(run)
        doc["version"] = 0
        async with store_errors("creating a run"):
            try:
                await self._runs.insert_one(doc)
            except DuplicateKeyError:
                return None
        return codec.run_from(doc)

    async def get(self, run_id: RunID) -> Run | None:
        async with store_errors("reading a run"):
            doc = await self._runs.find_one({"_id": run_id})
        return codec.run_from(doc) if doc is not None else None

    async def by_command(self, command_event: EventID) -> Run | None:
        async with store_errors("reading a run"):
            doc = await self._runs.find_one({"command_event": command_event})
        return codec.run_from(doc) if doc is not None else None

    async def save(self, run: Run) -> Run | None:
        return await self._conditional({"_id": run.id, "version": run.version}, run)

    async def _conditional(self, query: Doc, run: Run) -> Run | None:
        doc = codec.run_doc(run)
        doc["version"] = run.version + 1
        beat = doc.pop("heartbeat_at")
        doc.pop("_id")
        update: Doc = {"$set": doc}
        if beat is not None:
            update["$max"] = {"heartbeat_at": beat}
        async with store_errors("saving a run"):
            stored = await self._runs.find_one_and_update(
                query, update, return_document=ReturnDocument.AFTER
            )
        return codec.run_from(stored) if stored is not None else None

    async def find(
        self, states: Sequence[RunState], *, runbook: str | None = None, limit: int = 200
    ) -> list[Run]:
        query: Doc = {"state": {"$in": [s.value for s in states]}}
        if runbook is not None:
            query["runbook"] = runbook
        async with store_errors("finding runs"):
            docs = await (
                self._runs.find(query)
                .sort([("created_at", ASCENDING), ("n", ASCENDING)])
                .limit(limit)
                .to_list()
            )
        return [codec.run_from(d) for d in docs]

    async def count(self, runbook: str, states: Sequence[RunState]) -> int:
        async with store_errors("counting runs"):
            return await self._runs.count_documents(
                {"runbook": runbook, "state": {"$in": [s.value for s in states]}}
            )

    async def heartbeat(self, run_ids: Sequence[RunID], owner: str, at: datetime) -> set[RunID]:
        if not run_ids:
            return set()
        query: Doc = {
            "_id": {"$in": list(run_ids)},
            "state": RunState.RUNNING.value,
            "owner": owner,
        }
        async with store_errors("refreshing run heartbeats"):
            await self._runs.update_many(query, {"$max": {"heartbeat_at": at}})
            docs = await self._runs.find(query, {"_id": 1}).to_list()
        return {RunID(d["_id"]) for d in docs}

    async def orphan(self, run: Run, *, stale_before: datetime, owner: str | None) -> Run | None:
        alive: list[Doc] = [
            {"heartbeat_at": None},
            {"heartbeat_at": {"$lt": stale_before}},
        ]
        if owner is not None:
            alive.append({"owner": owner})
        query: Doc = {
            "_id": run.id,
            "version": run.version,
            "state": RunState.RUNNING.value,
            "$or": alive,
        }
        return await self._conditional(query, run)
