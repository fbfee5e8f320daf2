"""Posting to Matrix: messages, edits, redactions, reactions, media and bridge metadata.

Everything is sent as the ghost of the Teams sender (or the AS bot for the
bridge's own notices) with the Teams time as ``origin_server_ts``. The event
content comes from ``content``; this module adds the requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import structlog
from mautrix.types import EventType, RelationType

from adapters.matrix.client import (
    CLIENT_V1,
    CLIENT_V3,
    MEDIA_V3,
    MatrixRequestError,
    path,
)
from adapters.matrix.content import (
    BRIDGE_STATE_TYPES,
    MAX_RELATION_PAGES,
    MXC_URI,
    Mention,
    T,
    bridge_info_content,
    bridge_state_key,
    edit_content,
    message_parts,
    parse_mxc,
    reaction_content,
    timestamp_ms,
    txn_id,
)
from adapters.matrix.ghosts import GhostManager, MatrixRequester
from adapters.matrix.ids import (
    GhostNamespace,
    MatrixEventID,
    MatrixRoomID,
    MatrixTxnID,
    MatrixUserID,
)
from adapters.matrix.media import MediaFetcher
from bridge.errors import MediaTooLargeError, PermanentDeliveryError
from bridge.model import (
    Attachment,
    Body,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RoomRef,
    Sender,
)
from bridge.ports import OutboundMessage

log = structlog.get_logger(__name__)


def _matrix_room(room: RoomRef) -> MatrixRoomID:
    if room.platform is not Platform.MATRIX:
        raise PermanentDeliveryError(f"not a Matrix room: {room.key}")
    return MatrixRoomID(room.room_id)


class MatrixSender:
    """The outbound half of the Matrix adapter."""

    def __init__(
        self,
        *,
        client: MatrixRequester,
        ghosts: GhostManager,
        namespace: GhostNamespace,
        max_media_bytes: int,
        media: MediaFetcher,
    ) -> None:
        self._client = client
        self._ghosts = ghosts
        self._namespace = namespace
        self._max_media_bytes = max_media_bytes
        self._media = media

    def _mentions(self, body: Body) -> list[Mention]:
        return [
            Mention(name=s.display_name, user_id=self._ghosts.matrix_user_of(s))
            for s in body.mentions
        ]

    async def send(self, message: OutboundMessage, *, idempotency_key: str) -> RemoteRef:
        """Post a message (its text, then each Matrix-hosted attachment); the first part's id."""
        room = _matrix_room(message.target)
        event = message.event
        parts = message_parts(
            event.body,
            self._mentions(event.body),
            reply_to=message.reply_to,
            thread_root=message.thread_root,
        )
        with structlog.contextvars.bound_contextvars(
            platform=Platform.MATRIX.value, matrix_room_id=room, event_id=event.id
        ):
            user = await self._ghosts.ensure_ghost(event.sender)
            ts = timestamp_ms(event.occurred_at)
            ids: list[MatrixEventID] = []
            for index, content in enumerate(parts):
                txn = txn_id("send", room, idempotency_key, index)
                ids.append(
                    await self._send_event(
                        user,
                        room,
                        event_type=EventType.ROOM_MESSAGE.t,
                        txn=txn,
                        content=content,
                        ts=ts,
                    )
                )
            log.info("matrix_message_sent", matrix_event_id=ids[0], parts=len(ids))
        return RemoteRef(room=message.target, message_id=RemoteMessageID(ids[0]))

    async def edit(
        self, target: RemoteRef, message: OutboundMessage, *, idempotency_key: str
    ) -> None:
        """Replace the text of ``target``, as the same ghost that posted it."""
        room = _matrix_room(target.room)
        event = message.event
        content = edit_content(event.body, self._mentions(event.body), target.message_id)
        with structlog.contextvars.bound_contextvars(
            platform=Platform.MATRIX.value, matrix_room_id=room, event_id=event.id
        ):
            user = await self._ghosts.ensure_ghost(event.sender)
            txn = txn_id("edit", room, idempotency_key)
            edit_id = await self._send_event(
                user,
                room,
                event_type=EventType.ROOM_MESSAGE.t,
                txn=txn,
                content=content,
                ts=timestamp_ms(event.occurred_at),
            )
            log.info("matrix_message_edited", matrix_event_id=edit_id, target=target.message_id)

    async def redact(self, target: RemoteRef, sender: Sender, *, idempotency_key: str) -> None:
        """Redact ``target`` as ``sender``'s ghost; redacting twice is harmless."""
        room = _matrix_room(target.room)
        with structlog.contextvars.bound_contextvars(
            platform=Platform.MATRIX.value, matrix_room_id=room
        ):
            user = await self._ghosts.ensure_ghost(sender)
            txn = txn_id("redact", room, idempotency_key)
            api_path = path(CLIENT_V3, "rooms", room, "redact", target.message_id, txn)
            as_user = self._masquerade(user)
            await self._as_member(
                user, room, lambda: self._client.request("PUT", api_path, json={}, user_id=as_user)
            )
            log.info("matrix_message_redacted", target=target.message_id)

    async def react(
        self, target: RemoteRef, sender: Sender, key: str, *, idempotency_key: str
    ) -> RemoteRef:
        """Annotate ``target`` with ``key`` as ``sender``'s ghost; redact the result to undo."""
        room = _matrix_room(target.room)
        content = reaction_content(target.message_id, key)
        with structlog.contextvars.bound_contextvars(
            platform=Platform.MATRIX.value, matrix_room_id=room
        ):
            user = await self._ghosts.ensure_ghost(sender)
            txn = txn_id("react", room, idempotency_key)
            try:
                reaction = await self._send_event(
                    user, room, event_type=EventType.REACTION.t, txn=txn, content=content, ts=None
                )
            except MatrixRequestError as exc:
                # The homeserver forgets transaction ids after a while; a retry
                # then meets the reaction it already made.
                if exc.errcode != "M_DUPLICATE_ANNOTATION":
                    raise
                existing = await self._find_reaction(user, room, target.message_id, key)
                if existing is None:
                    raise
                reaction = existing
            log.info("matrix_reaction_sent", matrix_event_id=reaction, target=target.message_id)
        return RemoteRef(room=target.room, message_id=RemoteMessageID(reaction))

    async def unreact(
        self,
        target: RemoteRef,
        sender: Sender,
        key: str,
        *,
        idempotency_key: str,
        reaction: RemoteRef | None = None,
    ) -> RemoteRef | None:
        """Redact ``sender``'s ghost's ``key`` reaction to ``target``: ``reaction`` when
        given, else the one its relations show. Returns the redacted reaction, if any."""
        room = _matrix_room(target.room)
        if reaction is None:
            user = await self._ghosts.ensure_ghost(sender)
            found = await self._find_reaction(user, room, target.message_id, key)
            if found is None:
                log.info("matrix_reaction_absent", target=target.message_id)
                return None
            reaction = RemoteRef(room=target.room, message_id=RemoteMessageID(found))
        await self.redact(reaction, sender, idempotency_key=idempotency_key)
        return reaction

    @property
    def max_media_bytes(self) -> int:
        return self._max_media_bytes

    async def upload(self, data: bytes, attachment: Attachment) -> Attachment:
        """Store ``data`` in the homeserver's media repository; the attachment with its mxc URI."""
        if len(data) > self._max_media_bytes:
            raise MediaTooLargeError(size=len(data), limit=self._max_media_bytes)
        body = await self._client.request(
            "POST",
            path(MEDIA_V3, "upload"),
            data=data,
            content_type=attachment.mime_type or "application/octet-stream",
            query={"filename": attachment.name or "file"},
        )
        uri = body.get("content_uri")
        if not isinstance(uri, str) or MXC_URI.match(uri) is None:
            raise PermanentDeliveryError("the homeserver answered an upload without a media URI")
        log.info("matrix_media_uploaded", size=len(data))
        return replace(attachment, url=uri, size=len(data))

    async def download(self, attachment: Attachment, *, max_bytes: int) -> bytes:
        """The bytes of an ``mxc://`` attachment; more than ``max_bytes`` is refused."""
        server_name, media_id = parse_mxc(attachment.url)
        return await self._media.fetch(server_name, media_id, max_bytes=max_bytes)

    async def set_bridge_info(
        self, room_id: MatrixRoomID, *, teams_conversation_id: str, teams_display_name: str
    ) -> None:
        """Publish MSC2346 bridge metadata (``m.bridge`` and ``uk.half-shot.bridge``) as the bot.

        The bot needs the power level for state events in the room; without it
        this raises ``PermanentDeliveryError`` saying so.
        """
        bot = self._namespace.bot
        state_key = bridge_state_key(teams_conversation_id)
        content = bridge_info_content(
            bot,
            teams_conversation_id=teams_conversation_id,
            teams_display_name=teams_display_name,
        )
        with structlog.contextvars.bound_contextvars(
            platform=Platform.MATRIX.value, matrix_room_id=room_id
        ):
            for event_type in BRIDGE_STATE_TYPES:
                api_path = path(CLIENT_V3, "rooms", room_id, "state", event_type, state_key)
                try:
                    await self._as_member(
                        bot, room_id, partial(self._client.request, "PUT", api_path, json=content)
                    )
                except MatrixRequestError as exc:
                    if exc.errcode != "M_FORBIDDEN":
                        raise
                    raise PermanentDeliveryError(
                        f"the bridge bot {bot} may not send {event_type} state in {room_id}: "
                        "give it a power level that allows state events"
                    ) from exc
            log.info("matrix_bridge_info_set", teams_conversation_id=teams_conversation_id)

    # -- helpers ------------------------------------------------------------------------------
    def _masquerade(self, user: MatrixUserID) -> MatrixUserID | None:
        """The ``user_id`` parameter for acting as ``user`` (none for the AS bot itself)."""
        return None if user == self._namespace.bot else user

    async def _send_event(
        self,
        user: MatrixUserID,
        room: MatrixRoomID,
        *,
        event_type: str,
        txn: MatrixTxnID,
        content: Mapping[str, Any],
        ts: int | None,
    ) -> MatrixEventID:
        api_path = path(CLIENT_V3, "rooms", room, "send", event_type, txn)
        as_user = self._masquerade(user)
        answer = await self._as_member(
            user,
            room,
            lambda: self._client.request("PUT", api_path, json=content, user_id=as_user, ts_ms=ts),
        )
        event_id = answer.get("event_id")
        if not isinstance(event_id, str):
            raise PermanentDeliveryError("the homeserver answered a send without an event id")
        return MatrixEventID(event_id)

    async def _as_member(
        self, user: MatrixUserID, room: MatrixRoomID, call: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``call`` with ``user`` in the room; after a refusal, re-join and retry once."""
        await self._ghosts.ensure_joined(user, room)
        try:
            return await call()
        except MatrixRequestError as exc:
            if exc.errcode != "M_FORBIDDEN":
                raise
            log.info("matrix_send_refused_rejoining", matrix_user_id=user)
        self._ghosts.forget_membership(user, room)
        await self._ghosts.ensure_joined(user, room)
        return await call()

    async def _find_reaction(
        self, user: MatrixUserID, room: MatrixRoomID, target: RemoteMessageID, key: str
    ) -> MatrixEventID | None:
        """The id of ``user``'s ``key`` reaction to ``target``, looked up in its relations."""
        api_path = path(
            CLIENT_V1, "rooms", room, "relations", target, RelationType.ANNOTATION.value,
            EventType.REACTION.t,
        )  # fmt: skip
        query = {"limit": "100"}
        for _ in range(MAX_RELATION_PAGES):
            page = await self._client.request(
                "GET", api_path, user_id=self._masquerade(user), query=query
            )
            for event in page.get("chunk", []):
                relation = event.get("content", {}).get("m.relates_to", {})
                if event.get("sender") == user and relation.get("key") == key:
                    return MatrixEventID(str(event["event_id"]))
            next_batch = page.get("next_batch")
            if not isinstance(next_batch, str):
                return None
            query = {"limit": "100", "from": next_batch}
        return None
