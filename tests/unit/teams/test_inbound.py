"""The messaging endpoint over real HTTP with in-memory stores: order of checks, acks, dedupe."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from adapters.teams.activity import parse_activity
from adapters.teams.auth import InboundAuthenticator
from adapters.teams.convert import ActivityConverter
from adapters.teams.ids import TeamsConversationID
from adapters.teams.inbound import MESSAGES_PATH, MessagingEndpoint
from adapters.teams.references import NAMESPACE, StoredConversationReferences, reference_from
from bridge.clock import SystemClock
from bridge.errors import DependencyUnavailableError, StoreError
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    InboundEvent,
    Kind,
    Platform,
    RemoteRoomID,
    RoomRef,
)
from bridge.relay.intake import Intake
from bridge.timeline.memory import MemoryStateStore, MemoryTimelineStore
from tests.support.adapters import FakeAdapter
from tests.support.fakes import FakeClock
from tests.unit.teams import support as s

THREAD_ROOM = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(s.THREAD))


class FailingSink:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def accept(self, events: Sequence[InboundEvent]) -> list[AppendResult | None]:
        self.calls += 1
        raise self.error


class SlowSink:
    async def accept(self, events: Sequence[InboundEvent]) -> list[AppendResult | None]:
        await asyncio.sleep(60)
        return []


class BrokenKeys:
    generation = 0

    async def signing_key(self, key_id: str) -> Any:
        raise DependencyUnavailableError("teams signing keys", "down")


@dataclass
class Setup:
    client: TestClient[web.Request, web.Application]
    key: s.KeyPair
    store: MemoryTimelineStore
    state: MemoryStateStore
    endpoint: MessagingEndpoint

    def headers(self, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key.sign(s.claims(**claims))}"}

    async def post(self, activity: Any, **claims: Any) -> int:
        response = await self.client.post(
            MESSAGES_PATH, json=activity, headers=self.headers(**claims)
        )
        assert await response.read() == b""
        return response.status

    async def events(self) -> list[Any]:
        page = await self.store.timeline(room=THREAD_ROOM)
        return list(page.events)


@pytest.fixture(scope="module")
def key() -> s.KeyPair:
    return s.KeyPair(key_id="channel-key-1")


def endpoint_for(keys: Any, state: MemoryStateStore) -> MessagingEndpoint:
    settings = s.teams_settings()
    return MessagingEndpoint(
        app_id=s.APP_ID,
        authenticator=InboundAuthenticator(settings=settings, keys=keys, clock=SystemClock()),
        converter=ActivityConverter(app_id=s.APP_ID, clock=FakeClock()),
        references=StoredConversationReferences(state, clock=FakeClock(), cache_size=100),
        max_body_bytes=settings.max_activity_bytes,
    )


@pytest.fixture
async def setup(key: s.KeyPair) -> AsyncIterator[Setup]:
    store = MemoryTimelineStore(clock=FakeClock())
    state = MemoryStateStore()
    endpoint = endpoint_for(s.StaticKeys(key), state)
    intake = Intake(
        store=store,
        clock=FakeClock(),
        ids=UlidFactory(),
        metrics=BridgeMetrics(),
        adapters=[FakeAdapter(Platform.TEAMS, own_user_prefix="28:")],
    )
    endpoint.attach(intake)
    app = web.Application()
    app.add_routes(endpoint.routes())
    client = TestClient(TestServer(app))
    await client.start_server()
    yield Setup(client=client, key=key, store=store, state=state, endpoint=endpoint)
    await client.close()


async def test_a_message_is_stored_then_acknowledged(setup: Setup) -> None:
    assert await setup.post(s.message()) == 200
    (event,) = await setup.events()
    assert event.kind is Kind.MESSAGE
    assert event.origin.message_id == s.ROOT_ID
    channel = await setup.state.get(NAMESPACE, s.CHANNEL)  # a thread has no record of its own
    assert channel is not None
    assert channel["conversation_id"] == s.CHANNEL
    assert channel["service_url"] == s.SERVICE_URL
    assert channel["tenant_id"] == s.TENANT
    assert channel["conversation_type"] == "channel"
    assert channel["bot_id"] == s.BOT_ID
    assert channel["team_id"] == s.TEAM
    assert channel["channel_id"] == s.CHANNEL
    assert await setup.state.get(NAMESPACE, s.THREAD) is None
    reader = StoredConversationReferences(setup.state, clock=FakeClock(), cache_size=16)
    thread = await reader.get(TeamsConversationID(s.THREAD))  # derived from the channel's
    assert thread == reference_from(parse_activity(s.message()), app_id=s.APP_ID)


async def test_a_redelivered_activity_is_acknowledged_and_stored_once(setup: Setup) -> None:
    for _ in range(3):
        assert await setup.post(s.message()) == 200
    assert len(await setup.events()) == 1


async def test_edits_deletes_and_reactions_each_once(setup: Setup) -> None:
    activities = [
        s.message(),
        s.edit("v2"),
        s.edit("v2"),
        s.reaction(),
        s.reaction(),
        s.reaction(added=(), removed=("like",), activity_id="f:removal"),
        s.delete(),
        s.delete(),
    ]
    for activity in activities:
        assert await setup.post(activity) == 200
    kinds = [e.kind for e in await setup.events()]
    assert kinds == [Kind.MESSAGE, Kind.REACTION, Kind.REACTION, Kind.EDIT, Kind.REDACTION]
    edit = next(e for e in await setup.events() if e.kind is Kind.EDIT)
    original = next(e for e in await setup.events() if e.kind is Kind.MESSAGE)
    assert edit.relations[0].event_id == original.id  # intake resolved the target


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        ({"aud": "someone-else"}, 401),
        ({"iss": "https://attacker.example"}, 401),
        ({"serviceurl": "https://smba.trafficmanager.net/amer/"}, 401),
    ],
)
async def test_bad_tokens_store_nothing(setup: Setup, claims: dict[str, Any], status: int) -> None:
    assert await setup.post(s.message(), **claims) == status
    assert await setup.events() == []
    assert await setup.state.get(NAMESPACE, s.THREAD) is None
    assert await setup.state.get(NAMESPACE, s.CHANNEL) is None


async def test_no_token_is_401_and_the_body_is_not_needed(setup: Setup) -> None:
    response = await setup.client.post(MESSAGES_PATH, data=b"{not json")
    assert response.status == 401


async def test_foreign_tenant_and_disallowed_service_url_are_403(setup: Setup) -> None:
    foreign = s.message()
    foreign["conversation"]["tenantId"] = s.OTHER_TENANT
    foreign["channelData"]["tenant"]["id"] = s.OTHER_TENANT
    assert await setup.post(foreign) == 403
    for url in ("http://127.0.0.1:27017", "http://169.254.169.254"):
        assert await setup.post(s.variant(s.message(), serviceUrl=url), serviceurl=url) == 403
    assert await setup.events() == []
    assert await setup.state.get(NAMESPACE, s.THREAD) is None
    assert await setup.state.get(NAMESPACE, s.CHANNEL) is None


async def test_malformed_bodies_are_400(setup: Setup) -> None:
    response = await setup.client.post(MESSAGES_PATH, data=b"{nope", headers=setup.headers())
    assert response.status == 400
    assert await setup.post(["not", "an", "object"]) == 400
    no_id = s.message()
    del no_id["id"]
    assert await setup.post(no_id) == 400
    assert await setup.events() == []


async def test_oversized_bodies_are_413(setup: Setup) -> None:
    body = io.BytesIO(json.dumps(s.message("x" * (1024 * 1024))).encode())
    response = await setup.client.post(MESSAGES_PATH, data=body, headers=setup.headers())
    assert response.status == 413


async def test_activities_without_events_are_acknowledged(setup: Setup) -> None:
    assert await setup.post(s.base_activity("typing", activity_id="1")) == 200
    assert await setup.events() == []


async def test_membership_is_recorded(setup: Setup) -> None:
    assert await setup.post(s.installation_update()) == 200
    assert await setup.post(s.conversation_update(added=({"id": s.BOT_ID},))) == 200
    page = await setup.store.timeline(
        room=RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(s.CHANNEL))
    )
    assert [e.kind for e in page.events] == [Kind.MEMBERSHIP, Kind.MEMBERSHIP]
    assert await setup.state.get(NAMESPACE, s.CHANNEL) is not None


async def test_store_failure_is_503_so_teams_delivers_again(setup: Setup) -> None:
    sink = FailingSink(StoreError("down"))
    setup.endpoint.attach(sink)
    assert await setup.post(s.message()) == 503
    assert sink.calls == 1


async def test_a_store_that_hangs_is_503_within_the_deadline(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapters.teams.inbound.ACK_DEADLINE_S", 0.05)
    setup.endpoint.attach(SlowSink())
    assert await setup.post(s.message()) == 503


async def test_stopped_intake_is_503(setup: Setup) -> None:
    setup.endpoint.detach()
    assert await setup.post(s.message()) == 503
    assert await setup.events() == []


async def test_unreachable_signing_keys_are_503(key: s.KeyPair) -> None:
    state = MemoryStateStore()
    endpoint = endpoint_for(BrokenKeys(), state)
    endpoint.attach(FailingSink(StoreError("never called")))
    app = web.Application()
    app.add_routes(endpoint.routes())
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            MESSAGES_PATH,
            json=s.message(),
            headers={"Authorization": f"Bearer {key.sign(s.claims())}"},
        )
        assert response.status == 503
    assert await state.get(NAMESPACE, s.THREAD) is None
    assert await state.get(NAMESPACE, s.CHANNEL) is None


async def test_echo_of_the_bot_is_acknowledged_and_not_stored(setup: Setup) -> None:
    own = s.message(sender_id=s.BOT_ID, sender_aad=None, sender_name="Incident Bridge")
    assert await setup.post(own) == 200
    assert await setup.events() == []


class CountingState(MemoryStateStore):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    async def put(self, namespace: str, key: str, value: Any) -> None:
        self.writes.append(key)
        await super().put(namespace, key, value)

    async def insert_once(self, namespace: str, key: str, value: Any) -> bool:
        self.writes.append(key)
        return await super().insert_once(namespace, key, value)


async def test_posts_in_a_known_channel_write_no_reference_and_reuse_the_verified_token(
    key: s.KeyPair,
) -> None:
    state = CountingState()
    keys = s.StaticKeys(key)
    endpoint = endpoint_for(keys, state)
    endpoint.attach(FakeSinkAccepting())
    app = web.Application()
    app.add_routes(endpoint.routes())
    headers = {"Authorization": f"Bearer {key.sign(s.claims())}"}
    async with TestClient(TestServer(app)) as client:
        for n in range(5):  # five posts, each starting a thread of its own
            root = str(1730462400200 + n)
            activity = s.message(activity_id=root, conversation=f"{s.CHANNEL};messageid={root}")
            response = await client.post(MESSAGES_PATH, json=activity, headers=headers)
            assert response.status == 200
    assert state.writes == [s.CHANNEL]  # the channel's reference, once
    assert keys.lookups == [key.key_id]  # the channel's token, verified once


class FakeSinkAccepting:
    async def accept(self, events: Sequence[InboundEvent]) -> list[AppendResult | None]:
        return [None for _ in events]
