"""The incident page: ``GET /incidents/{id}``, server-rendered HTML.

No script and no external resource (inline CSS, inline SVG chart; the response's CSP
forbids loading anything else), readable on a phone, with landmarks, ordered headings
and text alternatives. Every text that came from chat is escaped. Access: the API's
bearer token, or the incident's signed link (``?key=``, see ``bridge.web.auth``).
The timeline is read page by page; at most ``MAX_EVENTS`` events are shown, with a note.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import quote

import structlog
from aiohttp import web

from bridge.errors import StoreError
from bridge.model import IncidentID, TimelineEvent
from bridge.ports import Clock, IncidentStore, TimelineStore
from bridge.web.auth import AccessDeniedError, AccessUnconfiguredError, ApiAuth, page_key
from bridge.web.page_html import error_page, render_page

log = structlog.get_logger(__name__)

MAX_EVENTS = 5000
READ_PAGE = 500

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
"""The page links nowhere that needs its ``key``, and no referrer ever carries it."""


async def load_events(
    timeline: TimelineStore, incident_id: IncidentID, *, max_events: int = MAX_EVENTS
) -> tuple[list[TimelineEvent], bool]:
    """The incident's first ``max_events`` events in order, and whether there are more."""
    events: list[TimelineEvent] = []
    cursor: str | None = None
    while len(events) < max_events:
        page = await timeline.timeline(
            incident_id=incident_id, cursor=cursor, limit=min(READ_PAGE, max_events - len(events))
        )
        events.extend(page.events)
        cursor = page.next_cursor
        if cursor is None:
            return events, False
    return events, True


def _html(text: str, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={**SECURITY_HEADERS, **headers},
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentPages:
    incidents: IncidentStore
    timeline: TimelineStore
    auth: ApiAuth
    clock: Clock

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/incidents/{incident_id}", self.page)]

    async def page(self, request: web.Request) -> web.Response:
        incident_id = IncidentID(request.match_info["incident_id"])
        try:
            self.auth.check_page(request, incident_id)
        except AccessUnconfiguredError:
            log.warning("incident_page_unconfigured")
            return _html(
                error_page("Not configured", "The incident pages need api.token to be set."),
                503,
            )
        except AccessDeniedError:
            log.info("incident_page_unauthorized")
            return _html(
                error_page("Unauthorized", "Open this page from the link the bridge posted."),
                401,
                **{"WWW-Authenticate": 'Bearer realm="incidents"'},
            )
        try:
            incident = await self.incidents.get(incident_id)
            if incident is None:
                return _html(error_page("Not found", "There is no such incident."), 404)
            events, truncated = await load_events(self.timeline, incident_id)
        except StoreError as exc:
            log.warning("incident_page_store_error", incident_id=incident_id, error=str(exc))
            return _html(error_page("Unavailable", "The incident storage did not answer."), 503)
        # Up to 5,000 events are about 0.15 s of rendering: off the event loop.
        key = page_key(self.auth.token, incident_id) if self.auth.token else ""

        def run_link(run_id: str) -> str:  # the run API takes the incident page's key
            return f"/api/v1/runs/{quote(run_id, safe='')}?key={key}"

        body = await asyncio.to_thread(
            render_page,
            incident,
            events,
            truncated=truncated,
            now=self.clock.now(),
            run_link=run_link,
        )
        return _html(body)
