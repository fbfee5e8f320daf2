"""Index definitions, created idempotently at start-up."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

ORIGIN_INDEX = "origin_unique"


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    """Create every index the stores query by; a no-op when they already exist."""
    await db["timeline"].create_indexes(
        [
            # The deduplication key: one record per thing that happened on a platform.
            IndexModel(
                [
                    ("origin.platform", ASCENDING),
                    ("origin.room_id", ASCENDING),
                    ("origin.message_id", ASCENDING),
                    ("kind", ASCENDING),
                    ("origin_variant", ASCENDING),
                ],
                name=ORIGIN_INDEX,
                unique=True,
            ),
            IndexModel(
                [("incident_id", ASCENDING), ("occurred_at", ASCENDING), ("_id", ASCENDING)],
                name="incident_order",
            ),
            IndexModel(
                [("origin_room_key", ASCENDING), ("occurred_at", ASCENDING), ("_id", ASCENDING)],
                name="room_order",
            ),
            IndexModel(
                [("mirrors.room_key", ASCENDING), ("mirrors.message_id", ASCENDING)],
                name="mirror_lookup",
            ),
            # The outbox: each room's queued events in order; settled events leave it.
            IndexModel([("queue", ASCENDING), ("_id", ASCENDING)], name="outbox_queue"),
        ]
    )
    await db["room_links"].create_indexes(
        [IndexModel([("room_keys", ASCENDING)], name="link_rooms")]
    )
