"""What the Teams sender remembers beyond one call, on the core's StateStore.

- Ambiguous creates (namespace ``teams_ambiguous_sends``, keyed by the
  idempotency key): a create that timed out or got a 5xx may have produced a
  message, and Teams has no idempotency key. Each such outcome is recorded;
  the sender allows one more create for the key and no further, across
  retries of the outbox and restarts. Every create is marked in flight before
  it is made (the first one by inserting the record: one round trip), so a create
  whose process died before the answer counts as one of unknown outcome. A create
  that succeeded records the activity it produced, so a later call with the key
  returns it. See ``creates`` for how the sender uses these records.
- Activity layouts (namespace ``teams_outbound_layouts``, keyed by
  conversation and activity id): which lines a combined activity carries and
  which activities a split message was posted as, so an edit or a delete can
  address them. Plain one-line, one-activity messages need no record.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from adapters.teams.ids import TeamsActivityID, TeamsConversationID
from adapters.teams.render import Mention
from bridge.ports import Clock, StateStore

AMBIGUOUS_NAMESPACE = "teams_ambiguous_sends"
LAYOUT_NAMESPACE = "teams_outbound_layouts"


# -- ambiguous creates --------------------------------------------------------------

MAX_REASONS = 10
"""Reasons of unknown outcomes kept per key (the latest)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AmbiguousSend:
    """What is recorded for an idempotency key's creates; the transitions are pure."""

    idempotency_key: str
    conversation_id: TeamsConversationID
    attempts: int = 0
    """Creates for this key whose outcome is unknown."""
    reasons: tuple[str, ...] = ()
    activity_id: TeamsActivityID | None = None
    """The activity a create produced, once one succeeded."""
    in_flight: bool = False
    """A create was started and its outcome not recorded yet (if the process died
    meanwhile, it may have been delivered)."""
    first_at: datetime | None = None
    last_at: datetime | None = None
    """When the last create of unknown outcome was recorded."""
    delivered_at: datetime | None = None

    def started(self) -> AmbiguousSend:
        """A create for the key is about to be made."""
        return replace(self, in_flight=True)

    def not_sent(self) -> AmbiguousSend:
        """The create was refused for sure: nothing was posted."""
        return replace(self, in_flight=False)

    def ambiguous(self, reason: str, *, at: datetime) -> AmbiguousSend:
        """One more create of unknown outcome (``MAX_REASONS`` reasons are kept)."""
        return replace(
            self,
            attempts=self.attempts + 1,
            in_flight=False,
            reasons=(*self.reasons, reason)[-MAX_REASONS:],
            last_at=at,
        )

    def delivered(self, activity_id: TeamsActivityID, *, at: datetime) -> AmbiguousSend:
        """A create succeeded (after an ambiguous one there may be two copies)."""
        return replace(self, in_flight=False, activity_id=activity_id, delivered_at=at)


class AmbiguousSendRecorder(Protocol):
    """Where the sender records creates that may or may not have produced a message."""

    async def claim(
        self, idempotency_key: str, conversation_id: TeamsConversationID
    ) -> AmbiguousSend | None:
        """Record a first create for the key as under way, in one round trip, and return
        that record; None, writing nothing, when the key has a record already."""

    async def lookup(self, idempotency_key: str) -> AmbiguousSend | None: ...

    async def save(self, record: AmbiguousSend) -> None:
        """Replace the key's record (the sender is its only writer while it sends the key)."""


class StateAmbiguousSends:
    """``AmbiguousSendRecorder`` over the core's StateStore (MongoDB in production)."""

    def __init__(self, state: StateStore, *, clock: Clock) -> None:
        self._state = state
        self._clock = clock

    async def claim(
        self, idempotency_key: str, conversation_id: TeamsConversationID
    ) -> AmbiguousSend | None:
        record = AmbiguousSend(
            idempotency_key=idempotency_key,
            conversation_id=conversation_id,
            in_flight=True,
            first_at=self._clock.now(),
        )
        inserted = await self._state.insert_once(
            AMBIGUOUS_NAMESPACE, idempotency_key, ambiguous_document(record)
        )
        return record if inserted else None

    async def lookup(self, idempotency_key: str) -> AmbiguousSend | None:
        document = await self._state.get(AMBIGUOUS_NAMESPACE, idempotency_key)
        return _ambiguous_from(idempotency_key, document) if document else None

    async def save(self, record: AmbiguousSend) -> None:
        await self._state.put(
            AMBIGUOUS_NAMESPACE, record.idempotency_key, ambiguous_document(record)
        )


def ambiguous_document(record: AmbiguousSend) -> dict[str, Any]:
    document: dict[str, Any] = {
        "conversation_id": record.conversation_id,
        "attempts": record.attempts,
        "reasons": list(record.reasons),
        "activity_id": record.activity_id,
        "first_at": record.first_at,
        "in_flight": record.in_flight,
    }
    if record.last_at is not None:
        document["last_at"] = record.last_at
    if record.delivered_at is not None:
        document["delivered_at"] = record.delivered_at
    return document


def _ambiguous_from(key: str, document: Mapping[str, Any]) -> AmbiguousSend:
    activity_id = document.get("activity_id")
    return AmbiguousSend(
        idempotency_key=key,
        conversation_id=TeamsConversationID(str(document.get("conversation_id", ""))),
        attempts=int(document.get("attempts", 0)),
        reasons=tuple(str(r) for r in document.get("reasons", [])),
        activity_id=TeamsActivityID(activity_id) if isinstance(activity_id, str) else None,
        in_flight=bool(document.get("in_flight", False)),
        first_at=_time(document.get("first_at")),
        last_at=_time(document.get("last_at")),
        delivered_at=_time(document.get("delivered_at")),
    )


def _time(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


# -- activity layouts ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutLine:
    """One bridged message inside a combined activity."""

    event_id: str | None
    """The timeline event the line mirrors."""
    origin: str | None
    """Where that event happened (``platform|room|message id``)."""
    sender: str | None
    """Who wrote it (their user id on their platform)."""
    html: str
    mentions: tuple[Mention, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivityLayout:
    """A message of the bridge that is more than one line in one activity.

    Either several lines in one activity (coalesced: one id in ``parts``) or
    one line posted as several activities (split: ``lines`` has one entry).
    """

    conversation_key: str
    """The base conversation id (without ``;messageid=``)."""
    parts: tuple[TeamsActivityID, ...]
    lines: tuple[LayoutLine, ...]

    @property
    def activity_id(self) -> TeamsActivityID:
        return self.parts[0]


class LayoutStore(Protocol):
    async def get(
        self, conversation_key: str, activity_id: TeamsActivityID
    ) -> ActivityLayout | None: ...

    async def put(self, layout: ActivityLayout) -> None: ...

    async def delete(self, conversation_key: str, activity_id: TeamsActivityID) -> None: ...


class MemoryLayouts:
    """Layouts kept in memory only (bounded): lost on restart."""

    def __init__(self, *, capacity: int = 2048) -> None:
        self._capacity = capacity
        self._layouts: OrderedDict[str, ActivityLayout] = OrderedDict()

    async def get(
        self, conversation_key: str, activity_id: TeamsActivityID
    ) -> ActivityLayout | None:
        key = _layout_key(conversation_key, activity_id)
        layout = self._layouts.get(key)
        if layout is not None:
            self._layouts.move_to_end(key)
        return layout

    async def put(self, layout: ActivityLayout) -> None:
        key = _layout_key(layout.conversation_key, layout.activity_id)
        self._layouts[key] = layout
        self._layouts.move_to_end(key)
        while len(self._layouts) > self._capacity:
            self._layouts.popitem(last=False)

    async def delete(self, conversation_key: str, activity_id: TeamsActivityID) -> None:
        self._layouts.pop(_layout_key(conversation_key, activity_id), None)

    def __len__(self) -> int:
        return len(self._layouts)


class StateLayouts:
    """Layouts on the core's StateStore, with a bounded in-memory cache in front."""

    def __init__(self, state: StateStore, *, cache_capacity: int = 2048) -> None:
        self._state = state
        self._cache = MemoryLayouts(capacity=cache_capacity)

    async def get(
        self, conversation_key: str, activity_id: TeamsActivityID
    ) -> ActivityLayout | None:
        cached = await self._cache.get(conversation_key, activity_id)
        if cached is not None:
            return cached
        document = await self._state.get(
            LAYOUT_NAMESPACE, _layout_key(conversation_key, activity_id)
        )
        if document is None:
            return None
        layout = layout_from_document(document)
        await self._cache.put(layout)
        return layout

    async def put(self, layout: ActivityLayout) -> None:
        await self._cache.put(layout)
        await self._state.put(
            LAYOUT_NAMESPACE,
            _layout_key(layout.conversation_key, layout.activity_id),
            layout_to_document(layout),
        )

    async def delete(self, conversation_key: str, activity_id: TeamsActivityID) -> None:
        await self._cache.delete(conversation_key, activity_id)
        await self._state.delete(LAYOUT_NAMESPACE, _layout_key(conversation_key, activity_id))


def layout_to_document(layout: ActivityLayout) -> dict[str, Any]:
    return {
        "conversation_key": layout.conversation_key,
        "parts": list(layout.parts),
        "lines": [
            {
                "event_id": line.event_id,
                "origin": line.origin,
                "sender": line.sender,
                "html": line.html,
                "mentions": [{"user_id": m.user_id, "name": m.name} for m in line.mentions],
            }
            for line in layout.lines
        ],
    }


def layout_from_document(document: Mapping[str, Any]) -> ActivityLayout:
    return ActivityLayout(
        conversation_key=str(document["conversation_key"]),
        parts=tuple(TeamsActivityID(str(p)) for p in document.get("parts", [])),
        lines=tuple(_line_from(line) for line in document.get("lines", [])),
    )


def _line_from(document: Mapping[str, Any]) -> LayoutLine:
    mentions: Sequence[Mapping[str, Any]] = document.get("mentions", [])
    return LayoutLine(
        event_id=document.get("event_id"),
        origin=document.get("origin"),
        sender=document.get("sender"),
        html=str(document.get("html", "")),
        mentions=tuple(Mention(user_id=str(m["user_id"]), name=str(m["name"])) for m in mentions),
    )


def _layout_key(conversation_key: str, activity_id: TeamsActivityID) -> str:
    return f"{conversation_key}|{activity_id}"
