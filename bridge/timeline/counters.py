"""Numbers that never repeat (``INC-7``, ``R-12``), from a counter document in MongoDB."""

from __future__ import annotations

from typing import Any, Final

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from bridge.errors import StoreError
from bridge.timeline.mongo import store_errors

ATTEMPTS: Final = 5
"""Tries before giving up: the first numbers of a counter can race to create it (a
duplicate key), and some servers then return no document for the loser's upsert."""


async def next_number(counters: AsyncCollection[dict[str, Any]], counter_id: str) -> int:
    """Increment counter ``counter_id`` and return its new value (1 for the first)."""
    for _ in range(ATTEMPTS):
        async with store_errors(f"numbering ({counter_id})"):
            try:
                doc = await counters.find_one_and_update(
                    {"_id": counter_id},
                    {"$inc": {"n": 1}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                continue
        if doc is not None:
            return int(doc["n"])
    raise StoreError(f"the counter {counter_id} was not returned")
