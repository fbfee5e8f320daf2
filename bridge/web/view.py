"""An incident's timeline as people read it: edits, deletes and reactions folded in.

The timeline stores every edit, delete and reaction as an event of its own that points
at its message. ``fold`` attaches each to the message it concerns (found by the bridge's
event id, the message's origin, or one of its mirrors), so a reader sees a message once,
with its current text, its earlier versions, whether it was deleted and its reactions.
What points at a message outside the given events stays an entry of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge.incidents.model import Action, IncidentChange, change_from
from bridge.model import Kind, Relation, RelationKind, TimelineEvent

_FOLDED = frozenset({Kind.EDIT, Kind.REDACTION, Kind.REACTION})


@dataclass(frozen=True, slots=True, kw_only=True)
class Reactions:
    key: str
    senders: tuple[str, ...]
    """Display names of who reacted with ``key``, in order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One line of the timeline as shown."""

    event: TimelineEvent
    text: str
    """The current text: the last edit's, else the event's own."""
    edits: tuple[TimelineEvent, ...] = ()
    deleted: TimelineEvent | None = None
    reactions: tuple[Reactions, ...] = ()
    key_event: bool = False
    change: IncidentChange | None = None
    """For an ``INCIDENT`` event: the change it records."""
    orphan: bool = False
    """An edit, delete or reaction whose message is not among the events shown."""


@dataclass(slots=True)
class _Draft:
    event: TimelineEvent
    edits: list[TimelineEvent] = field(default_factory=list)
    deleted: TimelineEvent | None = None
    reactions: dict[tuple[str, str], str] = field(default_factory=dict)
    """(key, user id) -> display name, in the order given."""
    key_event: bool = False
    orphan: bool = False


@dataclass(slots=True)
class _Index:
    """Where each message can be found: by event id, origin and mirrors."""

    by_id: dict[str, _Draft] = field(default_factory=dict)
    by_ref: dict[tuple[str, str], _Draft] = field(default_factory=dict)
    reactions: dict[str, tuple[_Draft, str, str]] = field(default_factory=dict)
    """``id:<event id>`` or ``ref:<room key>|<message id>`` of a reaction -> (the message
    it is on, its key, who reacted)."""

    def add(self, draft: _Draft) -> None:
        event = draft.event
        self.by_id[event.id] = draft
        self.by_ref.setdefault((event.origin.room.key, event.origin.message_id), draft)
        for mirror in event.mirrors:
            if mirror.message_id is not None:
                self.by_ref.setdefault((mirror.room.key, mirror.message_id), draft)

    def find(self, relation: Relation) -> _Draft | None:
        if relation.event_id is not None and relation.event_id in self.by_id:
            return self.by_id[relation.event_id]
        return self.by_ref.get((relation.target.room.key, relation.target.message_id))


def fold(events: Sequence[TimelineEvent]) -> list[Entry]:
    """The entries to show for ``events`` (in timeline order), in the same order."""
    drafts: list[_Draft] = []
    index = _Index()
    for event in events:
        if event.kind in _FOLDED and _fold_into(event, index):
            continue
        draft = _Draft(event=event, orphan=event.kind in _FOLDED)
        drafts.append(draft)
        if event.kind not in _FOLDED:
            index.add(draft)
        change = _change(event)
        if change is not None and change.action is Action.KEY_EVENT:
            draft.key_event = True
            marked = index.by_id.get(change.marked_event or "")
            if marked is not None:
                marked.key_event = True
    return [_entry(d) for d in drafts]


def _fold_into(event: TimelineEvent, index: _Index) -> bool:
    """Attach an edit, delete or reaction to its message; False if it is not shown."""
    if event.kind is Kind.EDIT:
        target = _target(event, RelationKind.EDIT, index)
        if target is None:
            return False
        target.edits.append(event)
        return True
    if event.kind is Kind.REDACTION:
        return _fold_redaction(event, index)
    target = _target(event, RelationKind.REACTION, index)
    relation = event.relation(RelationKind.REACTION)
    if target is None or relation is None:
        return False
    key = relation.key or event.body.text
    reaction = (key, event.sender.user_id)
    if event.data.get("removed"):
        target.reactions.pop(reaction, None)
    else:
        target.reactions[reaction] = event.sender.display_name
        found = (target, key, event.sender.user_id)
        index.reactions[f"id:{event.id}"] = found
        if event.origin.message_id != relation.target.message_id:
            # A reaction with a message id of its own (Matrix): a redaction can name it.
            index.reactions[_ref_key(event.origin.room.key, event.origin.message_id)] = found
    return True


def _fold_redaction(event: TimelineEvent, index: _Index) -> bool:
    relation = event.relation(RelationKind.REDACTION)
    if relation is None:
        return False
    target = relation.target
    for reaction_key in (f"id:{relation.event_id}", _ref_key(target.room.key, target.message_id)):
        found = index.reactions.get(reaction_key)
        if found is not None:
            reacted, key, user = found
            reacted.reactions.pop((key, user), None)
            return True
    message = index.find(relation)
    if message is None:
        return False
    message.deleted = event
    return True


def _ref_key(room_key: str, message_id: str) -> str:
    return f"ref:{room_key}|{message_id}"


def _target(event: TimelineEvent, kind: RelationKind, index: _Index) -> _Draft | None:
    relation = event.relation(kind)
    return index.find(relation) if relation is not None else None


def _change(event: TimelineEvent) -> IncidentChange | None:
    return change_from(event.data) if event.kind is Kind.INCIDENT else None


def _entry(draft: _Draft) -> Entry:
    grouped: dict[str, list[str]] = {}
    for (key, _user), name in draft.reactions.items():
        grouped.setdefault(key, []).append(name)
    text = draft.edits[-1].body.text if draft.edits else draft.event.body.text
    return Entry(
        event=draft.event,
        text=text,
        edits=tuple(draft.edits),
        deleted=draft.deleted,
        reactions=tuple(Reactions(key=k, senders=tuple(v)) for k, v in grouped.items()),
        key_event=draft.key_event,
        change=_change(draft.event),
        orphan=draft.orphan,
    )
