"""Team owners as privileged users, end to end: the emulator's channel names each team's
AAD group id, the adapter records it, and Microsoft Graph (the emulator's) says who owns
the team, with the bot's app-only Graph token.

Each test runs the Teams adapter built by ``create_adapter`` (with
``teams.team_owners_are_operators``) on a fresh database of the session's
MongoDB-protocol server, with the emulator as the channel, the connector, the token
authority and Graph.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import structlog
from aiohttp import web
from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern

from adapters.teams import TeamsAdapter, create_adapter
from adapters.teams.references import TEAM_GROUPS_NAMESPACE
from bridge.clock import SystemClock
from bridge.config import Settings
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import Platform, RemoteRoomID, RemoteUserID, RoomRef
from bridge.ports import SupportsPrivilege
from bridge.relay.intake import Intake
from bridge.runtime import AdapterContext
from bridge.timeline.mongo import MongoTimelineStore
from bridge.timeline.state import MongoStateStore
from devtools.servers import MongoServer
from devtools.teams_emulator import Conversation, EmulatorKeys, TeamsEmulator, User
from devtools.teams_emulator.records import CallRecord

APP_ID = "8d2e4f60-1b3c-4d5e-8f70-9a1b2c3d4e5f"
APP_PASSWORD = "emulator-app-password"
TENANT = "2c4e6a8b-0d1f-4a3c-9e5b-7d9f1b3d5f70"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
CONNECTOR_SCOPE = "https://api.botframework.com/.default"


@pytest.fixture(scope="module")
def emulator_keys() -> EmulatorKeys:
    return EmulatorKeys.generate(datetime.now(UTC))


@pytest.fixture
async def emulator(emulator_keys: EmulatorKeys) -> AsyncIterator[TeamsEmulator]:
    async with TeamsEmulator(APP_ID, APP_PASSWORD, TENANT, keys=emulator_keys) as emu:
        yield emu


@pytest.fixture
async def database(mongo_server: MongoServer) -> AsyncIterator[tuple[str, str]]:
    name = f"owners_{uuid.uuid4().hex[:12]}"
    yield mongo_server.uri, name
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
    await client.drop_database(name)
    await client.close()


@dataclass
class RunningBridge:
    adapter: TeamsAdapter
    state: MongoStateStore
    client: AsyncMongoClient[dict[str, Any]]
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.adapter.stop()
        await self.client.close()

    async def privilege(self, conversation: str, user: User) -> int:
        room = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(conversation))
        return await self.adapter.privilege(room, RemoteUserID(user.aad_object_id))


async def start_bridge(emu: TeamsEmulator, uri: str, database: str, **teams: Any) -> RunningBridge:
    settings = Settings.model_validate(
        {
            "mongo": {"uri": uri, "database": database},
            "teams": {
                "enabled": True,
                "app_id": APP_ID,
                "tenant_id": TENANT,
                "auth": {"type": "client_secret", "client_secret": APP_PASSWORD},
                "openid_metadata_url": emu.openid_metadata_url,
                "authority": emu.token_authority,
                "allowed_service_url_hosts": [urlsplit(emu.service_url).netloc],
                "team_owners_are_operators": True,
                "graph_url": emu.graph_url,
                **teams,
            },
        }
    )
    clock = SystemClock()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    store = MongoTimelineStore(
        client, database, clock=clock, write_concern=WriteConcern(w=1, j=True)
    )
    await store.ensure_indexes()
    state = MongoStateStore(store.database)
    web_app = web.Application()
    ids, metrics = UlidFactory(), BridgeMetrics()
    adapter = create_adapter(
        AdapterContext(
            settings=settings,
            clock=clock,
            ids=ids,
            metrics=metrics,
            store=store,
            state=state,
            web_app=web_app,
        )
    )
    intake = Intake(store=store, clock=clock, ids=ids, metrics=metrics, adapters=[adapter])
    await adapter.start(intake)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    emu.bot_endpoint = f"http://127.0.0.1:{port}/api/messages"
    return RunningBridge(adapter=adapter, state=state, client=client, runner=runner)


@pytest.fixture
async def bridge(
    emulator: TeamsEmulator, database: tuple[str, str]
) -> AsyncIterator[RunningBridge]:
    running = await start_bridge(emulator, *database)
    yield running
    await running.stop()


@dataclass
class World:
    owner: User
    member: User
    channel: Conversation


@pytest.fixture
def world(emulator: TeamsEmulator) -> World:
    owner = emulator.add_user("Olivia Owner")
    member = emulator.add_user("Max Member")
    channel = emulator.add_channel(
        "Operations", "Incidents", members=[owner, member], owners=[owner]
    )
    return World(owner=owner, member=member, channel=channel)


def graph_scopes(emu: TeamsEmulator) -> list[str]:
    return [c.body["scope"] for c in emu.token_calls if c.body["scope"] == GRAPH_SCOPE]


def statuses(calls: tuple[CallRecord, ...]) -> list[int | None]:
    return [c.status for c in calls]


async def test_an_owner_is_privileged_in_the_teams_channels_and_their_threads(
    emulator: TeamsEmulator, bridge: RunningBridge, world: World
) -> None:
    assert isinstance(bridge.adapter, SupportsPrivilege)
    team = emulator.team_of(world.channel)
    post = await emulator.post_message(world.channel, world.member, "disk full", mention_bot=True)
    assert post.status == 200
    assert post.activity["channelData"]["team"]["aadGroupId"] == team.aad_group_id
    record = await bridge.state.get(TEAM_GROUPS_NAMESPACE, team.team_id)
    assert record is not None
    assert record["aad_group_id"] == team.aad_group_id
    thread = post.activity["conversation"]["id"]
    channel = world.channel.conversation_id

    assert await bridge.privilege(channel, world.owner) == 100
    assert await bridge.privilege(thread, world.owner) == 100  # cached: one Graph call
    assert await bridge.privilege(thread, world.member) == 0
    assert await bridge.privilege(channel, world.member) == 0
    assert statuses(emulator.graph_calls) == [200, 200]
    (first, _) = emulator.graph_calls
    assert first.path == f"/v1.0/teams/{team.aad_group_id}/members"
    assert world.owner.aad_object_id in first.query
    assert first.auth is not None
    assert first.auth.valid
    assert graph_scopes(emulator) == [GRAPH_SCOPE]  # one app-only Graph token, reused

    # Ownership handed over: the next answer after the cache lapses says so.
    emulator.set_team_owner(world.channel, world.owner, owner=False)
    emulator.set_team_owner(world.channel, world.member)
    assert await bridge.privilege(channel, world.owner) == 100  # still the cached answer


async def test_chats_and_unknown_conversations_are_never_privileged(
    emulator: TeamsEmulator, bridge: RunningBridge, world: World
) -> None:
    chat = emulator.add_chat([world.owner, world.member], topic="war room")
    assert (await emulator.post_message(chat, world.owner, "hello", mention_bot=True)).ok
    personal = emulator.add_chat([world.owner], personal=True)
    assert (await emulator.post_message(personal, world.owner, "hi")).ok
    assert await bridge.privilege(chat.conversation_id, world.owner) == 0
    assert await bridge.privilege(personal.conversation_id, world.owner) == 0
    # A channel the bridge never heard from: no reference, no team group id.
    assert await bridge.privilege(world.channel.conversation_id, world.owner) == 0
    matrix_room = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!ops:example.org"))
    assert await bridge.adapter.privilege(matrix_room, RemoteUserID(world.owner.aad_object_id)) == 0
    assert emulator.graph_calls == ()


async def test_graph_unavailable_means_no_privilege_and_a_warning(
    emulator: TeamsEmulator, bridge: RunningBridge, world: World
) -> None:
    assert (await emulator.post_message(world.channel, world.owner, "status?")).ok
    emulator.faults.inject(method="GET", path=r"^/v1\.0/teams/", status=503, times=3)
    with structlog.testing.capture_logs() as logs:
        assert await bridge.privilege(world.channel.conversation_id, world.owner) == 0
    assert statuses(emulator.graph_calls) == [503, 503, 503]
    warnings = [e for e in logs if e["event"] == "teams_graph_lookup_failed"]
    assert [(w["log_level"], w["status"]) for w in warnings] == [("warning", 503)]
    assert "Bearer" not in repr(logs)
    # Not remembered: Graph is asked again once it is back.
    assert await bridge.privilege(world.channel.conversation_id, world.owner) == 100


async def test_a_token_graph_does_not_accept_gets_the_emulators_401(
    emulator: TeamsEmulator, database: tuple[str, str], world: World
) -> None:
    # Misconfigured: the Graph client asks for connector tokens.
    running = await start_bridge(emulator, *database, graph_scope=CONNECTOR_SCOPE)
    try:
        assert (await emulator.post_message(world.channel, world.owner, "link?")).ok
        with structlog.testing.capture_logs() as logs:
            assert await running.privilege(world.channel.conversation_id, world.owner) == 0
    finally:
        await running.stop()
    calls = emulator.graph_calls
    assert statuses(calls) == [401, 401]  # a fresh token once, then no more
    assert [c.auth.reason if c.auth else None for c in calls] == ["audience", "audience"]
    assert calls[0].response["error"]["code"] == "InvalidAuthenticationToken"
    assert [e["status"] for e in logs if e["event"] == "teams_graph_lookup_failed"] == [401]


async def test_without_admin_consent_graph_refuses_and_nobody_is_privileged(
    emulator: TeamsEmulator, bridge: RunningBridge, world: World
) -> None:
    emulator.graph_permissions = []
    assert (await emulator.post_message(world.channel, world.owner, "link?")).ok
    assert await bridge.privilege(world.channel.conversation_id, world.owner) == 0
    (call,) = emulator.graph_calls
    assert call.status == 403
    assert call.response["error"]["code"] == "Forbidden"


# -- the emulator's Graph, as a client sees it --------------------------------------------


async def test_the_emulators_members_list_is_graphs(emulator: TeamsEmulator, world: World) -> None:
    third = emulator.add_user("Tara Third")
    emulator.add_channel("Operations", members=[third])
    team = emulator.team_of(world.channel)
    url = f"{emulator.graph_url}/v1.0/teams/{team.aad_group_id}/members"
    graph = {"Authorization": f"Bearer {emulator.mint_graph_token()}"}
    async with aiohttp.ClientSession() as session:
        for headers in (
            {},
            {"Authorization": f"Bearer {emulator.mint_access_token()}"},
            {"Authorization": "Bearer not.a.token"},
        ):
            async with session.get(url, headers=headers) as response:
                assert response.status == 401
                body = await response.json()
                assert body["error"]["code"] == "InvalidAuthenticationToken"
        no_roles = {"Authorization": f"Bearer {emulator.mint_graph_token(roles=[])}"}
        async with session.get(url, headers=no_roles) as response:
            assert response.status == 403

        async with session.get(url, headers=graph, params={"$top": "2"}) as response:
            assert response.status == 200
            page = await response.json()
        assert page["@odata.context"].endswith(f"#teams('{team.aad_group_id}')/members")
        first = page["value"][0]
        assert set(first) == {
            "@odata.type",
            "id",
            "roles",
            "displayName",
            "visibleHistoryStartDateTime",
            "userId",
            "email",
            "tenantId",
        }
        assert first["@odata.type"] == "#microsoft.graph.aadUserConversationMember"
        assert (first["userId"], first["roles"], first["tenantId"]) == (
            world.owner.aad_object_id,
            ["owner"],
            TENANT,
        )
        async with session.get(page["@odata.nextLink"], headers=graph) as response:
            rest = await response.json()
        assert "@odata.nextLink" not in rest
        listed = [m["userId"] for m in page["value"] + rest["value"]]
        assert listed == [u.aad_object_id for u in (world.owner, world.member, third)]

        owners = {"$filter": "roles/any(r:r eq 'owner')"}
        async with session.get(url, headers=graph, params=owners) as response:
            assert [m["displayName"] for m in (await response.json())["value"]] == ["Olivia Owner"]
        bad = {"$filter": "startswith(displayName, 'O')"}
        async with session.get(url, headers=graph, params=bad) as response:
            assert response.status == 400
        unknown = f"{emulator.graph_url}/v1.0/teams/{uuid.uuid4()}/members"
        async with session.get(unknown, headers=graph) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "NotFound"
