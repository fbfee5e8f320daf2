"""A scripted fake of the connector's activity endpoints, on loopback, for the sender's tests.

Calls are timed with a shared (virtual) clock, so the tests can check the
pacing exactly; ``fail_next`` scripts the next answers (a status with headers,
optionally after carrying the call out, or a held response that outlasts the
client's timeout).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from adapters.teams.ids import (
    ConversationReference,
    TeamsConversationID,
    TeamsUserID,
    TenantID,
)
from adapters.teams.pacing import WindowLimit
from bridge.web.server import bound_port
from tests.support.fakes import FakeClock

TENANT = TenantID("tenant-1")
CHANNEL = TeamsConversationID("19:ops@thread.tacv2")
CHAT = TeamsConversationID("19:chat@thread.v2")
TOKEN = "token-1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    at: float
    method: str
    conversation_id: str
    activity_id: str | None
    body: Mapping[str, Any] | None
    authorization: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Scripted:
    status: int
    """An error status; a success status only delays a normal answer by ``hold_s``."""
    method: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    commit: bool = False
    """Carry the call out before answering with the error (a 5xx "but created")."""
    hold_s: float = 0.0
    """Real seconds to hold the answer (longer than the client's timeout: a timeout)."""


class FakeConnector:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[Call] = []
        self.messages: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.accepted_tokens = {TOKEN}
        self._script: deque[Scripted] = deque()
        self._ids = itertools.count(1_700_000_000_000)
        self.service_url = ""

    def fail_next(
        self,
        status: int,
        *,
        method: str | None = None,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        commit: bool = False,
        hold_s: float = 0.0,
    ) -> None:
        for _ in range(times):
            self._script.append(
                Scripted(
                    status=status,
                    method=method,
                    headers=headers or {},
                    commit=commit,
                    hold_s=hold_s,
                )
            )

    def app(self) -> web.Application:
        app = web.Application()
        base = "/v3/conversations/{conversation}/activities"
        app.router.add_post(base, self._create)
        app.router.add_post(base + "/{activity}", self._create)
        app.router.add_put(base + "/{activity}", self._update)
        app.router.add_delete(base + "/{activity}", self._delete)
        return app

    # -- what the tests look at ----------------------------------------------------------

    def creates(self) -> list[Call]:
        return [c for c in self.calls if c.method == "POST"]

    def texts(self) -> list[str]:
        """The text of every live message, in posting order."""
        return [self.messages[i]["text"] for i in self.order if i in self.messages]

    def violations(self, limits: tuple[WindowLimit, ...]) -> list[str]:
        """Windows in which more calls arrived than a limit allows."""
        times = sorted(c.at for c in self.calls)
        found: list[str] = []
        for limit in limits:
            for i, start in enumerate(times):
                inside = [t for t in times[i:] if t < start + limit.window_s]
                if len(inside) > limit.count:
                    found.append(f"{len(inside)} calls in {limit.window_s}s from {start}")
                    break
        return found

    # -- handlers --------------------------------------------------------------------------

    async def _record(
        self, request: web.Request
    ) -> tuple[Call, Scripted | None, web.Response | None]:
        body = await request.json() if request.can_read_body else None
        call = Call(
            at=self.clock.monotonic(),
            method=request.method,
            conversation_id=request.match_info["conversation"],
            activity_id=request.match_info.get("activity"),
            body=body,
            authorization=request.headers.get("Authorization"),
        )
        self.calls.append(call)
        if call.authorization not in {f"Bearer {t}" for t in self.accepted_tokens}:
            return call, None, web.json_response({"message": "denied"}, status=401)
        scripted = None
        if self._script and self._script[0].method in (None, request.method):
            scripted = self._script.popleft()
        if scripted is not None and scripted.hold_s:
            await asyncio.sleep(scripted.hold_s)
        if scripted is not None and scripted.status < 400:
            return call, None, None  # only slow: served normally
        if scripted is not None and not scripted.commit:
            return call, scripted, _error(scripted)
        return call, scripted, None

    async def _create(self, request: web.Request) -> web.Response:
        call, scripted, refused = await self._record(request)
        if refused is not None:
            return refused
        activity_id = str(next(self._ids))
        self.messages[activity_id] = {
            **(call.body or {}),
            "conversation": call.conversation_id,
            "replyToPath": call.activity_id,
        }
        self.order.append(activity_id)
        if scripted is not None:
            return _error(scripted)
        return web.json_response({"id": activity_id}, status=201)

    async def _update(self, request: web.Request) -> web.Response:
        call, scripted, refused = await self._record(request)
        if refused is not None:
            return refused
        activity_id = call.activity_id or ""
        if activity_id not in self.messages:
            return web.json_response({"error": {"code": "NotFound"}}, status=404)
        self.messages[activity_id] = {**self.messages[activity_id], **(call.body or {})}
        if scripted is not None:
            return _error(scripted)
        return web.json_response({"id": activity_id})

    async def _delete(self, request: web.Request) -> web.Response:
        call, scripted, refused = await self._record(request)
        if refused is not None:
            return refused
        if call.activity_id not in self.messages:
            return web.json_response({"error": {"code": "NotFound"}}, status=404)
        del self.messages[call.activity_id or ""]
        if scripted is not None:
            return _error(scripted)
        return web.Response(status=200)


def _error(scripted: Scripted) -> web.Response:
    return web.json_response(
        {"error": {"code": f"E{scripted.status}", "message": "scripted"}},
        status=scripted.status,
        headers=dict(scripted.headers),
    )


@asynccontextmanager
async def running(connector: FakeConnector) -> AsyncIterator[str]:
    """Serve the fake on a free loopback port; yield its service URL."""
    runner = web.AppRunner(connector.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    connector.service_url = f"http://127.0.0.1:{bound_port(runner)}/"
    try:
        yield connector.service_url
    finally:
        await runner.cleanup()


class StaticTokens:
    """A token provider handing out a scripted sequence of tokens (the last one repeats)."""

    def __init__(self, *tokens: str) -> None:
        self._tokens = list(tokens) or [TOKEN]
        self.invalidated = 0

    async def token(self) -> str:
        return self._tokens[0]

    def invalidate(self) -> None:
        self.invalidated += 1
        if len(self._tokens) > 1:
            self._tokens.pop(0)


class References:
    """Conversation references in memory."""

    def __init__(self) -> None:
        self._references: dict[str, ConversationReference] = {}

    async def get(self, conversation_id: TeamsConversationID) -> ConversationReference | None:
        return self._references.get(conversation_id)

    async def put(self, reference: ConversationReference) -> None:
        self._references[reference.conversation_id] = reference

    def add(self, conversation_id: TeamsConversationID, service_url: str) -> None:
        kind = "channel" if "@thread.tacv2" in conversation_id else "groupChat"
        self._references[conversation_id] = ConversationReference(
            conversation_id=conversation_id,
            service_url=service_url,
            tenant_id=TENANT,
            conversation_type=kind,
            bot_id=TeamsUserID("28:bot"),
        )


class VirtualTime:
    """Sleeping moves the clock instead of waiting: pacing tests are exact and instant."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(max(0.0, seconds))
        await asyncio.sleep(0)
