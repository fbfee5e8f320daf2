"""Matrix reactions, shown in Teams by the bot: the reaction line.

A bot cannot react as a user, so the bridge keeps a line that names who
reacted how, e.g. ``👍 Alice, Bob · 🎉 Carol``, in one of two places:

- On a message the bridge posted (a Matrix message mirrored into Teams): as the
  last line of that activity, which the bot updates when a reaction is added or
  taken back. Every other update of the activity (an edit, a line removed from a
  combined activity) is dressed with the line too (``ReactionDresser``, called by
  the sender for each update), so edits keep it; an edit without images keeps
  the images the message was posted with.
- On a Teams user's own message (which the bot cannot change): in a reply the
  bot posts under it, naming the message, kept up to date and deleted when the
  last reaction is taken back.

The truth is a record per reacted activity in the StateStore (namespace
``teams_reaction_lines``, keyed by conversation and activity): who reacted with
what, the activity's content without the line (as last put by the bridge), and
the reply that holds the line. So a restart, an edit or a redelivery rebuilds
the same line; adding a reaction twice or taking one back twice changes nothing.
A record is written for each update of an activity (so a later reaction knows
the edited content) and for each message posted with images.

The line lists reactions from Matrix only; Teams shows its own users' reactions
natively. Reactions on a combined activity (several Matrix messages in one
Teams message) share the activity's one line.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import structlog

from adapters.teams.ids import TeamsActivityID
from adapters.teams.outbound import split_thread
from adapters.teams.records import LayoutStore
from adapters.teams.render import (
    LINE_SEPARATOR,
    Content,
    MediaAttachment,
    Mention,
    activity_size,
    render,
    split,
)
from bridge.errors import PermanentDeliveryError, RetryableDeliveryError, StoreError
from bridge.model import (
    Body,
    EventID,
    Kind,
    MessageStyle,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
    TimelineEvent,
)
from bridge.ports import Clock, OutboundMessage, StateStore, TimelineStore

log = structlog.get_logger(__name__)

NAMESPACE: Final = "teams_reaction_lines"
KEY_SEPARATOR: Final = " · "
MAX_NAMES_PER_KEY: Final = 8
MAX_EXCERPT_CHARS: Final = 80
SUMMARY_AUTHOR: Final = Sender(
    platform=Platform.BRIDGE, user_id=RemoteUserID("reactions"), display_name="Reactions"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reactor:
    key: str
    user_id: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReactionRecord:
    """The reaction line of one Teams activity (see the module doc)."""

    conversation_key: str
    activity_id: TeamsActivityID
    reactors: tuple[Reactor, ...] = ()
    base: Content | None = None
    """The activity's content without the line, as the bridge last put it."""
    summary: RemoteRef | None = None
    """The bot's reply holding the line, under a Teams user's message."""


def reaction_line(reactors: Sequence[Reactor], *, names: bool = True) -> str:
    """``👍 Alice, Bob · 🎉 Carol`` (plain text), keys in the order they first appeared;
    with ``names=False`` only counts (``👍 2 · 🎉 1``)."""
    grouped: dict[str, list[str]] = {}
    for reactor in reactors:
        grouped.setdefault(reactor.key, []).append(reactor.name or reactor.user_id)
    parts: list[str] = []
    for key, who in grouped.items():
        if not names:
            parts.append(f"{key} {len(who)}")
            continue
        shown = ", ".join(who[:MAX_NAMES_PER_KEY])
        more = len(who) - MAX_NAMES_PER_KEY
        parts.append(f"{key} {shown}" + (f" +{more}" if more > 0 else ""))
    return KEY_SEPARATOR.join(parts)


def dressed(content: Content, reactors: Sequence[Reactor], *, max_bytes: int) -> Content:
    """``content`` with the reaction line as its last line, within ``max_bytes`` (names
    give way to counts, then the line to the content)."""
    if not reactors:
        return content
    for names in (True, False):
        line = html.escape(reaction_line(reactors, names=names), quote=False)
        candidate = replace(content, html=f"{content.html}{LINE_SEPARATOR}{line}")
        if activity_size(candidate) <= max_bytes:
            return candidate
    return content


def with_reactor(reactors: tuple[Reactor, ...], reactor: Reactor) -> tuple[Reactor, ...]:
    if any(r.key == reactor.key and r.user_id == reactor.user_id for r in reactors):
        return reactors
    return (*reactors, reactor)


def without_reactor(reactors: tuple[Reactor, ...], key: str, user_id: str) -> tuple[Reactor, ...]:
    return tuple(r for r in reactors if not (r.key == key and r.user_id == user_id))


# -- the record -----------------------------------------------------------------------


class ReactionRecords:
    """``ReactionRecord``s on the core's StateStore (MongoDB in production)."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    async def get(
        self, conversation_key: str, activity_id: TeamsActivityID
    ) -> ReactionRecord | None:
        document = await self._state.get(NAMESPACE, _key(conversation_key, activity_id))
        return record_from(document) if document is not None else None

    async def put(self, record: ReactionRecord) -> None:
        await self._state.put(
            NAMESPACE, _key(record.conversation_key, record.activity_id), record_to(record)
        )


def record_to(record: ReactionRecord) -> dict[str, Any]:
    summary = record.summary
    return {
        "conversation_key": record.conversation_key,
        "activity_id": record.activity_id,
        "reactors": [{"key": r.key, "user_id": r.user_id, "name": r.name} for r in record.reactors],
        "base": _content_to(record.base) if record.base is not None else None,
        "summary": (
            {"room_id": summary.room.room_id, "message_id": summary.message_id} if summary else None
        ),
    }


def record_from(document: Mapping[str, Any]) -> ReactionRecord:
    base = document.get("base")
    summary = document.get("summary")
    return ReactionRecord(
        conversation_key=str(document["conversation_key"]),
        activity_id=TeamsActivityID(str(document["activity_id"])),
        reactors=tuple(
            Reactor(key=str(r["key"]), user_id=str(r["user_id"]), name=str(r.get("name", "")))
            for r in document.get("reactors", [])
        ),
        base=_content_from(base) if isinstance(base, Mapping) else None,
        summary=_teams_ref(str(summary["room_id"]), str(summary["message_id"]))
        if isinstance(summary, Mapping)
        else None,
    )


def _content_to(content: Content) -> dict[str, Any]:
    return {
        "html": content.html,
        "mentions": [{"user_id": m.user_id, "name": m.name} for m in content.mentions],
        "attachments": [
            {"content_type": a.content_type, "content_url": a.content_url, "name": a.name}
            for a in content.attachments
        ],
    }


def _content_from(document: Mapping[str, Any]) -> Content:
    return Content(
        html=str(document.get("html", "")),
        mentions=tuple(
            Mention(user_id=str(m["user_id"]), name=str(m["name"]))
            for m in document.get("mentions", [])
        ),
        attachments=tuple(
            MediaAttachment(
                content_type=str(a["content_type"]),
                content_url=str(a["content_url"]),
                name=str(a["name"]),
            )
            for a in document.get("attachments", [])
        ),
    )


def _key(conversation_key: str, activity_id: TeamsActivityID) -> str:
    return f"{conversation_key}|{activity_id}"


def _teams_ref(room_id: str, message_id: str) -> RemoteRef:
    return RemoteRef(
        room=RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(room_id)),
        message_id=RemoteMessageID(message_id),
    )


# -- every update of an activity ------------------------------------------------------


class ReactionDresser:
    """The sender's ``Dresser``: records each update's content and adds the line to it."""

    def __init__(self, records: ReactionRecords, *, max_activity_bytes: int) -> None:
        self._records = records
        self._max_bytes = max_activity_bytes

    async def dress(
        self, conversation_key: str, activity_id: TeamsActivityID, content: Content
    ) -> Content:
        record = await self._records.get(conversation_key, activity_id)
        if record is None:
            record = ReactionRecord(conversation_key=conversation_key, activity_id=activity_id)
        elif not content.attachments and record.base is not None and record.base.attachments:
            content = replace(content, attachments=record.base.attachments)  # edits keep images
        if record.base != content:
            await self._records.put(replace(record, base=content))
        return dressed(content, record.reactors, max_bytes=self._max_bytes)


# -- reactions added and taken back ---------------------------------------------------


class ReactionSender(Protocol):
    """The part of the Teams sender the reaction line needs."""

    @property
    def layouts(self) -> LayoutStore: ...

    @property
    def max_activity_bytes(self) -> int: ...

    async def send(self, message: OutboundMessage, *, idempotency_key: str) -> RemoteRef: ...

    async def update(
        self, target: RemoteRef, content: Content, *, idempotency_key: str, dressed: bool = True
    ) -> None: ...

    async def delete(
        self, target: RemoteRef, *, idempotency_key: str, original: EventID | None = None
    ) -> None: ...


class TeamsReactions:
    """Adds and takes back reactions on the line of a Teams message (see the module doc)."""

    def __init__(
        self,
        *,
        records: ReactionRecords,
        timeline: TimelineStore,
        sender: ReactionSender,
        clock: Clock,
    ) -> None:
        self._records = records
        self._timeline = timeline
        self._sender = sender
        self._clock = clock

    async def react(
        self,
        target: RemoteRef,
        sender: Sender,
        key: str,
        *,
        idempotency_key: str,
        original: EventID | None,
    ) -> None:
        reactor = Reactor(key=key, user_id=sender.user_id, name=sender.display_name)
        await self._change(target, idempotency_key, original, lambda r: with_reactor(r, reactor))

    async def unreact(
        self,
        target: RemoteRef,
        sender: Sender,
        key: str,
        *,
        idempotency_key: str,
        original: EventID | None,
    ) -> None:
        await self._change(
            target, idempotency_key, original, lambda r: without_reactor(r, key, sender.user_id)
        )

    async def remember_sent(self, sent: RemoteRef, message: OutboundMessage) -> None:
        """Record what a message with images was posted as, so the line keeps its images."""
        content = split(render(message.event), max_bytes=self._sender.max_activity_bytes)[0]
        if not content.attachments:
            return
        conversation_key, activity_id = _place(sent)
        try:
            await self._records.put(
                ReactionRecord(
                    conversation_key=conversation_key, activity_id=activity_id, base=content
                )
            )
        except StoreError as exc:
            log.warning("teams_reaction_base_not_saved", error=str(exc))

    async def _change(
        self,
        target: RemoteRef,
        key: str,
        original: EventID | None,
        change: Callable[[tuple[Reactor, ...]], tuple[Reactor, ...]],
    ) -> None:
        conversation_key, activity_id = _place(target)
        try:
            record = await self._records.get(conversation_key, activity_id)
            reacted = await self._timeline.get(original) if original is not None else None
            if record is None:
                record = ReactionRecord(conversation_key=conversation_key, activity_id=activity_id)
            reactors = change(record.reactors)
            if reacted is not None and reacted.origin == target:
                await self._summarise(target, replace(record, reactors=reactors), reacted, key)
            else:
                await self._line(target, replace(record, reactors=reactors), reacted, key)
        except StoreError as exc:
            raise RetryableDeliveryError(f"the reaction line is unavailable: {exc}") from exc

    async def _line(
        self, target: RemoteRef, record: ReactionRecord, reacted: TimelineEvent | None, key: str
    ) -> None:
        """The line at the end of a message the bridge posted."""
        base = record.base or await self._posted_content(target, reacted)
        await self._records.put(replace(record, base=base))
        await self._sender.update(target, base, idempotency_key=key)
        log.info("teams_reaction_line_updated", reactions=len(record.reactors))

    async def _summarise(
        self, target: RemoteRef, record: ReactionRecord, reacted: TimelineEvent, key: str
    ) -> None:
        """The line in the bot's reply under a Teams user's message."""
        message = self._summary(target, reacted, record.reactors)
        if record.summary is None:
            await self._records.put(record)
            if record.reactors:
                posted = await self._sender.send(message, idempotency_key=key)
                await self._records.put(replace(record, summary=posted))
                log.info("teams_reaction_summary_posted", reactions=len(record.reactors))
        elif record.reactors:
            await self._records.put(record)
            content = render(message.event).content()
            await self._sender.update(record.summary, content, idempotency_key=key, dressed=False)
            log.info("teams_reaction_summary_updated", reactions=len(record.reactors))
        else:
            await self._sender.delete(record.summary, idempotency_key=key)
            await self._records.put(replace(record, summary=None))
            log.info("teams_reaction_summary_deleted")

    async def _posted_content(self, target: RemoteRef, reacted: TimelineEvent | None) -> Content:
        """What the bridge posted as ``target`` (for a record made before any update)."""
        conversation_key, activity_id = _place(target)
        layout = await self._sender.layouts.get(conversation_key, activity_id)
        if layout is not None and len(layout.lines) > 1:
            mentions: dict[str, Mention] = {}
            for entry in layout.lines:
                for mention in entry.mentions:
                    mentions.setdefault(mention.user_id, mention)
            return Content(
                html=LINE_SEPARATOR.join(entry.html for entry in layout.lines),
                mentions=tuple(mentions.values()),
            )
        if reacted is None:
            raise PermanentDeliveryError("the reacted message is not in the timeline")
        return split(render(reacted), max_bytes=self._sender.max_activity_bytes)[0]

    def _summary(
        self, target: RemoteRef, reacted: TimelineEvent, reactors: Sequence[Reactor]
    ) -> OutboundMessage:
        text = " ".join(reacted.body.text.split())
        excerpt = text if len(text) <= MAX_EXCERPT_CHARS else text[: MAX_EXCERPT_CHARS - 1] + "…"
        author = reacted.sender.display_name or reacted.sender.user_id
        about = f"on {author}'s message" + (f" “{excerpt}”" if excerpt else "")
        line = reaction_line(reactors)
        body_html = (
            f"<i>{html.escape(about, quote=False)}</i>{LINE_SEPARATOR}"
            f"{html.escape(line, quote=False)}"
        )
        now = self._clock.now()
        event = TimelineEvent(
            id=EventID(f"reactions-{target.message_id}"),
            incident_id=reacted.incident_id,
            kind=Kind.NOTICE,
            origin=target,
            origin_variant="reactions",
            sender=SUMMARY_AUTHOR,
            body=Body(text=f"{about}\n{line}", html=body_html, style=MessageStyle.NOTICE),
            occurred_at=now,
            received_at=now,
        )
        return OutboundMessage(event=event, target=target.room, reply_to=target.message_id)


def _place(ref: RemoteRef) -> tuple[str, TeamsActivityID]:
    return split_thread(ref.room.room_id)[0], TeamsActivityID(ref.message_id)
