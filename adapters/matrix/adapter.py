"""The Matrix adapter: an application service behind the core's ``ChatAdapter`` seam.

Inbound: the AS transaction endpoint (``appservice.py``) hands each
transaction's events here; they are converted (``convert.py``), the bot's
invites are answered per the allow-list, and the events go to the core's sink,
which stores them before the homeserver gets its 200.

Outbound: delegated to ``MatrixSender`` (ghosts, edits, redactions, reactions,
media). Readiness: started and the bot registered; whether the homeserver still
answers is reported apart (``upstream_reachable``, advisory on /readyz): while it is
down Teams messages are stored and queued for it. The AS ping (the homeserver calls us
back, and retries what it queued) is sent at start-up until answered, and again a little
after a transaction was refused, so the homeserver does not sit out its back-off; it
does not gate readiness: behind a Kubernetes Service the callback cannot reach a process
that is not ready yet.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import structlog
from mautrix.types import EventType, Membership

from adapters.matrix.appservice import AppServiceEndpoints
from adapters.matrix.client import CLIENT_V1, CLIENT_V3, MatrixClient, MatrixRequestError, path
from adapters.matrix.convert import convert_event
from adapters.matrix.ids import GhostNamespace, MatrixRoomID, server_of
from adapters.matrix.outbound import MatrixSender
from adapters.matrix.power import PowerLevels
from adapters.matrix.rooms import MatrixRooms
from bridge.config import MatrixSettings
from bridge.errors import BridgeError, PermanentDeliveryError
from bridge.model import (
    Attachment,
    EventID,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteUserID,
    RoomLink,
    RoomRef,
    Sender,
)
from bridge.ports import Clock, InboundSink, OutboundMessage, StateStore
from bridge.tasks import TaskOwner

log = structlog.get_logger(__name__)

HEALTH_INTERVAL_S = 15.0
RETRY_MAX_S = 30.0
PING_RETRY_MAX_S = 5.0
"""The AS ping is retried at least this often until the homeserver calls us back."""
NUDGE_DELAY_S = 5.0
"""How long after refusing a transaction the homeserver is asked to retry."""


class MatrixAdapter:
    """``ChatAdapter`` + ``SupportsEdits``/``Redactions``/``Reactions``/``ReactionRemoval``/
    ``Media``/``RoomCreation``/``Header`` for Matrix (the last two need ``rooms``)."""

    platform = Platform.MATRIX

    def __init__(
        self,
        *,
        settings: MatrixSettings,
        client: MatrixClient,
        sender: MatrixSender,
        namespace: GhostNamespace,
        state: StateStore,
        clock: Clock,
        owned_session: aiohttp.ClientSession | None = None,
        health_interval_s: float = HEALTH_INTERVAL_S,
        nudge_delay_s: float = NUDGE_DELAY_S,
        rooms: MatrixRooms | None = None,
    ) -> None:
        """``owned_session``, if given, is the HTTP session the adapter closes when it stops."""
        assert settings.hs_token is not None
        self._owned_session = owned_session
        self._health_interval = health_interval_s
        self._nudge_delay = nudge_delay_s
        self._settings = settings
        self._client = client
        self._sender = sender
        self._rooms = rooms
        self._namespace = namespace
        self._sink: InboundSink | None = None
        self._tasks = TaskOwner("matrix")
        self._registered = False
        self._reachable = False
        self._names: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._power = PowerLevels(client=client)
        self._refused = asyncio.Event()
        """Set when a transaction was refused (503): the homeserver is backing off."""
        self.endpoints = AppServiceEndpoints(
            hs_token=settings.hs_token.get_secret_value(),
            state=state,
            clock=clock,
            on_transaction=self._on_transaction,
            accepting=lambda: self._sink is not None,
            on_refused=self._refused.set,
        )

    # -- lifecycle ------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Ready to take transactions: started and the bot registered. An unreachable
        homeserver does not count (see ``upstream_reachable``): Teams messages are still
        stored and queued for it, and a replica out of its Service would lose them."""
        return self._sink is not None and self._registered

    @property
    def upstream(self) -> str:
        return "homeserver"

    @property
    def upstream_reachable(self) -> bool:
        return self._reachable

    async def start(self, sink: InboundSink) -> None:
        self._sink = sink
        self._tasks.start(self._watch_homeserver(), name="homeserver")
        self._tasks.start(self._nudge_after_refusals(), name="as-nudge")

    async def stop(self) -> None:
        self._sink = None
        await self._tasks.close()
        if self._owned_session is not None:
            await self._owned_session.close()

    async def privilege(self, room: RoomRef, user_id: RemoteUserID) -> int:
        """The user's power level in the room (``SupportsPrivilege``); 0 elsewhere."""
        if room.platform is not Platform.MATRIX:
            return 0
        return await self._power.level(room.room_id, user_id)

    def is_own(self, sender: Sender) -> bool:
        return sender.platform is Platform.MATRIX and self._namespace.is_own(sender.user_id)

    async def _watch_homeserver(self) -> None:
        """Register the bot, then keep checking that the homeserver answers. The AS ping
        runs beside it and does not gate readiness: the homeserver reaches this process
        through a load balancer that sends nothing to a process that is not ready yet."""
        delay = 0.5
        while not self._registered:
            try:
                await self._register_bot()
            except BridgeError as exc:
                log.warning("homeserver_not_ready", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
            else:
                self._registered = self._reachable = True
        self._tasks.start(self._ping_until_answered(), name="as-ping")
        while True:
            await asyncio.sleep(self._health_interval)
            try:
                await self._client.request("GET", "/_matrix/client/versions")
            except BridgeError as exc:
                if self._reachable:
                    log.warning("homeserver_unreachable", error=str(exc))
                self._reachable = False
            else:
                self._reachable = True

    async def _nudge_after_refusals(self) -> None:
        """After refusing a transaction (storage down, shutting down), ping the homeserver
        a little later so that it retries now rather than at the end of its back-off."""
        while True:
            await self._refused.wait()
            await asyncio.sleep(self._nudge_delay)
            self._refused.clear()
            try:
                await self._ping()
            except BridgeError as exc:
                log.info("homeserver_nudge_failed", error=str(exc))
                self._refused.set()
            else:
                log.info("homeserver_nudged")

    async def _ping(self) -> None:
        await self._client.request(
            "POST",
            path(CLIENT_V1, "appservice", self._settings.as_id, "ping"),
            json={"transaction_id": f"ping-{secrets.token_hex(8)}"},
        )

    async def _ping_until_answered(self) -> None:
        """Ask the homeserver to call this application service back (the AS ping API);
        its answer also makes it retry the transactions it queued while we were away."""
        delay = 0.5
        while True:
            try:
                await self._ping()
            except BridgeError as exc:
                log.warning("homeserver_ping_failed", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(PING_RETRY_MAX_S, delay * 2)
            else:
                log.info("homeserver_pinged")
                return

    async def _register_bot(self) -> None:
        try:
            await self._client.request(
                "POST",
                path(CLIENT_V3, "register"),
                json={
                    "type": "m.login.application_service",
                    "username": self._settings.bot_localpart,
                    "inhibit_login": True,
                },
            )
        except MatrixRequestError as exc:
            if exc.errcode != "M_USER_IN_USE":
                raise
        await self._client.request(
            "PUT",
            path(CLIENT_V3, "profile", self._namespace.bot, "displayname"),
            json={"displayname": self._settings.bot_displayname},
        )

    # -- inbound --------------------------------------------------------------
    async def _on_transaction(self, events: Sequence[Mapping[str, Any]]) -> None:
        sink = self._sink
        if sink is None:
            raise RuntimeError("transaction received while stopped")
        inbound = []
        invites = []
        for event in events:
            self._learn_name(event)
            self._power.observe(event)
            sender = str(event.get("sender", ""))
            name = None if self._namespace.is_own(sender) else await self._display_name(event)
            converted = convert_event(event, namespace=self._namespace, display_name=name)
            if converted is not None:
                inbound.append(converted)
            if self._is_bot_invite(event):
                invites.append(event)
        await sink.accept(inbound)
        for invite in invites:
            await self._answer_invite(invite)

    def _is_bot_invite(self, event: Mapping[str, Any]) -> bool:
        content = event.get("content")
        return (
            event.get("type") == EventType.ROOM_MEMBER.t
            and event.get("state_key") == self._namespace.bot
            and isinstance(content, Mapping)
            and content.get("membership") == Membership.INVITE.value
        )

    def _invite_allowed(self, inviter: str) -> bool:
        allow = self._settings.invites
        return inviter in allow.users or server_of(inviter) in allow.servers

    async def _answer_invite(self, event: Mapping[str, Any]) -> None:
        room_id, inviter = str(event.get("room_id")), str(event.get("sender"))
        with structlog.contextvars.bound_contextvars(room=room_id, inviter=inviter):
            try:
                if self._invite_allowed(inviter):
                    await self._client.request("POST", path(CLIENT_V3, "join", room_id), json={})
                    log.info("invite_accepted")
                else:
                    reason = (
                        f"{inviter} may not invite this bridge; ask an administrator to add "
                        "you or your server to matrix.invites"
                    )
                    await self._client.request(
                        "POST", path(CLIENT_V3, "rooms", room_id, "leave"), json={"reason": reason}
                    )
                    log.info("invite_declined")
            except BridgeError as exc:
                # The invite stays pending on the homeserver; the membership is on record.
                log.warning("invite_not_answered", error=str(exc))

    def _learn_name(self, event: Mapping[str, Any]) -> None:
        content = event.get("content")
        if event.get("type") != EventType.ROOM_MEMBER.t or not isinstance(content, Mapping):
            return
        name = content.get("displayname")
        room, user = event.get("room_id"), event.get("state_key")
        if isinstance(name, str) and isinstance(room, str) and isinstance(user, str):
            self._remember_name(room, user, name)

    def _remember_name(self, room: str, user: str, name: str) -> None:
        self._names[room, user] = name
        self._names.move_to_end((room, user))
        while len(self._names) > self._settings.ghost_cache_size:
            self._names.popitem(last=False)

    async def _display_name(self, event: Mapping[str, Any]) -> str | None:
        room, user = event.get("room_id"), event.get("sender")
        if not (isinstance(room, str) and isinstance(user, str)):
            return None
        cached = self._names.get((room, user))
        if cached is not None:
            self._names.move_to_end((room, user))
            return cached
        try:
            member = await self._client.request(
                "GET", path(CLIENT_V3, "rooms", room, "state", EventType.ROOM_MEMBER.t, user)
            )
        except BridgeError:
            return None  # the bot is not in the room yet: the localpart stands in
        name = member.get("displayname")
        if isinstance(name, str) and name:
            self._remember_name(room, user, name)
            return name
        return None

    async def display_name(self, room: RoomRef, user_id: RemoteUserID) -> str | None:
        """The member's name in the room, else their profile's (``SupportsProfiles``)."""
        name = await self._display_name({"room_id": room.room_id, "sender": user_id})
        if name is not None:
            return name
        try:
            profile = await self._client.request(
                "GET", path(CLIENT_V3, "profile", user_id, "displayname")
            )
        except BridgeError:
            return None
        found = profile.get("displayname")
        return found if isinstance(found, str) and found else None

    # -- outbound (delegated) -------------------------------------------------
    async def send(self, message: OutboundMessage, *, idempotency_key: str) -> RemoteRef:
        return await self._sender.send(message, idempotency_key=idempotency_key)

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
        del original  # a Matrix event is always one message
        await self._sender.redact(target, sender, idempotency_key=idempotency_key)

    async def react(
        self,
        target: RemoteRef,
        sender: Sender,
        key: str,
        *,
        idempotency_key: str,
        original: EventID | None = None,
    ) -> RemoteRef:
        del original  # the ghost reacts to the event itself
        return await self._sender.react(target, sender, key, idempotency_key=idempotency_key)

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
        del original
        return await self._sender.unreact(
            target, sender, key, idempotency_key=idempotency_key, reaction=reaction
        )

    @property
    def max_media_bytes(self) -> int:
        return self._sender.max_media_bytes

    async def upload(self, data: bytes, attachment: Attachment) -> Attachment:
        return await self._sender.upload(data, attachment)

    async def download(self, attachment: Attachment, *, max_bytes: int) -> bytes:
        return await self._sender.download(attachment, max_bytes=max_bytes)

    async def create_room(self, name: str, *, invite: Sequence[str], topic: str) -> RoomRef:
        """A new private room (see ``rooms.MatrixRooms.create_room``)."""
        return await self._incident_rooms().create_room(name, invite=invite, topic=topic)

    async def put_header(
        self, room: RoomRef, text: str, html: str, *, existing: RemoteMessageID | None
    ) -> RemoteMessageID:
        """The pinned header notice, posted or edited (see ``rooms.MatrixRooms.put_header``)."""
        return await self._incident_rooms().put_header(room, text, html, existing=existing)

    def _incident_rooms(self) -> MatrixRooms:
        if self._rooms is None:
            raise PermanentDeliveryError("creating Matrix rooms is not set up")
        return self._rooms

    async def announce_link(self, link: RoomLink) -> None:
        await self.set_bridge_info(
            MatrixRoomID(link.matrix_room.room_id),
            teams_conversation_id=link.teams_room.room_id,
            teams_display_name=link.teams_room.room_id,
        )

    async def set_bridge_info(
        self, room_id: MatrixRoomID, *, teams_conversation_id: str, teams_display_name: str
    ) -> None:
        await self._sender.set_bridge_info(
            room_id,
            teams_conversation_id=teams_conversation_id,
            teams_display_name=teams_display_name,
        )
