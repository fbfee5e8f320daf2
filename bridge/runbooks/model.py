"""The runbook model: definitions (from the catalog) and runs (persisted state machines).

A ``Runbook`` is one validated catalog entry. A ``Run`` is one request to run it,
claimed once per command event, and moves through ``RunState``:
requested -> awaiting_approval -> running -> succeeded | failed | timed_out |
cancelled | unknown (and requested -> denied / expired, or -> running directly
when no approval is needed). Every step is also a ``Kind.RUNBOOK`` timeline event
(``RunStep`` in its data): the audit trail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NewType

from bridge.model import EventID, IncidentID, RoomRef, Sender

RunID = NewType("RunID", str)
"""Short and readable: ``R-<number>`` (what people type in ``!runbook approve``)."""


class ParamType(StrEnum):
    STRING = "string"
    ENUM = "enum"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    DURATION = "duration"


@dataclass(frozen=True, slots=True, kw_only=True)
class ParamSpec:
    name: str
    type: ParamType
    description: str = ""
    required: bool = False
    default: str | int | bool | None = None
    pattern: str | None = None
    """STRING: the whole value must match (Python ``re.fullmatch``)."""
    max_length: int = 256
    """STRING: at most this many characters."""
    choices: tuple[str, ...] = ()
    """ENUM: the allowed values."""
    minimum: int | None = None
    maximum: int | None = None
    """INTEGER: the range (inclusive); DURATION: in seconds."""


Value = str | int | bool
"""A validated parameter value (a duration is its number of seconds)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Access:
    """Who may do something: anyone matching any of the rules (platform ids only)."""

    aad_object_ids: tuple[str, ...] = ()
    aad_groups: tuple[str, ...] = ()
    """AAD group ids, as Teams gives them in the activity where it does."""
    mxids: tuple[str, ...] = ()
    matrix_power_level: int | None = None
    """Matrix users at or above this power level in the room the command is said in."""
    roles: tuple[str, ...] = ()
    """Names of roles from the catalog's ``roles:`` section (each a set of the above)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalPolicy:
    count: int = 0
    """Approvals needed before the run starts (0: none)."""
    approvers: Access = Access()
    """Who may approve; the requester never counts."""
    expires_after: timedelta = timedelta(minutes=30)
    """A request not approved within this is ``expired``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretRef:
    """A secret the executor needs: read from a file or an environment variable at run
    time, never stored, logged or echoed (its value is redacted from output)."""

    name: str
    file: str | None = None
    env: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSpec:
    method: str
    url: str
    """May hold ``{param}`` placeholders, filled with URL-quoted validated values."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Values may name secrets as ``{secret:NAME}``."""
    body: Any = None
    """JSON; string leaves may hold ``{param}`` (a whole leaf ``"{param}"`` takes the
    value's JSON type) and ``{secret:NAME}``."""
    secrets: tuple[SecretRef, ...] = ()
    success_statuses: tuple[int, ...] = (200, 201, 202, 204)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecSpec:
    argv: tuple[str, ...]
    """Each element is literal text or exactly ``{param}`` (that whole element is the
    value): a parameter is always exactly one argv element, and there is no shell."""
    env: Mapping[str, str] = field(default_factory=dict)
    """The whole environment of the process (values may be ``{secret:NAME}``), nothing
    inherited but what ``inherit_env`` names."""
    inherit_env: tuple[str, ...] = ("PATH", "LANG", "TZ")
    cwd: str | None = None
    secrets: tuple[SecretRef, ...] = ()
    max_output_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class KubernetesJobSpec:
    namespace: str
    """Empty: the bridge's own namespace (its service account's)."""
    template: Mapping[str, Any]
    """A ``batch/v1`` Job manifest; string leaves may hold ``{param}``; the bridge sets
    ``metadata.name`` (deterministic from the run id) and its labels."""
    secrets: tuple[SecretRef, ...] = ()


ExecutorSpec = HttpSpec | ExecSpec | KubernetesJobSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class Runbook:
    name: str
    description: str
    params: tuple[ParamSpec, ...]
    access: Access
    approvals: ApprovalPolicy
    timeout: timedelta
    concurrency: int = 1
    """Runs of this runbook running at once, across all replicas."""
    outside_incident: bool = False
    """Whether it may run in a room that is not an incident's."""
    executor: ExecutorSpec
    source: str = ""
    """The catalog file it came from."""
    digest: str = ""
    """A hash of its definition: approvals are for this exact definition."""


class RunState(StrEnum):
    REQUESTED = "requested"
    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"
    """Its process died while it ran: never re-run automatically."""
    DENIED = "denied"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self not in (RunState.REQUESTED, RunState.AWAITING_APPROVAL, RunState.RUNNING)


@dataclass(frozen=True, slots=True, kw_only=True)
class Approval:
    by: Sender
    at: datetime
    event_id: EventID
    """The ``!runbook approve`` command's event (an approval is counted once)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    id: RunID
    runbook: str
    runbook_digest: str
    args: Mapping[str, Value]
    args_digest: str
    """A hash of runbook name, definition digest and canonical arguments: what approvals
    are for."""
    command_event: EventID
    """The command that requested it: unique, so a redelivered command never runs twice."""
    requested_by: Sender
    room: RoomRef
    incident_id: IncidentID | None
    state: RunState
    created_at: datetime
    dry_run: bool = False
    approvals: tuple[Approval, ...] = ()
    started_at: datetime | None = None
    finished_at: datetime | None = None
    owner: str | None = None
    """The process executing it (its instance id)."""
    heartbeat_at: datetime | None = None
    """Refreshed by the owner while running; a stale one means the owner died."""
    outcome: str = ""
    """A one-line result (exit code, HTTP status, Job condition, error)."""
    output: str = ""
    """The captured output, size-capped, secrets redacted."""
    output_truncated: bool = False
    message: str | None = None
    """The timeline event id of the run's message in the rooms (edited as it grows)."""
    version: int = 0


class StepKind(StrEnum):
    REQUESTED = "requested"
    APPROVED = "approved"
    DENIED = "denied"
    REJECTED = "rejected"
    """An approval or denial that did not count (self, no role, expired, replayed, ...)."""
    STARTED = "started"
    OUTPUT = "output"
    FINISHED = "finished"
    CANCEL_REQUESTED = "cancel_requested"
    ORPHANED = "orphaned"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStep:
    """The ``data`` of a ``Kind.RUNBOOK`` timeline event."""

    step: StepKind
    run_id: RunID
    runbook: str
    state: RunState
    detail: str = ""

    def to_data(self) -> dict[str, Any]:
        return {
            "step": self.step.value,
            "run_id": self.run_id,
            "runbook": self.runbook,
            "state": self.state.value,
            "detail": self.detail,
        }
