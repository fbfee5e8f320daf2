"""The seams of the core: what it needs from adapters, storage and time.

``ChatAdapter`` is the one required interface of a platform adapter; the
``Supports*`` protocols are optional capabilities the core probes with
``isinstance`` (they are ``runtime_checkable``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from bridge.errors import DeliveryError
from bridge.incidents.model import Incident, IncidentFilter, IncidentPage
from bridge.model import (
    AppendResult,
    Attachment,
    EventID,
    InboundEvent,
    IncidentID,
    Kind,
    Mirror,
    OutboxEntry,
    Page,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteUserID,
    RoomLink,
    RoomRef,
    Sender,
    TimelineEvent,
)


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC wall-clock time."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards."""


class InboundSink(Protocol):
    """Where adapters hand what happened on their platform.

    It returns only once every event is durably stored (timeline and outbox);
    an adapter acknowledges its platform after that and not before. It raises
    ``StoreError`` when storing failed: the adapter must then answer with an
    error so the platform delivers again.
    """

    async def accept(self, events: Sequence[InboundEvent]) -> list[AppendResult | None]:
        """Store each event in order; ``None`` stands for an echo of the bridge, dropped."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundMessage:
    """A timeline event rendered for one target room on the other platform."""

    event: TimelineEvent
    target: RoomRef
    reply_to: RemoteMessageID | None = None
    """The target-platform id of the message this one replies to, if mirrored there."""
    thread_root: RemoteMessageID | None = None


class ChatAdapter(Protocol):
    """One chat platform, seen from the core."""

    @property
    def platform(self) -> Platform: ...

    @property
    def ready(self) -> bool:
        """Whether the platform is reachable and intake is running (feeds /readyz)."""

    async def start(self, sink: InboundSink) -> None:
        """Begin intake; return once the adapter can accept and send."""

    async def stop(self) -> None:
        """Stop intake and release resources; idempotent."""

    def is_own(self, sender: Sender) -> bool:
        """Whether the sender is the bridge itself (its bot or a ghost): echo suppression."""

    async def send(self, message: OutboundMessage, *, idempotency_key: str) -> RemoteRef:
        """Deliver a new message; the same key must never produce two messages."""


@runtime_checkable
class SupportsEdits(Protocol):
    async def edit(
        self, target: RemoteRef, message: OutboundMessage, *, idempotency_key: str
    ) -> None: ...


@runtime_checkable
class SupportsRedactions(Protocol):
    async def redact(
        self,
        target: RemoteRef,
        sender: Sender,
        *,
        idempotency_key: str,
        original: EventID | None = None,
    ) -> None:
        """Remove ``target``; ``original`` is the removed message's timeline event, when known
        (an adapter that combined several messages into one can then remove just that one)."""


@runtime_checkable
class SupportsReactions(Protocol):
    async def react(
        self,
        target: RemoteRef,
        sender: Sender,
        key: str,
        *,
        idempotency_key: str,
        original: EventID | None = None,
    ) -> RemoteRef | None:
        """Show ``sender``'s ``key`` reaction on ``target``; ``original`` is the reacted
        message's timeline event, when known. Returns the reaction's own message, or None
        when it has none (a platform where the bridge cannot react as a user shows the
        reaction in a line it keeps on or next to the message)."""


@runtime_checkable
class SupportsReactionRemoval(Protocol):
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
        """Take back ``sender``'s ``key`` reaction on ``target``; ``reaction`` is what
        ``react`` returned for it, when known. Returns what was removed (None: nothing was
        there); taking back twice is harmless."""


@runtime_checkable
class SupportsRoomCreation(Protocol):
    async def create_room(self, name: str, *, invite: Sequence[str], topic: str) -> RoomRef: ...


@runtime_checkable
class SupportsBatchSend(Protocol):
    async def send_batch(
        self, messages: Sequence[OutboundMessage], *, idempotency_keys: Sequence[str]
    ) -> list[RemoteRef | DeliveryError]:
        """Send several plain messages to one room in order, one outcome each.

        The adapter may combine them (Teams coalesces lines under its rate limits);
        a message whose delivery failed gets its error instead of a reference.
        """


@runtime_checkable
class SupportsLinkAnnouncements(Protocol):
    async def announce_link(self, link: RoomLink) -> None:
        """Mark the platform's room as bridged (e.g. Matrix bridge metadata state events)."""


@runtime_checkable
class SupportsUpstreamHealth(Protocol):
    """An adapter that sends to a server it can be cut off from, queuing meanwhile
    (reported on /readyz as advisory: it does not make the process unready)."""

    @property
    def upstream(self) -> str:
        """The server's name in the report, e.g. ``homeserver``."""

    @property
    def upstream_reachable(self) -> bool: ...


@runtime_checkable
class SupportsPrivilege(Protocol):
    async def privilege(self, room: RoomRef, user_id: RemoteUserID) -> int:
        """The user's privilege in the room, 0-100 (Matrix: the power level)."""


@runtime_checkable
class SupportsProfiles(Protocol):
    async def display_name(self, room: RoomRef, user_id: RemoteUserID) -> str | None:
        """The user's display name (in ``room`` where the platform has per-room names), or
        None when it cannot be found."""


@runtime_checkable
class SupportsMedia(Protocol):
    """Files carried across the bridge (``bridge.relay.media``).

    ``download`` and ``upload`` raise ``MediaTooLargeError`` for a file over the limit
    (``max_bytes``, resp. ``max_media_bytes``), another ``PermanentDeliveryError`` when the
    platform refuses for good, a ``RetryableDeliveryError`` when it may work later.
    """

    @property
    def max_media_bytes(self) -> int:
        """The largest file ``upload`` accepts."""

    async def download(self, attachment: Attachment, *, max_bytes: int) -> bytes:
        """The bytes of an attachment received on this platform."""

    async def upload(self, data: bytes, attachment: Attachment) -> Attachment:
        """Make ``data`` available on this platform; the attachment with its new ``url``."""


class TimelineStore(Protocol):
    """Durable storage of the timeline, the outbox and room links."""

    async def ping(self) -> None:
        """Raise ``DependencyUnavailableError`` unless the database answers."""

    async def ensure_indexes(self) -> None:
        """Create the collections' indexes; idempotent."""

    async def append(self, event: TimelineEvent, targets: Sequence[RoomRef]) -> AppendResult:
        """``append_many`` for one event."""

    async def append_many(
        self, batch: Sequence[tuple[TimelineEvent, Sequence[RoomRef]]]
    ) -> list[AppendResult]:
        """Store events, each with a pending mirror per target (its queue), durably.

        One write for the whole batch where the database allows. An event whose origin
        (platform, room, message id, kind, variant) is already stored is not stored
        again: the stored one is returned with ``duplicate=True`` and nothing is queued
        again. Results are in the order of ``batch``.
        """

    async def get(self, event_id: EventID) -> TimelineEvent | None: ...

    async def find_by_origin(
        self, origin: RemoteRef, kind: Kind, variant: str = ""
    ) -> TimelineEvent | None: ...

    async def find_by_mirror(self, message: RemoteRef) -> TimelineEvent | None:
        """The event whose mirror on another platform is ``message``."""

    async def timeline(
        self,
        *,
        incident_id: IncidentID | None = None,
        room: RoomRef | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        """Events of one incident or one room in order, paged by an opaque cursor."""

    async def set_mirror(self, event_id: EventID, mirror: Mirror) -> None:
        """Record the delivery state of an event in one target room, in one write.

        A sent or failed mirror takes the room off the event's queue; a pending or
        retrying one (with ``not_before``) keeps it there."""

    async def set_mirrors(self, updates: Sequence[tuple[EventID, Mirror]]) -> None:
        """``set_mirror`` for several events, in one write where the database allows."""

    async def set_incident(self, event_id: EventID, incident_id: IncidentID) -> None: ...

    # -- the outbox: the queued (unsettled) mirrors -----------------------------
    async def pending(self, room: RoomRef, *, limit: int) -> list[OutboxEntry]:
        """A room's queued events, oldest event first."""

    async def rooms_with_work(self, *, limit: int) -> list[RoomRef]:
        """Target rooms with queued events (any replica's), due or not."""

    async def lease_room(self, room: RoomRef, owner: str, *, now: datetime, ttl: timedelta) -> bool:
        """Lease ``room``'s queue to ``owner`` (renewing its own lease); False when another
        owner holds it, or it was released until a later time."""

    async def renew_rooms(
        self, rooms: Sequence[RoomRef], owner: str, *, now: datetime, ttl: timedelta
    ) -> set[str]:
        """Extend ``owner``'s live leases on ``rooms``; the keys of those it still holds."""

    async def release_room(
        self, room: RoomRef, owner: str, *, until: datetime | None = None
    ) -> None:
        """Give the room back; with ``until``, nobody may lease it before then (its head
        waits for a retry)."""

    # -- room links -----------------------------------------------------------
    async def save_link(self, link: RoomLink) -> None: ...

    async def remove_link(self, link: RoomLink) -> None: ...

    async def links_for(self, room: RoomRef) -> list[RoomLink]: ...

    async def all_links(self) -> list[RoomLink]: ...


class StateStore(Protocol):
    """Small durable records an adapter keeps (transaction ids, conversation references)."""

    async def insert_once(self, namespace: str, key: str, value: Mapping[str, Any]) -> bool:
        """Store ``value`` unless ``key`` exists; True if this call stored it."""

    async def put(self, namespace: str, key: str, value: Mapping[str, Any]) -> None: ...

    async def get(self, namespace: str, key: str) -> dict[str, Any] | None: ...

    async def delete(self, namespace: str, key: str) -> None: ...


class IncidentStore(Protocol):
    """Durable storage of incidents (their current state; the history is the timeline)."""

    async def ensure_indexes(self) -> None: ...

    async def next_id(self) -> IncidentID:
        """A new, never reused ``INC-<number>``."""

    async def create(self, incident: Incident) -> None:
        """Store a new incident (``version`` 0); ``StoreError`` if its id exists."""

    async def get(self, incident_id: IncidentID) -> Incident | None: ...

    async def save(self, incident: Incident) -> Incident | None:
        """Store ``incident`` if the stored one still has ``incident.version``; the stored
        result (version + 1), or None when another change came first (read, reapply)."""

    async def find(
        self, query: IncidentFilter, *, cursor: str | None = None, limit: int = 50
    ) -> IncidentPage:
        """Incidents matching ``query``, most recently declared first, paged by cursor."""


@runtime_checkable
class SupportsHeader(Protocol):
    async def put_header(
        self, room: RoomRef, text: str, html: str, *, existing: RemoteMessageID | None
    ) -> RemoteMessageID:
        """Show an incident's header in ``room``, pinned where the platform pins messages:
        posted (and pinned) when ``existing`` is None, else that message updated in place.
        Returns the header's message id. A Teams thread created by ``create_room`` has
        its root as header."""
