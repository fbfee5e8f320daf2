"""Incidents with timelines for the web tests: every kind the page shows, both platforms."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bridge.ids import UlidFactory
from bridge.incidents.model import (
    Action,
    ActionItem,
    Incident,
    IncidentChange,
    Role,
    Severity,
    Status,
)
from bridge.model import (
    Body,
    EventID,
    IncidentID,
    Kind,
    Mirror,
    MirrorStatus,
    Platform,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
    TimelineEvent,
)
from bridge.ports import IncidentStore, TimelineStore
from tests.support.fakes import EPOCH

INCIDENT_MATRIX = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!inc:example.org"))
INCIDENT_TEAMS = RoomRef(
    platform=Platform.TEAMS, room_id=RemoteRoomID("19:ops@thread.tacv2;messageid=1800000000000")
)
ALICE = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@alice:example.org"), display_name="Alice"
)
BOB = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-bob"), display_name="Bob")
BRIDGE = Sender(platform=Platform.BRIDGE, user_id=RemoteUserID("bridge"), display_name="Bridge")
LATE_TEXT = "Late event: checkout recovered for every region"


def make_incident(
    incident_id: str = "INC-1",
    *,
    title: str = "Checkout errors",
    severity: Severity = Severity.SEV2,
    status: Status = Status.INVESTIGATING,
    declared_at: datetime = EPOCH,
    resolved_at: datetime | None = None,
) -> Incident:
    return Incident(
        id=IncidentID(incident_id),
        title=title,
        severity=severity,
        status=status,
        declared_at=declared_at,
        declared_by=BOB,
        declared_in=INCIDENT_TEAMS,
        rooms=(INCIDENT_MATRIX, INCIDENT_TEAMS),
        roles={Role.COMMANDER: ALICE, Role.SCRIBE: BOB},
        acknowledged_at=declared_at + timedelta(minutes=3),
        mitigated_at=resolved_at,
        resolved_at=resolved_at,
        summary="Payments provider timed out.",
        impact={"customers": "EU checkout"},
        action_items=(ActionItem(text="Add a provider timeout alert", by=ALICE, at=declared_at),),
    )


@dataclass
class TimelineWriter:
    """Appends events of one incident with increasing times, like the bridge does."""

    timeline: TimelineStore
    incident_id: IncidentID
    at: datetime = EPOCH
    ids: UlidFactory = field(default_factory=UlidFactory)
    counter: int = 0

    def _event(
        self,
        kind: Kind,
        sender: Sender,
        text: str,
        *,
        relations: tuple[Relation, ...] = (),
        data: Mapping[str, Any] | None = None,
        step_s: float = 1.0,
    ) -> TimelineEvent:
        self.counter += 1
        self.at += timedelta(seconds=step_s)
        room = INCIDENT_TEAMS if sender.platform is Platform.TEAMS else INCIDENT_MATRIX
        return TimelineEvent(
            id=EventID(self.ids.new()),
            incident_id=self.incident_id,
            kind=kind,
            origin=RemoteRef(room=room, message_id=RemoteMessageID(f"m{self.counter}")),
            origin_variant="",
            sender=sender,
            body=Body(text=text),
            occurred_at=self.at,
            received_at=self.at,
            relations=relations,
            data=data or {},
        )

    async def add(
        self,
        kind: Kind,
        sender: Sender,
        text: str,
        *,
        relations: tuple[Relation, ...] = (),
        data: Mapping[str, Any] | None = None,
        step_s: float = 1.0,
        mirrored: bool = True,
    ) -> TimelineEvent:
        event = self._event(kind, sender, text, relations=relations, data=data, step_s=step_s)
        other = INCIDENT_MATRIX if event.origin.room == INCIDENT_TEAMS else INCIDENT_TEAMS
        targets = [other] if mirrored and sender.platform is not Platform.BRIDGE else []
        (result,) = await self.timeline.append_many([(event, targets)])
        return result.event

    async def change(self, sender: Sender, change: IncidentChange, text: str = "") -> TimelineEvent:
        return await self.add(Kind.INCIDENT, sender, text, data=change.to_data(), mirrored=False)

    async def deliver(
        self, event: TimelineEvent, status: MirrorStatus, error: str | None = None
    ) -> None:
        for mirror in event.mirrors:
            await self.timeline.set_mirror(
                event.id,
                Mirror(
                    room=mirror.room,
                    status=status,
                    message_id=RemoteMessageID(f"copy-{event.id}")
                    if status is MirrorStatus.SENT
                    else None,
                    attempts=1,
                    error=error,
                    updated_at=event.occurred_at,
                ),
            )


def relation_to(kind: RelationKind, event: TimelineEvent, key: str | None = None) -> Relation:
    return Relation(kind=kind, target=event.origin, event_id=event.id, key=key)


async def seed_incident(
    incidents: IncidentStore,
    timeline: TimelineStore,
    *,
    events: int,
    incident_id: str = "INC-1",
    title: str = "Checkout errors",
    declared_at: datetime = EPOCH,
) -> Incident:
    """An incident with ``events`` timeline events over about ``events * 9`` seconds:
    messages from both platforms (mirrored: sent, failed or pending), edits, deletes,
    reactions, status changes, key events and runbook runs; the last is ``LATE_TEXT``."""
    writer = TimelineWriter(timeline, IncidentID(incident_id), at=declared_at)
    iid = IncidentID(incident_id)
    await writer.change(BOB, IncidentChange(action=Action.DECLARE, incident_id=iid, after=title))
    statuses = {
        events // 4: Status.IDENTIFIED,
        events // 2: Status.MONITORING,
        events - 3: Status.RESOLVED,
    }
    previous = Status.INVESTIGATING
    last_message: TimelineEvent | None = None
    while writer.counter < events - 1:
        n = writer.counter
        if n in statuses:
            after = statuses[n]
            change = IncidentChange(
                action=Action.STATUS, incident_id=iid, before=previous.value, after=after.value
            )
            previous = after
            await writer.change(ALICE, change)
        elif n % 61 == 7:
            change = IncidentChange(
                action=Action.KEY_EVENT, incident_id=iid, text=f"Key moment {n}: failover"
            )
            await writer.change(BOB, change)
        elif n % 89 == 11:
            await writer.add(
                Kind.RUNBOOK,
                BRIDGE,
                f"runbook restart-payments run {n}",
                data={
                    "step": "finished",
                    "run_id": f"R-{n}",
                    "runbook": "restart-payments",
                    "state": "succeeded",
                },
            )
        elif last_message is not None and n % 37 == 5:
            await writer.add(
                Kind.EDIT,
                last_message.sender,
                f"{last_message.body.text} (corrected)",
                relations=(relation_to(RelationKind.EDIT, last_message),),
            )
        elif last_message is not None and n % 43 == 9:
            await writer.add(
                Kind.REACTION,
                BOB if last_message.sender is ALICE else ALICE,
                "👍",
                relations=(relation_to(RelationKind.REACTION, last_message, "👍"),),
            )
        elif last_message is not None and n % 97 == 13:
            await writer.add(
                Kind.REDACTION,
                last_message.sender,
                "",
                relations=(relation_to(RelationKind.REDACTION, last_message),),
            )
        else:
            sender = ALICE if n % 3 else BOB
            last_message = await writer.add(
                Kind.MESSAGE, sender, f"message {n} from {sender.display_name}", step_s=9.0
            )
            status = MirrorStatus.FAILED if n % 50 == 0 else MirrorStatus.SENT
            if n % 17 != 0:
                error = "Teams refused: 403" if status is MirrorStatus.FAILED else None
                await writer.deliver(last_message, status, error)
    late = await writer.add(Kind.MESSAGE, ALICE, LATE_TEXT, step_s=5.0)
    await writer.deliver(late, MirrorStatus.SENT)
    incident = make_incident(
        incident_id,
        title=title,
        status=previous,
        declared_at=declared_at,
        resolved_at=writer.at if previous is Status.RESOLVED else None,
    )
    await incidents.create(incident)
    return incident
