"""Rooms the bridge creates on Matrix (incident rooms) and the pinned header it keeps in them.

Creating a room: ``POST /createRoom`` as the bot (a private room with its name and
topic; the bot is its creator, so it holds the top power: 100, or a creator's
unlimited power in room v12), then each responder invited on their own, so one
unknown or unreachable MXID costs its invite only (logged), never the room.

``createRoom`` has no transaction id, so creating is made effectively once by hand:

- the room is keyed by its name (``creation_key``; the core names each incident's room
  uniquely) in the state store (namespace ``matrix_created_rooms``): a key with a room
  is answered with it, so the core may call again after any failure;
- the key is claimed (insert-once) before the request and the key is written into the
  room's ``m.room.create`` content (``CREATION_KEY_FIELD``);
- the request is not retried when it may have been carried out (5xx, timeout, lost
  connection), and neither is a claim without a room (a crash during the request):
  the bot's joined rooms are searched for the key first (at most
  ``MAX_SEARCHED_ROOMS``), and only a room not found is created (again).

The header is an ``m.notice`` (with its formatted body) sent by the bot and added to
``m.room.pinned_events`` (the list is read first and kept); an update is an
``m.replace`` edit of it. Transaction ids derive from the room and the content, so a
retry never posts or edits twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Final

import structlog
from mautrix.types import EventType

from adapters.matrix.client import (
    CLIENT_V3,
    MatrixClient,
    MatrixRequestError,
    MatrixUnavailableError,
    path,
)
from adapters.matrix.content import edit_content, text_content, txn_id
from adapters.matrix.ghosts import GhostManager
from adapters.matrix.ids import GhostNamespace, MatrixEventID, MatrixRoomID
from bridge.errors import BridgeError, PermanentDeliveryError, RetryableDeliveryError, StoreError
from bridge.model import Body, MessageStyle, Platform, RemoteMessageID, RemoteRoomID, RoomRef
from bridge.ports import StateStore

log = structlog.get_logger(__name__)

ROOMS_NAMESPACE: Final = "matrix_created_rooms"
CREATION_KEY_FIELD: Final = "org.incident_bridge.creation_key"
"""Written into ``m.room.create`` content: finds a room whose creation had no answer."""
MAX_SEARCHED_ROOMS: Final = 2000
PINNED_EVENTS: Final = "m.room.pinned_events"


def creation_key(name: str) -> str:
    """The key of the room named ``name`` (the same name is the same room)."""
    return hashlib.sha256(("room\x00" + name).encode()).hexdigest()[:40]


def _digest(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _room_ref(room_id: str) -> RoomRef:
    return RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(room_id))


class MatrixRooms:
    """``create_room`` and ``put_header`` of the Matrix adapter."""

    def __init__(
        self,
        *,
        client: MatrixClient,
        ghosts: GhostManager,
        namespace: GhostNamespace,
        state: StateStore,
        max_searched_rooms: int = MAX_SEARCHED_ROOMS,
    ) -> None:
        self._client = client
        self._ghosts = ghosts
        self._namespace = namespace
        self._state = state
        self._max_searched = max_searched_rooms

    # -- rooms --------------------------------------------------------------------------

    async def create_room(self, name: str, *, invite: Sequence[str], topic: str) -> RoomRef:
        """A new private room named ``name`` with ``topic``, ``invite`` invited; the same
        room again when a room of this name was created before (see the module doc)."""
        key = creation_key(name)
        with structlog.contextvars.bound_contextvars(platform=Platform.MATRIX.value):
            record = await self._record(key)
            room_id: MatrixRoomID | None = None
            if record is not None:
                found = record.get("room_id")
                if isinstance(found, str):
                    room_id = MatrixRoomID(found)
                else:  # claimed before without an answer: the room may exist
                    room_id = await self._find(key)
            elif not await self._claim(key, name):
                room_id = await self._find(key)
            if room_id is None:
                room_id = await self._create(key, name, topic)
            elif record is not None and record.get("invited") is True:
                log.info("matrix_room_found", matrix_room_id=room_id)
                return _room_ref(room_id)
            await self._save(key, {"name": name, "room_id": room_id, "invited": False})
            await self._invite(room_id, invite)
            await self._save(key, {"name": name, "room_id": room_id, "invited": True})
            return _room_ref(room_id)

    async def _create(self, key: str, name: str, topic: str) -> MatrixRoomID:
        body = {
            "preset": "private_chat",
            "visibility": "private",
            "name": name,
            "topic": topic,
            "creation_content": {CREATION_KEY_FIELD: key},
        }
        try:
            answer = await self._client.request(
                "POST", path(CLIENT_V3, "createRoom"), json=body, retry_ambiguous=False
            )
        except MatrixUnavailableError as exc:
            if not exc.ambiguous:
                raise
            log.warning("matrix_room_creation_ambiguous", error=str(exc))
            found = await self._find(key)
            if found is not None:
                return found
            answer = await self._client.request(
                "POST", path(CLIENT_V3, "createRoom"), json=body, retry_ambiguous=False
            )
        room_id = answer.get("room_id")
        if not isinstance(room_id, str) or not room_id:
            raise PermanentDeliveryError("the homeserver answered createRoom without a room id")
        log.info("matrix_room_created", matrix_room_id=room_id)
        return MatrixRoomID(room_id)

    async def _find(self, key: str) -> MatrixRoomID | None:
        """The bot's room created with ``key``, among its joined rooms (most recent first)."""
        joined = await self._client.request("GET", path(CLIENT_V3, "joined_rooms"))
        rooms = [r for r in joined.get("joined_rooms", []) if isinstance(r, str)]
        for room_id in reversed(rooms[-self._max_searched :]):
            try:
                create = await self._client.request(
                    "GET", path(CLIENT_V3, "rooms", room_id, "state", EventType.ROOM_CREATE.t, "")
                )
            except MatrixRequestError:
                continue
            if create.get(CREATION_KEY_FIELD) == key:
                log.info("matrix_created_room_found", matrix_room_id=room_id)
                return MatrixRoomID(room_id)
        return None

    async def _invite(self, room_id: MatrixRoomID, users: Sequence[str]) -> None:
        for user in dict.fromkeys(users):
            try:
                await self._client.request(
                    "POST", path(CLIENT_V3, "rooms", room_id, "invite"), json={"user_id": user}
                )
            except BridgeError as exc:
                log.warning(
                    "matrix_room_invite_failed",
                    matrix_room_id=room_id,
                    matrix_user_id=user,
                    error=str(exc),
                )
            else:
                log.info("matrix_room_invited", matrix_room_id=room_id, matrix_user_id=user)

    async def _record(self, key: str) -> dict[str, Any] | None:
        try:
            return await self._state.get(ROOMS_NAMESPACE, key)
        except StoreError as exc:
            raise RetryableDeliveryError(f"created rooms unavailable: {exc}") from exc

    async def _claim(self, key: str, name: str) -> bool:
        try:
            return await self._state.insert_once(ROOMS_NAMESPACE, key, {"name": name})
        except StoreError as exc:
            raise RetryableDeliveryError(f"created rooms unavailable: {exc}") from exc

    async def _save(self, key: str, value: dict[str, Any]) -> None:
        try:
            await self._state.put(ROOMS_NAMESPACE, key, value)
        except StoreError as exc:
            raise RetryableDeliveryError(f"created rooms unavailable: {exc}") from exc

    # -- the header ---------------------------------------------------------------------

    async def put_header(
        self, room: RoomRef, text: str, html: str, *, existing: RemoteMessageID | None
    ) -> RemoteMessageID:
        """Post (and pin) the header when ``existing`` is None, else edit ``existing``."""
        if room.platform is not Platform.MATRIX:
            raise PermanentDeliveryError(f"not a Matrix room: {room.key}")
        room_id = MatrixRoomID(room.room_id)
        body = Body(text=text, html=html or None, style=MessageStyle.NOTICE)
        with structlog.contextvars.bound_contextvars(
            platform=Platform.MATRIX.value, matrix_room_id=room_id
        ):
            await self._ghosts.ensure_bot_joined(room_id)
            if existing is None:
                txn = txn_id("header", room_id, _digest(text, html))
                event_id = await self._send(room_id, txn, text_content(body, []))
                await self._pin(room_id, event_id)
                log.info("matrix_header_posted", matrix_event_id=event_id)
                return RemoteMessageID(event_id)
            txn = txn_id("header", room_id, _digest(existing, text, html))
            await self._send(room_id, txn, edit_content(body, [], existing))
            log.info("matrix_header_updated", matrix_event_id=existing)
            return existing

    async def _send(
        self, room_id: MatrixRoomID, txn: str, content: dict[str, Any]
    ) -> MatrixEventID:
        answer = await self._client.request(
            "PUT",
            path(CLIENT_V3, "rooms", room_id, "send", EventType.ROOM_MESSAGE.t, txn),
            json=content,
        )
        event_id = answer.get("event_id")
        if not isinstance(event_id, str):
            raise PermanentDeliveryError("the homeserver answered a send without an event id")
        return MatrixEventID(event_id)

    async def _pin(self, room_id: MatrixRoomID, event_id: MatrixEventID) -> None:
        """Add ``event_id`` to the room's pinned events, keeping those pinned already."""
        state_path = path(CLIENT_V3, "rooms", room_id, "state", PINNED_EVENTS, "")
        try:
            current = await self._client.request("GET", state_path)
        except MatrixRequestError as exc:
            if exc.status != 404:
                raise
            current = {}
        pinned = [e for e in current.get("pinned", []) if isinstance(e, str)]
        if event_id in pinned:
            return
        try:
            await self._client.request("PUT", state_path, json={"pinned": [*pinned, event_id]})
        except MatrixRequestError as exc:
            if exc.errcode != "M_FORBIDDEN":
                raise
            raise PermanentDeliveryError(
                f"the bridge bot {self._namespace.bot} may not pin messages in {room_id}: "
                "give it a power level that allows m.room.pinned_events"
            ) from exc
