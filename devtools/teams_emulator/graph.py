"""Microsoft Graph, the part a bot asks about teams: ``GET /v1.0/teams/{team-id}/members``.

``team-id`` is the team's AAD group id. The answer is a page of conversationMember
objects (``@odata.type`` ``#microsoft.graph.aadUserConversationMember``: ``id``,
``roles`` (``["owner"]`` for an owner, ``[]`` for a member), ``displayName``,
``visibleHistoryStartDateTime``, ``userId`` (the AAD object id), ``email``,
``tenantId``), with ``@odata.context`` and, when more follow, ``@odata.nextLink``
(carrying ``$skiptoken``).

Query options: ``$top`` (1-999, default 100), ``$skiptoken`` (from a nextLink),
``$select`` and ``$filter`` in the forms Graph documents for this list:
``(microsoft.graph.aadUserConversationMember/userId eq '<id>')``,
``roles/any(r:r eq 'owner')`` and ``displayName eq '<name>'`` (each with or without
the outer parentheses); any other filter is 400 ``BadRequest``.

Each call needs an app-only Graph token of this bot from the token endpoint (scope
``https://graph.microsoft.com/.default``, the bot's own tenant), else 401
``InvalidAuthenticationToken`` (a connector token too: wrong audience); a token
without one of the permissions ``TeamMember.Read.All``, ``TeamMember.ReadWrite.All``
or ``TeamMember.Read.Group`` gets 403 ``Forbidden``. An unknown team is 404
``NotFound``. Armed faults apply after authentication, as on the connector. Graph's
throttling is not modelled (inject 429s to test it).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import Final
from urllib.parse import quote, urlencode

from aiohttp import web

from devtools.teams_emulator.clock import Clock
from devtools.teams_emulator.directory import Directory
from devtools.teams_emulator.faults import FaultKind, FaultPlan
from devtools.teams_emulator.ids import IdFactory
from devtools.teams_emulator.model import JSONObject, Team, User
from devtools.teams_emulator.records import CallLog, Operation
from devtools.teams_emulator.respond import Holder, Reply, fault_reply
from devtools.teams_emulator.tokens import AuthCheck

MEMBER_TYPE: Final = "#microsoft.graph.aadUserConversationMember"
READ_MEMBERS_ROLES: Final = frozenset(
    {"TeamMember.Read.All", "TeamMember.ReadWrite.All", "TeamMember.Read.Group"}
)
DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 999
VISIBLE_HISTORY_START: Final = "0001-01-01T00:00:00Z"
_USER_FILTER: Final = re.compile(
    r"^\(?\s*microsoft\.graph\.aadUserConversationMember/userId\s+eq\s+'([^']*)'\s*\)?$"
)
_ROLE_FILTER: Final = re.compile(r"^\(?\s*roles/any\((\w+):\s*\1\s+eq\s+'([^']*)'\)\s*\)?$")
_NAME_FILTER: Final = re.compile(r"^\(?\s*displayName\s+eq\s+'([^']*)'\s*\)?$")

GraphAuth = Callable[[str | None], tuple[AuthCheck, tuple[str, ...]]]
Predicate = Callable[[JSONObject], bool]


class GraphApi:
    def __init__(
        self,
        *,
        directory: Directory,
        ids: IdFactory,
        clock: Clock,
        calls: CallLog,
        faults: FaultPlan,
        holder: Holder,
        check_auth: GraphAuth,
        base_url: Callable[[], str],
    ) -> None:
        self._directory = directory
        self._ids = ids
        self._clock = clock
        self._calls = calls
        self._faults = faults
        self._holder = holder
        self._check_auth = check_auth
        self._base_url = base_url

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1.0/teams/{team_id}/members", self.list_team_members),
            web.route("*", "/v1.0/{tail:.*}", self.unknown_route),
        ]

    async def list_team_members(self, request: web.Request) -> web.Response:
        team_id = request.match_info["team_id"]
        return await self._serve(
            request,
            Operation.GRAPH_LIST_TEAM_MEMBERS,
            lambda: self._members(team_id, request.query),
        )

    async def unknown_route(self, request: web.Request) -> web.Response:
        return await self._serve(
            request,
            Operation.UNKNOWN_GRAPH,
            lambda: self._error(
                400, "BadRequest", f"Resource not found for the segment '{request.path}'."
            ),
        )

    # -- the pipeline ------------------------------------------------------------

    async def _serve(
        self, request: web.Request, operation: Operation, action: Callable[[], Reply]
    ) -> web.Response:
        seq = self._calls.begin(
            method=request.method,
            path=request.path,
            query=request.query_string,
            operation=operation,
            headers=request.headers,
        )
        auth, roles = self._check_auth(request.headers.get("Authorization"))
        self._calls.update(seq, auth=auth)
        reply = await self._answer(seq, request, action, auth=auth, roles=roles)
        self._calls.finish(seq, reply.status, reply.payload)
        return reply.to_response()

    async def _answer(
        self,
        seq: int,
        request: web.Request,
        action: Callable[[], Reply],
        *,
        auth: AuthCheck,
        roles: tuple[str, ...],
    ) -> Reply:
        if not auth.valid:
            return self._unauthorized(auth.reason)
        if not READ_MEMBERS_ROLES.intersection(roles):
            return self._error(
                403,
                "Forbidden",
                "Missing role permissions on the request. API requires one of "
                f"'{', '.join(sorted(READ_MEMBERS_ROLES))}'. Roles on the request "
                f"'{', '.join(roles)}'.",
            )
        fault = self._faults.take(request.method, request.path, seq)
        if fault is not None:
            self._calls.update(seq, fault=fault.kind, committed=fault.committed)
            await self._holder.hold(fault.delay_s if fault.kind is not FaultKind.STATUS else 0)
            if fault.kind is not FaultKind.SLOW:
                return fault_reply(fault)
        return action()

    def _unauthorized(self, reason: str | None) -> Reply:
        message = {
            "missing": "Access token is empty.",
            "expired": "Lifetime validation failed, the token is expired.",
            "audience": "Access token validation failure. Invalid audience.",
            "issuer": "Access token validation failure. Invalid issuer.",
        }.get(reason or "", "Access token validation failure.")
        return self._error(401, "InvalidAuthenticationToken", message)

    def _error(self, status: int, code: str, message: str) -> Reply:
        request_id = self._ids.unique("graph-request")
        return Reply(
            status,
            {
                "error": {
                    "code": code,
                    "message": message,
                    "innerError": {
                        "date": self._clock.now().strftime("%Y-%m-%dT%H:%M:%S"),
                        "request-id": request_id,
                        "client-request-id": request_id,
                    },
                }
            },
        )

    # -- the members list ----------------------------------------------------------

    def _members(self, team_id: str, query: Mapping[str, str]) -> Reply:
        team = self._directory.team_by_group(team_id)
        if team is None:
            return self._error(404, "NotFound", f"No team found with Group Id {team_id}")
        try:
            top = _page_size(query.get("$top"))
            offset = _offset(query.get("$skiptoken"))
            keep = _filter(query.get("$filter"))
        except ValueError as exc:
            return self._error(400, "BadRequest", str(exc))
        members = [
            m
            for m in (self._member(team, u) for u in self._directory.members(team.team_id))
            if keep(m)
        ]
        page = members[offset : offset + top]
        selected = _selection(query.get("$select"))
        base = self._base_url()
        body: JSONObject = {
            "@odata.context": f"{base}/v1.0/$metadata#teams('{team.aad_group_id}')/members",
            "value": [_select(m, selected) for m in page],
        }
        if offset + top < len(members):
            params = {k: v for k, v in query.items() if k != "$skiptoken"}
            params["$skiptoken"] = _skiptoken(offset + top)
            body["@odata.nextLink"] = f"{base}/v1.0/teams/{team.aad_group_id}/members?" + urlencode(
                params, quote_via=quote, safe="$"
            )
        return Reply(200, body)

    def _member(self, team: Team, user: User) -> JSONObject:
        membership = f"{team.team_id}##{user.aad_object_id}"
        return {
            "@odata.type": MEMBER_TYPE,
            "id": base64.b64encode(membership.encode()).decode(),
            "roles": ["owner"] if self._directory.is_owner(team, user) else [],
            "displayName": user.name,
            "visibleHistoryStartDateTime": VISIBLE_HISTORY_START,
            "userId": user.aad_object_id,
            "email": user.email,
            "tenantId": user.tenant_id,
        }


def _page_size(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise ValueError(
            f"Invalid page size specified: '{value}'. Must be between 1 and {MAX_PAGE}."
        )
    return int(value)


def _skiptoken(offset: int) -> str:
    return base64.urlsafe_b64encode(f"members:{offset}".encode()).decode().rstrip("=")


def _offset(token: str | None) -> int:
    if token is None:
        return 0
    try:
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError):
        raise ValueError("Invalid skip token.") from None
    kind, _, offset = decoded.partition(":")
    if kind != "members" or not offset.isdigit():
        raise ValueError("Invalid skip token.")
    return int(offset)


def _filter(expression: str | None) -> Predicate:
    if expression is None or not expression.strip():
        return lambda _member: True
    text = expression.strip()
    if (found := _USER_FILTER.match(text)) is not None:
        user_id = found.group(1).lower()
        return lambda member: str(member["userId"]).lower() == user_id
    if (found := _ROLE_FILTER.match(text)) is not None:
        role = found.group(2).lower()
        return lambda member: role in [r.lower() for r in member["roles"]]
    if (found := _NAME_FILTER.match(text)) is not None:
        name = found.group(1)
        return lambda member: member["displayName"] == name
    raise ValueError(f"Invalid filter clause: {expression}")


def _selection(value: str | None) -> frozenset[str] | None:
    if not value:
        return None
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def _select(member: JSONObject, selected: frozenset[str] | None) -> JSONObject:
    if selected is None:
        return member
    return {k: v for k, v in member.items() if k in selected or k in ("@odata.type", "id")}
