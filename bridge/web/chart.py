"""The incident chart: one inline SVG on a time axis, readable at a glance.

Status phases are coloured bands, message activity from each platform is stacked bars
(per minute, or per a few minutes for long incidents so there are at most
``MAX_BUCKETS`` bars), key events and runbook runs are markers, with a legend. The SVG
has a title and a description naming what it shows, so a screen reader gets the same.
No script, no external resources: it is part of the page's HTML.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from html import escape

from bridge.incidents.model import Action, Incident, IncidentChange, Status, change_from
from bridge.model import Kind, Platform, TimelineEvent

MAX_BUCKETS = 180
_X = Callable[[datetime], float]
"""The x scale: time -> SVG x."""
_ACTIVITY = frozenset({Kind.MESSAGE, Kind.COMMAND})
_TICK_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)
_MAX_TICKS = 8

WIDTH, HEIGHT = 960, 330
_LEFT, _RIGHT = 56, 944
_BAND_TOP, _BAND_H = 24, 30
_BARS_TOP, _BARS_BOTTOM = 70, 226
_MARKER_Y = 272
_LEGEND_Y = 312

STATUS_COLOURS: dict[Status, tuple[str, str]] = {
    Status.INVESTIGATING: ("#fde2e2", "#8a1515"),
    Status.IDENTIFIED: ("#fdf0d5", "#7a4206"),
    Status.MONITORING: ("#dbe7fe", "#1e3a8a"),
    Status.RESOLVED: ("#dcf5e3", "#14532d"),
}
"""Status -> (band fill, label colour); each label contrasts at least 7:1 with its band."""
PLATFORM_COLOURS: dict[Platform, str] = {Platform.TEAMS: "#4b4fb8", Platform.MATRIX: "#0a6e55"}
KEY_EVENT_COLOUR = "#111827"
RUNBOOK_COLOUR = "#7c2d92"


class MarkerKind(StrEnum):
    KEY_EVENT = "key event"
    RUNBOOK = "runbook run"


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    status: Status
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Marker:
    kind: MarkerKind
    at: datetime
    label: str
    run_id: str | None = None
    """The run a runbook marker shows a step of (a run has a marker per step)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChartData:
    start: datetime
    end: datetime
    phases: tuple[Phase, ...]
    bucket_s: int
    buckets: tuple[tuple[int, int], ...]
    """Per bucket from ``start``: (Teams messages, Matrix messages)."""
    markers: tuple[Marker, ...]

    @property
    def totals(self) -> tuple[int, int]:
        return sum(b[0] for b in self.buckets), sum(b[1] for b in self.buckets)


def chart_data(incident: Incident, events: Sequence[TimelineEvent], *, now: datetime) -> ChartData:
    """What the chart shows for ``incident`` and its events (in timeline order)."""
    first = min([incident.declared_at, *(e.occurred_at for e in events[:1])])
    last_candidates = [incident.resolved_at if incident.resolved_at is not None else now]
    last_candidates.extend(e.occurred_at for e in events[-1:])
    start = first.replace(second=0, microsecond=0)
    end = max(*last_candidates, start + timedelta(minutes=5))
    minutes = math.ceil((end - start).total_seconds() / 60)
    bucket_min = max(1, math.ceil(minutes / MAX_BUCKETS))
    count = math.ceil(minutes / bucket_min)
    end = start + timedelta(minutes=count * bucket_min)
    bucket_s = bucket_min * 60
    buckets = [[0, 0] for _ in range(count)]
    markers: list[Marker] = []
    for event in events:
        if event.kind in _ACTIVITY and event.origin.platform in PLATFORM_COLOURS:
            slot = int((event.occurred_at - start).total_seconds() // bucket_s)
            if 0 <= slot < count:
                buckets[slot][0 if event.origin.platform is Platform.TEAMS else 1] += 1
        marker = _marker(event)
        if marker is not None:
            markers.append(marker)
    return ChartData(
        start=start,
        end=end,
        phases=_phases(incident, events, end),
        bucket_s=bucket_s,
        buckets=tuple((t, m) for t, m in buckets),
        markers=tuple(markers),
    )


def _marker(event: TimelineEvent) -> Marker | None:
    if event.kind is Kind.RUNBOOK:
        run_id = event.data.get("run_id")
        return Marker(
            kind=MarkerKind.RUNBOOK,
            at=event.occurred_at,
            label=event.body.text,
            run_id=run_id if isinstance(run_id, str) and run_id else None,
        )
    change = change_from(event.data) if event.kind is Kind.INCIDENT else None
    if change is not None and change.action is Action.KEY_EVENT:
        label = change.text or event.body.text
        return Marker(kind=MarkerKind.KEY_EVENT, at=event.occurred_at, label=label)
    return None


def _status(value: str | None) -> Status | None:
    try:
        return Status(value) if value is not None else None
    except ValueError:
        return None


def _status_after(change: IncidentChange) -> Status | None:
    if change.action is Action.STATUS:
        return _status(change.after)
    if change.action is Action.RESOLVE:
        return Status.RESOLVED
    if change.action is Action.REOPEN:
        return _status(change.after) or Status.INVESTIGATING
    return None


def _phases(
    incident: Incident, events: Sequence[TimelineEvent], end: datetime
) -> tuple[Phase, ...]:
    moves: list[tuple[datetime, IncidentChange, Status]] = []
    for event in events:
        change = change_from(event.data) if event.kind is Kind.INCIDENT else None
        after = _status_after(change) if change is not None else None
        if change is not None and after is not None:
            moves.append((event.occurred_at, change, after))
    initial = _status(moves[0][1].before) if moves else incident.status
    current = initial or Status.INVESTIGATING
    phases: list[Phase] = []
    since = incident.declared_at
    for at, _change, after in moves:
        if after is current:
            continue
        if at > since:
            phases.append(Phase(status=current, start=since, end=at))
        current, since = after, max(at, since)
    phases.append(Phase(status=current, start=since, end=max(end, since)))
    return tuple(phases)


def render_chart(data: ChartData) -> str:
    """The chart as an SVG element (to inline in HTML)."""
    span = (data.end - data.start).total_seconds()

    def x(at: datetime) -> float:
        offset = min(max((at - data.start).total_seconds(), 0.0), span)
        return round(_LEFT + (_RIGHT - _LEFT) * offset / span, 1)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'role="img" aria-labelledby="chart-title chart-desc" '
        'font-family="system-ui, sans-serif" font-size="13">',
        '<title id="chart-title">Incident chart: status, message activity and key events '
        "over time (UTC)</title>",
        f'<desc id="chart-desc">{escape(describe(data))}</desc>',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    parts.extend(_bands(data, x))
    parts.extend(_bars(data, x))
    parts.extend(_axis(data, x))
    parts.extend(_markers(data, x))
    parts.extend(_legend())
    parts.append("</svg>")
    return "".join(parts)


def _bands(data: ChartData, x: _X) -> list[str]:
    out = [f'<text x="4" y="{_BAND_TOP + 19}" fill="#374151">status</text>']
    for phase in data.phases:
        fill, ink = STATUS_COLOURS[phase.status]
        left, right = x(phase.start), x(phase.end)
        width = max(right - left, 1.0)
        out.append(
            f'<rect x="{left}" y="{_BAND_TOP}" width="{width:.1f}" height="{_BAND_H}" '
            f'fill="{fill}" stroke="{ink}" stroke-width="0.5">'
            f"<title>{escape(phase.status.value)} from {_hm(phase.start)} to "
            f"{_hm(phase.end)}</title></rect>"
        )
        if width >= 8 * len(phase.status.value):
            out.append(
                f'<text x="{left + 6:.1f}" y="{_BAND_TOP + 20}" fill="{ink}" '
                f'font-weight="600">{escape(phase.status.value)}</text>'
            )
    return out


def _bars(data: ChartData, x: _X) -> list[str]:
    peak = max((t + m for t, m in data.buckets), default=0)
    out = [
        f'<line x1="{_LEFT}" y1="{_BARS_BOTTOM}" x2="{_RIGHT}" y2="{_BARS_BOTTOM}" '
        'stroke="#374151" stroke-width="1"/>',
        f'<text x="4" y="{_BARS_TOP + 4}" fill="#374151">{peak}</text>',
        f'<text x="4" y="{_BARS_BOTTOM}" fill="#374151">0</text>',
    ]
    if peak == 0:
        middle = (_BARS_TOP + _BARS_BOTTOM) // 2
        out.append(
            f'<text x="{(_LEFT + _RIGHT) // 2}" y="{middle}" text-anchor="middle" '
            'fill="#374151">no messages yet</text>'
        )
        return out
    scale = (_BARS_BOTTOM - _BARS_TOP) / peak
    step = timedelta(seconds=data.bucket_s)
    for i, (teams, matrix) in enumerate(data.buckets):
        if teams + matrix == 0:
            continue
        left = x(data.start + step * i)
        width = max(x(data.start + step * (i + 1)) - left - 1, 1.0)
        base = float(_BARS_BOTTOM)
        for count, platform in ((teams, Platform.TEAMS), (matrix, Platform.MATRIX)):
            if count == 0:
                continue
            height = count * scale
            base -= height
            out.append(
                f'<rect x="{left}" y="{base:.1f}" width="{width:.1f}" height="{height:.1f}" '
                f'fill="{PLATFORM_COLOURS[platform]}"><title>{count} from '
                f"{platform.value.capitalize()} at {_hm(data.start + step * i)}</title></rect>"
            )
    return out


def _axis(data: ChartData, x: _X) -> list[str]:
    minutes = (data.end - data.start).total_seconds() / 60
    tick = next((t for t in _TICK_MINUTES if minutes / t <= _MAX_TICKS), _TICK_MINUTES[-1])
    at = data.start.replace(minute=0) if tick >= 60 else data.start
    out: list[str] = []
    while at <= data.end:
        if at >= data.start:
            px = x(at)
            out.append(
                f'<line x1="{px}" y1="{_BARS_BOTTOM}" x2="{px}" y2="{_BARS_BOTTOM + 5}" '
                'stroke="#374151"/>'
                f'<text x="{px}" y="{_BARS_BOTTOM + 20}" text-anchor="middle" '
                f'fill="#374151">{_hm(at)}</text>'
            )
        at += timedelta(minutes=tick)
    return out


def _markers(data: ChartData, x: _X) -> list[str]:
    out: list[str] = []
    for marker in data.markers:
        px = x(marker.at)
        colour = KEY_EVENT_COLOUR if marker.kind is MarkerKind.KEY_EVENT else RUNBOOK_COLOUR
        out.append(
            f"<g><title>{escape(marker.kind.value)} at {_hm(marker.at)}: "
            f"{escape(_short(marker.label))}</title>"
            f'<line x1="{px}" y1="{_BAND_TOP}" x2="{px}" y2="{_MARKER_Y - 8}" '
            f'stroke="{colour}" stroke-width="1" stroke-dasharray="3 3"/>'
            f"{_symbol(marker.kind, px, _MARKER_Y, colour)}</g>"
        )
    return out


def _symbol(kind: MarkerKind, px: float, py: int, colour: str) -> str:
    if kind is MarkerKind.KEY_EVENT:
        points = f"{px},{py - 7} {px + 7},{py} {px},{py + 7} {px - 7},{py}"
    else:
        points = f"{px},{py - 7} {px + 7},{py + 6} {px - 7},{py + 6}"
    return f'<polygon points="{points}" fill="{colour}"/>'


def _legend() -> list[str]:
    items: list[str] = []
    left = float(_LEFT)
    for status, (fill, ink) in STATUS_COLOURS.items():
        items.append(
            f'<rect x="{left}" y="{_LEGEND_Y - 11}" width="14" height="14" fill="{fill}" '
            f'stroke="{ink}"/><text x="{left + 19}" y="{_LEGEND_Y}" '
            f'fill="#111827">{status.value}</text>'
        )
        left += 30 + 7 * len(status.value)
    for platform, colour in PLATFORM_COLOURS.items():
        label = f"{platform.value.capitalize()} messages"
        items.append(
            f'<rect x="{left}" y="{_LEGEND_Y - 11}" width="14" height="14" fill="{colour}"/>'
            f'<text x="{left + 19}" y="{_LEGEND_Y}" fill="#111827">{label}</text>'
        )
        left += 38 + 7 * len(label)
    for kind, colour in (
        (MarkerKind.KEY_EVENT, KEY_EVENT_COLOUR),
        (MarkerKind.RUNBOOK, RUNBOOK_COLOUR),
    ):
        items.append(
            _symbol(kind, left + 7, _LEGEND_Y - 4, colour)
            + f'<text x="{left + 19}" y="{_LEGEND_Y}" fill="#111827">{kind.value}</text>'
        )
        left += 30 + 7 * len(kind.value)
    return items


def describe(data: ChartData) -> str:
    """The chart in words (its SVG description and the page's caption)."""
    phases = "; ".join(f"{p.status.value} {_hm(p.start)}-{_hm(p.end)}" for p in data.phases)
    teams, matrix = data.totals
    peak = max(data.buckets, key=lambda b: b[0] + b[1], default=(0, 0))
    per = "minute" if data.bucket_s == 60 else f"{data.bucket_s // 60} minutes"
    keys = sum(1 for m in data.markers if m.kind is MarkerKind.KEY_EVENT)
    runs = len(
        {
            m.run_id or f"marker:{n}"  # a step naming no run counts as a run of its own
            for n, m in enumerate(data.markers)
            if m.kind is MarkerKind.RUNBOOK
        }
    )
    return (
        f"From {data.start:%Y-%m-%d %H:%M} to {data.end:%Y-%m-%d %H:%M} UTC. "
        f"Status: {phases}. Messages: {teams} from Teams, {matrix} from Matrix "
        f"(at most {peak[0] + peak[1]} per {per}). "
        f"{keys} key events, {runs} runbook runs."
    )


def incident_chart(incident: Incident, events: Sequence[TimelineEvent], *, now: datetime) -> str:
    """The SVG chart of ``incident`` from its events (in timeline order)."""
    return render_chart(chart_data(incident, events, now=now))


def _hm(at: datetime) -> str:
    return f"{at:%H:%M}"


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
