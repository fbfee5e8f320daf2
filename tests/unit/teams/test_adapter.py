"""TeamsAdapter: lifecycle, readiness, echo identity, and delegation to the sender."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp import web

from adapters.teams import create_adapter
from adapters.teams.adapter import TeamsAdapter
from adapters.teams.auth import InboundAuthenticator
from adapters.teams.convert import ActivityConverter
from adapters.teams.inbound import MessagingEndpoint
from adapters.teams.references import StoredConversationReferences
from bridge.config import Settings
from bridge.errors import ConfigError, DependencyUnavailableError
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    EventID,
    InboundEvent,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteUserID,
    Sender,
)
from bridge.ports import ChatAdapter, OutboundMessage, SupportsEdits, SupportsRedactions
from bridge.runtime import AdapterContext
from bridge.timeline.memory import MemoryStateStore, MemoryTimelineStore
from tests.support.fakes import TEAMS_ROOM, EventBuilder, FakeClock
from tests.unit.teams import support as s


class FakeKeys:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.loaded = False
        self.attempts = 0
        self.generation = 0

    async def refresh(self) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise DependencyUnavailableError("teams signing keys", "down")
        self.loaded = True

    async def signing_key(self, key_id: str) -> Any:
        return None


class NullSink:
    async def accept(self, events: Sequence[InboundEvent]) -> list[AppendResult | None]:
        return [None for _ in events]


class FakeSender:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, str]] = []
        self.originals: list[EventID | None] = []
        self.closed = False

    async def send(self, message: OutboundMessage, *, idempotency_key: str) -> RemoteRef:
        self.calls.append(("send", message, idempotency_key))
        return RemoteRef(room=message.target, message_id=RemoteMessageID("1730000000000"))

    async def edit(
        self, target: RemoteRef, message: OutboundMessage, *, idempotency_key: str
    ) -> None:
        self.calls.append(("edit", target, idempotency_key))

    async def delete(
        self, target: RemoteRef, *, idempotency_key: str, original: EventID | None = None
    ) -> None:
        self.calls.append(("delete", target, idempotency_key))
        self.originals.append(original)

    async def close(self) -> None:
        self.closed = True


def build(keys: FakeKeys, sender: FakeSender) -> tuple[TeamsAdapter, MessagingEndpoint]:
    settings = s.teams_settings()
    endpoint = MessagingEndpoint(
        app_id=s.APP_ID,
        authenticator=InboundAuthenticator(settings=settings, keys=keys, clock=FakeClock()),
        converter=ActivityConverter(app_id=s.APP_ID, clock=FakeClock()),
        references=StoredConversationReferences(
            MemoryStateStore(), clock=FakeClock(), cache_size=16
        ),
        max_body_bytes=settings.max_activity_bytes,
    )
    adapter = TeamsAdapter(
        settings=settings, web_app=web.Application(), endpoint=endpoint, keys=keys, sender=sender
    )
    return adapter, endpoint


async def test_lifecycle_and_readiness() -> None:
    keys, sender = FakeKeys(), FakeSender()
    adapter, endpoint = build(keys, sender)
    assert adapter.platform is Platform.TEAMS
    assert not adapter.ready
    await adapter.start(NullSink())
    assert adapter.ready
    assert endpoint.accepting
    await adapter.stop()
    await adapter.stop()  # idempotent
    assert not adapter.ready
    assert not endpoint.accepting
    assert sender.closed
    with pytest.raises(RuntimeError):
        await adapter.start(NullSink())


async def test_keys_unreachable_at_start_are_fetched_in_the_background(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def quick_sleep(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("adapters.teams.adapter.asyncio.sleep", quick_sleep)
    keys = FakeKeys(failures=3)
    adapter, endpoint = build(keys, FakeSender())
    await adapter.start(NullSink())
    assert endpoint.accepting
    assert not adapter.ready
    for _ in range(50):
        if adapter.ready:
            break
        await real_sleep(0)
    assert adapter.ready
    assert sleeps[:3] == [1.0, 2.0, 4.0]
    await adapter.stop()


async def test_stop_cancels_the_background_key_fetch() -> None:
    adapter, _ = build(FakeKeys(failures=1000), FakeSender())
    await adapter.start(NullSink())
    await adapter.stop()
    assert not adapter.ready


def test_the_bot_is_its_own_sender() -> None:
    adapter, _ = build(FakeKeys(), FakeSender())
    bot = Sender(platform=Platform.TEAMS, user_id=RemoteUserID(s.BOT_ID), display_name="Bot")
    assert adapter.is_own(bot)
    assert adapter.is_own(
        Sender(platform=Platform.TEAMS, user_id=RemoteUserID(s.APP_ID), display_name="")
    )
    assert not adapter.is_own(
        Sender(platform=Platform.TEAMS, user_id=RemoteUserID(s.ALICE_AAD), display_name="Alice")
    )
    assert not adapter.is_own(
        Sender(platform=Platform.MATRIX, user_id=RemoteUserID(s.BOT_ID), display_name="")
    )


async def test_outbound_calls_are_delegated_to_the_sender() -> None:
    sender = FakeSender()
    adapter, _ = build(FakeKeys(), sender)
    assert isinstance(adapter, SupportsEdits)
    assert isinstance(adapter, SupportsRedactions)
    _seam: ChatAdapter = adapter
    message = OutboundMessage(event=EventBuilder(FakeClock()).message(), target=TEAMS_ROOM)
    sent = await adapter.send(message, idempotency_key="k1")
    await adapter.edit(sent, message, idempotency_key="k2")
    ghost = Sender(platform=Platform.MATRIX, user_id=RemoteUserID("@a:x"), display_name="A")
    await adapter.redact(sent, ghost, idempotency_key="k3", original=message.event.id)
    assert [(c[0], c[2]) for c in sender.calls] == [
        ("send", "k1"),
        ("edit", "k2"),
        ("delete", "k3"),
    ]
    assert sender.calls[1][1] == sent
    assert sender.originals == [message.event.id]


def test_the_route_is_added_at_construction() -> None:
    app = web.Application()
    settings = s.teams_settings()
    keys = FakeKeys()
    endpoint = MessagingEndpoint(
        app_id=s.APP_ID,
        authenticator=InboundAuthenticator(settings=settings, keys=keys, clock=FakeClock()),
        converter=ActivityConverter(app_id=s.APP_ID, clock=FakeClock()),
        references=StoredConversationReferences(
            MemoryStateStore(), clock=FakeClock(), cache_size=16
        ),
        max_body_bytes=settings.max_activity_bytes,
    )
    TeamsAdapter(settings=settings, web_app=app, endpoint=endpoint, keys=keys, sender=FakeSender())
    routes = [(r.method, r.resource.canonical) for r in app.router.routes() if r.resource]
    assert ("POST", "/api/messages") in routes


async def test_create_adapter_builds_the_graph_and_mounts_the_endpoint() -> None:
    settings = Settings.model_validate(
        {
            "mongo": {"uri": "mongodb://unused"},
            "teams": {
                "enabled": True,
                "app_id": s.APP_ID,
                "tenant_id": s.TENANT,
                "auth": {"client_secret": "x"},
            },
        }
    )
    web_app = web.Application()
    context = AdapterContext(
        settings=settings,
        clock=FakeClock(),
        ids=UlidFactory(),
        metrics=BridgeMetrics(),
        store=MemoryTimelineStore(clock=FakeClock()),
        state=MemoryStateStore(),
        web_app=web_app,
    )
    adapter = create_adapter(context)
    assert isinstance(adapter, TeamsAdapter)
    assert any(r.method == "POST" for r in web_app.router.routes())
    await adapter.stop()  # closes the session it owns, never started


async def test_create_adapter_refuses_when_disabled() -> None:
    context = AdapterContext(
        settings=Settings.model_validate({"mongo": {"uri": "mongodb://unused"}}),
        clock=FakeClock(),
        ids=UlidFactory(),
        metrics=BridgeMetrics(),
        store=MemoryTimelineStore(clock=FakeClock()),
        state=MemoryStateStore(),
        web_app=web.Application(),
    )
    with pytest.raises(ConfigError):
        create_adapter(context)
