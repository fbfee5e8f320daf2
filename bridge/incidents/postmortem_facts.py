"""The facts of a postmortem, derived from an incident's timeline.

``postmortem_facts`` reads the whole timeline of an incident (both platforms, in
``(occurred_at, id)`` order) and derives what a postmortem states: the severity and
status history, who held which role when, the participants of each platform, the
times to acknowledge, mitigate and resolve, the key events, the runbook runs and the
action items, as plain typed data (``bridge.incidents.postmortem`` lays it out as
Markdown).

The durations come from the timeline, never from the incident's stored fields; those
are only compared with it, and a disagreement is stated in the document's notes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from bridge.incidents.model import (
    Action,
    Incident,
    IncidentChange,
    Role,
    Severity,
    Status,
    change_from,
)
from bridge.model import (
    EventID,
    Kind,
    Platform,
    RelationKind,
    RemoteUserID,
    Sender,
    TimelineEvent,
)

_E = TypeVar("_E", Severity, Status)

OwnCheck = Callable[[Sender], bool]
"""Whether a sender is the bridge's own (its bot or a ghost), as an adapter's ``is_own``."""

RUN_STATES: Final = (
    "requested",
    "awaiting_approval",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "unknown",
)
FINAL_RUN_STATES: Final = frozenset({"succeeded", "failed", "timed_out", "cancelled", "unknown"})
QUOTE_LIMIT: Final = 500
"""Characters of a quoted message kept in the document."""
_LIFECYCLE: Final = frozenset(
    {Action.DECLARE, Action.SEVERITY, Action.STATUS, Action.RESOLVE, Action.REOPEN}
)


# -- the facts ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    """A measured duration between two moments of the timeline."""

    start: datetime
    end: datetime

    @property
    def seconds(self) -> int:
        """Whole seconds (rounded toward zero)."""
        return int((self.end - self.start) / timedelta(seconds=1))

    @property
    def human(self) -> str:
        return human_duration(self.seconds)


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """A change of severity or status (or the declaration, resolution or reopening)."""

    at: datetime
    by: Sender
    action: Action
    before: str | None
    after: str | None
    event_id: EventID


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleChange:
    at: datetime
    by: Sender
    role: Role
    holder: Sender | None
    """The new holder; None when the role was given up (unassigned)."""
    event_id: EventID


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    """The message a key event was marked on (as last edited), or that it was deleted."""

    sender: Sender
    text: str
    """As last edited; empty once deleted."""
    original: str
    at: datetime
    edited: bool = False
    deleted: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyEvent:
    at: datetime
    """The original time: of the marked message, else of the marking command."""
    by: Sender
    text: str
    quote: Quote | None
    event_id: EventID
    """The ``INCIDENT`` event that marked it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Participant:
    platform: Platform
    user_id: RemoteUserID
    display_name: str
    messages: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RunbookRun:
    run_id: str
    runbook: str
    requester: str | None
    outcome: str
    """The last state recorded (one of ``RUN_STATES``, or what the record said)."""
    started_at: datetime
    ended_at: datetime | None
    duration: Span | None
    """From the start of running (else the first record) to the final state, once final
    (None while running, or when the run has only one record)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionItemFact:
    at: datetime
    by: Sender
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PostmortemFacts:
    incident_id: str
    title: str
    summary: str
    severity: Severity
    status: Status
    declared_at: datetime
    declared_by: Sender
    severity_history: tuple[Change, ...]
    """The declaration (its severity) and every severity change, in order."""
    status_history: tuple[Change, ...]
    """The declaration (investigating), every status change, resolution and reopening."""
    lifecycle: tuple[Change, ...]
    """Declare, severity, status, resolve and reopen changes, in order."""
    roles: Mapping[Role, Sender]
    """The current holders, from the timeline."""
    role_history: tuple[RoleChange, ...]
    impact: tuple[tuple[str, str], ...]
    participants: tuple[Participant, ...]
    acknowledge: Span | None
    mitigate: Span | None
    resolve: Span | None
    reopened: int
    key_events: tuple[KeyEvent, ...]
    runbook_runs: tuple[RunbookRun, ...]
    action_items: tuple[ActionItemFact, ...]
    notes: tuple[str, ...]
    """Where the stored incident disagrees with its timeline."""

    def participants_on(self, platform: Platform) -> tuple[Participant, ...]:
        return tuple(p for p in self.participants if p.platform is platform)


def postmortem_facts(
    incident: Incident,
    events: Sequence[TimelineEvent],
    *,
    is_own: OwnCheck | None = None,
) -> PostmortemFacts:
    """What the timeline ``events`` (the incident's whole timeline, in order) establish.

    ``is_own`` names the bridge's own senders (its bots and ghosts) on the chat
    platforms; senders on ``Platform.BRIDGE`` and echoes of the bridge's own mirrors
    are never participants either way.
    """
    ordered = sorted(events, key=lambda e: (e.occurred_at, e.id))
    by_id = {e.id: e for e in ordered}
    changes = [
        (event, change)
        for event in ordered
        if event.kind is Kind.INCIDENT
        and (change := change_from(event.data)) is not None
        and change.incident_id == incident.id
    ]
    history = _History(incident)
    for event, change in changes:
        history.apply(event, change)
    declared_at = history.declared_at or incident.declared_at
    acknowledge = _span(declared_at, history.acknowledged_at)
    mitigate = _span(declared_at, history.mitigated_at)
    resolve = _span(declared_at, history.resolved_at if history.status is Status.RESOLVED else None)
    facts = PostmortemFacts(
        incident_id=incident.id,
        title=incident.title,
        summary=history.summary if history.summary is not None else incident.summary,
        severity=history.severity,
        status=history.status,
        declared_at=declared_at,
        declared_by=history.declared_by or incident.declared_by,
        severity_history=tuple(history.severities),
        status_history=tuple(history.statuses),
        lifecycle=tuple(history.lifecycle),
        roles=dict(sorted(history.roles.items(), key=lambda item: _ROLE_ORDER[item[0]])),
        role_history=tuple(history.role_changes),
        impact=tuple(sorted({**incident.impact, **history.impact}.items())),
        participants=_participants(ordered, is_own),
        acknowledge=acknowledge,
        mitigate=mitigate,
        resolve=resolve,
        reopened=history.reopened,
        key_events=_key_events(changes, by_id, ordered),
        runbook_runs=_runbook_runs(ordered),
        action_items=tuple(history.action_items)
        or tuple(ActionItemFact(at=a.at, by=a.by, text=a.text) for a in incident.action_items),
        notes=(),
    )
    return _with_notes(facts, incident, history)


_ROLE_ORDER: Final = {role: index for index, role in enumerate(Role)}


class _History:
    """Replays the incident's changes in order (a local, single-use accumulator)."""

    def __init__(self, incident: Incident) -> None:
        self.severity = incident.severity
        self.status = Status.INVESTIGATING
        self.declared_at: datetime | None = None
        self.declared_by: Sender | None = None
        self.acknowledged_at: datetime | None = None
        self.mitigated_at: datetime | None = None
        self.resolved_at: datetime | None = None
        self.reopened = 0
        self.summary: str | None = None
        self.impact: dict[str, str] = {}
        self.roles: dict[Role, Sender] = {}
        self.severities: list[Change] = []
        self.statuses: list[Change] = []
        self.lifecycle: list[Change] = []
        self.role_changes: list[RoleChange] = []
        self.action_items: list[ActionItemFact] = []
        self.initial_severity_known = False

    def apply(self, event: TimelineEvent, change: IncidentChange) -> None:
        at, by, action = event.occurred_at, event.sender, change.action
        record = Change(
            at=at, by=by, action=action, before=change.before, after=change.after, event_id=event.id
        )
        if action in _LIFECYCLE:
            self.lifecycle.append(record)
        if action is Action.DECLARE:
            self._declare(record, change)
        elif action is Action.SEVERITY:
            self._severity(record, change)
        elif action is Action.STATUS:
            target = _parse(Status, change.after)
            if target is not None:
                self._status(record, target)
        elif action is Action.RESOLVE:
            self._status(record, Status.RESOLVED)
        elif action is Action.REOPEN:
            self.reopened += 1
            self._status(record, _parse(Status, change.after) or Status.INVESTIGATING)
        elif action in (Action.ASSIGN, Action.UNASSIGN):
            self._role(event, change)
        elif action is Action.ACKNOWLEDGE:
            self._acknowledge(at)
        elif action is Action.SUMMARY:
            self.summary = change.text or change.after or ""
        elif action is Action.IMPACT:
            self._impact(change)
        elif action is Action.ACTION_ITEM and (change.text or change.after):
            self.action_items.append(
                ActionItemFact(at=at, by=by, text=change.text or change.after or "")
            )

    def _declare(self, record: Change, change: IncidentChange) -> None:
        if self.declared_at is None:
            self.declared_at, self.declared_by = record.at, record.by
        severity = _parse(Severity, change.after) or _parse(Severity, change.before)
        if severity is not None:
            self.severity = severity
            self.initial_severity_known = True
        self.severities.append(
            replace(record, before=None, after=severity.value if severity else None)
        )
        self.status = Status.INVESTIGATING
        self.statuses.append(replace(record, before=None, after=Status.INVESTIGATING.value))

    def _severity(self, record: Change, change: IncidentChange) -> None:
        target = _parse(Severity, change.after)
        if target is None:
            return
        before = _parse(Severity, change.before)
        if not self.initial_severity_known and before is not None:
            # The declaration did not say; the first change's "before" does.
            self.severities = [
                replace(c, after=before.value)
                if c.action is Action.DECLARE and c.after is None
                else c
                for c in self.severities
            ]
            self.initial_severity_known = True
        previous = self.severity.value
        self.severity = target
        self.severities.append(
            replace(record, before=change.before or previous, after=target.value)
        )

    def _status(self, record: Change, target: Status) -> None:
        previous = self.status
        self.status = target
        self.statuses.append(replace(record, before=previous.value, after=target.value))
        if target in (Status.MONITORING, Status.RESOLVED) and self.mitigated_at is None:
            self.mitigated_at = record.at
        if target is Status.RESOLVED:
            self.resolved_at = record.at

    def _role(self, event: TimelineEvent, change: IncidentChange) -> None:
        if change.role is None:
            return
        if change.action is Action.ASSIGN:
            holder = change.subject or event.sender
            self.roles[change.role] = holder
            if change.role is Role.COMMANDER:
                self._acknowledge(event.occurred_at)
        else:
            holder = None
            self.roles.pop(change.role, None)
        self.role_changes.append(
            RoleChange(
                at=event.occurred_at,
                by=event.sender,
                role=change.role,
                holder=holder,
                event_id=event.id,
            )
        )

    def _acknowledge(self, at: datetime) -> None:
        if self.acknowledged_at is None:
            self.acknowledged_at = at

    def _impact(self, change: IncidentChange) -> None:
        # "before" names the field and "after" holds its value; a bare text is "impact".
        if change.before and change.after is not None:
            self.impact[change.before] = change.after
        elif change.text:
            key, sep, value = change.text.partition("=")
            if sep and key.strip():
                self.impact[key.strip()] = value.strip()
            else:
                self.impact["impact"] = change.text


def _parse(enum: type[_E], value: str | None) -> _E | None:
    if value is None:
        return None
    try:
        return enum(value.strip().lower())
    except ValueError:
        return None


def _span(start: datetime, end: datetime | None) -> Span | None:
    return Span(start=start, end=end) if end is not None else None


def _participants(
    ordered: Sequence[TimelineEvent], is_own: OwnCheck | None
) -> tuple[Participant, ...]:
    mirrored = {
        (mirror.room.key, mirror.message_id)
        for event in ordered
        for mirror in event.mirrors
        if mirror.message_id is not None
    }
    counts: dict[tuple[Platform, RemoteUserID], int] = {}
    names: dict[tuple[Platform, RemoteUserID], str] = {}
    for event in ordered:
        sender = event.sender
        if (
            event.kind is not Kind.MESSAGE
            or sender.platform not in (Platform.MATRIX, Platform.TEAMS)
            or (event.origin.room.key, event.origin.message_id) in mirrored
            or (is_own is not None and is_own(sender))
        ):
            continue
        key = (sender.platform, sender.user_id)
        counts[key] = counts.get(key, 0) + 1
        names[key] = sender.display_name or sender.user_id
    platform_order = {Platform.MATRIX: 0, Platform.TEAMS: 1}
    ranked = sorted(
        counts.items(),
        key=lambda item: (platform_order[item[0][0]], -item[1], names[item[0]], item[0][1]),
    )
    return tuple(
        Participant(platform=platform, user_id=user_id, display_name=names[key], messages=count)
        for key, count in ranked
        for platform, user_id in [key]
    )


def _key_events(
    changes: Sequence[tuple[TimelineEvent, IncidentChange]],
    by_id: Mapping[EventID, TimelineEvent],
    ordered: Sequence[TimelineEvent],
) -> tuple[KeyEvent, ...]:
    seen: set[str] = set()
    found: list[KeyEvent] = []
    revisions = _revisions(ordered)
    for event, change in changes:
        if change.action is not Action.KEY_EVENT:
            continue
        quote: Quote | None = None
        at = event.occurred_at
        if change.marked_event is not None:
            if change.marked_event in seen:
                continue  # marked again (a second pin): one key event
            seen.add(change.marked_event)
            marked = by_id.get(EventID(change.marked_event))
            if marked is not None:
                quote = _quote(marked, revisions.get(marked.id, ()))
                at = marked.occurred_at
        text = (change.text or "").strip()
        if quote is not None and text in (quote.text.strip(), quote.original.strip()):
            text = ""  # the quote says it
        found.append(KeyEvent(at=at, by=event.sender, text=text, quote=quote, event_id=event.id))
    return tuple(sorted(found, key=lambda k: (k.at, k.event_id)))


def _revisions(ordered: Sequence[TimelineEvent]) -> dict[EventID, list[TimelineEvent]]:
    """The edits and redactions of each message, in order."""
    wanted = {Kind.EDIT: RelationKind.EDIT, Kind.REDACTION: RelationKind.REDACTION}
    found: dict[EventID, list[TimelineEvent]] = {}
    for event in ordered:
        kind = wanted.get(event.kind)
        relation = event.relation(kind) if kind is not None else None
        if relation is not None and relation.event_id is not None:
            found.setdefault(relation.event_id, []).append(event)
    return found


def _quote(marked: TimelineEvent, revisions: Sequence[TimelineEvent]) -> Quote:
    text, edited, deleted = marked.body.text, False, False
    for revision in revisions:
        if revision.kind is Kind.EDIT:
            text, edited = revision.body.text, True
        else:
            deleted = True
    return Quote(
        sender=marked.sender,
        text="" if deleted else text,
        original=marked.body.text,
        at=marked.occurred_at,
        edited=edited,
        deleted=deleted,
    )


def _runbook_runs(ordered: Sequence[TimelineEvent]) -> tuple[RunbookRun, ...]:
    runs: dict[str, list[TimelineEvent]] = {}
    for event in ordered:
        if event.kind is Kind.RUNBOOK:
            run_id = event.data.get("run_id")
            runs.setdefault(str(run_id) if run_id else event.id, []).append(event)
    result = [_run(run_id, records) for run_id, records in runs.items()]
    return tuple(sorted(result, key=lambda r: (r.started_at, r.run_id)))


def _run(run_id: str, records: Sequence[TimelineEvent]) -> RunbookRun:
    name = next((str(r.data["runbook"]) for r in records if r.data.get("runbook")), "")
    states = [(r, str(r.data.get("state") or "unknown")) for r in records]
    outcome = states[-1][1]
    first = records[0].occurred_at
    running = next((r.occurred_at for r, state in states if state == "running"), None)
    final = next(
        (r.occurred_at for r, state in reversed(states) if state in FINAL_RUN_STATES), None
    )
    ended = final if outcome in FINAL_RUN_STATES else None
    return RunbookRun(
        run_id=run_id,
        runbook=name,
        requester=_requester(records),
        outcome=outcome,
        started_at=first,
        ended_at=ended,
        duration=_span(running or first, ended) if len(records) > 1 else None,
    )


def _requester(records: Sequence[TimelineEvent]) -> str | None:
    for record in records:
        named = _named(record.data.get("requested_by")) or _named(record.data.get("requester"))
        if named:
            return named
    for record in records:
        if record.sender.platform is not Platform.BRIDGE:
            return record.sender.display_name or record.sender.user_id
    return None


def _named(value: Any) -> str | None:
    if isinstance(value, Mapping):
        name = value.get("display_name") or value.get("user_id")
        return str(name) if name else None
    return str(value) if isinstance(value, str) and value else None


def _with_notes(facts: PostmortemFacts, incident: Incident, history: _History) -> PostmortemFacts:
    notes: list[str] = []
    checks = (
        ("declared", incident.declared_at, history.declared_at),
        ("acknowledged", incident.acknowledged_at, history.acknowledged_at),
        ("mitigated", incident.mitigated_at, history.mitigated_at),
        (
            "resolved",
            incident.resolved_at,
            history.resolved_at if history.status is Status.RESOLVED else None,
        ),
    )
    for what, stored, derived in checks:
        if not _agree(stored, derived):
            notes.append(
                f"The stored incident says {what} at {_when(stored)}; "
                f"the timeline says {_when(derived)}."
            )
    if history.declared_at is None:
        notes.append("The timeline has no declaration; durations start at the stored time.")
    if incident.status is not history.status:
        notes.append(
            f"The stored status is {incident.status.value}; "
            f"the timeline ends in {history.status.value}."
        )
    return replace(facts, notes=tuple(notes))


def _agree(stored: datetime | None, derived: datetime | None) -> bool:
    if stored is None or derived is None:
        return stored is derived
    return abs(stored - derived) < timedelta(seconds=1)


# -- plain-text formats ---------------------------------------------------------


def when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _when(at: datetime | None) -> str:
    return when(at) if at is not None else "never"


def human_duration(seconds: int) -> str:
    """``3725`` -> ``1 h 2 min 5 s``; ``0`` -> ``0 s``."""
    sign, rest = ("-", -seconds) if seconds < 0 else ("", seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count} {unit}")
    return sign + (" ".join(parts) or "0 s")
