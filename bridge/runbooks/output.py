"""A run's one message in its rooms, edited as output grows, and its captured output.

The message is a bridge notice addressed to the run's room and the room linked to it
(keyed ``run:<id>``, so posting it again stores nothing twice). Output is redacted
(every secret value of the run masked, also across chunk boundaries), kept up to a cap
(the newest part), and shown by editing the message: a ``Kind.EDIT`` bridge event that
relates to the notice, which delivery carries to both rooms like any edit. Edits are
rate-limited (at most one per ``min_interval_s``); the last state is always posted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from bridge.ids import UlidFactory
from bridge.model import (
    AppendResult,
    Body,
    EventID,
    IncidentID,
    Kind,
    MessageStyle,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RoomRef,
    TimelineEvent,
)
from bridge.notices import BRIDGE_BOT, BRIDGE_ROOM, bridge_notice
from bridge.ports import Clock, TimelineStore
from bridge.runbooks.secrets import RedactingStream, Redactor

CHAT_TAIL_CHARS: Final = 3000
"""How much of the newest output the message shows (the whole is stored on the run)."""
DEFAULT_MAX_OUTPUT: Final = 256 * 1024


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value (and its common encodings) masked."""
    return Redactor(secrets).redact(text)


class CapturedOutput:
    """A run's output, redacted as it arrives (a secret split across pieces included),
    kept newest-last up to a cap."""

    def __init__(self, *, max_chars: int = DEFAULT_MAX_OUTPUT) -> None:
        self._max = max_chars
        self._text = ""
        self._redactor = Redactor(())
        self._stream: RedactingStream = self._redactor.stream()
        self.truncated = False
        self.changed = asyncio.Event()

    def use_secrets(self, values: Iterable[str]) -> None:
        """Mask these values from now on (set before any output arrives)."""
        self._redactor = Redactor(values)
        self._stream = self._redactor.stream()

    def redact(self, text: str) -> str:
        return self._redactor.redact(text)

    def write(self, text: str) -> None:
        if not text:
            return
        self._keep(self._stream.feed(text))
        self.changed.set()

    def close(self) -> None:
        """The output is complete: what was held back (a possible secret's start) is added."""
        self._keep(self._stream.flush())

    def _keep(self, text: str) -> None:
        self._text += text
        if len(self._text) > self._max:
            self._text = self._text[-self._max :]
            self.truncated = True

    def text(self) -> str:
        """The kept output, redacted, at most ``max_chars``."""
        return self._text


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageTarget:
    """Where a run's message lives: its notice and the rooms it was posted to."""

    notice: EventID
    origin: RemoteRef
    rooms: tuple[RoomRef, ...]
    incident_id: IncidentID | None


class RunMessage:
    """Posts a run's notice and edits it, at most once per ``min_interval_s``."""

    def __init__(
        self,
        *,
        run_key: str,
        store: TimelineStore,
        clock: Clock,
        ids: UlidFactory,
        on_stored: Callable[[Sequence[AppendResult]], None] | None,
        min_interval_s: float = 2.0,
    ) -> None:
        self._key = run_key
        self._store = store
        self._clock = clock
        self._ids = ids
        self._on_stored = on_stored
        self._interval = min_interval_s
        self._last_edit: float | None = None
        self._edits = 0
        self._lock = asyncio.Lock()
        self.target: MessageTarget | None = None

    async def post(
        self, text: str, rooms: Sequence[RoomRef], incident_id: IncidentID | None
    ) -> MessageTarget:
        notice = bridge_notice(
            ids=self._ids,
            now=self._clock.now(),
            key=f"run:{self._key}",
            text=text,
            incident_id=incident_id,
            data={"run_id": self._key},
        )
        stored = await self._store.append(notice, list(rooms))
        self._announce(stored)
        self.target = MessageTarget(
            notice=stored.event.id,
            origin=stored.event.origin,
            rooms=tuple(rooms),
            incident_id=incident_id,
        )
        return self.target

    async def edit(self, text: str, *, final: bool = False, key: str | None = None) -> None:
        """Edit the message (waiting out the rate limit first)."""
        if self.target is None:
            return
        async with self._lock:
            if self._last_edit is not None:
                wait = self._last_edit + self._interval - self._clock.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            self._edits += 1
            suffix = key or ("final" if final else str(self._edits))
            await self._append_edit(self.target, text, suffix, self._clock.now())
            self._last_edit = self._clock.monotonic()

    async def _append_edit(
        self, target: MessageTarget, text: str, suffix: str, now: datetime
    ) -> None:
        edit = edit_event(
            ids=self._ids, target=target, key=f"run:{self._key}:edit:{suffix}", text=text, now=now
        )
        stored = await self._store.append(edit, list(target.rooms))
        self._announce(stored)

    def _announce(self, stored: AppendResult) -> None:
        if self._on_stored is not None and not stored.duplicate:
            self._on_stored([stored])


def edit_event(
    *, ids: UlidFactory, target: MessageTarget, key: str, text: str, now: datetime
) -> TimelineEvent:
    """A bridge edit of a run's notice (``key`` makes it unique)."""
    return TimelineEvent(
        id=EventID(ids.new()),
        incident_id=target.incident_id,
        kind=Kind.EDIT,
        origin=RemoteRef(room=BRIDGE_ROOM, message_id=RemoteMessageID(key)),
        origin_variant="",
        sender=BRIDGE_BOT,
        body=Body(text=text, style=MessageStyle.NOTICE),
        occurred_at=now,
        received_at=now,
        relations=(Relation(kind=RelationKind.EDIT, target=target.origin, event_id=target.notice),),
    )


def tail(text: str, limit: int = CHAT_TAIL_CHARS) -> str:
    if len(text) <= limit:
        return text
    return "…" + text[-limit:].split("\n", 1)[-1] if "\n" in text[-limit:] else "…" + text[-limit:]
