"""The postmortem of an incident as Markdown, written from its timeline.

The facts come from ``postmortem_facts`` (``bridge.incidents.postmortem_facts``); this
module lays them out. Every piece of chat text is escaped (``bridge.incidents.markdown``),
so a message cannot add headings, links or HTML to the document, and the same input
always gives the same document. In chat, the postmortem is a notice whose text is the
Markdown and whose HTML is the same document formatted (``postmortem_notice``).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from bridge.config import Settings
from bridge.incidents.markdown import code, escape
from bridge.incidents.markdown_html import markdown_to_html
from bridge.incidents.model import Action, Incident, Role
from bridge.incidents.postmortem_facts import (
    QUOTE_LIMIT,
    Change,
    OwnCheck,
    PostmortemFacts,
    Quote,
    Span,
    postmortem_facts,
    when,
)
from bridge.model import Platform, Sender, TimelineEvent

__all__ = [
    "PostmortemFacts",
    "PostmortemNotice",
    "postmortem_facts",
    "postmortem_notice",
    "render_facts",
    "render_postmortem",
    "settings_own_check",
]


def render_postmortem(
    incident: Incident,
    events: Sequence[TimelineEvent],
    *,
    now: datetime,
    is_own: OwnCheck | None = None,
) -> str:
    """The postmortem of ``incident`` as Markdown, from its whole timeline ``events``."""
    return render_facts(postmortem_facts(incident, events, is_own=is_own), now=now)


@dataclass(frozen=True, slots=True, kw_only=True)
class PostmortemNotice:
    """The postmortem as posted in chat: Markdown ``text`` and the formatted ``html``."""

    text: str
    html: str


def postmortem_notice(
    markdown: str, *, incident_id: str, link: str | None, max_chars: int
) -> PostmortemNotice:
    """The postmortem ``markdown`` for chat, cut at a line within ``max_chars``, then the
    incident page's ``link`` (when there is one) or where the whole postmortem is."""
    shown = markdown
    if len(markdown) > max_chars:
        shown = markdown[:max_chars].rsplit("\n", 1)[0]
        command = f"incident-bridge postmortem {incident_id}"
        where = f"the incident's page, {link}" if link else command
        where_html = f"the incident's page, {_link_html(link)}" if link else html.escape(command)
        tail = f"… (cut here; the whole postmortem: {where})"
        tail_html = f"… (cut here; the whole postmortem: {where_html})"
    elif link:
        tail = f"Timeline and chart: {link}"
        tail_html = f"Timeline and chart: {_link_html(link)}"
    else:
        return PostmortemNotice(text=shown, html=markdown_to_html(shown))
    return PostmortemNotice(
        text=f"{shown}\n\n{tail}", html=f"{markdown_to_html(shown)}<p>{tail_html}</p>"
    )


def _link_html(url: str) -> str:
    return f'<a href="{html.escape(url)}">{html.escape(url, quote=False)}</a>'


def render_facts(facts: PostmortemFacts, *, now: datetime) -> str:
    lines: list[str] = [
        f"# Postmortem: {escape(facts.incident_id)} {escape(facts.title)}",
        "",
        f"- Severity: **{facts.severity.value.upper()}**",
        f"- Status: **{facts.status.value}**",
        f"- Declared: {when(facts.declared_at)} by {who(facts.declared_by)}",
        f"- Generated: {when(now)}",
        "",
        "## Summary",
        "",
        escape(facts.summary) if facts.summary.strip() else "_No summary was recorded._",
        "",
        "## Impact",
        "",
        *(_bullets(f"{escape(k)}: {escape(v)}" for k, v in facts.impact) or ["_None recorded._"]),
        "",
        "## Durations",
        "",
        _duration_line("Time to acknowledge", facts.acknowledge, "not acknowledged"),
        _duration_line("Time to mitigate", facts.mitigate, "not mitigated"),
        _duration_line("Time to resolve", facts.resolve, "not resolved"),
    ]
    if facts.reopened:
        lines.append(f"- Reopened: {facts.reopened} time(s)")
    lines += ["", "## Severity history", "", *_change_lines(facts.severity_history, "severity")]
    lines += ["", "## Status history", "", *_change_lines(facts.status_history, "status")]
    lines += ["", "## Roles", "", *_role_lines(facts)]
    lines += ["", "## Participants", "", *_participant_lines(facts)]
    lines += ["", "## Timeline", "", *(_timeline_lines(facts) or ["_Nothing recorded._"])]
    lines += ["", "## Runbook runs", "", *(_run_lines(facts) or ["_None._"])]
    lines += [
        "",
        "## Action items",
        "",
        *(
            [
                f"- [ ] {escape(item.text)} ({who(item.by)}, {when(item.at)})"
                for item in facts.action_items
            ]
            or ["_None recorded._"]
        ),
    ]
    if facts.notes:
        lines += ["", "## Notes", "", *_bullets(escape(note) for note in facts.notes)]
    return "\n".join(lines) + "\n"


def _bullets(items: Iterable[str]) -> list[str]:
    return [f"- {item}" for item in items]


def _duration_line(label: str, span: Span | None, missing: str) -> str:
    if span is None:
        return f"- {label}: {missing}"
    return f"- {label}: {span.human} ({span.seconds} s, at {when(span.end)})"


def _change_lines(changes: Sequence[Change], what: str) -> list[str]:
    lines = []
    for change in changes:
        after = escape(change.after or "?")
        if change.action is Action.DECLARE:
            text = f"declared, {what} {after}"
        elif change.before:
            text = f"{escape(change.before)} → {after} ({change.action.value})"
        else:
            text = f"{after} ({change.action.value})"
        lines.append(f"- {when(change.at)}: {text} by {who(change.by)}")
    return lines or ["_No changes recorded._"]


def _role_lines(facts: PostmortemFacts) -> list[str]:
    lines = [
        f"- {role.value.capitalize()}: {who(holder) if holder else '_unassigned_'}"
        for role in Role
        for holder in (facts.roles.get(role),)
    ]
    if facts.role_history:
        lines += ["", "Assignments:", ""]
        for change in facts.role_history:
            if change.holder is None:
                text = f"{change.role.value} unassigned by {who(change.by)}"
            else:
                text = f"{who(change.holder)} became {change.role.value} (by {who(change.by)})"
            lines.append(f"- {when(change.at)}: {text}")
    return lines


def _participant_lines(facts: PostmortemFacts) -> list[str]:
    lines: list[str] = []
    for platform, label in ((Platform.MATRIX, "Matrix"), (Platform.TEAMS, "Teams")):
        people = facts.participants_on(platform)
        lines.append(f"- {label}: {len(people)}")
        lines += [
            f"  - {escape(p.display_name)} {code(p.user_id)}: {p.messages} message(s)"
            for p in people
        ]
    return lines


def _timeline_lines(facts: PostmortemFacts) -> list[str]:
    entries = [(change.at, change.event_id, _lifecycle_text(change)) for change in facts.lifecycle]
    for key in facts.key_events:
        text = f"**Key event**: {escape(key.text)}" if key.text else "**Key event**"
        if key.quote is not None:
            text += f", marked by {who(key.by)} on {_quote_text(key.quote)}"
        else:
            text += f", by {who(key.by)}"
        entries.append((key.at, key.event_id, text))
    return [f"- {when(at)}: {text}" for at, _, text in sorted(entries)]


def _lifecycle_text(change: Change) -> str:
    by = who(change.by)
    after = escape(change.after) if change.after else ""
    if change.action is Action.DECLARE:
        return f"Declared by {by}" + (f" as {after}" if after else "")
    if change.action is Action.RESOLVE:
        return f"Resolved by {by}"
    if change.action is Action.REOPEN:
        return f"Reopened by {by}" + (f" as {after}" if after else "")
    return f"{change.action.value.capitalize()} {escape(change.before or '?')} → {after} by {by}"


def _quote_text(quote: Quote) -> str:
    if quote.deleted:
        return f"a message by {who(quote.sender)}, since deleted"
    text = quote.text if len(quote.text) <= QUOTE_LIMIT else quote.text[:QUOTE_LIMIT] + "…"
    edited = " (edited)" if quote.edited else ""
    return f"a message by {who(quote.sender)}: “{escape(text)}”{edited}"


def _run_lines(facts: PostmortemFacts) -> list[str]:
    lines = []
    for run in facts.runbook_runs:
        name = code(run.runbook) if run.runbook else "_unnamed runbook_"
        requester = f" requested by {escape(run.requester)}" if run.requester else ""
        duration = f", {run.duration.human} ({run.duration.seconds} s)" if run.duration else ""
        lines.append(
            f"- {when(run.started_at)}: {name}{requester}: **{escape(run.outcome)}**{duration}"
        )
    return lines


def who(sender: Sender) -> str:
    if sender.platform is Platform.BRIDGE:
        return "the bridge"
    name = escape(sender.display_name) if sender.display_name.strip() else ""
    label = {Platform.MATRIX: "Matrix", Platform.TEAMS: "Teams"}.get(sender.platform, "")
    return f"{name} ({label} {code(sender.user_id)})" if name else f"{label} {code(sender.user_id)}"


def settings_own_check(settings: Settings) -> OwnCheck:
    """The bridge's own senders as its settings name them (the Matrix bot and ghosts, the
    Teams bot), for callers without running adapters (the command line)."""
    matrix, teams = settings.matrix, settings.teams
    server = f":{matrix.server_name}"
    bot = f"@{matrix.bot_localpart}{server}"
    ghost = f"@{matrix.ghost_prefix}"
    teams_ids = {teams.app_id, f"28:{teams.app_id}"} if teams.app_id else set()

    def is_own(sender: Sender) -> bool:
        if sender.platform is Platform.MATRIX:
            user = sender.user_id
            return bool(matrix.server_name) and (
                user == bot or (user.startswith(ghost) and user.endswith(server))
            )
        return sender.platform is Platform.TEAMS and sender.user_id in teams_ids

    return is_own
