"""The Bot Framework connector REST API (v3) as Teams serves it under a service URL.

Every call is recorded, then: a bearer token that is not a valid access token of
this bot gets 401; an armed fault fires; the rate limits apply (429 with
``Retry-After``); only then the call is served against the emulated world. Bodies
over 100 KB get 413 ``MessageSizeTooBig``. Conversation ids may come percent-encoded
or raw (``19:...@thread.tacv2;messageid=...``); the service URL may carry a path
prefix such as ``/amer/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web

from devtools.teams_emulator.clock import Clock
from devtools.teams_emulator.directory import Directory
from devtools.teams_emulator.faults import FaultKind, FaultPlan
from devtools.teams_emulator.ids import IdFactory
from devtools.teams_emulator.model import split_thread
from devtools.teams_emulator.operations import Operations, channel_id_of
from devtools.teams_emulator.ratelimit import Bucket, RateLimiter
from devtools.teams_emulator.records import CallLog, Operation
from devtools.teams_emulator.respond import Holder, Reply, error, fault_reply, unauthorized
from devtools.teams_emulator.tokens import AuthCheck

MAX_MESSAGE_BYTES: Final = 100 * 1024
"""Teams refuses a message over about 100 KB."""
PREFIX: Final = r"/{prefix:(?:[A-Za-z0-9._~-]+/)*}"
"""Any service URL path (``/``, ``/amer/``, ``/amer/<tenant>/``) in front of ``v3/``."""
OPERATION_BUCKETS: Final = MappingProxyType(
    {
        Operation.CREATE_CONVERSATION: Bucket.CREATE,
        Operation.SEND_TO_CONVERSATION: Bucket.SEND,
        Operation.REPLY_TO_ACTIVITY: Bucket.SEND,
        Operation.UPDATE_ACTIVITY: Bucket.SEND,
        Operation.DELETE_ACTIVITY: Bucket.SEND,
        Operation.ADD_REACTION: Bucket.SEND,
        Operation.DELETE_REACTION: Bucket.SEND,
        Operation.GET_MEMBERS: Bucket.READ,
        Operation.GET_MEMBER: Bucket.READ,
        Operation.GET_PAGED_MEMBERS: Bucket.READ,
        Operation.GET_TEAM: Bucket.READ,
        Operation.GET_CHANNELS: Bucket.READ,
    }
)
"""Which budget each operation draws on; the others count against the tenant only."""


@dataclass(frozen=True, slots=True)
class Incoming:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    raw: bytes
    body: Any
    bad_json: bool


async def read_incoming(request: web.Request) -> Incoming:
    raw = await request.read()
    body: Any = None
    bad_json = False
    if raw:
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad_json = True
    return Incoming(
        method=request.method,
        path=request.path,
        query=request.query_string,
        headers=request.headers,
        raw=raw,
        body=body,
        bad_json=bad_json,
    )


class ConnectorApi:
    def __init__(
        self,
        *,
        directory: Directory,
        ids: IdFactory,
        clock: Clock,
        calls: CallLog,
        faults: FaultPlan,
        limiter: RateLimiter,
        holder: Holder,
        check_auth: Callable[[str | None], AuthCheck],
    ) -> None:
        self._directory = directory
        self._operations = Operations(directory=directory, ids=ids, clock=clock)
        self._calls = calls
        self._faults = faults
        self._limiter = limiter
        self._holder = holder
        self._check_auth = check_auth

    def routes(self) -> list[web.RouteDef]:
        conversation = PREFIX + "v3/conversations/{conversation_id}"
        activity = conversation + "/activities/{activity_id}"
        return [
            web.post(PREFIX + "v3/conversations", self.create_conversation),
            web.post(conversation + "/activities", self.send_to_conversation),
            web.post(activity, self.reply_to_activity),
            web.put(activity, self.update_activity),
            web.delete(activity, self.delete_activity),
            web.put(activity + "/reactions/{reaction_type}", self.add_reaction),
            web.delete(activity + "/reactions/{reaction_type}", self.delete_reaction),
            web.get(conversation + "/members", self.get_members),
            web.get(conversation + "/members/{member_id}", self.get_member),
            web.get(conversation + "/pagedmembers", self.get_paged_members),
            web.get(PREFIX + "v3/teams/{team_id}", self.get_team),
            web.get(PREFIX + "v3/teams/{team_id}/conversations", self.get_channels),
            web.get(PREFIX + "v3/attachments/{attachment_id}", self.get_attachment_info),
            web.get(PREFIX + "v3/attachments/{attachment_id}/views/{view_id}", self.get_attachment),
            web.route("*", PREFIX + "v3/{tail:.*}", self.unknown_route),
        ]

    # -- the pipeline ----------------------------------------------------------

    def _rate_keys(self, conversation_id: str | None, tenant: str | None) -> tuple[str | None, str]:
        if conversation_id is None:
            return None, tenant or self._directory.tenant_id
        found = self._directory.find_conversation(conversation_id)
        if found is not None:
            return found.conversation_id, found.tenant_id
        base, _root = split_thread(conversation_id)
        return base, tenant or self._directory.tenant_id

    async def _serve(
        self,
        incoming: Incoming,
        operation: Operation,
        action: Callable[[], Reply],
        *,
        conversation_id: str | None = None,
        activity_id: str | None = None,
        tenant: str | None = None,
        sized: bool = False,
    ) -> web.Response:
        seq = self._calls.begin(
            method=incoming.method,
            path=incoming.path,
            query=incoming.query,
            operation=operation,
            headers=incoming.headers,
            conversation_id=conversation_id,
            activity_id=activity_id,
        )
        auth = self._check_auth(incoming.headers.get("Authorization"))
        self._calls.update(seq, body=incoming.body, auth=auth)
        reply = await self._answer(
            seq,
            incoming,
            action,
            auth=auth,
            conversation_id=conversation_id,
            tenant=tenant,
            bucket=OPERATION_BUCKETS.get(operation),
            sized=sized,
        )
        self._calls.finish(seq, reply.status, reply.payload)
        return reply.to_response()

    async def _answer(
        self,
        seq: int,
        incoming: Incoming,
        action: Callable[[], Reply],
        *,
        auth: AuthCheck,
        conversation_id: str | None,
        tenant: str | None,
        bucket: Bucket | None,
        sized: bool,
    ) -> Reply:
        if not auth.valid:
            return unauthorized()
        fault = self._faults.take(incoming.method, incoming.path, seq)
        if fault is not None:
            self._calls.update(seq, fault=fault.kind, committed=fault.committed)
            if fault.kind is FaultKind.SLOW:
                await self._holder.hold(fault.delay_s)
                fault = None
            elif not fault.committed:
                if fault.kind is FaultKind.TIMEOUT:
                    await self._holder.hold(fault.delay_s)
                return fault_reply(fault)
        conversation_key, tenant_key = self._rate_keys(conversation_id, tenant)
        violation = self._limiter.admit(
            conversation_key=conversation_key,
            bucket=bucket,
            tenant_key=tenant_key,
            method=incoming.method,
            path=incoming.path,
        )
        if violation is not None:
            self._calls.update(seq, rate_limited=True)
            return error(
                429,
                "TooManyRequests",
                f"Rate limit {violation.window.label} per {violation.scope.value} exceeded.",
                {"Retry-After": str(violation.retry_after_s)},
            )
        if incoming.bad_json:
            reply = error(400, "BadSyntax", "The request body is not valid JSON.")
        elif sized and len(incoming.raw) > MAX_MESSAGE_BYTES:
            reply = error(413, "MessageSizeTooBig", "Message size too large.")
        else:
            reply = action()
        if fault is not None and reply.status < 400:
            if fault.kind is FaultKind.TIMEOUT:
                await self._holder.hold(fault.delay_s)
            return fault_reply(fault)
        return reply

    # -- route handlers ----------------------------------------------------------

    async def create_conversation(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        body = incoming.body if isinstance(incoming.body, dict) else {}
        channel_id = channel_id_of(body)
        tenant = body.get("tenantId") if isinstance(body.get("tenantId"), str) else None
        return await self._serve(
            incoming,
            Operation.CREATE_CONVERSATION,
            lambda: self._operations.create(incoming.body),
            conversation_id=channel_id,
            tenant=tenant,
            sized=True,
        )

    async def send_to_conversation(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        conversation_id = request.match_info["conversation_id"]
        return await self._serve(
            incoming,
            Operation.SEND_TO_CONVERSATION,
            lambda: self._operations.send(conversation_id, incoming.body, None),
            conversation_id=conversation_id,
            sized=True,
        )

    async def reply_to_activity(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        conversation_id = request.match_info["conversation_id"]
        activity_id = request.match_info["activity_id"]
        return await self._serve(
            incoming,
            Operation.REPLY_TO_ACTIVITY,
            lambda: self._operations.send(conversation_id, incoming.body, activity_id),
            conversation_id=conversation_id,
            activity_id=activity_id,
            sized=True,
        )

    async def update_activity(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        conversation_id = request.match_info["conversation_id"]
        activity_id = request.match_info["activity_id"]
        return await self._serve(
            incoming,
            Operation.UPDATE_ACTIVITY,
            lambda: self._operations.update(conversation_id, activity_id, incoming.body),
            conversation_id=conversation_id,
            activity_id=activity_id,
            sized=True,
        )

    async def delete_activity(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        conversation_id = request.match_info["conversation_id"]
        activity_id = request.match_info["activity_id"]
        return await self._serve(
            incoming,
            Operation.DELETE_ACTIVITY,
            lambda: self._operations.delete(conversation_id, activity_id),
            conversation_id=conversation_id,
            activity_id=activity_id,
        )

    async def add_reaction(self, request: web.Request) -> web.Response:
        return await self._reaction(request, add=True)

    async def delete_reaction(self, request: web.Request) -> web.Response:
        return await self._reaction(request, add=False)

    async def _reaction(self, request: web.Request, *, add: bool) -> web.Response:
        incoming = await read_incoming(request)
        conversation_id = request.match_info["conversation_id"]
        activity_id = request.match_info["activity_id"]
        reaction_type = request.match_info["reaction_type"]
        return await self._serve(
            incoming,
            Operation.ADD_REACTION if add else Operation.DELETE_REACTION,
            lambda: self._operations.react(conversation_id, activity_id, reaction_type, add=add),
            conversation_id=conversation_id,
            activity_id=activity_id,
        )

    async def get_members(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        conversation_id = request.match_info["conversation_id"]
        return await self._serve(
            incoming,
            Operation.GET_MEMBERS,
            lambda: self._operations.members(conversation_id),
            conversation_id=conversation_id,
        )

    async def get_member(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        conversation_id = request.match_info["conversation_id"]
        member_id = request.match_info["member_id"]
        return await self._serve(
            incoming,
            Operation.GET_MEMBER,
            lambda: self._operations.member(conversation_id, member_id),
            conversation_id=conversation_id,
        )

    async def get_paged_members(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        conversation_id = request.match_info["conversation_id"]
        page_size = request.query.get("pageSize")
        continuation = request.query.get("continuationToken")
        return await self._serve(
            incoming,
            Operation.GET_PAGED_MEMBERS,
            lambda: self._operations.paged_members(conversation_id, page_size, continuation),
            conversation_id=conversation_id,
        )

    async def get_team(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        team_id = request.match_info["team_id"]
        return await self._serve(
            incoming,
            Operation.GET_TEAM,
            lambda: self._operations.team(team_id),
            conversation_id=team_id,
        )

    async def get_channels(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        team_id = request.match_info["team_id"]
        return await self._serve(
            incoming,
            Operation.GET_CHANNELS,
            lambda: self._operations.channels(team_id),
            conversation_id=team_id,
        )

    async def get_attachment_info(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        attachment_id = request.match_info["attachment_id"]
        return await self._serve(
            incoming,
            Operation.GET_ATTACHMENT_INFO,
            lambda: self._operations.attachment_info(attachment_id),
        )

    async def get_attachment(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        attachment_id = request.match_info["attachment_id"]
        return await self._serve(
            incoming,
            Operation.GET_ATTACHMENT,
            lambda: self._operations.attachment(attachment_id),
        )

    async def unknown_route(self, request: web.Request) -> web.Response:
        incoming = await read_incoming(request)
        return await self._serve(
            incoming,
            Operation.UNKNOWN_CONNECTOR,
            lambda: error(404, "NotFound", "No such connector operation in this emulator."),
        )
