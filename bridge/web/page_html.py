"""The incident page's HTML: header, facts, chart and the merged timeline.

Everything from chat (titles, names, texts, reaction keys, errors) goes through
``escape``; message HTML is not used, its plain text is shown (pre-wrapped), so no
markup from chat reaches the page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from html import escape

from bridge.incidents.model import Action, Incident, IncidentChange, Role, Severity
from bridge.model import Kind, MirrorStatus, Platform, Sender, TimelineEvent
from bridge.web.chart import STATUS_COLOURS, chart_data, describe, render_chart
from bridge.web.view import Entry, fold

SEVERITY_COLOURS = {
    Severity.SEV1: "#8a1515",
    Severity.SEV2: "#9a3412",
    Severity.SEV3: "#7a4206",
    Severity.SEV4: "#374151",
}
PLATFORM_NAMES = {Platform.TEAMS: "Teams", Platform.MATRIX: "Matrix", Platform.BRIDGE: "Bridge"}

_CSS = """
:root{color-scheme:light}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#111827;background:#f9fafb}
.skip,.vh{position:absolute;left:-999px}.skip:focus{left:8px;top:8px;background:#fff;padding:4px}
header,main,footer{max-width:64rem;margin:0 auto;padding:0 1rem}
header{padding-top:1rem}
h1{font-size:1.5rem;margin:.25rem 0}h2{font-size:1.2rem;margin:1.5rem 0 .5rem}
h3{font-size:1rem;margin:1rem 0 .25rem}
.eyebrow{margin:0;color:#374151;font-weight:600}
.pill{display:inline-block;padding:.1rem .55rem;border-radius:1rem;font-weight:600;
font-size:.85rem;margin-right:.35rem}
.sev{color:#fff}
section{background:#fff;border:1px solid #d1d5db;border-radius:.5rem;padding:.25rem 1rem 1rem;
margin:1rem 0}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .5rem;
border-bottom:1px solid #e5e7eb;vertical-align:top}
th{font-weight:600;color:#1f2937}
.chart-wrap{overflow-x:auto}
svg.chart{display:block;width:100%;min-width:36rem;height:auto}
figure{margin:0}figcaption{color:#374151;font-size:.9rem;margin-top:.5rem}
ol.timeline{list-style:none;margin:0;padding:0}
.ev{border-left:4px solid #d1d5db;padding:.4rem .75rem;margin:.5rem 0;background:#fff}
.ev.key{border-left-color:#111827;background:#fff8db}
.ev.incident{background:#f3f4f6}
.ev.runbook{border-left-color:#7c2d92;background:#f7eefa}
.meta{font-size:.85rem;color:#374151}
.badge{display:inline-block;color:#fff;border-radius:.25rem;padding:0 .4rem;font-weight:600}
.badge.teams{background:#4b4fb8}.badge.matrix{background:#0a6e55}.badge.bridge{background:#374151}
.tag{display:inline-block;border:1px solid currentColor;border-radius:.25rem;padding:0 .3rem;
font-size:.8rem;margin-left:.25rem}
.text{margin:.2rem 0;white-space:pre-wrap;overflow-wrap:anywhere}
.deleted{color:#374151;font-style:italic}
ul.reactions,ul.mirrors{list-style:none;margin:.2rem 0;padding:0;font-size:.85rem}
ul.reactions li,ul.mirrors li{display:inline-block;margin-right:.75rem}
.m-failed{color:#8a1515;font-weight:600}.m-retrying,.m-pending{color:#7a4206}
.m-sent{color:#14532d}
.note{background:#fff8db;border:1px solid #7a4206;padding:.5rem;border-radius:.25rem}
code{font-family:ui-monospace,monospace;font-size:.9em}
footer{color:#374151;font-size:.85rem;padding-bottom:2rem}
@media (max-width:40rem){body{font-size:15px}section{padding:.25rem .6rem .6rem}
th,td{padding:.25rem}}
"""


def _time(at: datetime | None) -> str:
    if at is None:
        return "—"
    return f'<time datetime="{at.isoformat()}">{at:%Y-%m-%d %H:%M:%S} UTC</time>'


def _clock(at: datetime) -> str:
    return f'<time datetime="{at.isoformat()}">{at:%H:%M:%S}</time>'


def duration(start: datetime, end: datetime | None) -> str:
    """``1 h 05 min``, ``12 min``, ``40 s``; a dash when ``end`` is None."""
    if end is None:
        return "—"
    seconds = max(int((end - start).total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _who(sender: Sender) -> str:
    return (
        f'<span class="sender">{escape(sender.display_name)}</span> '
        f'<span class="badge {sender.platform.value}">'
        f"{PLATFORM_NAMES.get(sender.platform, sender.platform.value)}</span>"
    )


def _status_pill(incident: Incident) -> str:
    fill, ink = STATUS_COLOURS[incident.status]
    return (
        f'<span class="pill" style="background:{fill};color:{ink};border:1px solid {ink}">'
        f"Status: {escape(incident.status.value)}</span>"
    )


def _header(incident: Incident) -> str:
    colour = SEVERITY_COLOURS[incident.severity]
    return (
        '<header><p class="eyebrow">Incident '
        f"{escape(incident.id)}</p><h1>{escape(incident.title)}</h1><p>"
        f'<span class="pill sev" style="background:{colour}">Severity: '
        f"{escape(incident.severity.value.upper())}</span>{_status_pill(incident)}</p></header>"
    )


def _facts(incident: Incident) -> str:
    rows = [
        ("Declared", f"{_time(incident.declared_at)} by {_who(incident.declared_by)}"),
        (
            "Acknowledged",
            f"{_time(incident.acknowledged_at)} "
            f"(after {duration(incident.declared_at, incident.acknowledged_at)})",
        ),
        (
            "Mitigated",
            f"{_time(incident.mitigated_at)} "
            f"(after {duration(incident.declared_at, incident.mitigated_at)})",
        ),
        (
            "Resolved",
            f"{_time(incident.resolved_at)} "
            f"(after {duration(incident.declared_at, incident.resolved_at)})",
        ),
    ]
    body = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in rows)
    roles = "".join(
        f'<tr><th scope="row">{role.value.capitalize()}</th><td>'
        + (_who(incident.roles[role]) if role in incident.roles else "unassigned")
        + "</td></tr>"
        for role in Role
    )
    out = [
        '<section aria-labelledby="facts-h"><h2 id="facts-h">Overview</h2>',
        f'<table><caption class="vh">Key times</caption><tbody>{body}</tbody></table>',
        '<h3 id="roles-h">Roles</h3>',
        f'<table aria-labelledby="roles-h"><tbody>{roles}</tbody></table>',
    ]
    if incident.summary:
        out.append(f'<h3>Summary</h3><p class="text">{escape(incident.summary)}</p>')
    if incident.impact:
        impact = "".join(
            f'<tr><th scope="row">{escape(k)}</th><td>{escape(v)}</td></tr>'
            for k, v in incident.impact.items()
        )
        out.append(
            f'<h3 id="impact-h">Impact</h3><table aria-labelledby="impact-h">{impact}</table>'
        )
    if incident.action_items:
        items = "".join(
            f"<tr><td>{escape(a.text)}</td><td>{_who(a.by)}</td><td>{_time(a.at)}</td></tr>"
            for a in incident.action_items
        )
        out.append(
            '<h3 id="actions-h">Action items</h3><table aria-labelledby="actions-h"><thead><tr>'
            '<th scope="col">Item</th><th scope="col">By</th><th scope="col">At</th></tr>'
            f"</thead><tbody>{items}</tbody></table>"
        )
    out.append("</section>")
    return "".join(out)


def _chart(incident: Incident, events: Sequence[TimelineEvent], now: datetime) -> str:
    data = chart_data(incident, events, now=now)
    return (
        '<section aria-labelledby="chart-h"><h2 id="chart-h">At a glance</h2><figure>'
        f'<div class="chart-wrap">{render_chart(data)}</div>'
        f"<figcaption>{escape(describe(data))}</figcaption></figure></section>"
    )


def change_text(change: IncidentChange) -> str:
    """An incident change in words (plain text, to be escaped)."""
    role = change.role.value if change.role is not None else "role"
    subject = change.subject.display_name if change.subject is not None else ""
    texts = {
        Action.DECLARE: f"declared the incident: {change.after or change.text or ''}",
        Action.SEVERITY: f"changed the severity from {change.before} to {change.after}",
        Action.STATUS: f"changed the status from {change.before} to {change.after}",
        Action.ASSIGN: f"made {subject} {role}",
        Action.UNASSIGN: f"removed {subject} as {role}",
        Action.ACKNOWLEDGE: "acknowledged the incident",
        Action.NOTE: f"noted: {change.text or ''}",
        Action.KEY_EVENT: f"marked a key event: {change.text or ''}",
        Action.ACTION_ITEM: f"added an action item: {change.text or ''}",
        Action.SUMMARY: f"set the summary: {change.text or ''}",
        Action.IMPACT: f"set impact {change.before or ''}: {change.after or change.text or ''}",
        Action.RESOLVE: "resolved the incident",
        Action.REOPEN: "reopened the incident",
        Action.POSTMORTEM: "generated the postmortem",
    }
    return texts[change.action].rstrip(": ")


def _mirrors(event: TimelineEvent) -> str:
    if not event.mirrors:
        return ""
    items = []
    for mirror in event.mirrors:
        name = PLATFORM_NAMES.get(mirror.room.platform, mirror.room.platform.value)
        label = f"→ {name}: {mirror.status.value}"
        if mirror.status is not MirrorStatus.SENT and mirror.attempts:
            label += f" after {mirror.attempts} attempts"
        if mirror.error and mirror.status is not MirrorStatus.SENT:
            label += f" ({mirror.error})"
        items.append(f'<li class="m-{mirror.status.value}">{escape(label)}</li>')
    return f'<ul class="mirrors" aria-label="Delivery">{"".join(items)}</ul>'


def _reactions(entry: Entry) -> str:
    if not entry.reactions:
        return ""
    items = "".join(
        f'<li title="{escape(", ".join(r.senders))}">{escape(r.key)} {len(r.senders)} '
        f'<span class="deleted">{escape(", ".join(r.senders))}</span></li>'
        for r in entry.reactions
    )
    return f'<ul class="reactions" aria-label="Reactions">{items}</ul>'


_TAGS = {
    Kind.COMMAND: "command",
    Kind.RUNBOOK: "runbook run",
    Kind.NOTICE: "notice",
    Kind.GAP: "gap",
    Kind.MEMBERSHIP: "membership",
    Kind.EDIT: "edit of an earlier message",
    Kind.REDACTION: "delete of an earlier message",
    Kind.REACTION: "reaction to an earlier message",
}


RunLink = Callable[[str], str]
"""A runbook run's id -> the address of its full output."""


def _run_meta(event: TimelineEvent, run_link: RunLink | None) -> str:
    """A runbook step's run, state and a link to the run's whole output."""
    run_id, state = event.data.get("run_id"), event.data.get("state")
    bits = []
    if isinstance(state, str) and state:
        bits.append(f"State: {escape(state)}")
    if isinstance(run_id, str) and run_id:
        label = f"Output of {escape(run_id)}"
        bits.append(f'<a href="{escape(run_link(run_id))}">{label}</a>' if run_link else label)
    return f'<p class="meta">{" · ".join(bits)}</p>' if bits else ""


def _body(entry: Entry, run_link: RunLink | None = None) -> str:
    event = entry.event
    if entry.deleted is not None:
        by = escape(entry.deleted.sender.display_name)
        return (
            f'<p class="text deleted">Message deleted by {by}'
            f" at {_clock(entry.deleted.occurred_at)}.</p>"
        )
    if entry.change is not None:
        text = change_text(entry.change)
    elif event.kind is Kind.REACTION:
        text = entry.text or next((r.key or "" for r in event.relations), "")
    else:
        text = entry.text
    parts = [f'<p class="text">{escape(text)}</p>' if text else ""]
    if event.kind is Kind.RUNBOOK:
        parts.append(_run_meta(event, run_link))
    if event.body.attachments:
        names = ", ".join(a.name for a in event.body.attachments)
        parts.append(f'<p class="meta">Files: {escape(names)}</p>')
    if entry.edits:
        earlier = [event.body.text, *(e.body.text for e in entry.edits[:-1])]
        versions = "".join(f'<li class="text">{escape(t)}</li>' for t in earlier)
        parts.append(
            f'<details class="meta"><summary>Edited at {_clock(entry.edits[-1].occurred_at)}'
            f" ({len(entry.edits)} edits): earlier versions</summary><ol>{versions}</ol>"
            "</details>"
        )
    return "".join(parts)


def _entry(entry: Entry, run_link: RunLink | None = None) -> str:
    event = entry.event
    classes = ["ev", event.kind.value]
    tags = []
    if entry.key_event:
        classes.append("key")
        tags.append('<strong class="tag">Key event</strong>')
    if event.kind in _TAGS:
        tags.append(f'<span class="tag">{_TAGS[event.kind]}</span>')
    if entry.change is not None:
        tags.append('<span class="tag">incident</span>')
    if entry.edits and entry.deleted is None:
        tags.append('<span class="tag">edited</span>')
    if entry.deleted is not None:
        tags.append('<span class="tag">deleted</span>')
    return (
        f'<li class="{" ".join(classes)}" id="e-{escape(event.id)}"><div class="meta">'
        f"{_clock(event.occurred_at)} {_who(event.sender)}{''.join(tags)}</div>"
        f"{_body(entry, run_link)}{_reactions(entry)}{_mirrors(event)}</li>"
    )


def _timeline(
    entries: Iterable[Entry], count: int, *, truncated: bool, run_link: RunLink | None = None
) -> str:
    note = (
        f'<p class="note" role="note">Showing the first {count:,} events of this incident; '
        "the timeline API has all of them.</p>"
        if truncated
        else ""
    )
    items = "".join(_entry(e, run_link) for e in entries)
    return (
        '<section aria-labelledby="timeline-h" id="timeline"><h2 id="timeline-h">Timeline</h2>'
        f"<p>{count:,} events from Teams and Matrix, merged in order. Times are UTC.</p>{note}"
        f'<ol class="timeline">{items}</ol></section>'
        if count
        else '<section aria-labelledby="timeline-h" id="timeline"><h2 id="timeline-h">'
        "Timeline</h2><p>No events yet.</p></section>"
    )


def render_page(
    incident: Incident,
    events: Sequence[TimelineEvent],
    *,
    truncated: bool,
    now: datetime,
    run_link: RunLink | None = None,
) -> str:
    """The whole page for ``incident`` and its events (in timeline order); ``run_link``
    links each runbook run to its output."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(incident.id)}: {escape(incident.title)}</title>"
        f'<meta name="robots" content="noindex"><style>{_CSS}</style></head><body>'
        '<a class="skip" href="#timeline">Skip to the timeline</a>'
        f"{_header(incident)}<main>{_facts(incident)}{_chart(incident, events, now)}"
        f"{_timeline(fold(events), len(events), truncated=truncated, run_link=run_link)}</main>"
        f"<footer><p>Rendered {now:%Y-%m-%d %H:%M:%S} UTC by the incident bridge.</p></footer>"
        "</body></html>"
    )


def error_page(title: str, message: str) -> str:
    """A short page for errors: no incident data."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{escape(title)}</h1><p>{escape(message)}</p></main></body></html>"
    )
