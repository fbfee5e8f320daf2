"""The pinned header and the change lines: what chat shows of an incident."""

from __future__ import annotations

from bridge.formatting import sanitize_html
from bridge.incidents.header import describe, render_header
from bridge.incidents.model import Action, Incident, IncidentChange, Role, Severity, Status
from bridge.model import IncidentID
from tests.support.fakes import ALICE, EPOCH, MATRIX_ROOM
from tests.unit.incidents.rig import BOB

INCIDENT = Incident(
    id=IncidentID("INC-7"),
    title="<script>alert(1)</script> & checkout",
    severity=Severity.SEV1,
    status=Status.MONITORING,
    declared_at=EPOCH,
    declared_by=ALICE,
    declared_in=MATRIX_ROOM,
    roles={Role.COMMANDER: BOB},
    summary="a <b>bad</b> deploy",
)


def test_header_shows_title_severity_status_and_roles() -> None:
    header = render_header(INCIDENT)
    assert header.text.splitlines() == [
        "🟡 INC-7 · SEV1 · monitoring",
        "<script>alert(1)</script> & checkout",
        "Commander: Bob Smith · Scribe: unassigned · Communications: unassigned",
        "Summary: a <b>bad</b> deploy",
    ]
    assert "<script>" not in header.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; checkout" in header.html
    assert "<strong>Bob Smith</strong>" in header.html
    # Inside the allow-listed subset: the sanitizer keeps it as it is.
    assert sanitize_html(header.html) == header.html


def test_change_lines_read_as_sentences_and_never_format_chat_text() -> None:
    def line(action: Action, **fields: object) -> str:
        change = IncidentChange(action=action, incident_id=INCIDENT.id, **fields)  # type: ignore[arg-type]
        return describe(change, ALICE)

    assert line(Action.SEVERITY, before="sev2", after="sev1") == (
        "Alice changed the severity of INC-7: sev2 → sev1"
    )
    assert (
        line(Action.ASSIGN, role=Role.SCRIBE, subject=BOB) == "Alice made Bob Smith scribe of INC-7"
    )
    assert line(Action.NOTE, text="{who} {0} %s") == "Note by Alice: {who} {0} %s"
    assert line(Action.KEY_EVENT, text="") == "Key event marked by Alice"
    assert line(Action.IMPACT, before="customers", after="") == "Alice cleared impact customers"
    assert line(Action.IMPACT, before="customers", after="3") == "Alice set impact customers = 3"
    for action in Action:
        assert line(action)  # every action has a line
