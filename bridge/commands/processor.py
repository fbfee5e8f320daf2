"""Running commands found in stored messages: exactly once, permission-checked, answered.

A message is stored (and acknowledged) first; then, off the platform's request
path, the processor claims the command by appending a ``command`` record whose
origin is the message (the timeline's unique origin key makes a redelivered
message or a second replica lose the claim), checks the sender's permission on
platform ids (never display names), runs the handler and appends the reply as
a bridge notice addressed to the room the command came from and every room
linked to it. Denials, usage errors and failures are recorded the same way;
an unexpected error gets a short reference id in chat and a traceback in the log.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

import structlog

from bridge.commands.parse import CommandSyntaxError, ParsedCommand, parse_command
from bridge.commands.permissions import Authorizer
from bridge.commands.registry import (
    CommandFailedError,
    CommandRegistry,
    CommandRequest,
    CommandSpec,
    UsageError,
)
from bridge.errors import BridgeError
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    Body,
    EventID,
    Kind,
    Platform,
    RoomLink,
    TimelineEvent,
)
from bridge.notices import bridge_notice
from bridge.ports import Clock, TimelineStore
from bridge.relay.intake import PARENT_ROOM
from bridge.timeline.codec import room_from_key

log = structlog.get_logger(__name__)


class CommandProcessor:
    def __init__(
        self,
        *,
        store: TimelineStore,
        clock: Clock,
        ids: UlidFactory,
        registry: CommandRegistry,
        authorizer: Authorizer,
        metrics: BridgeMetrics,
        on_stored: Callable[[Sequence[AppendResult]], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._ids = ids
        self._registry = registry
        self._authorizer = authorizer
        self._metrics = metrics
        self._on_stored = on_stored

    def wants(self, result: AppendResult) -> bool:
        """Whether a freshly stored event carries a command to run."""
        event = result.event
        return (
            not result.duplicate
            and event.kind is Kind.MESSAGE
            and event.sender.platform in (Platform.MATRIX, Platform.TEAMS)
            and event.body.text.lstrip().startswith("!")
        )

    async def handle(self, event: TimelineEvent) -> None:
        """Claim, check and run the command in ``event``; every outcome is recorded."""
        words = event.body.text.lstrip()[1:].split(maxsplit=1)
        group = words[0].lower() if words else ""
        if group != "help" and not self._registry.knows(group):
            return  # not ours: an ordinary message that starts with "!"
        try:
            command = parse_command(event.body.text)
        except CommandSyntaxError as exc:
            if await self._claim(event, None):
                await self._reply(event, f"Could not read that command: {exc}", "usage")
            return
        if command is None or not await self._claim(event, command):
            return
        with structlog.contextvars.bound_contextvars(
            command=command.group, verb=command.verb, event_id=event.id
        ):
            await self._run(event, command)

    async def _run(self, event: TimelineEvent, command: ParsedCommand) -> None:
        if command.group == "help":
            topic = command.verb
            await self._reply(event, self._registry.help(topic), "ok")
            return
        spec = self._registry.find(command)
        if spec is None:
            await self._reply(event, self._registry.help(command.group), "usage")
            return
        if "help" in command.flags or command.verb == "help":
            await self._reply(event, f"{spec.usage} - {spec.summary}", "ok")
            return
        request = CommandRequest(
            command=command,
            event=event,
            room=event.origin.room,
            sender=event.sender,
            links=await self._links(event),
        )
        if not await self._authorizer.allows(spec.permission, request):
            log.info("command_denied")
            await self._reply(
                event,
                f"{event.sender.display_name} is not allowed to run !{spec.name} "
                f"({spec.permission.value} only).",
                "denied",
            )
            return
        await self._execute(spec, request)

    async def _execute(self, spec: CommandSpec, request: CommandRequest) -> None:
        event = request.event
        try:
            text = await spec.handler(request)
        except UsageError as exc:
            await self._reply(event, f"{exc}\nUsage: {spec.usage}", "usage")
        except CommandFailedError as exc:
            await self._reply(event, str(exc), "failed")
        except BridgeError as exc:
            reference = secrets.token_hex(4)
            log.warning("command_failed", reference=reference, error=str(exc))
            await self._reply(event, f"!{spec.name} failed (reference {reference}).", "error")
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("command_crashed", reference=reference)
            await self._reply(event, f"!{spec.name} failed (reference {reference}).", "error")
        else:
            await self._reply(event, text, "ok")

    async def _claim(self, event: TimelineEvent, command: ParsedCommand | None) -> bool:
        now = self._clock.now()
        record = TimelineEvent(
            id=EventID(self._ids.new()),
            incident_id=event.incident_id,
            kind=Kind.COMMAND,
            origin=event.origin,
            origin_variant="",
            sender=event.sender,
            body=Body(text=event.body.text[:4096]),
            occurred_at=event.occurred_at,
            received_at=now,
            data={
                "message_event_id": event.id,
                "group": command.group if command else None,
                "args": list(command.args) if command else [],
                "options": dict(command.options) if command else {},
                "flags": sorted(command.flags) if command else [],
            },
        )
        result = await self._store.append(record, [])
        if result.duplicate:
            log.info("command_already_claimed", event_id=event.id)
        return not result.duplicate

    async def _links(self, event: TimelineEvent) -> list[RoomLink]:
        """The links of the command's room, or of the room covering it (a Teams channel,
        for a command said in one of its threads)."""
        links = await self._store.links_for(event.origin.room)
        parent = event.data.get(PARENT_ROOM)
        if not links and isinstance(parent, str) and parent:
            links = await self._store.links_for(room_from_key(parent))
        return links

    async def _reply(self, event: TimelineEvent, text: str, outcome: str) -> None:
        self._metrics.commands.labels(outcome=outcome).inc()
        links = await self._links(event)
        targets = [event.origin.room, *(link.other(event.origin.room) for link in links)]
        reply = bridge_notice(
            ids=self._ids,
            now=self._clock.now(),
            key=f"reply:{event.id}",
            text=text,
            incident_id=event.incident_id,
            data={"in_reply_to": event.id, "outcome": outcome},
        )
        stored = await self._store.append(reply, targets)
        if self._on_stored is not None:
            self._on_stored([stored])
