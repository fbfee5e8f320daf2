"""How an incident reads in chat: the pinned header of its rooms (title, severity, status
and roles, as text and HTML) and one line per change.

The HTML stays inside the bridge's allow-listed subset (``bridge.formatting``), so
both platforms show it as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Final

from bridge.incidents.model import Action, Incident, IncidentChange, Role, Status
from bridge.model import Sender

STATUS_MARKS: Final = {
    Status.INVESTIGATING: "🔴",
    Status.IDENTIFIED: "🟠",
    Status.MONITORING: "🟡",
    Status.RESOLVED: "🟢",
}
NOBODY: Final = "unassigned"


@dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    text: str
    html: str


def role_name(role: Role) -> str:
    return role.value.capitalize()


def render_header(incident: Incident) -> Header:
    mark = STATUS_MARKS[incident.status]
    top = f"{incident.id} · {incident.severity.value.upper()} · {incident.status.value}"
    roles = [
        (role_name(role), holder.display_name if (holder := incident.roles.get(role)) else None)
        for role in Role
    ]
    text_lines = [
        f"{mark} {top}",
        incident.title,
        " · ".join(f"{name}: {holder or NOBODY}" for name, holder in roles),
    ]
    html_parts = [
        f"<p>{mark} <strong>{escape(incident.id)}</strong> · "
        f"<strong>{escape(incident.severity.value.upper())}</strong> · "
        f"{escape(incident.status.value)}</p>",
        f"<h3>{escape(incident.title)}</h3>",
        "<p>"
        + " · ".join(
            f"{escape(name)}: " + (f"<strong>{escape(holder)}</strong>" if holder else NOBODY)
            for name, holder in roles
        )
        + "</p>",
    ]
    if incident.summary:
        text_lines.append(f"Summary: {incident.summary}")
        html_parts.append(f"<p>Summary: {escape(incident.summary)}</p>")
    return Header(text="\n".join(text_lines), html="".join(html_parts))


_LINES: Final = {
    Action.DECLARE: "{who} declared {id} ({after}): {text}",
    Action.SEVERITY: "{who} changed the severity of {id}: {before} → {after}",
    Action.STATUS: "{who} changed the status of {id}: {before} → {after}",
    Action.RESOLVE: "{who} resolved {id}",
    Action.REOPEN: "{who} reopened {id} ({after})",
    Action.ASSIGN: "{who} made {subject} {role} of {id}",
    Action.UNASSIGN: "{who} removed {subject} as {role} of {id}",
    Action.ACKNOWLEDGE: "{who} acknowledged {id}",
    Action.NOTE: "Note by {who}: {text}",
    Action.KEY_EVENT: "Key event marked by {who}: {text}",
    Action.ACTION_ITEM: "Action item by {who}: {text}",
    Action.SUMMARY: "{who} set the summary of {id}: {text}",
    Action.IMPACT: "{who} set impact {before} = {after}",
    Action.POSTMORTEM: "{who} generated the postmortem of {id}",
}


def describe(change: IncidentChange, by: Sender) -> str:
    """One line saying what ``change`` did, for the timeline and for chat."""
    values = {
        "who": by.display_name,
        "id": change.incident_id,
        "before": change.before or "",
        "after": change.after or "",
        "text": change.text or "",
        "subject": change.subject.display_name if change.subject else "",
        "role": change.role.value if change.role else "",
    }
    line = _LINES[change.action].format_map(values)
    if change.action is Action.IMPACT and not change.after:
        line = f"{by.display_name} cleared impact {change.before}"
    return line.removesuffix(": ")
