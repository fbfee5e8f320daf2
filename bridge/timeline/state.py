"""Small durable records adapters keep in MongoDB: one collection per namespace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from bridge.timeline.mongo import store_errors

Doc = dict[str, Any]


class MongoStateStore:
    """``StateStore`` on MongoDB: collection ``state_<namespace>``, keyed by ``_id``."""

    def __init__(self, database: AsyncDatabase[Doc]) -> None:
        self._db = database

    def _collection(self, namespace: str) -> AsyncCollection[Doc]:
        return self._db[f"state_{namespace}"]

    async def insert_once(self, namespace: str, key: str, value: Mapping[str, Any]) -> bool:
        async with store_errors("recording adapter state"):
            try:
                await self._collection(namespace).insert_one({**value, "_id": key})
            except DuplicateKeyError:
                return False
        return True

    async def put(self, namespace: str, key: str, value: Mapping[str, Any]) -> None:
        document = {**value, "_id": key}
        async with store_errors("recording adapter state"):
            try:
                await self._collection(namespace).replace_one({"_id": key}, document, upsert=True)
            except DuplicateKeyError:
                # Two first writers raced to insert; the other one's insert won, so
                # this write is now a plain replace of an existing document.
                await self._collection(namespace).replace_one({"_id": key}, document)

    async def get(self, namespace: str, key: str) -> dict[str, Any] | None:
        async with store_errors("reading adapter state"):
            doc = await self._collection(namespace).find_one({"_id": key})
        if doc is None:
            return None
        doc.pop("_id", None)
        return doc

    async def delete(self, namespace: str, key: str) -> None:
        async with store_errors("removing adapter state"):
            await self._collection(namespace).delete_one({"_id": key})
