"""The incident model: plain, immutable data.

An ``Incident`` is the current state of one incident (what the pinned header, the
API and the page show). Every change to it is also a ``Kind.INCIDENT`` event in
the timeline (``IncidentChange`` in its ``data``), so the history (severity and
status over time, who held which role when, key events) is read from the timeline,
which is the record for the postmortem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from bridge.model import IncidentID, Platform, RemoteUserID, RoomRef, Sender


class Severity(StrEnum):
    SEV1 = "sev1"
    SEV2 = "sev2"
    SEV3 = "sev3"
    SEV4 = "sev4"


class Status(StrEnum):
    INVESTIGATING = "investigating"
    IDENTIFIED = "identified"
    MONITORING = "monitoring"
    RESOLVED = "resolved"


class Role(StrEnum):
    COMMANDER = "commander"
    SCRIBE = "scribe"
    COMMUNICATIONS = "communications"


class Action(StrEnum):
    """What an ``INCIDENT`` timeline event records (its ``data["action"]``)."""

    DECLARE = "declare"
    SEVERITY = "severity"
    STATUS = "status"
    ASSIGN = "assign"
    UNASSIGN = "unassign"
    ACKNOWLEDGE = "acknowledge"
    NOTE = "note"
    KEY_EVENT = "key_event"
    ACTION_ITEM = "action_item"
    SUMMARY = "summary"
    IMPACT = "impact"
    RESOLVE = "resolve"
    REOPEN = "reopen"
    POSTMORTEM = "postmortem"


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionItem:
    text: str
    by: Sender
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Incident:
    id: IncidentID
    """Short and readable: ``INC-<number>``."""
    title: str
    severity: Severity
    status: Status
    declared_at: datetime
    declared_by: Sender
    declared_in: RoomRef
    """The room ``!incident declare`` was said in."""
    rooms: tuple[RoomRef, ...] = ()
    """The incident's own rooms (a Matrix room and a Teams thread), linked to each other."""
    roles: Mapping[Role, Sender] = field(default_factory=dict)
    acknowledged_at: datetime | None = None
    """The first acknowledgement (``!incident ack`` or a commander taking the incident)."""
    mitigated_at: datetime | None = None
    """The first time the status reached monitoring (or resolved without it)."""
    resolved_at: datetime | None = None
    """The last resolution; None while open (a reopen clears it)."""
    summary: str = ""
    impact: Mapping[str, str] = field(default_factory=dict)
    """Free impact fields (e.g. ``customers``, ``regions``, ``revenue``) set from chat."""
    action_items: tuple[ActionItem, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    """Room key -> the platform message id of the pinned header in that room."""
    postmortem: str | None = None
    """The last generated postmortem (Markdown)."""
    version: int = 0
    """Bumped by every stored change (optimistic concurrency between replicas)."""

    @property
    def open(self) -> bool:
        return self.status is not Status.RESOLVED


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentChange:
    """The ``data`` of an ``INCIDENT`` timeline event: one change, as it happened."""

    action: Action
    incident_id: IncidentID
    before: str | None = None
    after: str | None = None
    role: Role | None = None
    text: str | None = None
    subject: Sender | None = None
    """Whom the change is about (the role holder), when not the sender."""
    marked_event: str | None = None
    """For a key event marked on an existing message (a reaction): that event's id."""

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"action": self.action.value, "incident_id": self.incident_id}
        for key in ("before", "after", "text", "marked_event"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.role is not None:
            data["role"] = self.role.value
        if self.subject is not None:
            data["subject"] = {
                "platform": self.subject.platform.value,
                "user_id": self.subject.user_id,
                "display_name": self.subject.display_name,
            }
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentFilter:
    status: Status | None = None
    open_only: bool = False
    severity: Severity | None = None
    declared_after: datetime | None = None
    declared_before: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentPage:
    incidents: tuple[Incident, ...]
    next_cursor: str | None


def change_from(data: Mapping[str, Any]) -> IncidentChange | None:
    """The change an ``INCIDENT`` event's data describes, or None if it is not one."""
    try:
        subject = data.get("subject")
        return IncidentChange(
            action=Action(data["action"]),
            incident_id=IncidentID(data["incident_id"]),
            before=data.get("before"),
            after=data.get("after"),
            role=Role(data["role"]) if data.get("role") else None,
            text=data.get("text"),
            subject=Sender(
                platform=Platform(subject["platform"]),
                user_id=RemoteUserID(subject["user_id"]),
                display_name=subject["display_name"],
            )
            if isinstance(subject, Mapping)
            else None,
            marked_event=data.get("marked_event"),
        )
    except (KeyError, ValueError, TypeError):
        return None
