"""Incident rooms on Teams: a new thread in the configured channel, its root as the header.

A bot cannot create channels, and Teams has no pinning a bot can do: an incident's
Teams room is a thread the bot starts in ``incidents.teams_channel``, and the thread's
root post is the header, updated in place as the incident changes. Both are written
like the bot's other posts (``<b>Incident Bridge</b> <i>(bridge)</i>: ...``) and go
through the sender's queue of the channel (paced, recorded, retried like any create).

The threads created here are recorded (namespace ``teams_incident_threads``, keyed by
the thread's conversation id), so the header of such a thread is its root, and only
of such a thread: in any other room the header is a post of its own, later updated.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import json
import uuid
from collections.abc import Sequence
from typing import Any, Final, Protocol

import structlog

from adapters.teams.render import PLATFORM_LABELS, Content, Line, teams_markup
from bridge.errors import PermanentDeliveryError, RetryableDeliveryError, StoreError
from bridge.formatting import sanitize_html, text_to_html
from bridge.model import Platform, RemoteMessageID, RemoteRef, RemoteRoomID, RoomRef
from bridge.notices import BRIDGE_BOT
from bridge.ports import StateStore

log = structlog.get_logger(__name__)

THREADS_NAMESPACE: Final = "teams_incident_threads"


class Poster(Protocol):
    """What incident rooms need of the Teams sender (``outbound.TeamsSender``)."""

    async def post(
        self, room: RoomRef, content: Content, *, idempotency_key: str, new_thread: bool = False
    ) -> RemoteRef: ...

    async def update(
        self, target: RemoteRef, content: Content, *, idempotency_key: str, dressed: bool = True
    ) -> None: ...


def bridge_content(text: str, html: str | None = None) -> Content:
    """The bot's own post: attributed like every bridge notice, ``html`` (sanitized) or
    ``text``."""
    body = teams_markup(sanitize_html(html)) if html else text_to_html(text)
    line = Line(
        author=html_lib.escape(BRIDGE_BOT.display_name, quote=False),
        platform=PLATFORM_LABELS[Platform.BRIDGE],
        body=body,
    )
    return line.content()


def _digest(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]


def thread_key(channel: str, name: str) -> str:
    """The idempotency key of the thread of the room named ``name`` in ``channel``."""
    return "incident-thread:" + _digest(channel, name)


class TeamsIncidentRooms:
    """``create_room`` and ``put_header`` of the Teams adapter."""

    def __init__(self, *, poster: Poster, state: StateStore, channel: str | None) -> None:
        """``channel``: ``incidents.teams_channel``, where incident threads are started."""
        self._poster = poster
        self._state = state
        self._channel = channel

    async def create_room(self, name: str, *, invite: Sequence[str], topic: str) -> RoomRef:
        """Start a thread in the incident channel whose root says ``topic``; the thread.

        ``invite`` is ignored: a Teams thread is open to every member of its channel,
        and a bot cannot add people to a channel. The thread is keyed by ``name`` (the
        core names each incident's room uniquely): asked again, the same thread comes
        back without a second post.
        """
        del invite
        if self._channel is None:
            raise PermanentDeliveryError(
                "no Teams channel for incident threads: set incidents.teams_channel"
            )
        channel = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(self._channel))
        key = thread_key(self._channel, name)
        root = await self._poster.post(
            channel, bridge_content(topic), idempotency_key=key, new_thread=True
        )
        await self._save(root.room.room_id, {"root": root.message_id, "name": name})
        log.info(
            "teams_incident_thread_created",
            conversation=root.room.room_id,
            teams_activity_id=root.message_id,
        )
        return root.room

    async def put_header(
        self, room: RoomRef, text: str, html: str, *, existing: RemoteMessageID | None
    ) -> RemoteMessageID:
        """Show the header: the root of a thread made by ``create_room`` (updated), else a
        post of its own (made when ``existing`` is None, then updated). Not pinned: Teams
        lets no bot pin."""
        if room.platform is not Platform.TEAMS:
            raise PermanentDeliveryError(f"not a Teams room: {room.key}")
        content = bridge_content(text, html)
        if existing is None:
            record = await self._load(room.room_id)
            root = record.get("root") if record is not None else None
            if not isinstance(root, str):
                key = "incident-header:" + _digest(room.room_id, text, html)
                posted = await self._poster.post(room, content, idempotency_key=key)
                log.info("teams_header_posted", teams_activity_id=posted.message_id)
                return posted.message_id
            existing = RemoteMessageID(root)
        # Updates are idempotent: a fresh key each, so a header put back as it was is put.
        await self._poster.update(
            RemoteRef(room=room, message_id=existing),
            content,
            idempotency_key=f"incident-header-update:{uuid.uuid4().hex}",
        )
        log.info("teams_header_updated", teams_activity_id=existing)
        return existing

    async def _load(self, conversation: str) -> dict[str, Any] | None:
        try:
            return await self._state.get(THREADS_NAMESPACE, conversation)
        except StoreError as exc:
            raise RetryableDeliveryError(f"incident threads unavailable: {exc}") from exc

    async def _save(self, conversation: str, value: dict[str, Any]) -> None:
        try:
            await self._state.put(THREADS_NAMESPACE, conversation, value)
        except StoreError as exc:
            raise RetryableDeliveryError(f"incident threads unavailable: {exc}") from exc
