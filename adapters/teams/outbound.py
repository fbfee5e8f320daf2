"""The outbound half of the Teams adapter: messages, edits and deletes into Teams.

``TeamsSender`` is what ``TeamsAdapter`` delegates ``send``, ``edit`` and
``redact`` to, and the reaction line's ``update``s (see ``reactions``: every
update is dressed with the activity's reaction line). Every operation goes
through the queue of its conversation (a channel and its threads share one),
served in order by one worker task:

1. The worker waits for a slot in the conversation's and the tenant's
   sliding windows (``pacing.Pacer``): Teams' limits are never crossed.
2. If the operation at the head is a plain new message, the plain messages
   queued right behind it for the same place are combined with it into one
   activity (one line each, attribution kept, order kept, within the size
   limit): a flood is coalesced, never dropped. Replies, messages with
   images, edits and deletes are sent one by one.
3. A create is opened (``creates``): each idempotency key it carries is
   marked in flight, for all of them at once; a key the bridge sent before is
   judged by its record (delivered already: answered without a call; too many
   creates of unknown outcome: refused; one before: sent alone). Keys that
   cannot go in the combined activity go back to the head of the queue.
4. The call is made. A 429 pauses the conversation for ``Retry-After``; 412
   and 5xx back off exponentially with jitter, for a bounded number of
   attempts, then the error goes to the caller (the core's outbox retries
   later). A create that timed out or got a 5xx may have been delivered:
   it is recorded as ambiguous and sent once more at most (see ``records``).

A message over the size limit is posted as several activities; a combined or
split message is recorded as a layout so an edit or a delete can address the
right activities later, also after a restart.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final, Protocol

import aiohttp
import structlog

from adapters.teams.calls import Address, OutboundMetrics, PacedCalls
from adapters.teams.connector import ConnectorClient
from adapters.teams.creates import (
    CreateRecords,
    Delivered,
    Exhausted,
    Pending,
    Ready,
    open_creates,
    save_all,
)
from adapters.teams.ids import (
    ConversationReferences,
    TeamsActivityID,
    TeamsConversationID,
    TokenProvider,
)
from adapters.teams.lanes import Lane, Lanes, Slot
from adapters.teams.pacing import Pacer, PacingSettings, Sleep
from adapters.teams.records import (
    ActivityLayout,
    AmbiguousSend,
    AmbiguousSendRecorder,
    LayoutLine,
    LayoutStore,
    MemoryLayouts,
)
from adapters.teams.render import (
    LINE_SEPARATOR,
    Content,
    Line,
    Mention,
    activity,
    activity_size,
    combine,
    render,
    split,
    truncate,
)
from bridge.errors import (
    BridgeError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StoreError,
)
from bridge.metrics import BridgeMetrics
from bridge.model import (
    EventID,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    TimelineEvent,
)
from bridge.ports import Clock, OutboundMessage

log = structlog.get_logger(__name__)

THREAD_MARKER: Final = ";messageid="


def split_thread(conversation_id: str) -> tuple[TeamsConversationID, TeamsActivityID | None]:
    """``19:x@thread.tacv2;messageid=17`` -> (``19:x@thread.tacv2``, ``17``)."""
    base, marker, root = conversation_id.partition(THREAD_MARKER)
    return TeamsConversationID(base), (TeamsActivityID(root) if marker and root else None)


class OperationKind(StrEnum):
    SEND = "send"
    EDIT = "edit"
    DELETE = "delete"
    UPDATE = "update"
    """Put given content into an activity (the reaction line's changes)."""
    POST = "post"
    """The bot's own content as an activity of its own (an incident header), or as the
    root of a new channel thread."""


class Dresser(Protocol):
    """What is added to an activity's content on every update (the reaction line)."""

    async def dress(
        self, conversation_key: str, activity_id: TeamsActivityID, content: Content
    ) -> Content: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class _Operation:
    """A prepared operation: where it goes and what it carries."""

    kind: OperationKind
    key: str
    address: Address
    message: OutboundMessage | None = None
    line: Line | None = None
    target: RemoteRef | None = None
    original: EventID | None = None
    """For a delete: the timeline event of the deleted message (to find its line)."""
    sender: RemoteUserID | None = None
    """For a delete: who deleted (to find their line when ``original`` is unknown)."""
    known: AmbiguousSend | None = None
    """For a send put back in its queue: its ambiguous-send record as stored."""
    content: Content | None = None
    """For an update or a post: the content to put, and whether it is dressed (``dressed``)."""
    dressed: bool = True
    room: RoomRef | None = None
    """For a post: the room posted to (a channel for a new thread)."""
    new_thread: bool = False
    """For a post: start a new thread in the channel with it (``POST /v3/conversations``)."""


class TeamsSender:
    """Sends, edits and deletes bridged messages in Teams conversations (see the module doc)."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        tokens: TokenProvider,
        conversations: ConversationReferences,
        clock: Clock,
        metrics: BridgeMetrics,
        settings: PacingSettings,
        ambiguous: AmbiguousSendRecorder,
        layouts: LayoutStore | None = None,
        sleep: Sleep | None = None,
        jitter: Callable[[], float] | None = None,
        dresser: Dresser | None = None,
    ) -> None:
        """``dresser`` adds to the content of every update (the reaction line)."""
        self._settings = settings
        self._dresser = dresser
        self._conversations = conversations
        self._clock = clock
        self._metrics = OutboundMetrics(metrics)
        self._ambiguous = ambiguous
        self._layouts: LayoutStore = layouts if layouts is not None else MemoryLayouts()
        self._calls = PacedCalls(
            pacer=Pacer(settings, monotonic=clock.monotonic, sleep=sleep or asyncio.sleep),
            settings=settings,
            sleep=sleep or asyncio.sleep,
            jitter=jitter or random.SystemRandom().random,
            metrics=self._metrics,
        )
        self._connector = ConnectorClient(
            session=session,
            tokens=tokens,
            timeout_s=settings.request_timeout_s,
            observe=self._metrics.observe_request,
            wall_clock=clock.now,
        )
        self._lanes: Lanes[_Operation] = Lanes(
            serve=self._serve,
            monotonic=clock.monotonic,
            queue_timeout_s=settings.queue_timeout_s,
            depth=self._metrics.queued,
        )
        self._recent: OrderedDict[str, RemoteRef | None] = OrderedDict()
        self._partial: OrderedDict[str, tuple[TeamsActivityID, ...]] = OrderedDict()

    @property
    def connector(self) -> ConnectorClient:
        return self._connector

    @property
    def layouts(self) -> LayoutStore:
        return self._layouts

    @property
    def max_activity_bytes(self) -> int:
        return self._settings.max_activity_bytes

    # -- the public operations ---------------------------------------------------------

    async def send(self, message: OutboundMessage, *, idempotency_key: str) -> RemoteRef:
        """Post a new message (a reply when ``message.reply_to`` is set); its first activity."""
        done = self._recent.get(idempotency_key)
        if done is not None:
            return done
        existing = self._lanes.in_flight(idempotency_key)
        if existing is not None:
            shared: RemoteRef = await asyncio.shield(existing)
            return shared
        slot = self._lanes.reserve(split_thread(message.target.room_id)[0], idempotency_key)
        ref: RemoteRef = await self._lanes.run(slot, self._prepare_send(message, idempotency_key))
        return ref

    async def edit(
        self, target: RemoteRef, message: OutboundMessage, *, idempotency_key: str
    ) -> None:
        """Replace the content of a message the bridge posted (``message.event`` is the edit)."""

        async def prepare() -> _Operation:
            return _Operation(
                kind=OperationKind.EDIT,
                key=idempotency_key,
                address=await self._address(target.room.room_id),
                message=message,
                line=render(message.event),
                target=target,
            )

        await self._change(target, idempotency_key, prepare)

    async def delete(
        self,
        target: RemoteRef,
        *,
        idempotency_key: str,
        original: EventID | None = None,
        sender: RemoteUserID | None = None,
    ) -> None:
        """Delete a message the bridge posted (all its activities when it was split).

        In a combined activity only one line is removed: the line of
        ``original`` (the deleted message's timeline event), else the only line
        by ``sender``; when neither identifies one line the delete is refused.
        """

        async def prepare() -> _Operation:
            return _Operation(
                kind=OperationKind.DELETE,
                key=idempotency_key,
                address=await self._address(target.room.room_id),
                target=target,
                original=original,
                sender=sender,
            )

        await self._change(target, idempotency_key, prepare)

    async def update(
        self, target: RemoteRef, content: Content, *, idempotency_key: str, dressed: bool = True
    ) -> None:
        """Put ``content`` into an activity the bridge posted (dressed, unless told not to)."""

        async def prepare() -> _Operation:
            return _Operation(
                kind=OperationKind.UPDATE,
                key=idempotency_key,
                address=await self._address(target.room.room_id),
                target=target,
                content=content,
                dressed=dressed,
            )

        await self._change(target, idempotency_key, prepare)

    async def post(
        self, room: RoomRef, content: Content, *, idempotency_key: str, new_thread: bool = False
    ) -> RemoteRef:
        """Post ``content`` as an activity of its own, never combined with other lines.

        ``new_thread``: ``room`` is a channel and the activity starts a new thread in it
        (``POST /v3/conversations`` with ``channelData.channel``); the answer names the
        thread (``<channel>;messageid=<root>``) as its room and the root as its message.
        A create like any other: paced in the channel's queue, its key recorded, an
        ambiguous outcome retried once at most, a key delivered before answered without
        a call.
        """
        done = self._recent.get(idempotency_key)
        if done is not None:
            return done
        existing = self._lanes.in_flight(idempotency_key)
        if existing is not None:
            shared: RemoteRef = await asyncio.shield(existing)
            return shared

        async def prepare() -> _Operation:
            return _Operation(
                kind=OperationKind.POST,
                key=idempotency_key,
                address=await self._address(room.room_id),
                content=content,
                room=room,
                new_thread=new_thread,
            )

        slot = self._lanes.reserve(split_thread(room.room_id)[0], idempotency_key)
        ref: RemoteRef = await self._lanes.run(slot, prepare())
        return ref

    async def close(self) -> None:
        """Stop every worker; what is still queued fails as retryable. Idempotent."""
        await self._lanes.close()

    @property
    def queued(self) -> int:
        return self._lanes.queued

    async def _change(
        self,
        target: RemoteRef,
        key: str,
        prepare: Callable[[], Coroutine[Any, Any, _Operation]],
    ) -> None:
        if key in self._recent:
            return
        existing = self._lanes.in_flight(key)
        if existing is not None:
            await asyncio.shield(existing)
            return
        slot = self._lanes.reserve(split_thread(target.room.room_id)[0], key)
        await self._lanes.run(slot, prepare())

    async def _prepare_send(self, message: OutboundMessage, key: str) -> _Operation:
        address = await self._address(
            message.target.room_id, reply_to=message.reply_to, thread_root=message.thread_root
        )
        return _Operation(
            kind=OperationKind.SEND,
            key=key,
            address=address,
            message=message,
            line=render(message.event),
        )

    def _remember(self, key: str, ref: RemoteRef | None) -> None:
        self._recent[key] = ref
        self._recent.move_to_end(key)
        while len(self._recent) > self._settings.recent_keys:
            self._recent.popitem(last=False)

    async def _serve(self, lane: Lane[_Operation]) -> None:
        """The worker of one conversation: serves its queue in order until it is empty."""
        while (head := await self._lanes.head(lane)) is not None:
            address = _prepared(head).address
            delay = self._calls.delay(address)
            if self._clock.monotonic() + delay > head.deadline:
                self._lanes.pop(lane).settle(
                    error=RetryableDeliveryError(
                        "the conversation's rate limits leave no room in time",
                        retry_after=max(delay, 1.0),
                    )
                )
                continue
            await self._calls.acquire(address)
            after = self._lanes.peek(lane)
            if after is None or after.operation is None:
                continue  # the callers gave up while waiting: the slot goes unused
            await self._execute(lane, self._take_batch(lane))

    def _coalescable(self, slot: Slot[_Operation] | None) -> bool:
        operation = slot.operation if slot is not None else None
        return (
            operation is not None
            and operation.kind is OperationKind.SEND
            and operation.line is not None
            and not operation.line.attachments
            and operation.address.reply_to is None
            and (operation.known is None or operation.known.attempts == 0)
            and operation.key not in self._partial
            and activity_size(operation.line.content()) <= self._settings.max_activity_bytes
        )

    def _take_batch(self, lane: Lane[_Operation]) -> list[Slot[_Operation]]:
        """The head of the queue, with the plain messages right behind it when it is one too."""
        head = self._lanes.pop(lane)
        batch = [head]
        if not (self._settings.coalesce and self._coalescable(head)):
            return batch
        address = _prepared(head).address
        lines = [_line(_prepared(head))]
        while len(batch) < self._settings.max_coalesced_lines:
            candidate = self._lanes.peek(lane)
            if candidate is None or not self._coalescable(candidate):
                break
            operation = _prepared(candidate)
            if operation.address != address:
                break
            line = _line(operation)
            if activity_size(combine([*lines, line])) > self._settings.max_activity_bytes:
                break
            lines.append(line)
            batch.append(self._lanes.pop(lane))
        return batch

    async def _execute(self, lane: Lane[_Operation], batch: list[Slot[_Operation]]) -> None:
        """Carry out one batch (its first call's slot is taken); settle every caller."""
        head = _prepared(batch[0])
        if head.kind is OperationKind.POST:
            await self._carry_out(batch, lambda: self._post(head))
            return
        if head.kind is not OperationKind.SEND:
            await self._carry_out(batch, lambda: self._modify(head))
            return
        opened = await self._open(lane, batch)
        if opened is not None:
            slots, records = opened
            await self._carry_out(slots, lambda: self._send(slots, records))

    async def _open(
        self, lane: Lane[_Operation], batch: list[Slot[_Operation]]
    ) -> tuple[list[Slot[_Operation]], CreateRecords] | None:
        """Open the create of a batch of sends (``creates.open_creates``, one round trip for
        keys never sent before). Settles the sends that need no call; puts back in the
        queue those that cannot go in this activity. What is to be sent now, or None."""
        operations = [_prepared(slot) for slot in batch]
        try:
            openings = await open_creates(
                self._ambiguous,
                [Pending(operation.key, operation.known) for operation in operations],
                operations[0].address.conversation_id,
                now=self._clock.now,
            )
        except asyncio.CancelledError:
            stopped = RetryableDeliveryError("the Teams sender stopped during the call")
            for slot in batch:
                slot.settle(error=stopped)
            raise
        except Exception as exc:  # noqa: BLE001 - every error goes to the callers
            log.warning(
                "teams_operation_failed",
                operation=OperationKind.SEND.value,
                conversation=operations[0].address.conversation_key,
                error=str(exc),
                retryable=getattr(exc, "retryable", False),
            )
            for slot in batch:
                slot.settle(error=exc)
            return None
        ready: list[tuple[Slot[_Operation], Ready]] = []
        for slot, operation, opening in zip(batch, operations, openings, strict=True):
            if isinstance(opening, Delivered):  # by an earlier attempt, maybe another process
                ref = RemoteRef(
                    room=_message(operation).target,
                    message_id=RemoteMessageID(opening.activity_id),
                )
                self._remember(slot.key, ref)
                slot.settle(ref)
            elif isinstance(opening, Exhausted):
                slot.settle(
                    error=PermanentDeliveryError(
                        "an earlier create of this message may have been delivered and was "
                        "already sent again once: not sending it a third time "
                        "(recorded as ambiguous)"
                    )
                )
            else:
                ready.append((slot, opening))
        if not ready:
            return None
        first = _first_create(ready)
        if len(first) < len(ready):
            await self._put_back(lane, ready[len(first) :])
        records = CreateRecords(
            self._ambiguous, [opening.record for _, opening in first], now=self._clock.now
        )
        return [slot for slot, _ in first], records

    async def _put_back(
        self, lane: Lane[_Operation], entries: Sequence[tuple[Slot[_Operation], Ready]]
    ) -> None:
        """Return sends to the head of the queue, not in flight any more and with their
        records known, so each goes in the activity it may go in, in order."""
        records = [opening.record.not_sent() for _, opening in entries]
        await save_all(self._ambiguous, records)
        for (slot, _), record in zip(entries, records, strict=True):
            slot.operation = replace(_prepared(slot), known=record)
        self._lanes.put_back(lane, [slot for slot, _ in entries])

    async def _modify(self, operation: _Operation) -> list[RemoteRef | None]:
        """An edit, an update or a delete."""
        if operation.kind is OperationKind.EDIT:
            await self._edit(operation)
        elif operation.kind is OperationKind.UPDATE:
            await self._put(operation)
        else:
            await self._delete(operation)
        return [None]

    async def _send(
        self, slots: list[Slot[_Operation]], records: CreateRecords
    ) -> list[RemoteRef | None]:
        operations = [_prepared(slot) for slot in slots]
        if len(operations) > 1:
            return [*await self._send_combined(operations, records)]
        return [await self._send_one(operations[0], records)]

    async def _carry_out(
        self,
        batch: list[Slot[_Operation]],
        run: Callable[[], Coroutine[Any, Any, list[RemoteRef | None]]],
    ) -> None:
        """Run the batch's call(s); settle every caller with its result or the error."""
        head = _prepared(batch[0])
        try:
            refs = await run()
        except asyncio.CancelledError:
            stopped = RetryableDeliveryError("the Teams sender stopped during the call")
            for slot in batch:
                slot.settle(error=stopped)
            raise
        except Exception as exc:  # noqa: BLE001 - every error goes to the callers
            log.warning(
                "teams_operation_failed",
                operation=head.kind.value,
                conversation=head.address.conversation_key,
                error=str(exc),
                retryable=getattr(exc, "retryable", False),
            )
            for slot in batch:
                slot.settle(error=exc)
            return
        for slot, ref in zip(batch, refs, strict=True):
            self._remember(slot.key, ref)
            slot.settle(ref)

    # -- sends -----------------------------------------------------------------------------

    async def _send_one(self, operation: _Operation, records: CreateRecords) -> RemoteRef:
        line = _line(operation)
        message = _message(operation)
        address = operation.address
        contents = split(line, max_bytes=self._settings.max_activity_bytes)
        posted = list(self._partial.get(operation.key, ()))
        prior = records.attempts
        slot_held = True
        for content in contents[len(posted) :]:
            try:
                posted.append(
                    await self._create(
                        address,
                        content,
                        records=records,
                        prior_ambiguous=prior if not posted else 0,
                        slot_held=slot_held,
                    )
                )
            except BridgeError:
                if posted:  # resume after the parts already posted when the outbox retries
                    self._partial[operation.key] = tuple(posted)
                    while len(self._partial) > self._settings.recent_keys:
                        self._partial.popitem(last=False)
                raise
            slot_held = False
        self._partial.pop(operation.key, None)
        if len(posted) > 1:
            self._metrics.split.inc()
            log.info(
                "teams_message_split", conversation=address.conversation_key, parts=len(posted)
            )
            await self._save_layout(
                ActivityLayout(
                    conversation_key=address.conversation_key,
                    parts=tuple(posted),
                    lines=(_layout_line(message.event, line),),
                )
            )
        return RemoteRef(room=message.target, message_id=RemoteMessageID(posted[0]))

    async def _send_combined(
        self, batch: list[_Operation], records: CreateRecords
    ) -> list[RemoteRef]:
        head = batch[0]
        lines = [_line(operation) for operation in batch]
        activity_id = await self._create(
            head.address,
            combine(lines),
            records=records,
            prior_ambiguous=0,
            slot_held=True,
            record_delivered=False,
        )
        self._metrics.coalesced.inc(len(batch))
        log.info(
            "teams_messages_coalesced",
            conversation=head.address.conversation_key,
            messages=len(batch),
        )
        layout = ActivityLayout(
            conversation_key=head.address.conversation_key,
            parts=(activity_id,),
            lines=tuple(
                _layout_line(_message(op).event, line)
                for op, line in zip(batch, lines, strict=True)
            ),
        )
        await asyncio.gather(records.delivered(activity_id), self._save_layout(layout))
        return [
            RemoteRef(room=_message(op).target, message_id=RemoteMessageID(activity_id))
            for op in batch
        ]

    async def _create(
        self,
        address: Address,
        content: Content,
        *,
        records: CreateRecords,
        prior_ambiguous: int,
        slot_held: bool,
        record_delivered: bool = True,
    ) -> TeamsActivityID:
        """Post ``content``; record the activity as delivered for the keys (unless the caller
        does, together with other writes)."""
        payload = activity(content, reply_to=address.reply_to)

        async def post() -> TeamsActivityID:
            if address.reply_to is not None:
                return await self._connector.reply_to_activity(
                    address.service_url, address.conversation_id, address.reply_to, payload
                )
            return await self._connector.send_to_conversation(
                address.service_url, address.conversation_id, payload
            )

        activity_id = await self._calls.call(
            address, post, creates=records, prior_ambiguous=prior_ambiguous, slot_held=slot_held
        )
        if record_delivered:
            await records.delivered(activity_id)
        return activity_id

    async def _post(self, operation: _Operation) -> list[RemoteRef | None]:
        """A post (``post``): opened and recorded like a send, then one create call."""
        address = operation.address
        if operation.content is None or operation.room is None:
            raise AssertionError("a post carries its content and room")
        opening = (
            await open_creates(
                self._ambiguous,
                [Pending(operation.key, operation.known)],
                address.conversation_id,
                now=self._clock.now,
            )
        )[0]
        if isinstance(opening, Exhausted):
            raise PermanentDeliveryError(
                "an earlier create of this post may have been delivered and was already "
                "sent again once: not sending it a third time (recorded as ambiguous)"
            )
        if isinstance(opening, Delivered):
            activity_id = opening.activity_id
        else:
            records = CreateRecords(self._ambiguous, [opening.record], now=self._clock.now)
            payload = activity(operation.content)
            if operation.new_thread:
                parameters = {
                    "isGroup": True,
                    "channelData": {
                        "channel": {"id": address.conversation_id},
                        "tenant": {"id": address.tenant_id},
                    },
                    "tenantId": address.tenant_id,
                    "activity": payload,
                }

                async def create() -> TeamsActivityID:
                    created = await self._connector.create_conversation(
                        address.service_url, parameters
                    )
                    _, root = split_thread(created.conversation_id)
                    found = created.activity_id or root
                    if found is None:
                        raise PermanentDeliveryError("the new thread was answered without its root")
                    return found

                request = create
            else:

                async def send() -> TeamsActivityID:
                    return await self._connector.send_to_conversation(
                        address.service_url, address.conversation_id, payload
                    )

                request = send
            activity_id = await self._calls.call(
                address,
                request,
                creates=records,
                prior_ambiguous=opening.record.attempts,
                slot_held=True,
            )
            await records.delivered(activity_id)
        room = operation.room
        if operation.new_thread:
            thread = f"{split_thread(room.room_id)[0]}{THREAD_MARKER}{activity_id}"
            room = RoomRef(platform=room.platform, room_id=RemoteRoomID(thread))
        log.info(
            "teams_post_created",
            conversation=address.conversation_key,
            new_thread=operation.new_thread,
        )
        return [RemoteRef(room=room, message_id=RemoteMessageID(activity_id))]

    # -- edits and deletes -------------------------------------------------------------

    async def _edit(self, operation: _Operation) -> None:
        address = operation.address
        target = _target(operation)
        activity_id = TeamsActivityID(target.message_id)
        line = _line(operation)
        layout = await self._layouts.get(address.conversation_key, activity_id)
        if layout is None:
            content = truncate(line, max_bytes=self._settings.max_activity_bytes, parts=1)[0]
            await self._update(address, activity_id, content, slot_held=True)
        elif len(layout.lines) > 1:
            await self._edit_line(operation, layout, line)
        else:
            await self._edit_parts(address, layout, line)

    async def _edit_line(self, operation: _Operation, layout: ActivityLayout, line: Line) -> None:
        """Replace one line of a combined activity."""
        edit = _message(operation).event.relation(RelationKind.EDIT)
        index = _find_line(layout, edit.event_id if edit else None, _origin(edit))
        if index is None:
            raise PermanentDeliveryError("the edited message is not a line of this activity")
        others = [entry for i, entry in enumerate(layout.lines) if i != index]
        room = self._settings.max_activity_bytes - activity_size(_layout_content(others))
        new_html = truncate(line, max_bytes=max(room, 4096), parts=1)[0].html
        old = layout.lines[index]
        lines = list(layout.lines)
        lines[index] = replace(old, html=new_html, mentions=line.mentions)
        content = _layout_content(lines)
        if activity_size(content) > self._settings.max_activity_bytes:
            raise PermanentDeliveryError("the edited line does not fit the combined activity")
        await self._update(operation.address, layout.activity_id, content, slot_held=True)
        await self._save_layout(replace(layout, lines=tuple(lines)))

    async def _edit_parts(self, address: Address, layout: ActivityLayout, line: Line) -> None:
        """Re-render a split message into its existing activities; drop parts left over."""
        contents = truncate(
            line, max_bytes=self._settings.max_activity_bytes, parts=len(layout.parts)
        )
        slot_held = True
        for part, content in zip(layout.parts, contents, strict=False):
            await self._update(address, part, content, slot_held=slot_held)
            slot_held = False
        for part in layout.parts[len(contents) :]:
            await self._remove(address, part, slot_held=False)
        lines = (replace(layout.lines[0], html=line.html, mentions=line.mentions),)
        await self._save_layout(replace(layout, parts=layout.parts[: len(contents)], lines=lines))

    async def _delete(self, operation: _Operation) -> None:
        address = operation.address
        activity_id = TeamsActivityID(_target(operation).message_id)
        layout = await self._layouts.get(address.conversation_key, activity_id)
        if layout is None:
            await self._remove(address, activity_id, slot_held=True)
            return
        if len(layout.lines) > 1:
            index = _find_line(layout, operation.original, None)
            if index is None and operation.sender is not None:
                by_sender = [
                    i for i, entry in enumerate(layout.lines) if entry.sender == operation.sender
                ]
                index = by_sender[0] if len(by_sender) == 1 else None
            if index is None:
                raise PermanentDeliveryError(
                    "cannot tell which line of a combined activity to delete"
                )
            lines = [entry for i, entry in enumerate(layout.lines) if i != index]
            await self._update(address, activity_id, _layout_content(lines), slot_held=True)
            await self._save_layout(replace(layout, lines=tuple(lines)))
            return
        slot_held = True
        for part in layout.parts:
            await self._remove(address, part, slot_held=slot_held)
            slot_held = False
        await self._drop_layout(layout)

    async def _put(self, operation: _Operation) -> None:
        if operation.content is None:
            raise AssertionError("an update carries its content")
        activity_id = TeamsActivityID(_target(operation).message_id)
        await self._update(
            operation.address,
            activity_id,
            operation.content,
            slot_held=True,
            dressed=operation.dressed,
        )

    async def _update(
        self,
        address: Address,
        activity_id: TeamsActivityID,
        content: Content,
        *,
        slot_held: bool,
        dressed: bool = True,
    ) -> None:
        if dressed and self._dresser is not None:
            try:
                content = await self._dresser.dress(address.conversation_key, activity_id, content)
            except StoreError as exc:
                raise RetryableDeliveryError(f"reaction line unavailable: {exc}") from exc
        payload = activity(content)

        async def put() -> None:
            await self._connector.update_activity(
                address.service_url, address.conversation_id, activity_id, payload
            )

        await self._calls.call(address, put, slot_held=slot_held)

    async def _remove(
        self, address: Address, activity_id: TeamsActivityID, *, slot_held: bool
    ) -> None:
        async def delete() -> None:
            await self._connector.delete_activity(
                address.service_url, address.conversation_id, activity_id
            )

        await self._calls.call(address, delete, slot_held=slot_held)

    # -- addresses and layouts ---------------------------------------------------------

    async def _address(
        self,
        room_id: str,
        *,
        reply_to: RemoteMessageID | None = None,
        thread_root: RemoteMessageID | None = None,
    ) -> Address:
        conversation = TeamsConversationID(room_id)
        base, root = split_thread(conversation)
        try:
            reference = await self._conversations.get(conversation)
            if reference is None and base != conversation:
                reference = await self._conversations.get(base)
        except StoreError as exc:
            raise RetryableDeliveryError(f"conversation reference unavailable: {exc}") from exc
        if reference is None:
            raise PermanentDeliveryError(
                "no conversation reference: the bot has not been installed in this conversation"
            )
        root = root or (TeamsActivityID(thread_root) if thread_root else None)
        posted_to = TeamsConversationID(f"{base}{THREAD_MARKER}{root}") if root else base
        return Address(
            service_url=reference.service_url,
            conversation_id=posted_to,
            conversation_key=base,
            tenant_id=reference.tenant_id,
            reply_to=TeamsActivityID(reply_to) if reply_to else None,
        )

    async def _save_layout(self, layout: ActivityLayout) -> None:
        try:
            await self._layouts.put(layout)
        except BridgeError as exc:
            log.error("teams_layout_not_saved", error=str(exc))  # noqa: TRY400

    async def _drop_layout(self, layout: ActivityLayout) -> None:
        try:
            await self._layouts.delete(layout.conversation_key, layout.activity_id)
        except BridgeError as exc:
            log.error("teams_layout_not_dropped", error=str(exc))  # noqa: TRY400


def _first_create(
    ready: list[tuple[Slot[_Operation], Ready]],
) -> list[tuple[Slot[_Operation], Ready]]:
    """The sends that go in the next activity: the leading ones never sent with an unknown
    outcome, or the first alone when it was."""
    if ready[0][1].record.attempts > 0:
        return ready[:1]
    count = 1
    while count < len(ready) and ready[count][1].record.attempts == 0:
        count += 1
    return ready[:count]


def _prepared(slot: Slot[_Operation]) -> _Operation:
    if slot.operation is None:
        raise AssertionError("only prepared operations are carried out")
    return slot.operation


def _line(operation: _Operation) -> Line:
    if operation.line is None:
        raise AssertionError("a send or an edit carries a rendered line")
    return operation.line


def _message(operation: _Operation) -> OutboundMessage:
    if operation.message is None:
        raise AssertionError("a send or an edit carries its message")
    return operation.message


def _target(operation: _Operation) -> RemoteRef:
    if operation.target is None:
        raise AssertionError("an edit or a delete carries its target")
    return operation.target


def _layout_line(event: TimelineEvent, line: Line) -> LayoutLine:
    return LayoutLine(
        event_id=event.id,
        origin=_origin_key(event.origin),
        sender=event.sender.user_id,
        html=line.html,
        mentions=line.mentions,
    )


def _layout_content(lines: Sequence[LayoutLine]) -> Content:
    mentions: dict[str, Mention] = {}
    for entry in lines:
        for mention in entry.mentions:
            mentions.setdefault(mention.user_id, mention)
    return Content(
        html=LINE_SEPARATOR.join(entry.html for entry in lines), mentions=tuple(mentions.values())
    )


def _origin_key(ref: RemoteRef) -> str:
    return f"{ref.room.key}|{ref.message_id}"


def _origin(relation: Relation | None) -> str | None:
    return _origin_key(relation.target) if relation is not None else None


def _find_line(layout: ActivityLayout, event_id: str | None, origin: str | None) -> int | None:
    for index, entry in enumerate(layout.lines):
        if event_id is not None and entry.event_id == event_id:
            return index
        if origin is not None and entry.origin == origin:
            return index
    return None
