"""The Graph client: team ownership by a filtered members list, paged, cached, denying
when unsure; Graph tokens for the Graph scope; the team of a conversation."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from adapters.teams.graph import MAX_ATTEMPTS, GraphClient, TeamOwners
from adapters.teams.ids import ConversationReference, TeamsConversationID, TeamsUserID, TenantID
from adapters.teams.tokens import TokenUnavailableError, msal_configuration, token_provider_for
from bridge.config.teams import GRAPH_SCOPE
from tests.support.fakes import FakeClock
from tests.unit.teams import support as s

TEAM = "0b7a1f52-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
OWNER = s.ALICE_AAD
MEMBER = s.BOB_AAD
STRANGER = "c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f"
USER_FILTER = "(microsoft.graph.aadUserConversationMember/userId eq '{}')"


def member(user_id: str, *, owner: bool = False, name: str = "Someone") -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.aadUserConversationMember",
        "id": f"membership-{user_id}",
        "roles": ["owner"] if owner else [],
        "displayName": name,
        "visibleHistoryStartDateTime": "0001-01-01T00:00:00Z",
        "userId": user_id,
        "email": f"{user_id[:8]}@contoso.example",
        "tenantId": s.TENANT,
    }


@dataclass(frozen=True, slots=True)
class Answer:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass(frozen=True, slots=True)
class Seen:
    path: str
    query: dict[str, str]
    authorization: str | None


class FakeGraph:
    """Graph's members list on loopback: answers from a script, else from ``members``."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.members: list[dict[str, Any]] = [member(OWNER, owner=True), member(MEMBER)]
        self.seen: list[Seen] = []
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            Seen(request.path, dict(request.query), request.headers.get("Authorization"))
        )
        answer = self.script.pop(0) if self.script else None
        if answer is None:
            wanted = request.query.get("$filter", "")
            found = [m for m in self.members if f"'{m['userId']}'" in wanted]
            return web.json_response({"value": found})
        if answer.hang:
            async with asyncio.timeout(5):
                await self.release.wait()
        body = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
        return web.Response(
            status=answer.status,
            body=body,
            headers=answer.headers,
            content_type="application/json",
        )


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    fake = FakeGraph()
    app = web.Application()
    app.router.add_get("/v1.0/teams/{team}/members", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    fake.release.set()
    await server.close()


class Tokens:
    def __init__(self, *, fail: bool = False) -> None:
        self.issued = 0
        self.invalidated = 0
        self.fail = fail
        self._current: str | None = None

    async def token(self) -> str:
        if self.fail:
            raise TokenUnavailableError("token request failed: HTTP 503")
        if self._current is None:
            self.issued += 1
            self._current = f"graph-token-{self.issued}"
        return self._current

    def invalidate(self) -> None:
        self.invalidated += 1
        self._current = None


@dataclass
class Rig:
    client: GraphClient
    tokens: Tokens
    clock: FakeClock
    sleeps: list[float]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def rig(
    session: aiohttp.ClientSession,
    graph: FakeGraph,
    *,
    tokens: Tokens | None = None,
    cache_ttl_s: float = 60.0,
    cache_size: int = 100,
    deadline_s: float = 5.0,
) -> Rig:
    clock, sleeps, token_source = FakeClock(), [], tokens or Tokens()

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = GraphClient(
        session=session,
        tokens=token_source,
        graph_url=graph.url,
        clock=clock,
        cache_ttl_s=cache_ttl_s,
        cache_size=cache_size,
        timeout_s=5.0,
        deadline_s=deadline_s,
        sleep=sleep,
        jitter=random.Random(7),
    )
    return Rig(client=client, tokens=token_source, clock=clock, sleeps=sleeps)


def failures(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "teams_graph_lookup_failed"]


# -- the question and its answer ----------------------------------------------------------


async def test_an_owner_is_found_by_a_filter_on_the_user_id(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    r = rig(session, graph)
    assert await r.client.is_team_owner(TEAM, OWNER) is True
    assert await r.client.is_team_owner(TEAM, MEMBER) is False
    assert await r.client.is_team_owner(TEAM, STRANGER) is False  # not in the team at all
    first = graph.seen[0]
    assert first.path == f"/v1.0/teams/{TEAM}/members"
    assert first.query == {"$filter": USER_FILTER.format(OWNER)}
    assert first.authorization == "Bearer graph-token-1"
    assert len(graph.seen) == 3


async def test_pages_are_followed_on_the_graph_host(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    next_link = f"{graph.url}/v1.0/teams/{TEAM}/members?$skiptoken=page-2&$top=2"
    graph.script = [
        Answer(body={"value": [member(MEMBER), member(STRANGER)], "@odata.nextLink": next_link}),
        Answer(body={"value": [member(OWNER.upper(), owner=True)]}),
    ]
    r = rig(session, graph)
    assert await r.client.is_team_owner(TEAM, OWNER) is True
    assert [seen.query for seen in graph.seen] == [
        {"$filter": USER_FILTER.format(OWNER)},
        {"$skiptoken": "page-2", "$top": "2"},
    ]
    assert {seen.authorization for seen in graph.seen} == {"Bearer graph-token-1"}


async def test_a_next_link_to_another_host_is_not_followed(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    graph.script = [
        Answer(
            body={
                "value": [member(MEMBER)],
                "@odata.nextLink": "https://graph.example.org/v1.0/teams/x/members?$skiptoken=2",
            }
        )
    ]
    r = rig(session, graph)
    with structlog.testing.capture_logs() as logs:
        assert await r.client.is_team_owner(TEAM, OWNER) is False
    assert len(graph.seen) == 1
    assert [e["reason"] for e in failures(logs)] == ["foreign_next_link"]


async def test_ids_that_are_not_object_ids_are_never_asked_about(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    r = rig(session, graph)
    assert await r.client.is_team_owner(TEAM, s.ALICE_ID) is False  # a 29: account id
    assert await r.client.is_team_owner(TEAM, f"{OWNER}') or (userId ne '") is False
    assert await r.client.is_team_owner("19:abc@thread.tacv2", OWNER) is False
    assert graph.seen == []


# -- the cache --------------------------------------------------------------------------


async def test_answers_are_reused_for_a_bounded_time(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    r = rig(session, graph, cache_ttl_s=60)
    assert await r.client.is_team_owner(TEAM, OWNER) is True
    assert await r.client.is_team_owner(TEAM, MEMBER) is False
    r.clock.advance(59)
    graph.members = [member(OWNER), member(MEMBER, owner=True)]  # ownership handed over
    assert await r.client.is_team_owner(TEAM, OWNER) is True
    assert await r.client.is_team_owner(TEAM, MEMBER) is False
    assert len(graph.seen) == 2
    r.clock.advance(2)
    assert await r.client.is_team_owner(TEAM, OWNER) is False
    assert await r.client.is_team_owner(TEAM, MEMBER) is True
    assert len(graph.seen) == 4


async def test_the_cache_is_bounded_in_size(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    r = rig(session, graph, cache_size=2)
    for user in (OWNER, MEMBER, STRANGER):
        await r.client.is_team_owner(TEAM, user)
    await r.client.is_team_owner(TEAM, STRANGER)  # kept
    await r.client.is_team_owner(TEAM, MEMBER)  # kept
    assert len(graph.seen) == 3
    await r.client.is_team_owner(TEAM, OWNER)  # the oldest, evicted
    assert len(graph.seen) == 4


async def test_a_zero_lifetime_asks_every_time(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    r = rig(session, graph, cache_ttl_s=0)
    await r.client.is_team_owner(TEAM, OWNER)
    await r.client.is_team_owner(TEAM, OWNER)
    assert len(graph.seen) == 2


# -- failures: retried when worth it, else "not an owner" -------------------------------


async def test_429_and_5xx_are_retried_after_retry_after_or_a_short_backoff(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    graph.script = [
        Answer(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "2"}),
        Answer(503, {"error": {"code": "ServiceUnavailable"}}),
    ]
    r = rig(session, graph)
    assert await r.client.is_team_owner(TEAM, OWNER) is True
    assert len(graph.seen) == MAX_ATTEMPTS
    assert r.sleeps[0] == 2.0
    assert 0.25 <= r.sleeps[1] <= 0.75  # 0.5 s, jittered by half


async def test_a_graph_that_keeps_failing_means_not_an_owner_with_a_warning(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    graph.script = [Answer(503, {"error": {"code": "ServiceUnavailable"}})] * MAX_ATTEMPTS
    r = rig(session, graph)
    with structlog.testing.capture_logs() as logs:
        assert await r.client.is_team_owner(TEAM, OWNER) is False
    (warning,) = failures(logs)
    assert (warning["log_level"], warning["status"], warning["code"]) == (
        "warning",
        503,
        "ServiceUnavailable",
    )
    assert "graph-token" not in repr(logs)
    assert len(graph.seen) == MAX_ATTEMPTS
    assert await r.client.is_team_owner(TEAM, OWNER) is True  # a failure is not remembered


async def test_a_long_retry_after_is_not_waited_for(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    graph.script = [Answer(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "120"})]
    r = rig(session, graph)
    assert await r.client.is_team_owner(TEAM, OWNER) is False
    assert (len(graph.seen), r.sleeps) == (1, [])


@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "Forbidden"), (404, "NotFound"), (400, "BadRequest")],
)
async def test_refusals_deny_at_once(
    session: aiohttp.ClientSession, graph: FakeGraph, status: int, code: str
) -> None:
    graph.script = [Answer(status, {"error": {"code": code, "message": "refused"}})]
    r = rig(session, graph)
    with structlog.testing.capture_logs() as logs:
        assert await r.client.is_team_owner(TEAM, OWNER) is False
    assert [(e["status"], e["code"]) for e in failures(logs)] == [(status, code)]
    assert len(graph.seen) == 1


async def test_a_refused_token_is_renewed_once(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    graph.script = [Answer(401, {"error": {"code": "InvalidAuthenticationToken"}})]
    r = rig(session, graph)
    assert await r.client.is_team_owner(TEAM, OWNER) is True
    assert [seen.authorization for seen in graph.seen] == [
        "Bearer graph-token-1",
        "Bearer graph-token-2",
    ]
    graph.script = [Answer(401, {"error": {"code": "InvalidAuthenticationToken"}})] * 2
    assert await r.client.is_team_owner(TEAM, MEMBER) is False
    assert r.tokens.invalidated == 2


async def test_no_token_means_not_an_owner(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    r = rig(session, graph, tokens=Tokens(fail=True))
    with structlog.testing.capture_logs() as logs:
        assert await r.client.is_team_owner(TEAM, OWNER) is False
    assert [e["reason"] for e in failures(logs)] == ["no_token"]
    assert graph.seen == []


@pytest.mark.parametrize("body", [b"<html>busy</html>", {"members": []}, {"value": "none"}])
async def test_malformed_answers_deny(
    session: aiohttp.ClientSession, graph: FakeGraph, body: Any
) -> None:
    graph.script = [Answer(200, body)]
    r = rig(session, graph)
    assert await r.client.is_team_owner(TEAM, OWNER) is False


async def test_a_hanging_graph_is_a_bounded_wait(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    graph.script = [Answer(hang=True)]
    r = rig(session, graph, deadline_s=0.2)
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(2):
            assert await r.client.is_team_owner(TEAM, OWNER) is False
    assert [e["reason"] for e in failures(logs)] == ["deadline"]


# -- tokens and settings ---------------------------------------------------------------


class Authority:
    def __init__(self) -> None:
        self.scopes: list[str] = []

    async def token(self, request: web.Request) -> web.Response:
        self.scopes.append(str((await request.post())["scope"]))
        return web.json_response({"token_type": "Bearer", "expires_in": 3599, "access_token": "t"})


async def test_graph_tokens_are_asked_for_the_graph_scope_with_the_same_credentials() -> None:
    authority = Authority()
    app = web.Application()
    app.router.add_post(f"/{s.TENANT}/oauth2/v2.0/token", authority.token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        settings = s.teams_settings(authority=str(server.make_url("")).rstrip("/"))
        async with aiohttp.ClientSession() as client_session:
            clock = FakeClock()
            connector = token_provider_for(settings, session=client_session, clock=clock)
            graph = token_provider_for(
                settings, session=client_session, clock=clock, scope=settings.graph_scope
            )
            await graph.token()
            await connector.token()
            await graph.token()  # cached apart from the connector's
    finally:
        await server.close()
    assert authority.scopes == [GRAPH_SCOPE, "https://api.botframework.com/.default"]
    assert msal_configuration(s.teams_settings(), scope=GRAPH_SCOPE).SCOPES == [GRAPH_SCOPE]


def test_graph_settings_default_off_and_trust_only_https_or_loopback() -> None:
    settings = s.teams_settings()
    assert settings.team_owners_are_operators is False
    assert (settings.graph_url, settings.graph_scope) == (
        "https://graph.microsoft.com",
        "https://graph.microsoft.com/.default",
    )
    assert s.teams_settings(graph_url="http://127.0.0.1:8081/").graph_url == "http://127.0.0.1:8081"
    with pytest.raises(ValidationError, match="graph_url"):
        s.teams_settings(graph_url="http://graph.microsoft.com")


# -- the team of a conversation ---------------------------------------------------------


class Conversations:
    def __init__(self, *references: ConversationReference) -> None:
        self._references = {r.conversation_id: r for r in references}

    async def get(self, conversation_id: TeamsConversationID) -> ConversationReference | None:
        base = conversation_id.partition(";messageid=")[0]
        return self._references.get(TeamsConversationID(base))


class TeamGroups:
    def __init__(self, groups: dict[str, str]) -> None:
        self._groups = groups

    async def get(self, team_id: str) -> str | None:
        return self._groups.get(team_id)


def reference(conversation: str, kind: str, *, tenant: str = s.TENANT) -> ConversationReference:
    return ConversationReference(
        conversation_id=TeamsConversationID(conversation),
        service_url=s.SERVICE_URL,
        tenant_id=TenantID(tenant),
        conversation_type=kind,
        bot_id=TeamsUserID(s.BOT_ID),
        team_id=s.TEAM if kind == "channel" else None,
    )


async def test_only_channels_of_known_teams_of_the_bots_tenant_are_asked_about(
    session: aiohttp.ClientSession, graph: FakeGraph
) -> None:
    r = rig(session, graph)
    owners = TeamOwners(
        graph=r.client,
        conversations=Conversations(
            reference(s.CHANNEL, "channel"),
            reference(s.GROUP_CHAT, "groupChat"),
            reference("19:foreign@thread.tacv2", "channel", tenant=s.OTHER_TENANT),
        ),
        team_groups=TeamGroups({s.TEAM: TEAM}),
        tenant_id=s.TENANT.upper(),
    )
    assert await owners.owns(TeamsConversationID(s.CHANNEL), OWNER) is True
    assert await owners.owns(TeamsConversationID(s.THREAD), OWNER) is True
    assert await owners.owns(TeamsConversationID(s.CHANNEL), MEMBER) is False
    assert len(graph.seen) == 2  # the thread's answer was the channel's team's, cached
    assert await owners.owns(TeamsConversationID(s.GROUP_CHAT), OWNER) is False
    assert await owners.owns(TeamsConversationID("19:foreign@thread.tacv2"), OWNER) is False
    assert await owners.owns(TeamsConversationID("19:unknown@thread.tacv2"), OWNER) is False
    unknown_team = TeamOwners(
        graph=r.client,
        conversations=Conversations(reference(s.CHANNEL, "channel")),
        team_groups=TeamGroups({}),
        tenant_id=s.TENANT,
    )
    assert await unknown_team.owns(TeamsConversationID(s.CHANNEL), OWNER) is False
    assert len(graph.seen) == 2
