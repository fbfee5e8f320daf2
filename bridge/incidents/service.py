"""The incident lifecycle: declaring incidents and changing them, each change recorded.

Every change is (1) a save of the ``Incident`` (read, apply, conditional save; on a
version conflict read again and reapply, so two concurrent changes are both kept), then
(2) one ``Kind.INCIDENT`` timeline event per change (``IncidentChange.to_data()``, the
incident's id set), keyed on what caused it (the command's message, the reaction), so
doing it again stores nothing twice, and (3) the pinned header of the incident's rooms
updated when what it shows changed. Incident events are recorded, not mirrored; what
chat should see goes as bridge notices (command replies, key events marked by reaction,
the postmortem).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

import structlog

from bridge.config.core import IncidentSettings
from bridge.errors import BridgeError, StoreError
from bridge.ids import UlidFactory
from bridge.incidents.header import describe, render_header
from bridge.incidents.model import (
    Action,
    ActionItem,
    Incident,
    IncidentChange,
    Role,
    Severity,
    Status,
)
from bridge.incidents.postmortem import postmortem_notice, render_postmortem
from bridge.links import LinkService
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    Body,
    EventID,
    IncidentID,
    Kind,
    MessageStyle,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RoomLink,
    RoomRef,
    Sender,
    TimelineEvent,
)
from bridge.notices import BRIDGE_ROOM, bridge_notice
from bridge.ports import (
    ChatAdapter,
    Clock,
    IncidentStore,
    SupportsHeader,
    SupportsProfiles,
    SupportsRoomCreation,
    TimelineStore,
)

log = structlog.get_logger(__name__)

SAVE_ATTEMPTS: Final = 20
"""Read-apply-save rounds before a change gives up (each lost round means another
change was saved meanwhile)."""
MAX_NOTICE_CHARS: Final = 20_000
"""The longest postmortem posted whole into chat (Teams refuses messages of ~28 KB)."""
TIMELINE_PAGE: Final = 500


class IncidentError(Exception):
    """The change cannot be made (not found, nothing would change); the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Who made a change, when (platform time), and the unique key of what caused it."""

    sender: Sender
    at: datetime
    key: str
    """E.g. the timeline id of the command's message: the same cause records once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Declared:
    incident: Incident
    problems: tuple[str, ...] = ()
    """Rooms that could not be created (the incident goes on with the others)."""


Apply = Callable[[Incident], tuple[Incident, Sequence[IncidentChange]]]


class IncidentService:
    def __init__(
        self,
        *,
        store: TimelineStore,
        incidents: IncidentStore,
        links: LinkService,
        clock: Clock,
        ids: UlidFactory,
        metrics: BridgeMetrics,
        adapters: Mapping[Platform, ChatAdapter],
        settings: IncidentSettings,
        on_stored: Callable[[Sequence[AppendResult]], None] | None = None,
        page_link: Callable[[IncidentID], str | None] = lambda _: None,
    ) -> None:
        """``on_stored`` gets the notices this service appends (to wake delivery);
        ``page_link`` gives the address of an incident's page, when it has one."""
        self._store = store
        self._incidents = incidents
        self._links = links
        self._clock = clock
        self._ids = ids
        self._metrics = metrics
        self._adapters = adapters
        self._page_link = page_link
        self._settings = settings
        self._on_stored = on_stored
        self._header_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    # -- reading ----------------------------------------------------------------------
    async def get(self, incident_id: IncidentID) -> Incident | None:
        return await self._incidents.get(incident_id)

    async def is_linked(self, room: RoomRef) -> bool:
        return bool(await self._store.links_for(room))

    async def named(self, incident: Incident, person: Sender, where: RoomRef) -> Sender:
        """``person`` with the name their platform gives them (a user named by id in a
        command carries only the id): looked up in ``where`` or the incident's room on
        their platform; unchanged when it cannot be found."""
        adapter = self._adapters.get(person.platform)
        if not isinstance(adapter, SupportsProfiles):
            return person
        rooms = [where, *incident.rooms]
        room = next((r for r in rooms if r.platform is person.platform), None)
        if room is None:
            return person
        try:
            name = await adapter.display_name(room, person.user_id)
        except BridgeError as exc:
            log.warning("display_name_lookup_failed", error=str(exc))
            return person
        return replace(person, display_name=name) if name else person

    async def incident_of(self, room: RoomRef) -> Incident | None:
        """The incident whose room ``room`` is (by its link), or None."""
        for link in await self._store.links_for(room):
            if link.incident_id is not None:
                return await self._incidents.get(link.incident_id)
        return None

    async def marked(self, event_id: EventID) -> TimelineEvent | None:
        """A timeline event (the message a key event marks)."""
        return await self._store.get(event_id)

    async def events(self, incident_id: IncidentID) -> list[TimelineEvent]:
        """The incident's whole timeline, in order."""
        events: list[TimelineEvent] = []
        cursor: str | None = None
        while True:
            page = await self._store.timeline(
                incident_id=incident_id, cursor=cursor, limit=TIMELINE_PAGE
            )
            events += page.events
            if page.next_cursor is None:
                return events
            cursor = page.next_cursor

    # -- declaring --------------------------------------------------------------------
    async def declare(
        self, source: Source, *, severity: Severity, title: str, room: RoomRef
    ) -> Declared:
        """A new incident with its own rooms (a Matrix room, a Teams thread), linked."""
        incident_id = await self._incidents.next_id()
        name = f"{self._settings.room_name_prefix} {incident_id}: {title}"
        topic = f"{severity.value.upper()} · {title} · declared by {source.sender.display_name}"
        problems: list[str] = []
        matrix_room = await self._create_room(
            Platform.MATRIX, name, topic, self._matrix_invites(source.sender), problems
        )
        teams_room = (
            await self._create_room(Platform.TEAMS, name, topic, (), problems)
            if self._settings.teams_channel
            else None
        )
        rooms = tuple(r for r in (matrix_room, teams_room) if r is not None)
        if not rooms:
            raise IncidentError(
                "No incident room could be created: " + ("; ".join(problems) or "no platform")
            )
        incident = Incident(
            id=incident_id,
            title=title,
            severity=severity,
            status=Status.INVESTIGATING,
            declared_at=source.at,
            declared_by=source.sender,
            declared_in=room,
            rooms=rooms,
        )
        await self._incidents.create(incident)
        if matrix_room is not None and teams_room is not None:
            await self._links.link(
                RoomLink(
                    matrix_room=matrix_room,
                    teams_room=teams_room,
                    incident_id=incident_id,
                    created_at=self._clock.now(),
                    created_by=source.sender,
                ),
                by=source.sender,
            )
        change = IncidentChange(
            action=Action.DECLARE, incident_id=incident_id, after=severity.value, text=title
        )
        await self._record(source, [change])
        self._metrics.incidents_declared.labels(severity=severity.value).inc()
        log.info("incident_declared", incident_id=incident_id, severity=severity.value)
        await self.refresh_headers(incident_id)
        stored = await self._incidents.get(incident_id)
        return Declared(incident=stored or incident, problems=tuple(problems))

    def _matrix_invites(self, sender: Sender) -> tuple[str, ...]:
        invites = list(self._settings.matrix_responders)
        if sender.platform is Platform.MATRIX and sender.user_id not in invites:
            invites.append(sender.user_id)
        return tuple(invites)

    async def _create_room(
        self,
        platform: Platform,
        name: str,
        topic: str,
        invite: Sequence[str],
        problems: list[str],
    ) -> RoomRef | None:
        adapter = self._adapters.get(platform)
        if not isinstance(adapter, SupportsRoomCreation):
            return None
        try:
            return await adapter.create_room(name, invite=invite, topic=topic)
        except BridgeError as exc:
            log.warning("incident_room_not_created", platform=platform.value, error=str(exc))
            problems.append(f"the {platform.value.capitalize()} room could not be created")
            return None

    # -- changing ---------------------------------------------------------------------
    async def change(
        self, incident_id: IncidentID, source: Source, apply: Apply
    ) -> tuple[Incident, Sequence[IncidentChange]]:
        """Apply a change to the stored incident (again on a version conflict), record it,
        and update the headers if what they show changed. ``apply`` raises
        ``IncidentError`` when the change does not apply."""
        for _ in range(SAVE_ATTEMPTS):
            current = await self._incidents.get(incident_id)
            if current is None:
                raise IncidentError(f"There is no incident {incident_id}.")
            updated, changes = apply(current)
            if updated == current:
                saved: Incident | None = current  # nothing stored changes (a note)
            else:
                saved = await self._incidents.save(updated)
            if saved is not None:
                break
            log.info("incident_version_conflict", incident_id=incident_id)
        else:
            raise StoreError(f"incident {incident_id} kept changing; change not saved")
        await self._record(source, changes)
        self._observe(current, saved)
        if render_header(current) != render_header(saved):
            await self.refresh_headers(incident_id)
        return saved, changes

    def _observe(self, before: Incident, after: Incident) -> None:
        if before.acknowledged_at is None and after.acknowledged_at is not None:
            seconds = (after.acknowledged_at - after.declared_at).total_seconds()
            self._metrics.incident_acknowledge_seconds.observe(max(0.0, seconds))
        if before.open and not after.open and after.resolved_at is not None:
            seconds = (after.resolved_at - after.declared_at).total_seconds()
            self._metrics.incident_resolve_seconds.observe(max(0.0, seconds))

    async def set_severity(
        self, incident_id: IncidentID, source: Source, severity: Severity
    ) -> Incident:
        def apply(current: Incident) -> tuple[Incident, list[IncidentChange]]:
            if current.severity is severity:
                raise IncidentError(f"{current.id} is already {severity.value}.")
            change = IncidentChange(
                action=Action.SEVERITY,
                incident_id=current.id,
                before=current.severity.value,
                after=severity.value,
            )
            return replace(current, severity=severity), [change]

        return (await self.change(incident_id, source, apply))[0]

    async def set_status(self, incident_id: IncidentID, source: Source, status: Status) -> Incident:
        """Move to ``status``: resolving and reopening are recorded as such."""

        def apply(current: Incident) -> tuple[Incident, list[IncidentChange]]:
            if current.status is status:
                raise IncidentError(f"{current.id} is already {status.value}.")
            action = Action.STATUS
            if status is Status.RESOLVED:
                action = Action.RESOLVE
            elif current.status is Status.RESOLVED:
                action = Action.REOPEN
            change = IncidentChange(
                action=action,
                incident_id=current.id,
                before=current.status.value,
                after=status.value,
            )
            return _moved(current, status, source.at), [change]

        return (await self.change(incident_id, source, apply))[0]

    async def reopen(self, incident_id: IncidentID, source: Source) -> Incident:
        current = await self._incidents.get(incident_id)
        if current is not None and current.open:
            raise IncidentError(f"{current.id} is not resolved.")
        return await self.set_status(incident_id, source, Status.INVESTIGATING)

    async def assign(
        self, incident_id: IncidentID, source: Source, role: Role, holder: Sender
    ) -> Incident:
        def apply(current: Incident) -> tuple[Incident, list[IncidentChange]]:
            previous = current.roles.get(role)
            if previous is not None and _same_user(previous, holder):
                raise IncidentError(f"{holder.display_name} is already {role.value}.")
            change = IncidentChange(
                action=Action.ASSIGN,
                incident_id=current.id,
                role=role,
                subject=holder,
                before=previous.user_id if previous else None,
                after=holder.user_id,
            )
            updated = replace(current, roles={**current.roles, role: holder})
            if role is Role.COMMANDER and updated.acknowledged_at is None:
                updated = replace(updated, acknowledged_at=source.at)
            return updated, [change]

        return (await self.change(incident_id, source, apply))[0]

    async def unassign(self, incident_id: IncidentID, source: Source, role: Role) -> Incident:
        def apply(current: Incident) -> tuple[Incident, list[IncidentChange]]:
            previous = current.roles.get(role)
            if previous is None:
                raise IncidentError(f"Nobody is {role.value} of {current.id}.")
            change = IncidentChange(
                action=Action.UNASSIGN,
                incident_id=current.id,
                role=role,
                subject=previous,
                before=previous.user_id,
            )
            roles = {r: s for r, s in current.roles.items() if r is not role}
            return replace(current, roles=roles), [change]

        return (await self.change(incident_id, source, apply))[0]

    async def acknowledge(self, incident_id: IncidentID, source: Source) -> Incident:
        """Record an acknowledgement; the incident's ``acknowledged_at`` is the first one."""

        def apply(current: Incident) -> tuple[Incident, list[IncidentChange]]:
            change = IncidentChange(action=Action.ACKNOWLEDGE, incident_id=current.id)
            if current.acknowledged_at is None:
                return replace(current, acknowledged_at=source.at), [change]
            return current, [change]

        return (await self.change(incident_id, source, apply))[0]

    async def add_text(
        self,
        incident_id: IncidentID,
        source: Source,
        action: Action,
        text: str,
        *,
        marked_event: EventID | None = None,
    ) -> Incident:
        """A note, a key event (``marked_event``: the message it marks), an action item or
        the summary."""
        if action not in (Action.NOTE, Action.KEY_EVENT, Action.ACTION_ITEM, Action.SUMMARY):
            raise ValueError(f"{action.value} is not a text change")

        def apply(current: Incident) -> tuple[Incident, list[IncidentChange]]:
            change = IncidentChange(
                action=action, incident_id=current.id, text=text, marked_event=marked_event
            )
            if action is Action.ACTION_ITEM:
                item = ActionItem(text=text, by=source.sender, at=source.at)
                return replace(current, action_items=(*current.action_items, item)), [change]
            if action is Action.SUMMARY:
                return replace(current, summary=text), [
                    replace(change, before=current.summary or None)
                ]
            return current, [change]

        return (await self.change(incident_id, source, apply))[0]

    async def set_impact(
        self, incident_id: IncidentID, source: Source, fields: Mapping[str, str]
    ) -> Incident:
        """Set impact fields (an empty value removes the field); one change per field."""

        def apply(current: Incident) -> tuple[Incident, list[IncidentChange]]:
            impact = dict(current.impact)
            changes = []
            for key, value in fields.items():
                if value:
                    impact[key] = value
                else:
                    impact.pop(key, None)
                changes.append(
                    IncidentChange(
                        action=Action.IMPACT,
                        incident_id=current.id,
                        before=key,
                        after=value,
                        text=f"{key}={value}",
                    )
                )
            return replace(current, impact=impact), changes

        return (await self.change(incident_id, source, apply))[0]

    async def postmortem(self, incident_id: IncidentID, source: Source) -> str:
        """Write the postmortem from the timeline, store it, and post it to the rooms."""
        incident = await self._incidents.get(incident_id)
        if incident is None:
            raise IncidentError(f"There is no incident {incident_id}.")
        events = await self.events(incident_id)
        markdown = render_postmortem(incident, events, now=self._clock.now(), is_own=self._is_own)

        def apply(current: Incident) -> tuple[Incident, list[IncidentChange]]:
            change = IncidentChange(action=Action.POSTMORTEM, incident_id=current.id)
            return replace(current, postmortem=markdown), [change]

        saved, _ = await self.change(incident_id, source, apply)
        notice = postmortem_notice(
            markdown,
            incident_id=saved.id,
            link=self._page_link(saved.id),
            max_chars=MAX_NOTICE_CHARS,
        )
        await self.notify_rooms(
            saved, key=f"postmortem:{source.key}", text=notice.text, html=notice.html
        )
        return markdown

    def _is_own(self, sender: Sender) -> bool:
        adapter = self._adapters.get(sender.platform)
        return adapter is not None and adapter.is_own(sender)

    # -- recording and showing --------------------------------------------------------
    async def _record(self, source: Source, changes: Sequence[IncidentChange]) -> None:
        now = self._clock.now()
        batch = []
        for number, change in enumerate(changes):
            suffix = f":{number}" if number else ""
            event = TimelineEvent(
                id=EventID(self._ids.new()),
                incident_id=change.incident_id,
                kind=Kind.INCIDENT,
                origin=RemoteRef(
                    room=BRIDGE_ROOM,
                    message_id=RemoteMessageID(f"incident:{source.key}{suffix}"),
                ),
                origin_variant="",
                sender=source.sender,
                body=Body(text=describe(change, source.sender), style=MessageStyle.NOTICE),
                occurred_at=source.at,
                received_at=now,
                data=change.to_data(),
            )
            batch.append((event, ()))
        await self._store.append_many(batch)

    async def notify_rooms(
        self, incident: Incident, *, key: str, text: str, html: str | None = None
    ) -> None:
        """A bridge notice in the incident's rooms (recorded once per ``key``), formatted
        as ``html`` (sanitized) when given."""
        notice = bridge_notice(
            ids=self._ids,
            now=self._clock.now(),
            key=key,
            text=text,
            incident_id=incident.id,
            html=html,
        )
        stored = await self._store.append(notice, list(incident.rooms))
        if self._on_stored is not None:
            self._on_stored([stored])

    async def refresh_headers(self, incident_id: IncidentID) -> None:
        """Show the stored incident's header in each of its rooms (posted and pinned the
        first time, updated in place after). One refresh of an incident at a time, each
        from a fresh read, so the last one shows the last state."""
        async with self._header_lock(incident_id):
            incident = await self._incidents.get(incident_id)
            if incident is None:
                return
            header = render_header(incident)
            posted: dict[str, str] = {}
            for room in incident.rooms:
                adapter = self._adapters.get(room.platform)
                if not isinstance(adapter, SupportsHeader):
                    continue
                existing = incident.headers.get(room.key)
                try:
                    message_id = await adapter.put_header(
                        room,
                        header.text,
                        header.html,
                        existing=RemoteMessageID(existing) if existing else None,
                    )
                except BridgeError as exc:
                    log.warning(
                        "incident_header_failed",
                        incident_id=incident_id,
                        platform=room.platform.value,
                        error=str(exc),
                    )
                    continue
                if message_id != existing:
                    posted[room.key] = message_id
            if posted:
                await self._save_headers(incident_id, posted)

    async def _save_headers(self, incident_id: IncidentID, posted: Mapping[str, str]) -> None:
        for _ in range(SAVE_ATTEMPTS):
            current = await self._incidents.get(incident_id)
            if current is None:
                return
            updated = replace(current, headers={**current.headers, **posted})
            if await self._incidents.save(updated) is not None:
                return
        log.warning("incident_headers_not_saved", incident_id=incident_id)

    @asynccontextmanager
    async def _header_lock(self, incident_id: IncidentID) -> AsyncIterator[None]:
        lock, users = self._header_locks.get(incident_id, (asyncio.Lock(), 0))
        self._header_locks[incident_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._header_locks[incident_id]
            if users <= 1:
                del self._header_locks[incident_id]
            else:
                self._header_locks[incident_id] = (lock, users - 1)


def _moved(incident: Incident, status: Status, at: datetime) -> Incident:
    """The incident in ``status``: mitigated the first time it reaches monitoring or
    resolved, resolved at the last resolution (a reopen clears it)."""
    mitigated = incident.mitigated_at
    if mitigated is None and status in (Status.MONITORING, Status.RESOLVED):
        mitigated = at
    resolved = at if status is Status.RESOLVED else None
    return replace(incident, status=status, mitigated_at=mitigated, resolved_at=resolved)


def _same_user(a: Sender, b: Sender) -> bool:
    return a.platform is b.platform and a.user_id == b.user_id
