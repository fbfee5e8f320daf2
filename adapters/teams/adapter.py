"""``TeamsAdapter``: the Teams side of the bridge behind the core's ``ChatAdapter`` seam.

Inbound is the messaging endpoint (``inbound.MessagingEndpoint``), whose route is
added to the daemon's web application at construction and which accepts
activities only between ``start`` and ``stop``. Outbound (send, edit, redact) is
delegated to the Teams sender; reactions from Matrix go on the reaction line the
bot keeps (``reactions``); files are downloaded (``media``) and served to Teams
(``media_host``). ``privilege`` is 100 for an owner of the team a channel belongs to
when ``teams.team_owners_are_operators`` is on (Microsoft Graph, see ``graph``), else 0.
``ready`` is true once started and the channel's
signing keys have been fetched; if they cannot be fetched at start-up, a task
owned by the adapter keeps trying (capped backoff) until they are, or until stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final, Protocol

import aiohttp
import structlog
from aiohttp import web

from adapters.teams.graph import TeamOwners
from adapters.teams.ids import TeamsConversationID
from adapters.teams.inbound import MessagingEndpoint
from adapters.teams.incident_rooms import TeamsIncidentRooms
from adapters.teams.media import FileLinks, TeamsFiles
from adapters.teams.media_host import MediaHost
from adapters.teams.reactions import TeamsReactions
from adapters.teams.render import media_attachment
from bridge.config.teams import TeamsSettings
from bridge.errors import DeliveryError, DependencyUnavailableError, PermanentDeliveryError
from bridge.model import (
    Attachment,
    EventID,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteUserID,
    RoomRef,
    Sender,
)
from bridge.ports import InboundSink, OutboundMessage

log = structlog.get_logger(__name__)

KEY_RETRY_CAP_S: Final = 60.0
OWNER_PRIVILEGE: Final = 100


class OutboundSender(Protocol):
    """The Teams sender as the adapter uses it (``adapters.teams.outbound.TeamsSender``)."""

    async def send(self, message: OutboundMessage, *, idempotency_key: str) -> RemoteRef: ...

    async def edit(
        self, target: RemoteRef, message: OutboundMessage, *, idempotency_key: str
    ) -> None: ...

    async def delete(
        self, target: RemoteRef, *, idempotency_key: str, original: EventID | None = None
    ) -> None: ...

    async def close(self) -> None: ...


class SigningKeys(Protocol):
    """The part of the key source the adapter drives: the first fetch and readiness."""

    @property
    def loaded(self) -> bool: ...

    async def refresh(self) -> None: ...


class TeamsAdapter:
    """Teams behind the ``ChatAdapter`` seam (with edits, redactions, the reaction line,
    media, and incident threads with their header)."""

    def __init__(
        self,
        *,
        settings: TeamsSettings,
        web_app: web.Application,
        endpoint: MessagingEndpoint,
        keys: SigningKeys,
        sender: OutboundSender,
        session: aiohttp.ClientSession | None = None,
        reactions: TeamsReactions | None = None,
        files: TeamsFiles | None = None,
        links: FileLinks | None = None,
        media_host: MediaHost | None = None,
        incident_rooms: TeamsIncidentRooms | None = None,
        team_owners: TeamOwners | None = None,
    ) -> None:
        """``session``, when given, is owned by the adapter and closed by ``stop``.

        ``reactions``, ``files`` (with the ``links`` the endpoint's converter notes) and
        ``media_host`` enable the reaction line, downloads and uploads; ``incident_rooms``
        incident threads and headers; without them those calls are refused.
        ``team_owners`` makes team owners privileged (``privilege``); without it, nobody is.
        """
        self._settings = settings
        self._endpoint = endpoint
        self._keys = keys
        self._sender = sender
        self._session = session
        self._reactions = reactions
        self._files = files
        self._links = links
        self._media_host = media_host
        self._incident_rooms = incident_rooms
        self._team_owners = team_owners
        if media_host is not None:
            web_app.add_routes(media_host.routes())
        self._own_ids = frozenset({f"28:{settings.app_id}", settings.app_id})
        self._started = False
        self._stopped = False
        self._key_task: asyncio.Task[None] | None = None
        web_app.add_routes(endpoint.routes())

    @property
    def platform(self) -> Platform:
        return Platform.TEAMS

    @property
    def ready(self) -> bool:
        return self._started and not self._stopped and self._keys.loaded

    async def start(self, sink: InboundSink) -> None:
        if self._stopped:
            raise RuntimeError("a stopped Teams adapter cannot start again")
        if self._started:
            return
        self._started = True
        self._endpoint.attach(self._links.sink(sink) if self._links is not None else sink)
        try:
            await self._fetch_keys()
        except (DependencyUnavailableError, TimeoutError) as exc:
            log.warning("teams_signing_keys_not_loaded", error=str(exc))
            self._key_task = asyncio.create_task(self._keep_fetching_keys())
        log.info("teams_intake_started", ready=self.ready)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._endpoint.detach()
        if self._key_task is not None:
            self._key_task.cancel()
            await asyncio.gather(self._key_task, return_exceptions=True)
            self._key_task = None
        try:
            await self._sender.close()
        finally:
            if self._session is not None:
                await self._session.close()
        log.info("teams_adapter_stopped")

    def is_own(self, sender: Sender) -> bool:
        return sender.platform is Platform.TEAMS and sender.user_id in self._own_ids

    async def send(self, message: OutboundMessage, *, idempotency_key: str) -> RemoteRef:
        sent = await self._sender.send(message, idempotency_key=idempotency_key)
        attachments = message.event.body.attachments
        if self._reactions is not None and any(media_attachment(a) for a in attachments):
            await self._reactions.remember_sent(sent, message)
        return sent

    async def send_batch(
        self, messages: Sequence[OutboundMessage], *, idempotency_keys: Sequence[str]
    ) -> list[RemoteRef | DeliveryError]:
        """Queue the messages in order at once, so lines waiting on the pacer are combined."""
        outcomes = await asyncio.gather(
            *(
                self._sender.send(message, idempotency_key=key)
                for message, key in zip(messages, idempotency_keys, strict=True)
            ),
            return_exceptions=True,
        )
        results: list[RemoteRef | DeliveryError] = []
        for outcome in outcomes:
            if isinstance(outcome, RemoteRef | DeliveryError):
                results.append(outcome)
            else:
                raise outcome  # not a delivery outcome: a bug, let it surface
        return results

    async def edit(
        self, target: RemoteRef, message: OutboundMessage, *, idempotency_key: str
    ) -> None:
        await self._sender.edit(target, message, idempotency_key=idempotency_key)

    async def redact(
        self,
        target: RemoteRef,
        sender: Sender,
        *,
        idempotency_key: str,
        original: EventID | None = None,
    ) -> None:
        del sender  # the bot deletes its own message; who asked is in the timeline
        await self._sender.delete(target, idempotency_key=idempotency_key, original=original)

    async def react(
        self,
        target: RemoteRef,
        sender: Sender,
        key: str,
        *,
        idempotency_key: str,
        original: EventID | None = None,
    ) -> RemoteRef | None:
        """Add ``sender`` to the reaction line of ``target`` (the bot cannot react as them)."""
        await self._reaction_line().react(
            target, sender, key, idempotency_key=idempotency_key, original=original
        )
        return None

    async def unreact(
        self,
        target: RemoteRef,
        sender: Sender,
        key: str,
        *,
        idempotency_key: str,
        original: EventID | None = None,
        reaction: RemoteRef | None = None,
    ) -> RemoteRef | None:
        del reaction  # the line is the bridge's own, not made of reactions
        await self._reaction_line().unreact(
            target, sender, key, idempotency_key=idempotency_key, original=original
        )
        return None

    async def privilege(self, room: RoomRef, user_id: RemoteUserID) -> int:
        """100 when ``user_id`` (an AAD object id) owns the team of ``room`` (a channel or a
        thread in one), else 0: chats, teams not seen yet, Graph unsure or disabled."""
        if self._team_owners is None or room.platform is not Platform.TEAMS:
            return 0
        owner = await self._team_owners.owns(TeamsConversationID(room.room_id), user_id)
        return OWNER_PRIVILEGE if owner else 0

    @property
    def max_media_bytes(self) -> int:
        return self._media_host.max_bytes if self._media_host is not None else 0

    async def download(self, attachment: Attachment, *, max_bytes: int) -> bytes:
        if self._files is None:
            raise PermanentDeliveryError("Teams downloads are not set up")
        return await self._files.download(attachment, max_bytes=max_bytes)

    async def upload(self, data: bytes, attachment: Attachment) -> Attachment:
        if self._media_host is None:
            raise PermanentDeliveryError("serving files to Teams is not set up")
        return await self._media_host.upload(data, attachment)

    async def create_room(self, name: str, *, invite: Sequence[str], topic: str) -> RoomRef:
        """A new thread in ``incidents.teams_channel`` whose root says ``topic``; ``invite``
        is ignored (see ``incident_rooms.TeamsIncidentRooms.create_room``)."""
        return await self._incidents().create_room(name, invite=invite, topic=topic)

    async def put_header(
        self, room: RoomRef, text: str, html: str, *, existing: RemoteMessageID | None
    ) -> RemoteMessageID:
        """The incident header: the root of a thread made by ``create_room``, else a post of
        its own (see ``incident_rooms.TeamsIncidentRooms.put_header``)."""
        return await self._incidents().put_header(room, text, html, existing=existing)

    def _incidents(self) -> TeamsIncidentRooms:
        if self._incident_rooms is None:
            raise PermanentDeliveryError("Teams incident threads are not set up")
        return self._incident_rooms

    def _reaction_line(self) -> TeamsReactions:
        if self._reactions is None:
            raise PermanentDeliveryError("the Teams reaction line is not set up")
        return self._reactions

    async def _fetch_keys(self) -> None:
        async with asyncio.timeout(self._settings.request_timeout_s):
            await self._keys.refresh()

    async def _keep_fetching_keys(self) -> None:
        delay = 1.0
        while not self._keys.loaded:
            await asyncio.sleep(delay)
            try:
                await self._fetch_keys()
            except (DependencyUnavailableError, TimeoutError) as exc:
                log.warning("teams_signing_keys_not_loaded", error=str(exc))
                delay = min(delay * 2, KEY_RETRY_CAP_S)
        log.info("teams_signing_keys_loaded")
