"""The messaging endpoint, ``POST /api/messages``: Teams activities in, timeline events stored.

For each request, in this order, stopping at the first failure:

1. intake running, else 503 (Teams delivers again later);
2. body size within ``teams.max_activity_bytes``, else 413;
3. the bearer token (``auth.InboundAuthenticator.authenticate``; a token verified
   before is not verified again), else 401; the body is not read for an
   unauthenticated request;
4. JSON and activity shape, else 400;
5. the token's serviceurl claim, the channel, tenant and serviceUrl allow-lists
   (``authorize``), else 401 or 403;
6. the conversation reference stored (StateStore ``teams_conversations``; a channel
   thread's channel, and nothing when the stored one is unchanged, see ``references``),
   and, when team owners are operators, the team's AAD group id the activity names;
7. the events handed to the sink, which returns once they are durable;
8. 200 with an empty body.

A refused request stores nothing and calls nothing. A store failure or a deadline
missed (``ACK_DEADLINE_S``, under Teams' own ~15 s) answers 503, so Teams sends the
activity again; a redelivery is acknowledged but stored once (the timeline's
origin key).
"""

from __future__ import annotations

import asyncio
import json
from typing import Final

import structlog
from aiohttp import web

from adapters.teams.activity import ActivityParseError, TeamsActivity, parse_activity
from adapters.teams.auth import AuthRejectedError, InboundAuthenticator
from adapters.teams.convert import ActivityConverter
from adapters.teams.references import (
    StoredConversationReferences,
    StoredTeamGroups,
    reference_from,
    team_group_from,
)
from bridge.errors import DependencyUnavailableError, StoreError
from bridge.ports import InboundSink

log = structlog.get_logger(__name__)

MESSAGES_PATH: Final = "/api/messages"
ACK_DEADLINE_S: Final = 10.0
"""Teams re-sends an activity not answered within about 15 s."""


class MessagingEndpoint:
    """Handles ``POST /api/messages``; intake runs while a sink is attached."""

    def __init__(
        self,
        *,
        app_id: str,
        authenticator: InboundAuthenticator,
        converter: ActivityConverter,
        references: StoredConversationReferences,
        max_body_bytes: int,
        team_groups: StoredTeamGroups | None = None,
    ) -> None:
        """``team_groups``, when given, records each team's AAD group id (for Graph)."""
        self._app_id = app_id
        self._authenticator = authenticator
        self._converter = converter
        self._references = references
        self._max_body_bytes = max_body_bytes
        self._team_groups = team_groups
        self._sink: InboundSink | None = None

    def attach(self, sink: InboundSink) -> None:
        self._sink = sink

    def detach(self) -> None:
        self._sink = None

    @property
    def accepting(self) -> bool:
        return self._sink is not None

    def routes(self) -> list[web.RouteDef]:
        return [web.post(MESSAGES_PATH, self.handle)]

    async def handle(self, request: web.Request) -> web.Response:
        with structlog.contextvars.bound_contextvars(platform="teams"):
            sink = self._sink
            if sink is None:
                return _unavailable("intake_stopped")
            length = request.content_length
            if length is not None and length > self._max_body_bytes:
                log.warning("teams_request_too_large", bytes=length)
                return web.Response(status=413)
            try:
                token = await self._authenticator.authenticate(request.headers.get("Authorization"))
                activity = await self._read_activity(request)
                self._authenticator.authorize(
                    token,
                    service_url=activity.service_url,
                    channel_id=activity.channel_id,
                    tenant_ids=activity.tenant_ids,
                )
            except AuthRejectedError as exc:
                log.warning("teams_request_rejected", reason=exc.reason, status=exc.status)
                return web.Response(status=exc.status)
            except DependencyUnavailableError:
                log.warning("teams_signing_keys_unavailable")
                return _unavailable("signing_keys_unavailable")
            except _BadBodyError as exc:
                log.warning("teams_request_malformed", problem=exc.problem, status=exc.status)
                return web.Response(status=exc.status)
            with structlog.contextvars.bound_contextvars(
                conversation=activity.conversation_id,
                activity=activity.id,
                activity_type=activity.type,
            ):
                return await self._process(activity, sink)

    async def _read_activity(self, request: web.Request) -> TeamsActivity:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _BadBodyError(413, "body too large") from None
        if len(body) > self._max_body_bytes:
            raise _BadBodyError(413, "body too large")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise _BadBodyError(400, "not JSON") from None
        try:
            return parse_activity(document)
        except ActivityParseError as exc:
            raise _BadBodyError(400, str(exc)) from None

    async def _process(self, activity: TeamsActivity, sink: InboundSink) -> web.Response:
        try:
            events = self._converter.convert(activity)
        except ActivityParseError as exc:
            log.warning("teams_request_malformed", problem=str(exc))
            return web.Response(status=400)
        try:
            async with asyncio.timeout(ACK_DEADLINE_S):
                reference = reference_from(activity, app_id=self._app_id)
                if reference is not None:
                    await self._references.record(reference)
                if self._team_groups is not None and (team := team_group_from(activity)):
                    await self._team_groups.record(*team)
                if events:
                    results = await sink.accept(events)
                else:
                    results = []
        except StoreError:
            log.warning("teams_activity_not_stored")
            return _unavailable("store_failed")
        except TimeoutError:
            log.warning("teams_activity_not_stored", deadline_s=ACK_DEADLINE_S)
            return _unavailable("deadline_missed")
        duplicates = sum(1 for r in results if r is not None and r.duplicate)
        log.debug("teams_activity_accepted", events=len(events), duplicates=duplicates)
        return web.Response(status=200)


class _BadBodyError(Exception):
    """The body is too large (413) or not a readable activity (400)."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem)
        self.status = status
        self.problem = problem


def _unavailable(reason: str) -> web.Response:
    log.info("teams_request_deferred", reason=reason)
    return web.Response(status=503, headers={"Retry-After": "5"})
