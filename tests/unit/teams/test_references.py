"""Conversation references: derived from activities, stored once per change, bounded cache."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.teams.activity import parse_activity
from adapters.teams.ids import ConversationReference, TeamsConversationID, TeamsUserID, TenantID
from adapters.teams.references import (
    NAMESPACE,
    StoredConversationReferences,
    channel_reference,
    reference_from,
)
from bridge.timeline.memory import MemoryStateStore
from tests.support.fakes import FakeClock
from tests.unit.teams import support as s


class CountingState(MemoryStateStore):
    def __init__(self) -> None:
        super().__init__()
        self.puts = 0
        self.gets = 0

    async def put(self, namespace: str, key: str, value: Mapping[str, Any]) -> None:
        self.puts += 1
        await super().put(namespace, key, value)

    async def get(self, namespace: str, key: str) -> dict[str, Any] | None:
        self.gets += 1
        return await super().get(namespace, key)


def ref(conversation: str, service_url: str = s.SERVICE_URL) -> ConversationReference:
    return ConversationReference(
        conversation_id=TeamsConversationID(conversation),
        service_url=service_url,
        tenant_id=TenantID(s.TENANT),
        conversation_type="groupChat",
        bot_id=TeamsUserID(s.BOT_ID),
    )


def test_references_from_each_kind_of_conversation() -> None:
    thread = reference_from(parse_activity(s.message()), app_id=s.APP_ID)
    assert thread is not None
    assert (thread.conversation_type, thread.team_id, thread.channel_id) == (
        "channel",
        s.TEAM,
        s.CHANNEL,
    )
    channel = channel_reference(thread)
    assert channel is not None
    assert channel.conversation_id == s.CHANNEL
    chat = reference_from(parse_activity(s.message(conversation=s.GROUP_CHAT)), app_id=s.APP_ID)
    assert chat is not None
    assert (chat.conversation_type, chat.team_id, chat.channel_id) == ("groupChat", None, None)
    assert channel_reference(chat) is None
    personal = s.message(conversation=s.PERSONAL_CHAT)
    del personal["conversation"]["conversationType"]
    found = reference_from(parse_activity(personal), app_id=s.APP_ID)
    assert found is not None
    assert found.conversation_type == "personal"


def test_no_reference_without_service_url_or_tenant() -> None:
    document = s.message()
    del document["serviceUrl"]
    assert reference_from(parse_activity(document), app_id=s.APP_ID) is None
    document = s.message()
    del document["conversation"]["tenantId"]
    del document["channelData"]["tenant"]
    assert reference_from(parse_activity(document), app_id=s.APP_ID) is None


async def test_unchanged_references_are_not_written_again() -> None:
    state = CountingState()
    references = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    for _ in range(5):
        await references.put(ref("19:a@thread.v2"))
    assert state.puts == 1
    await references.put(ref("19:a@thread.v2", service_url="https://smba.trafficmanager.net/amer/"))
    assert state.puts == 2
    stored = await state.get(NAMESPACE, "19:a@thread.v2")
    assert stored is not None
    assert stored["service_url"] == "https://smba.trafficmanager.net/amer/"


async def test_references_survive_a_new_instance_and_the_cache_is_bounded() -> None:
    state = CountingState()
    first = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    for i in range(40):
        await first.put(ref(f"19:c{i}@thread.v2"))
    assert len(first._cache) == 16
    second = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    gets = state.gets
    assert await second.get(TeamsConversationID("19:c0@thread.v2")) == ref("19:c0@thread.v2")
    assert await second.get(TeamsConversationID("19:c0@thread.v2")) == ref("19:c0@thread.v2")
    assert state.gets == gets + 1
    assert await second.get(TeamsConversationID("19:missing@thread.v2")) is None


async def test_an_unreadable_stored_reference_is_treated_as_absent() -> None:
    state = MemoryStateStore()
    await state.put(NAMESPACE, "19:x@thread.v2", {"conversation_id": 5})
    references = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    assert await references.get(TeamsConversationID("19:x@thread.v2")) is None


async def test_a_reference_to_a_host_no_longer_allowed_is_not_handed_out() -> None:
    state = MemoryStateStore()
    writer = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    await writer.put(ref("19:old@thread.v2", service_url="https://smba.example.net/x/"))
    reader = StoredConversationReferences(
        state,
        clock=FakeClock(),
        cache_size=16,
        service_url_allowed=lambda url: url.startswith("https://smba.trafficmanager.net/"),
    )
    assert await reader.get(TeamsConversationID("19:old@thread.v2")) is None
    await reader.put(ref("19:new@thread.v2"))
    assert await reader.get(TeamsConversationID("19:new@thread.v2")) is not None
