"""Runs <-> stored documents (collection ``runbook_runs``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.model import (
    EventID,
    IncidentID,
    Platform,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
)
from bridge.runbooks.model import Approval, Run, RunID, RunState, Value

Doc = dict[str, Any]


def _sender_doc(sender: Sender) -> Doc:
    return {
        "platform": sender.platform.value,
        "user_id": sender.user_id,
        "display_name": sender.display_name,
    }


def _sender(doc: Mapping[str, Any]) -> Sender:
    return Sender(
        platform=Platform(doc["platform"]),
        user_id=RemoteUserID(doc["user_id"]),
        display_name=str(doc.get("display_name", "")),
    )


def _room_doc(room: RoomRef) -> Doc:
    return {"platform": room.platform.value, "room_id": room.room_id}


def _room(doc: Mapping[str, Any]) -> RoomRef:
    return RoomRef(platform=Platform(doc["platform"]), room_id=RemoteRoomID(doc["room_id"]))


def run_doc(run: Run) -> Doc:
    """The stored form of ``run`` (``_id`` is the run id)."""
    return {
        "_id": run.id,
        "n": run_number(run.id) or 0,
        "runbook": run.runbook,
        "runbook_digest": run.runbook_digest,
        "args": dict(run.args),
        "args_digest": run.args_digest,
        "command_event": run.command_event,
        "requested_by": _sender_doc(run.requested_by),
        "room": _room_doc(run.room),
        "incident_id": run.incident_id,
        "state": run.state.value,
        "created_at": run.created_at,
        "dry_run": run.dry_run,
        "approvals": [
            {"by": _sender_doc(a.by), "at": a.at, "event_id": a.event_id} for a in run.approvals
        ],
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "owner": run.owner,
        "heartbeat_at": run.heartbeat_at,
        "outcome": run.outcome,
        "output": run.output,
        "output_truncated": run.output_truncated,
        "message": run.message,
        "version": run.version,
    }


def _args(doc: Mapping[str, Any]) -> dict[str, Value]:
    args: dict[str, Value] = {}
    for key, value in doc.items():
        if isinstance(value, bool | int | str):
            args[str(key)] = value
    return args


def run_from(doc: Mapping[str, Any]) -> Run:
    incident = doc.get("incident_id")
    return Run(
        id=RunID(doc["_id"]),
        runbook=doc["runbook"],
        runbook_digest=doc.get("runbook_digest", ""),
        args=_args(doc.get("args") or {}),
        args_digest=doc.get("args_digest", ""),
        command_event=EventID(doc["command_event"]),
        requested_by=_sender(doc["requested_by"]),
        room=_room(doc["room"]),
        incident_id=IncidentID(incident) if incident else None,
        state=RunState(doc["state"]),
        created_at=doc["created_at"],
        dry_run=bool(doc.get("dry_run", False)),
        approvals=tuple(
            Approval(by=_sender(a["by"]), at=a["at"], event_id=EventID(a["event_id"]))
            for a in doc.get("approvals") or ()
        ),
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
        owner=doc.get("owner"),
        heartbeat_at=doc.get("heartbeat_at"),
        outcome=doc.get("outcome", ""),
        output=doc.get("output", ""),
        output_truncated=bool(doc.get("output_truncated", False)),
        message=doc.get("message"),
        version=int(doc.get("version", 0)),
    )


def run_number(run_id: str) -> int | None:
    """The number of an ``R-<n>`` id (None if it is not one)."""
    prefix, _, number = run_id.partition("-")
    if prefix.upper() != "R" or not number.isdigit():
        return None
    return int(number)
