"""Users' power levels in rooms, read as the bot from ``m.room.power_levels`` and
``m.room.create``.

Per the spec: a user's level is ``users[user]``, else ``users_default``; without a
power-levels event the room's creator has 100 and everyone else 0; from room version 12
the creators (the create event's sender and ``additional_creators``) rank above every
level. A room's levels are cached for ``ttl_s`` and replaced at once when its
``m.room.power_levels`` event passes through a transaction, so a demotion applies to the
next command. Failures are raised for the caller to deny.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from adapters.matrix.client import CLIENT_V3, MatrixClient, MatrixRequestError, path

POWER_LEVELS: Final = "m.room.power_levels"
CREATE: Final = "m.room.create"
CREATOR_LEVEL: Final = 2**53
"""A creator's level where creators rank above every level (room version 12 on)."""
LEGACY_ROOM_VERSIONS: Final = frozenset(str(v) for v in range(1, 12))
"""Room versions in which creators are ordinary users with a level."""
DEFAULT_TTL_S: Final = 60.0
DEFAULT_MAX_ROOMS: Final = 1024


@dataclass(frozen=True, slots=True)
class RoomPower:
    levels: Mapping[str, Any] | None
    """The power-levels event's content; None when the room has none."""
    creators: frozenset[str]
    creators_outrank: bool

    def level(self, user_id: str) -> int:
        if self.creators_outrank and user_id in self.creators:
            return CREATOR_LEVEL
        if self.levels is None:
            return 100 if user_id in self.creators else 0
        return level_of(self.levels, user_id)


class PowerLevels:
    """The bot's view of who holds which power level in its rooms (bounded, expiring)."""

    def __init__(
        self,
        *,
        client: MatrixClient,
        ttl_s: float = DEFAULT_TTL_S,
        max_rooms: int = DEFAULT_MAX_ROOMS,
    ) -> None:
        self._client = client
        self._ttl = ttl_s
        self._max_rooms = max_rooms
        self._rooms: OrderedDict[str, tuple[float, RoomPower]] = OrderedDict()

    async def level(self, room_id: str, user_id: str) -> int:
        power = self._cached(room_id)
        if power is None:
            power = await self._read(room_id)
            self._remember(room_id, power)
        return power.level(user_id)

    def observe(self, event: Mapping[str, Any]) -> None:
        """Take a room's new levels from its state event as it passes through."""
        if event.get("type") != POWER_LEVELS or event.get("state_key") != "":
            return
        content = event.get("content")
        room_id = event.get("room_id")
        if not isinstance(content, Mapping) or not isinstance(room_id, str):
            return
        known = self._rooms.get(room_id)
        if known is not None:  # the creators never change; otherwise read both later
            self._remember(room_id, replace(known[1], levels=content))

    def _cached(self, room_id: str) -> RoomPower | None:
        entry = self._rooms.get(room_id)
        if entry is None:
            return None
        stored_at, power = entry
        if time.monotonic() - stored_at >= self._ttl:
            del self._rooms[room_id]
            return None
        self._rooms.move_to_end(room_id)
        return power

    def _remember(self, room_id: str, power: RoomPower) -> None:
        self._rooms[room_id] = (time.monotonic(), power)
        self._rooms.move_to_end(room_id)
        while len(self._rooms) > self._max_rooms:
            self._rooms.popitem(last=False)

    async def _read(self, room_id: str) -> RoomPower:
        create = await self._state(room_id, CREATE, whole_event=True) or {}
        content = create.get("content")
        content = content if isinstance(content, Mapping) else {}
        creators = {create.get("sender"), content.get("creator")}
        extra = content.get("additional_creators")
        if isinstance(extra, list):
            creators.update(extra)
        version = content.get("room_version", "1")
        return RoomPower(
            levels=await self._state(room_id, POWER_LEVELS),
            creators=frozenset(c for c in creators if isinstance(c, str)),
            creators_outrank=str(version) not in LEGACY_ROOM_VERSIONS,
        )

    async def _state(
        self, room_id: str, event_type: str, *, whole_event: bool = False
    ) -> Mapping[str, Any] | None:
        """A state event's content (or the whole event); None if the room has none."""
        try:
            return await self._client.request(
                "GET",
                path(CLIENT_V3, "rooms", room_id, "state", event_type, ""),
                query={"format": "event"} if whole_event else None,
            )
        except MatrixRequestError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise


def level_of(content: Mapping[str, Any], user_id: str) -> int:
    """A user's level per the spec: ``users[user_id]``, else ``users_default`` (0).
    Malformed values count as 0."""
    users = content.get("users")
    if isinstance(users, Mapping) and user_id in users:
        return _as_level(users[user_id])
    return _as_level(content.get("users_default", 0))


def _as_level(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)  # room versions before 10 allow string levels
    return 0
