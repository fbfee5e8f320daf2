"""``!incident ...``: running an incident from either chat, with one grammar.

Declaring needs an operator, in a linked room or one listed in
``incidents.declare_rooms``. The other commands act on the incident whose room they are
said in (its Matrix room or its Teams thread). Changing severity, status, roles,
summary or impact, resolving, reopening and the postmortem need an operator or the
incident's commander; acknowledging, notes, key events and action items are for anyone
in the incident's rooms. People are named by platform id, never by display name: ``me``,
a Matrix id (``@name:server``), or an @mention (Teams carries the AAD object id of
every mention; Matrix pills carry the MXID).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from bridge.commands.parse import CommandSyntaxError, tokenize
from bridge.commands.registry import (
    CommandFailedError,
    CommandRegistry,
    CommandRequest,
    CommandSpec,
    Permission,
    UsageError,
)
from bridge.config.core import IncidentSettings
from bridge.incidents.header import render_header
from bridge.incidents.model import Action, Incident, Role, Severity, Status
from bridge.incidents.service import IncidentError, IncidentService, Source
from bridge.model import (
    EventID,
    IncidentID,
    Platform,
    RelationKind,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
)

MAX_TITLE: Final = 200
MAX_TEXT: Final = 2000
MAX_SUMMARY: Final = 4000
MAX_IMPACT_FIELDS: Final = 20
MAX_IMPACT_VALUE: Final = 500
_MXID: Final = re.compile(r"^@[^\s:]+:[A-Za-z0-9.\-\[\]:]+$")
_IMPACT_KEY: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
_INCIDENT_ID: Final = re.compile(r"^INC-[0-9]{1,9}$", re.I)
_ROLE_NAMES: Final = {
    **{role.value: role for role in Role},
    "ic": Role.COMMANDER,
    "comms": Role.COMMUNICATIONS,
}
_SEVERITY_HELP: Final = "sev1, sev2, sev3 or sev4"
_STATUS_HELP: Final = ", ".join(s.value for s in Status)
_ROLE_HELP: Final = ", ".join(r.value for r in Role)
_PERSON_HELP: Final = "me, a Matrix id (@name:server) or an @mention"

Handler = Callable[[CommandRequest], Awaitable[str]]
_E = TypeVar("_E", Severity, Status)


class IncidentCommands:
    def __init__(self, *, service: IncidentService, settings: IncidentSettings) -> None:
        self._service = service
        self._settings = settings

    def register(self, registry: CommandRegistry) -> None:
        commander, anyone = Permission.COMMANDER, Permission.ANYONE
        specs: list[tuple[str, str, str, Permission, Handler]] = [
            ("declare", "!incident declare SEVERITY TITLE",
             "declare an incident: its own Matrix room and Teams thread", Permission.OPERATOR,
             self.declare),
            ("show", "!incident show [INC-n]", "show the incident of this room", anyone,
             self.show),
            ("status", f"!incident status [{'|'.join(s.value for s in Status)}]",
             "show the incident, or move it to a status", commander, self.status),
            ("severity", "!incident severity sev1|sev2|sev3|sev4", "change the severity",
             commander, self.severity),
            ("assign", f"!incident assign {'|'.join(r.value for r in Role)} USER",
             f"give a role ({_PERSON_HELP})", commander, self.assign),
            ("unassign", "!incident unassign ROLE", "take a role back", commander,
             self.unassign),
            ("role", "!incident role assign|unassign ROLE [USER]", "give or take back a role",
             commander, self.role),
            ("ack", "!incident ack", "acknowledge the incident", anyone, self.ack),
            ("note", "!incident note TEXT", "add a note to the timeline", anyone, self.note),
            ("key", "!incident key TEXT",
             "mark a key event (as a reply: marks that message)", anyone, self.key),
            ("action", "!incident action TEXT", "add an action item", anyone, self.action),
            ("summary", "!incident summary TEXT", "set the summary", commander, self.summary),
            ("impact", "!incident impact KEY=VALUE ...",
             "set impact fields (an empty value removes one)", commander, self.impact),
            ("resolve", "!incident resolve", "resolve the incident", commander, self.resolve),
            ("reopen", "!incident reopen", "reopen a resolved incident", commander,
             self.reopen),
            ("postmortem", "!incident postmortem",
             "write the postmortem from the timeline and post it here", commander,
             self.postmortem),
        ]  # fmt: skip
        for verb, usage, summary, permission, handler in specs:
            registry.add(
                CommandSpec(
                    group="incident",
                    verb=verb,
                    usage=usage,
                    summary=summary,
                    permission=permission,
                    handler=_answering(handler),
                )
            )

    # -- permission -------------------------------------------------------------------
    async def is_commander(self, request: CommandRequest) -> bool:
        """Whether the sender commands the incident of the room (``Permission.COMMANDER``).

        ``!incident status`` without a status only shows the incident: anyone may."""
        if request.command.verb == "status" and len(request.command.args) < 2:
            return True
        incident = await self._room_incident(request)
        if incident is None:
            return False
        holder = incident.roles.get(Role.COMMANDER)
        return (
            holder is not None
            and holder.platform is request.sender.platform
            and holder.user_id == request.sender.user_id
        )

    # -- handlers ---------------------------------------------------------------------
    async def declare(self, request: CommandRequest) -> str:
        args = request.command.args
        if len(args) < 3:
            raise UsageError("give a severity and a title")
        severity = _severity(args[1])
        title = _text(request, skip=3, limit=MAX_TITLE, what="the title")
        if not await self._may_declare_in(request):
            raise CommandFailedError(
                "Incidents are declared from a linked room or a room listed in "
                "incidents.declare_rooms; this room is neither."
            )
        declared = await self._service.declare(
            _source(request), severity=severity, title=title, room=request.room
        )
        incident = declared.incident
        places = [_where(room) for room in incident.rooms]
        lines = [
            f"🚨 {incident.id} declared ({severity.value.upper()}): {incident.title}",
            "Join the incident: " + "; ".join(places) + ".",
        ]
        lines += [f"⚠ {problem}." for problem in declared.problems]
        return "\n".join(lines)

    async def _may_declare_in(self, request: CommandRequest) -> bool:
        """A linked room, or one listed in the settings; a Teams channel thread counts as
        its channel (where the link or the listing is)."""
        if request.links:
            return True
        rooms = [request.room.room_id]
        channel = request.event.data.get("teams_channel")
        if request.room.platform is Platform.TEAMS and isinstance(channel, str) and channel:
            rooms.append(RemoteRoomID(channel))
            if await self._service.is_linked(RoomRef(platform=Platform.TEAMS, room_id=rooms[-1])):
                return True
        return any(room in self._settings.declare_rooms for room in rooms)

    async def show(self, request: CommandRequest) -> str:
        args = request.command.args
        if len(args) > 2:
            raise UsageError("give at most an incident id")
        if len(args) == 2:
            if not _INCIDENT_ID.match(args[1]):
                raise UsageError(f"{args[1]!r} is not an incident id (INC-<number>)")
            incident = await self._service.get(IncidentID(args[1].upper()))
            if incident is None:
                raise CommandFailedError(f"There is no incident {args[1].upper()}.")
        else:
            incident = await self._incident(request)
        return _overview(incident)

    async def status(self, request: CommandRequest) -> str:
        args = request.command.args
        if len(args) == 1:
            return _overview(await self._incident(request))
        if len(args) != 2:
            raise UsageError(f"give one status: {_STATUS_HELP}")
        status = _enum(Status, args[1], _STATUS_HELP)
        incident = await self._incident(request)
        if status is Status.RESOLVED or incident.status is Status.RESOLVED:
            saved = await self._service.set_status(incident.id, _source(request), status)
            verb = "resolved" if status is Status.RESOLVED else f"reopened ({status.value})"
            return f"{saved.id} {verb}."
        saved = await self._service.set_status(incident.id, _source(request), status)
        return f"{saved.id} is now {saved.status.value}."

    async def severity(self, request: CommandRequest) -> str:
        args = request.command.args
        if len(args) != 2:
            raise UsageError(f"give one severity: {_SEVERITY_HELP}")
        severity = _severity(args[1])
        incident = await self._incident(request)
        saved = await self._service.set_severity(incident.id, _source(request), severity)
        return f"{saved.id} is now {saved.severity.value.upper()}."

    async def assign(self, request: CommandRequest) -> str:
        return await self._assign(request, request.command.args[1:])

    async def unassign(self, request: CommandRequest) -> str:
        return await self._unassign(request, request.command.args[1:])

    async def role(self, request: CommandRequest) -> str:
        args = request.command.args
        if len(args) < 2 or args[1].lower() not in ("assign", "unassign"):
            raise UsageError("say assign or unassign")
        if args[1].lower() == "assign":
            return await self._assign(request, args[2:])
        return await self._unassign(request, args[2:])

    async def _assign(self, request: CommandRequest, words: tuple[str, ...]) -> str:
        if len(words) < 2:
            raise UsageError(f"give a role ({_ROLE_HELP}) and a person ({_PERSON_HELP})")
        role = _role(words[0])
        holder = _person(request, words[1:])
        incident = await self._incident(request)
        if holder != request.sender and holder not in request.event.body.mentions:
            holder = await self._service.named(incident, holder, request.room)
        saved = await self._service.assign(incident.id, _source(request), role, holder)
        return f"{holder.display_name} is now {role.value} of {saved.id}."

    async def _unassign(self, request: CommandRequest, words: tuple[str, ...]) -> str:
        if len(words) != 1:
            raise UsageError(f"give one role: {_ROLE_HELP}")
        role = _role(words[0])
        incident = await self._incident(request)
        previous = incident.roles.get(role)
        saved = await self._service.unassign(incident.id, _source(request), role)
        name = previous.display_name if previous else "Nobody"
        return f"{name} is no longer {role.value} of {saved.id}."

    async def ack(self, request: CommandRequest) -> str:
        if len(request.command.args) != 1:
            raise UsageError("ack takes no arguments")
        incident = await self._incident(request)
        saved = await self._service.acknowledge(incident.id, _source(request))
        return f"{request.sender.display_name} acknowledged {saved.id}."

    async def note(self, request: CommandRequest) -> str:
        return await self._add(request, Action.NOTE, "Note added to")

    async def key(self, request: CommandRequest) -> str:
        return await self._add(request, Action.KEY_EVENT, "📌 Key event recorded in")

    async def action(self, request: CommandRequest) -> str:
        return await self._add(request, Action.ACTION_ITEM, "Action item added to")

    async def summary(self, request: CommandRequest) -> str:
        text = _text(request, skip=2, limit=MAX_SUMMARY, what="the summary")
        incident = await self._incident(request)
        await self._service.add_text(incident.id, _source(request), Action.SUMMARY, text)
        return f"Summary of {incident.id} set."

    async def _add(self, request: CommandRequest, action: Action, done: str) -> str:
        replied = request.event.relation(RelationKind.REPLY)
        marked = replied.event_id if replied is not None and action is Action.KEY_EVENT else None
        if marked is not None and len(request.command.args) == 1:
            text = ""  # a bare "!incident key" in reply to a message marks that message
        else:
            text = _text(request, skip=2, limit=MAX_TEXT, what="the text")
        incident = await self._incident(request)
        await self._service.add_text(
            incident.id,
            _source(request),
            action,
            text,
            marked_event=EventID(marked) if marked else None,
        )
        return f"{done} {incident.id}."

    async def impact(self, request: CommandRequest) -> str:
        pairs = dict(request.command.options)
        for word in request.command.args[1:]:
            key, sep, value = word.partition("=")
            if not sep:
                raise UsageError(f"{word!r} is not KEY=VALUE")
            if key in pairs:
                raise UsageError(f"{key}= is given twice")
            pairs[key] = value
        if not pairs:
            raise UsageError("give at least one KEY=VALUE")
        if len(pairs) > MAX_IMPACT_FIELDS:
            raise UsageError(f"at most {MAX_IMPACT_FIELDS} fields at once")
        for key, value in pairs.items():
            if not _IMPACT_KEY.match(key):
                raise UsageError(f"{key!r}: a field name is letters, digits, - and _")
            if len(value) > MAX_IMPACT_VALUE:
                raise UsageError(f"{key}: a value is at most {MAX_IMPACT_VALUE} characters")
        incident = await self._incident(request)
        saved = await self._service.set_impact(incident.id, _source(request), pairs)
        shown = ", ".join(f"{k}={v}" for k, v in sorted(saved.impact.items())) or "none"
        return f"Impact of {saved.id}: {shown}."

    async def resolve(self, request: CommandRequest) -> str:
        if len(request.command.args) != 1:
            raise UsageError("resolve takes no arguments (set the summary with !incident summary)")
        incident = await self._incident(request)
        saved = await self._service.set_status(incident.id, _source(request), Status.RESOLVED)
        return f"{saved.id} resolved."

    async def reopen(self, request: CommandRequest) -> str:
        if len(request.command.args) != 1:
            raise UsageError("reopen takes no arguments")
        incident = await self._incident(request)
        saved = await self._service.reopen(incident.id, _source(request))
        return f"{saved.id} reopened ({saved.status.value})."

    async def postmortem(self, request: CommandRequest) -> str:
        if len(request.command.args) != 1:
            raise UsageError("postmortem takes no arguments")
        incident = await self._incident(request)
        markdown = await self._service.postmortem(incident.id, _source(request))
        return (
            f"Postmortem of {incident.id} written ({len(markdown.splitlines())} lines), "
            "posted in the incident's rooms and stored."
        )

    # -- helpers ----------------------------------------------------------------------
    async def _room_incident(self, request: CommandRequest) -> Incident | None:
        for link in request.links:
            if link.incident_id is not None:
                return await self._service.get(link.incident_id)
        return await self._service.incident_of(request.room)

    async def _incident(self, request: CommandRequest) -> Incident:
        incident = await self._room_incident(request)
        if incident is None:
            raise CommandFailedError(
                "This room is not an incident's room: say it in the incident's Matrix room "
                "or Teams thread."
            )
        return incident


def _answering(handler: Handler) -> Handler:
    """The handler with the service's refusals turned into answers for the user."""

    async def run(request: CommandRequest) -> str:
        try:
            return await handler(request)
        except IncidentError as exc:
            raise CommandFailedError(str(exc)) from exc

    return run


def _source(request: CommandRequest) -> Source:
    return Source(sender=request.sender, at=request.event.occurred_at, key=request.event.id)


def _severity(word: str) -> Severity:
    value = word.lower()
    if value.isdigit():
        value = f"sev{value}"
    return _enum(Severity, value, _SEVERITY_HELP)


def _role(word: str) -> Role:
    role = _ROLE_NAMES.get(word.lower())
    if role is None:
        raise UsageError(f"{word!r} is not a role; the roles are {_ROLE_HELP}")
    return role


def _enum(enum: type[_E], word: str, choices: str) -> _E:
    try:
        return enum(word.lower())
    except ValueError:
        raise UsageError(f"{word!r} is not one of {choices}") from None


def _text(request: CommandRequest, *, skip: int, limit: int, what: str) -> str:
    """The command's text after its first ``skip`` words, as written (a single quoted
    string is unquoted)."""
    parts = request.command.raw.split(maxsplit=skip)
    rest = parts[skip].strip() if len(parts) > skip else ""
    try:
        words = tokenize(rest)
    except CommandSyntaxError:
        words = []
    if len(words) == 1 and words[0][1]:
        rest = words[0][0].strip()
    if not rest:
        raise UsageError(f"give {what}")
    if len(rest) > limit:
        raise UsageError(f"{what} is at most {limit} characters")
    return rest


def _person(request: CommandRequest, words: tuple[str, ...]) -> Sender:
    """The person named by ``words``: ``me``, an MXID, or a mention the message carries."""
    mentions = request.event.body.mentions
    if len(words) == 1 and words[0].lower() == "me":
        return request.sender
    if len(words) == 1 and _MXID.match(words[0]):
        user_id = RemoteUserID(words[0])
        named = next((m for m in mentions if m.user_id == user_id), None)
        return named or Sender(
            platform=Platform.MATRIX, user_id=user_id, display_name=words[0][1:].split(":")[0]
        )
    spelled = " ".join(words).removeprefix("@")
    matching = [m for m in mentions if m.display_name == spelled]
    if not matching and len(mentions) == 1:
        matching = list(mentions)
    if len(matching) == 1:
        return matching[0]
    raise UsageError(f"name the person as {_PERSON_HELP}")


def _where(room: RoomRef) -> str:
    if room.platform is Platform.MATRIX:
        return f"Matrix https://matrix.to/#/{room.room_id}"
    return "Teams: the new thread in the incidents channel"


def _overview(incident: Incident) -> str:
    lines = [render_header(incident).text]
    if incident.impact:
        lines.append("Impact: " + ", ".join(f"{k}={v}" for k, v in sorted(incident.impact.items())))
    if incident.action_items:
        lines.append(f"Action items: {len(incident.action_items)}")
    return "\n".join(lines)
