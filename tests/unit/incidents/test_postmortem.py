"""The postmortem written from a timeline: the facts, then the Markdown."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.config import Settings
from bridge.incidents.markdown import code, escape
from bridge.incidents.model import Action, ActionItem, Incident, IncidentChange, Role, Severity
from bridge.incidents.model import Status as St
from bridge.incidents.postmortem import (
    PostmortemFacts,
    postmortem_facts,
    render_postmortem,
    settings_own_check,
)
from bridge.incidents.postmortem_facts import human_duration
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
from bridge.notices import BRIDGE_BOT, BRIDGE_ROOM

T = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
INC = IncidentID("INC-7")
MATRIX_ROOM = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!inc7:example.org"))
TEAMS_ROOM = RoomRef(
    platform=Platform.TEAMS, room_id=RemoteRoomID("19:ch@thread.tacv2;messageid=1700")
)
ALICE = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@alice:example.org"), display_name="Alice"
)
DAVE = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@dave:example.org"), display_name="Dave"
)
BOB = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-bob"), display_name="Bob")
CAROL = Sender(
    platform=Platform.TEAMS,
    user_id=RemoteUserID("aad-carol"),
    display_name="Carol <b>[admin](http://evil.example)</b>",
)
BOB_GHOST = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@teams_aad-bob:example.org"), display_name="Bob"
)
TEAMS_BOT = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("28:app"), display_name="Bridge")
HOSTILE = (
    "# Owned\n<script>alert(1)</script> [click](javascript:alert(1)) "
    "![x](http://e/x.png) | a | **b** https://evil.example"
)


def at(minutes: float) -> datetime:
    return T + timedelta(minutes=minutes)


@dataclass
class Timeline:
    """Builds one incident's timeline in order."""

    events: list[TimelineEvent] = field(default_factory=list)

    def add(
        self,
        kind: Kind,
        when: datetime,
        sender: Sender,
        *,
        text: str = "",
        room: RoomRef = MATRIX_ROOM,
        data: Mapping[str, Any] | None = None,
        relations: tuple[Relation, ...] = (),
        mirrors: tuple[Mirror, ...] = (),
        message_id: str | None = None,
    ) -> TimelineEvent:
        number = len(self.events) + 1
        event = TimelineEvent(
            id=EventID(f"01EVT{number:05d}"),
            incident_id=INC,
            kind=kind,
            origin=RemoteRef(room=room, message_id=RemoteMessageID(message_id or f"m{number}")),
            origin_variant="",
            sender=sender,
            body=Body(text=text),
            occurred_at=when,
            received_at=when,
            relations=relations,
            mirrors=mirrors,
            data=dict(data or {}),
        )
        self.events.append(event)
        return event

    def message(self, when: datetime, sender: Sender, text: str, **kw: Any) -> TimelineEvent:
        room = TEAMS_ROOM if sender.platform is Platform.TEAMS else MATRIX_ROOM
        return self.add(Kind.MESSAGE, when, sender, text=text, room=room, **kw)

    def change(self, when: datetime, sender: Sender, action: Action, **kw: Any) -> TimelineEvent:
        data = IncidentChange(action=action, incident_id=INC, **kw).to_data()
        return self.add(Kind.INCIDENT, when, sender, room=BRIDGE_ROOM, data=data)

    def run(self, when: datetime, sender: Sender, data: Mapping[str, Any]) -> TimelineEvent:
        return self.add(Kind.RUNBOOK, when, sender, room=BRIDGE_ROOM, data=data)


def drill() -> tuple[Incident, list[TimelineEvent]]:
    """Declared at T, acknowledged at T+3 min, identified, mitigated, resolved, reopened,
    resolved again; key events by command and by reaction; three runbook runs."""
    tl = Timeline()
    tl.change(T, BOB, Action.DECLARE, after="sev2", text="Checkout errors")
    tl.message(at(0.5), ALICE, "looking")
    tl.message(
        at(1),
        BOB,
        HOSTILE,
        mirrors=(
            Mirror(
                room=MATRIX_ROOM, status=MirrorStatus.SENT, message_id=RemoteMessageID("$echo1")
            ),
        ),
    )
    # The ghost's echo of Bob's message, and a ghost message the adapter calls its own.
    tl.message(at(1) + timedelta(milliseconds=200), BOB_GHOST, HOSTILE, message_id="$echo1")
    tl.message(at(1.5), BOB_GHOST, "stray ghost line")
    tl.message(at(1.6), TEAMS_BOT, "bot line")
    tl.add(Kind.NOTICE, at(1.7), BRIDGE_BOT, text="Incident declared", room=BRIDGE_ROOM)
    tl.change(at(3) + timedelta(milliseconds=400), ALICE, Action.ACKNOWLEDGE)
    tl.change(at(4), ALICE, Action.ASSIGN, role=Role.COMMANDER, subject=ALICE)
    tl.change(at(4.5), ALICE, Action.ASSIGN, role=Role.SCRIBE, subject=BOB)
    tl.change(at(5), BOB, Action.SEVERITY, before="sev2", after="sev1")
    tl.add(Kind.COMMAND, at(6), ALICE, text="!incident key Rolled back deploy 42")
    tl.change(at(6), ALICE, Action.KEY_EVENT, text="Rolled back [deploy 42](http://evil)")
    carol_says = tl.message(at(7), CAROL, "Errors dropping")
    tl.message(at(7.2), DAVE, "confirmed")
    tl.add(
        Kind.EDIT,
        at(7.5),
        CAROL,
        text="Errors dropping <img src=x onerror=alert(1)>",
        room=TEAMS_ROOM,
        relations=(
            Relation(kind=RelationKind.EDIT, target=carol_says.origin, event_id=carol_says.id),
        ),
    )
    tl.add(
        Kind.REACTION,
        at(8),
        ALICE,
        room=MATRIX_ROOM,
        relations=(
            Relation(
                kind=RelationKind.REACTION,
                target=carol_says.origin,
                event_id=carol_says.id,
                key="📌",
            ),
        ),
    )
    tl.change(at(8), ALICE, Action.KEY_EVENT, marked_event=carol_says.id)
    tl.change(at(8.5), DAVE, Action.KEY_EVENT, marked_event=carol_says.id)  # pinned twice
    tl.change(at(10), ALICE, Action.STATUS, before="investigating", after="identified")
    tl.run(at(11), ALICE, {"run_id": "r1", "runbook": "restart-checkout", "state": "requested"})
    tl.run(at(11) + timedelta(seconds=10), BRIDGE_BOT, {"run_id": "r1", "state": "running"})
    tl.run(at(12) + timedelta(seconds=40), BRIDGE_BOT, {"run_id": "r1", "state": "succeeded"})
    tl.run(
        at(13),
        BRIDGE_BOT,
        {
            "run_id": "r2",
            "runbook": "flush-cache",
            "state": "awaiting_approval",
            "requested_by": {"display_name": "Bob", "user_id": "aad-bob", "platform": "teams"},
        },
    )
    tl.run(at(13) + timedelta(seconds=5), BRIDGE_BOT, {"run_id": "r2", "state": "running"})
    tl.run(at(18) + timedelta(seconds=5), BRIDGE_BOT, {"run_id": "r2", "state": "timed_out"})
    tl.run(at(19), BRIDGE_BOT, {})  # a record missing every key
    tl.change(at(20), ALICE, Action.STATUS, before="identified", after="monitoring")
    tl.change(at(21), ALICE, Action.UNASSIGN, role=Role.SCRIBE)
    tl.change(at(22), ALICE, Action.IMPACT, before="customers", after="EU # all")
    tl.change(at(23), ALICE, Action.SUMMARY, text="Checkout failed\n# Injected heading")
    tl.change(at(24), BOB, Action.ACTION_ITEM, text="Alert on [checkout](http://evil) <img>")
    tl.change(at(25), ALICE, Action.RESOLVE, before="monitoring", after="resolved")
    tl.change(at(30), BOB, Action.REOPEN, before="resolved", after="investigating")
    tl.message(at(31), BOB, "it is back")
    tl.change(at(40), ALICE, Action.STATUS, before="investigating", after="monitoring")
    tl.change(at(45) + timedelta(milliseconds=999), ALICE, Action.RESOLVE, after="resolved")
    incident = Incident(
        id=INC,
        title="Checkout ## down [x](http://e)",
        severity=Severity.SEV1,
        status=St.RESOLVED,
        declared_at=T,
        declared_by=BOB,
        declared_in=TEAMS_ROOM,
        rooms=(MATRIX_ROOM, TEAMS_ROOM),
        roles={Role.COMMANDER: ALICE},
        acknowledged_at=at(3) + timedelta(milliseconds=400),
        mitigated_at=at(20),
        resolved_at=at(45) + timedelta(milliseconds=999),
        summary="Checkout failed\n# Injected heading",
        impact={"customers": "EU # all"},
        version=20,
    )
    return incident, tl.events


def own(sender: Sender) -> bool:
    return sender in (BOB_GHOST, TEAMS_BOT)


def facts() -> PostmortemFacts:
    incident, events = drill()
    return postmortem_facts(incident, events, is_own=own)


# -- facts ---------------------------------------------------------------------------


def test_durations_are_exact_to_the_second_and_come_from_the_timeline() -> None:
    result = facts()
    assert result.acknowledge is not None
    assert result.acknowledge.seconds == 180
    assert result.acknowledge.human == "3 min"
    assert result.mitigate is not None
    assert result.mitigate.seconds == 20 * 60  # the first time the status reached monitoring
    assert result.resolve is not None
    assert result.resolve.end == at(45) + timedelta(milliseconds=999)  # the last resolution
    assert result.resolve.seconds == 45 * 60
    assert result.resolve.human == "45 min"
    assert result.reopened == 1
    assert result.notes == ()  # the stored incident agrees with its timeline


def test_durations_ignore_the_stored_fields() -> None:
    incident, events = drill()
    stored = replace(incident, acknowledged_at=at(1), resolved_at=None, status=St.MONITORING)
    result = postmortem_facts(stored, events)
    assert result.acknowledge is not None
    assert result.acknowledge.seconds == 180
    assert result.resolve is not None
    assert result.resolve.seconds == 45 * 60
    assert len(result.notes) == 3  # acknowledged, resolved and status disagree


def test_an_open_reopened_incident_has_no_resolution_yet() -> None:
    incident, events = drill()
    cut = [e for e in events if e.occurred_at < at(40)]
    result = postmortem_facts(replace(incident, status=St.INVESTIGATING, resolved_at=None), cut)
    assert result.status is St.INVESTIGATING
    assert result.resolve is None
    assert result.mitigate is not None
    assert result.mitigate.seconds == 20 * 60


def test_mitigation_without_monitoring_is_the_first_resolution() -> None:
    tl = Timeline()
    tl.change(T, BOB, Action.DECLARE, after="sev3")
    tl.change(at(2), BOB, Action.ASSIGN, role=Role.COMMANDER, subject=ALICE)  # acknowledges
    tl.change(at(9), ALICE, Action.RESOLVE)
    incident = Incident(
        id=INC,
        title="t",
        severity=Severity.SEV3,
        status=St.RESOLVED,
        declared_at=T,
        declared_by=BOB,
        declared_in=TEAMS_ROOM,
    )
    result = postmortem_facts(incident, tl.events)
    assert result.acknowledge is not None
    assert result.acknowledge.seconds == 120
    assert result.mitigate is not None
    assert result.mitigate.seconds == 540
    assert result.resolve is not None
    assert result.resolve.seconds == 540
    assert result.roles == {Role.COMMANDER: ALICE}


def test_severity_and_status_history_in_order_with_who() -> None:
    result = facts()
    assert [(c.after, c.by) for c in result.severity_history] == [("sev2", BOB), ("sev1", BOB)]
    assert result.severity_history[1].at == at(5)
    assert [(c.before, c.after) for c in result.status_history] == [
        (None, "investigating"),
        ("investigating", "identified"),
        ("identified", "monitoring"),
        ("monitoring", "resolved"),
        ("resolved", "investigating"),
        ("investigating", "monitoring"),
        ("monitoring", "resolved"),
    ]
    assert [c.action for c in result.lifecycle] == [
        Action.DECLARE,
        Action.SEVERITY,
        Action.STATUS,
        Action.STATUS,
        Action.RESOLVE,
        Action.REOPEN,
        Action.STATUS,
        Action.RESOLVE,
    ]


def test_roles_now_and_their_history() -> None:
    result = facts()
    assert result.roles == {Role.COMMANDER: ALICE}
    assert [(c.role, c.holder) for c in result.role_history] == [
        (Role.COMMANDER, ALICE),
        (Role.SCRIBE, BOB),
        (Role.SCRIBE, None),
    ]


def test_participants_by_platform_without_the_bridge_or_its_ghosts() -> None:
    result = facts()
    matrix = [(p.user_id, p.messages) for p in result.participants_on(Platform.MATRIX)]
    teams = [(p.user_id, p.messages) for p in result.participants_on(Platform.TEAMS)]
    assert matrix == [("@alice:example.org", 1), ("@dave:example.org", 1)]
    assert teams == [("aad-bob", 2), ("aad-carol", 1)]


def test_ghost_echoes_are_recognised_from_the_mirrors_alone() -> None:
    incident, events = drill()
    result = postmortem_facts(incident, events)  # no is_own: only the mirrored echo is known
    assert "@teams_aad-bob:example.org" in {p.user_id for p in result.participants}
    ghost = next(p for p in result.participants if p.user_id == "@teams_aad-bob:example.org")
    assert ghost.messages == 1  # the stray line; the echo of "$echo1" is not counted


def test_key_events_in_order_with_original_timestamps_and_quotes() -> None:
    result = facts()
    assert [(k.at, k.by) for k in result.key_events] == [(at(6), ALICE), (at(7), ALICE)]
    by_command, by_reaction = result.key_events
    assert by_command.quote is None
    assert by_command.text == "Rolled back [deploy 42](http://evil)"
    assert by_reaction.quote is not None
    assert by_reaction.quote.sender == CAROL
    assert by_reaction.quote.text == "Errors dropping <img src=x onerror=alert(1)>"
    assert by_reaction.quote.edited


def test_a_deleted_key_message_is_quoted_as_deleted() -> None:
    incident, events = drill()
    carol_says = next(e for e in events if e.sender == CAROL and e.kind is Kind.MESSAGE)
    tl = Timeline(events=list(events))
    tl.add(
        Kind.REDACTION,
        at(50),
        CAROL,
        room=TEAMS_ROOM,
        relations=(
            Relation(kind=RelationKind.REDACTION, target=carol_says.origin, event_id=carol_says.id),
        ),
    )
    result = postmortem_facts(incident, tl.events)
    quote = result.key_events[1].quote
    assert quote is not None
    assert quote.deleted
    assert quote.text == ""
    assert "since deleted" in render_postmortem(incident, tl.events, now=NOW)


def test_runbook_runs_one_per_run_with_outcome_and_duration() -> None:
    runs = facts().runbook_runs
    assert [(r.runbook, r.requester, r.outcome) for r in runs] == [
        ("restart-checkout", "Alice", "succeeded"),
        ("flush-cache", "Bob", "timed_out"),
        ("", None, "unknown"),
    ]
    first, second, third = runs
    assert first.duration is not None
    assert first.duration.seconds == 90  # running -> succeeded
    assert second.duration is not None
    assert second.duration.seconds == 300
    assert third.duration is None  # one record: its start was never seen


def test_a_run_still_going_has_no_duration() -> None:
    tl = Timeline()
    tl.change(T, BOB, Action.DECLARE, after="sev2")
    tl.run(at(1), ALICE, {"run_id": "r9", "runbook": "drain", "state": "running"})
    incident, _ = drill()
    (run,) = postmortem_facts(incident, tl.events).runbook_runs
    assert run.outcome == "running"
    assert run.duration is None
    assert run.ended_at is None


def test_impact_summary_and_action_items_from_the_timeline() -> None:
    result = facts()
    assert result.impact == (("customers", "EU # all"),)
    assert result.summary == "Checkout failed\n# Injected heading"
    assert [(a.text, a.by, a.at) for a in result.action_items] == [
        ("Alert on [checkout](http://evil) <img>", BOB, at(24))
    ]


def test_stored_action_items_are_used_when_the_timeline_has_none() -> None:
    incident, events = drill()
    kept = [e for e in events if e.data.get("action") != Action.ACTION_ITEM.value]
    item = ActionItem(text="Write tests", by=ALICE, at=at(60))
    result = postmortem_facts(replace(incident, action_items=(item,)), kept)
    assert [a.text for a in result.action_items] == ["Write tests"]


def test_events_of_another_incident_are_ignored() -> None:
    incident, events = drill()
    tl = Timeline(events=list(events))
    stray = IncidentChange(action=Action.RESOLVE, incident_id=IncidentID("INC-8")).to_data()
    tl.add(Kind.INCIDENT, at(2), ALICE, room=BRIDGE_ROOM, data=stray)
    assert postmortem_facts(incident, tl.events) == postmortem_facts(incident, events)


# -- Markdown --------------------------------------------------------------------------


def render() -> str:
    incident, events = drill()
    return render_postmortem(incident, events, now=NOW, is_own=own)


def test_markdown_has_the_expected_sections_and_no_injected_headings() -> None:
    doc = render()
    headings = [line for line in doc.splitlines() if line.lstrip().startswith("#")]
    assert headings == [
        "# Postmortem: INC\\-7 Checkout \\#\\# down \\[x\\]\\(http\\://e\\)",
        "## Summary",
        "## Impact",
        "## Durations",
        "## Severity history",
        "## Status history",
        "## Roles",
        "## Participants",
        "## Timeline",
        "## Runbook runs",
        "## Action items",
    ]


def test_markdown_states_the_durations_and_the_key_events_in_order() -> None:
    doc = render()
    assert "- Time to acknowledge: 3 min (180 s, at 2026-11-01 12:03:00 UTC)" in doc
    assert "- Time to mitigate: 20 min (1200 s, at 2026-11-01 12:20:00 UTC)" in doc
    assert "- Time to resolve: 45 min (2700 s, at 2026-11-01 12:45:00 UTC)" in doc
    assert "- Reopened: 1 time(s)" in doc
    timeline = section(doc, "Timeline")
    stamps = [line.split(": ", 1)[0] for line in timeline]
    assert stamps == sorted(stamps)
    key_lines = [line for line in timeline if "**Key event**" in line]
    assert key_lines[0].startswith("- 2026-11-01 12:06:00 UTC: **Key event**: Rolled back")
    assert key_lines[1].startswith("- 2026-11-01 12:07:00 UTC: **Key event**, marked by Alice")
    assert "Errors dropping \\<img src=x onerror=alert\\(1\\)\\>" in key_lines[1]
    assert len(timeline) == 10  # 8 lifecycle changes and 2 key events


def test_markdown_lists_participants_runs_and_action_items() -> None:
    doc = render()
    people = section(doc, "Participants")
    assert people[0] == "- Matrix: 2"
    assert "  - Alice `@alice:example.org`: 1 message(s)" in people
    assert "- Teams: 2" in people
    assert "teams\\_aad" not in doc
    assert "@teams_aad-bob" not in doc
    runs = section(doc, "Runbook runs")
    assert runs == [
        "- 2026-11-01 12:11:00 UTC: `restart-checkout` requested by Alice: **succeeded**, "
        "1 min 30 s (90 s)",
        "- 2026-11-01 12:13:00 UTC: `flush-cache` requested by Bob: **timed\\_out**, 5 min (300 s)",
        "- 2026-11-01 12:19:00 UTC: _unnamed runbook_: **unknown**",
    ]
    items = section(doc, "Action items")
    assert items == [
        r"- [ ] Alert on \[checkout\]\(http\://evil\) \<img\> "
        "(Bob (Teams `aad-bob`), 2026-11-01 12:24:00 UTC)"
    ]


def test_hostile_text_cannot_add_links_html_or_blocks() -> None:
    doc = render()
    body = doc.replace("- [ ] ", "- ")  # the task-list marker is the document's own
    unescaped = re.compile(r"(?<!\\)[<>\[\]]")
    for line in body.splitlines():
        code_free = re.sub(r"`[^`]*`", "", line)
        assert not unescaped.search(code_free), line
    assert "<script" not in doc
    assert "](" not in doc
    assert "http://" not in doc  # no bare autolinks either
    assert "https://" not in doc


def test_markdown_is_deterministic() -> None:
    incident, events = drill()
    first = render_postmortem(incident, events, now=NOW)
    shuffled = list(reversed(events))
    assert render_postmortem(incident, shuffled, now=NOW) == first


def test_escape_and_code() -> None:
    assert escape("a\n# b\r\n\u202ec") == "a \\# b c"
    assert escape("1. [x](y) <i>") == "1\\. \\[x\\]\\(y\\) \\<i\\>"
    assert code("a`b") == "``a`b``"
    assert code("`x") == "`` `x ``"
    assert human_duration(0) == "0 s"
    assert human_duration(3725) == "1 h 2 min 5 s"
    assert human_duration(90061) == "1 d 1 h 1 min 1 s"
    assert human_duration(-61) == "-1 min 1 s"


def section(doc: str, title: str) -> list[str]:
    """The non-blank lines under ``## title``, up to the next heading."""
    lines = doc.splitlines()
    start = lines.index(f"## {title}") + 1
    out: list[str] = []
    for line in lines[start:]:
        if line.startswith("#"):
            break
        if line.strip():
            out.append(line)
    return out


def test_a_key_event_repeating_the_marked_message_is_not_said_twice() -> None:
    tl = Timeline()
    tl.change(T, BOB, Action.DECLARE, after="sev2")
    said = tl.message(at(1), CAROL, "db failover done")
    tl.change(at(2), BRIDGE_BOT, Action.KEY_EVENT, text="db failover done", marked_event=said.id)
    incident, _ = drill()
    (key,) = postmortem_facts(incident, tl.events).key_events
    assert key.text == ""
    assert key.at == at(1)
    doc = render_postmortem(incident, tl.events, now=NOW)
    (line,) = [line for line in doc.splitlines() if "Key event" in line]
    assert line.count("db failover done") == 1
    assert "marked by the bridge" in line


def test_the_settings_name_the_bridges_own_senders() -> None:
    settings = Settings.model_validate(
        {
            "mongo": {"uri": "mongodb://127.0.0.1:1"},
            "matrix": {"server_name": "example.org", "ghost_prefix": "teams_"},
            "teams": {"app_id": "app"},
        }
    )
    is_own = settings_own_check(settings)
    assert is_own(BOB_GHOST)
    assert is_own(replace(ALICE, user_id=RemoteUserID("@incident-bridge:example.org")))
    assert is_own(TEAMS_BOT)
    assert not is_own(ALICE)
    assert not is_own(BOB)
    assert not is_own(replace(BOB_GHOST, user_id=RemoteUserID("@teams_x:elsewhere.org")))
