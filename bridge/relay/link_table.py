"""Every room link, in memory: the intake's lookup of where an event goes.

Links are few and change rarely, while every event needs its room's. So the
whole table is read at once and read again when older than ``max_age_s``: one
read per interval instead of one per message (and none for the many channel
threads that are covered by their channel's link). A link made or removed by
this process applies at once (``forget``); one made by another replica within
``max_age_s``.

Lookups that waited on a read share its outcome, a failure too: while the store is
down, each read fails only after the driver's server-selection timeout, and lookups
that retried it one after another behind the lock would wait that long each, in turn,
missing the platforms' acknowledgement deadlines instead of answering with an error.
"""

from __future__ import annotations

import asyncio
import time

from bridge.errors import StoreError
from bridge.model import RoomLink, RoomRef
from bridge.ports import TimelineStore


class LinkTable:
    def __init__(self, store: TimelineStore, *, max_age_s: float) -> None:
        self._store = store
        self._max_age = max_age_s
        self._by_room: dict[str, list[RoomLink]] = {}
        self._loaded_at: float | None = None
        self._failed: tuple[float, StoreError] | None = None
        """When the last read failed, and how (cleared by a read that succeeds)."""
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        """Links changed: read them again before the next lookup."""
        self._loaded_at = None

    async def links_of(self, room: RoomRef) -> list[RoomLink]:
        """The room's links; raises ``StoreError`` when they cannot be read."""
        if self._stale():
            asked = time.monotonic()
            async with self._lock:  # one read for every lookup waiting on it
                if self._stale():
                    self._raise_if_failed_since(asked)
                    await self._load()
        return list(self._by_room.get(room.key, ()))

    def _raise_if_failed_since(self, asked: float) -> None:
        """A read that ended while this lookup waited failed: that is its answer too."""
        if self._failed is not None:
            failed_at, error = self._failed
            if failed_at >= asked:
                raise StoreError(str(error)) from error

    def _stale(self) -> bool:
        return self._loaded_at is None or time.monotonic() - self._loaded_at >= self._max_age

    async def _load(self) -> None:
        started = time.monotonic()
        by_room: dict[str, list[RoomLink]] = {}
        try:
            links = await self._store.all_links()
        except StoreError as exc:
            self._failed = (time.monotonic(), exc)
            raise
        self._failed = None
        for link in links:
            for room in (link.matrix_room, link.teams_room):
                by_room.setdefault(room.key, []).append(link)
        self._by_room = by_room
        self._loaded_at = started
