"""What the Teams sender remembers beyond one call, on the core's StateStore.

- Ambiguous creates (namespace ``teams_ambiguous_sends``, keyed by the
  idempotency key): a create that timed out or got a 5xx may have produced a
  message, and Teams has no idempotency key. Each such outcome is recorded;
  the sender allows one more create for the key and no further, across
  retries of the outbox and restarts. A retry that succeeded records the
  activity it produced, so a later call with the key returns it.
- Activity layouts (namespace ``teams_outbound_layouts``, keyed by
  conversation and activity id): which lines a combined activity carries and
  which activities a split message was posted as, so an edit or a delete can
  address them. Plain one-line, one-activity messages need no record.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from adapters.teams.ids import TeamsActivityID, TeamsConversationID
from adapters.teams.render import Mention
from bridge.ports import Clock, StateStore

AMBIGUOUS_NAMESPACE = "teams_ambiguous_sends"
LAYOUT_NAMESPACE = "teams_outbound_layouts"


# -- ambiguous creates --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AmbiguousSend:
    idempotency_key: str
    conversation_id: TeamsConversationID
    attempts: int
    """Creates for this key whose outcome is unknown."""
    reasons: tuple[str, ...]
    activity_id: TeamsActivityID | None = None
    """The activity a later attempt produced, if one succeeded."""
    in_flight: bool = False
    """A create was started and its outcome never recorded (the process died meanwhile)."""


class AmbiguousSendRecorder(Protocol):
    """Where the sender records creates that may or may not have produced a message."""

    async def lookup(self, idempotency_key: str) -> AmbiguousSend | None: ...

    async def record_ambiguous(
        self, idempotency_key: str, conversation_id: TeamsConversationID, reason: str
    ) -> int:
        """Record one more create of unknown outcome; return how many the key has now."""

    async def record_delivered(self, idempotency_key: str, activity_id: TeamsActivityID) -> None:
        """A create for the key succeeded (after an ambiguous one there may be two copies)."""

    async def record_in_flight(
        self, idempotency_key: str, conversation_id: TeamsConversationID
    ) -> None:
        """A create for the key is about to be made; cleared by ``record_delivered``."""

    async def record_not_sent(self, idempotency_key: str) -> None:
        """The create was refused for sure (nothing was posted): no longer in flight."""


class StateAmbiguousSends:
    """``AmbiguousSendRecorder`` over the core's StateStore (MongoDB in production)."""

    def __init__(self, state: StateStore, *, clock: Clock) -> None:
        self._state = state
        self._clock = clock

    async def lookup(self, idempotency_key: str) -> AmbiguousSend | None:
        document = await self._state.get(AMBIGUOUS_NAMESPACE, idempotency_key)
        return _ambiguous_from(idempotency_key, document) if document else None

    async def record_ambiguous(
        self, idempotency_key: str, conversation_id: TeamsConversationID, reason: str
    ) -> int:
        now = self._clock.now()
        document = await self._state.get(AMBIGUOUS_NAMESPACE, idempotency_key) or {
            "conversation_id": conversation_id,
            "attempts": 0,
            "reasons": [],
            "activity_id": None,
            "first_at": now,
        }
        document["attempts"] = int(document.get("attempts", 0)) + 1
        document["in_flight"] = False
        document["reasons"] = [*document.get("reasons", []), reason][-10:]
        document["last_at"] = now
        await self._state.put(AMBIGUOUS_NAMESPACE, idempotency_key, document)
        return int(document["attempts"])

    async def record_in_flight(
        self, idempotency_key: str, conversation_id: TeamsConversationID
    ) -> None:
        document = await self._state.get(AMBIGUOUS_NAMESPACE, idempotency_key) or {
            "conversation_id": conversation_id,
            "attempts": 0,
            "reasons": [],
            "activity_id": None,
            "first_at": self._clock.now(),
        }
        document["in_flight"] = True
        await self._state.put(AMBIGUOUS_NAMESPACE, idempotency_key, document)

    async def record_not_sent(self, idempotency_key: str) -> None:
        document = await self._state.get(AMBIGUOUS_NAMESPACE, idempotency_key)
        if document is not None and document.get("in_flight"):
            document["in_flight"] = False
            await self._state.put(AMBIGUOUS_NAMESPACE, idempotency_key, document)

    async def record_delivered(self, idempotency_key: str, activity_id: TeamsActivityID) -> None:
        document = await self._state.get(AMBIGUOUS_NAMESPACE, idempotency_key)
        if document is None:
            return
        document["in_flight"] = False
        document["activity_id"] = activity_id
        document["delivered_at"] = self._clock.now()
        await self._state.put(AMBIGUOUS_NAMESPACE, idempotency_key, document)


def _ambiguous_from(key: str, document: Mapping[str, Any]) -> AmbiguousSend:
    activity_id = document.get("activity_id")
    return AmbiguousSend(
        idempotency_key=key,
        conversation_id=TeamsConversationID(str(document.get("conversation_id", ""))),
        attempts=int(document.get("attempts", 0)),
        reasons=tuple(str(r) for r in document.get("reasons", [])),
        activity_id=TeamsActivityID(activity_id) if isinstance(activity_id, str) else None,
        in_flight=bool(document.get("in_flight", False)),
    )


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
