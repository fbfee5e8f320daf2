"""The timeline HTTP API (JSON), under ``/api/v1``.

``GET /api/v1/incidents`` (filters, newest first, cursor paging), ``GET
/api/v1/incidents/{id}``, ``GET /api/v1/incidents/{id}/timeline`` (the merged timeline
of both platforms in order, cursor paging) and ``GET /api/v1/openapi.json`` (the
description, public: it holds no data). Every data route needs ``Authorization:
Bearer <api token>``: without it or with another token the answer is 401 with no data;
without a configured token, 503. Bad query values are 400 with a message naming the
parameter. Unknown query parameters are refused too, so a misspelt filter never
silently returns everything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import structlog
from aiohttp import web
from multidict import MultiMapping

from bridge.errors import StoreError
from bridge.incidents.model import IncidentFilter, Severity, Status
from bridge.model import IncidentID
from bridge.ports import IncidentStore, TimelineStore
from bridge.timeline.codec import CursorError
from bridge.web.api_json import (
    INCIDENTS_LIMIT,
    MAX_LIMIT,
    TIMELINE_LIMIT,
    incident_json,
    timeline_json,
)
from bridge.web.auth import AccessDeniedError, AccessUnconfiguredError, ApiAuth
from bridge.web.openapi import openapi_document
from bridge.web.view import fold

log = structlog.get_logger(__name__)

_INCIDENT_PARAMS = frozenset(
    {"status", "open", "severity", "declared_after", "declared_before", "cursor", "limit"}
)
_TIMELINE_PARAMS = frozenset({"cursor", "limit"})

_Choice = TypeVar("_Choice", Status, Severity)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadQueryError(ValueError):
    """A query parameter with a value the API does not accept (400)."""


def error_response(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def unauthorized() -> web.Response:
    return error_response(
        401, "a valid bearer token is required", **{"WWW-Authenticate": 'Bearer realm="incidents"'}
    )


def unconfigured() -> web.Response:
    return error_response(503, "the incident API is not configured: set api.token")


def _limit(query: Mapping[str, str], default: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadQueryError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def _time(query: Mapping[str, str], name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise BadQueryError(
            f"{name} must be an ISO 8601 time with a time zone, e.g. 2026-11-01T12:00:00Z"
        )
    return value


def _choice(query: Mapping[str, str], name: str, kind: type[_Choice]) -> _Choice | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return kind(raw.lower())
    except ValueError:
        allowed = ", ".join(v.value for v in kind)
        raise BadQueryError(f"{name} must be one of: {allowed}") from None


def _check_names(query: MultiMapping[str], allowed: frozenset[str]) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise BadQueryError(
            f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
        )
    repeated = sorted(name for name in set(query) if len(query.getall(name)) > 1)
    if repeated:
        raise BadQueryError(f"query parameter {repeated[0]!r} is given more than once")


def incident_filter(query: Mapping[str, str]) -> IncidentFilter:
    """The filter a ``GET /api/v1/incidents`` query asks for; ``BadQueryError`` if invalid."""
    status = _choice(query, "status", Status)
    open_raw = query.get("open")
    if open_raw is not None and open_raw.lower() not in ("true", "false"):
        raise BadQueryError("open must be true or false")
    open_only = open_raw is not None and open_raw.lower() == "true"
    if open_raw is not None and not open_only:
        if status not in (None, Status.RESOLVED):
            raise BadQueryError(
                "open=false contradicts status (only resolved incidents are closed)"
            )
        status = Status.RESOLVED
    if open_only and status is Status.RESOLVED:
        raise BadQueryError("open=true contradicts status=resolved")
    after, before = _time(query, "declared_after"), _time(query, "declared_before")
    if after is not None and before is not None and after >= before:
        raise BadQueryError("declared_after must be earlier than declared_before")
    return IncidentFilter(
        status=status,
        open_only=open_only,
        severity=_choice(query, "severity", Severity),
        declared_after=after,
        declared_before=before,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentApi:
    incidents: IncidentStore
    timeline: TimelineStore
    auth: ApiAuth

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/incidents", self._guarded(self.list_incidents)),
            web.get("/api/v1/incidents/{incident_id}", self._guarded(self.get_incident)),
            web.get("/api/v1/incidents/{incident_id}/timeline", self._guarded(self.get_timeline)),
            web.get("/api/v1/openapi.json", self.openapi),
        ]

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                self.auth.check_bearer(request)
            except AccessUnconfiguredError:
                log.warning("incident_api_unconfigured", path=request.path)
                return unconfigured()
            except AccessDeniedError:
                log.info("incident_api_unauthorized", path=request.path)
                return unauthorized()
            try:
                return await handler(request)
            except (BadQueryError, CursorError) as exc:
                return error_response(400, str(exc))
            except StoreError as exc:
                log.warning("incident_api_store_error", path=request.path, error=str(exc))
                return error_response(503, "incident storage is unavailable; try again")

        return guarded

    async def list_incidents(self, request: web.Request) -> web.Response:
        query = request.query
        _check_names(query, _INCIDENT_PARAMS)
        page = await self.incidents.find(
            incident_filter(query),
            cursor=query.get("cursor") or None,
            limit=_limit(query, INCIDENTS_LIMIT),
        )
        return web.json_response(
            {
                "incidents": [incident_json(i) for i in page.incidents],
                "next_cursor": page.next_cursor,
            }
        )

    async def get_incident(self, request: web.Request) -> web.Response:
        _check_names(request.query, frozenset())
        incident_id = IncidentID(request.match_info["incident_id"])
        incident = await self.incidents.get(incident_id)
        if incident is None:
            return error_response(404, f"no incident {incident_id}")
        return web.json_response(incident_json(incident))

    async def get_timeline(self, request: web.Request) -> web.Response:
        query = request.query
        _check_names(query, _TIMELINE_PARAMS)
        limit = _limit(query, TIMELINE_LIMIT)
        incident_id = IncidentID(request.match_info["incident_id"])
        if await self.incidents.get(incident_id) is None:
            return error_response(404, f"no incident {incident_id}")
        page = await self.timeline.timeline(
            incident_id=incident_id, cursor=query.get("cursor") or None, limit=limit
        )
        body: dict[str, Any] = {
            "incident_id": incident_id,
            "events": timeline_json(page.events, fold(page.events)),
            "next_cursor": page.next_cursor,
        }
        return web.json_response(body)

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(openapi_document())
