"""Conversation references: derived from activities, stored once per change, bounded cache."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from adapters.teams.activity import parse_activity
from adapters.teams.ids import ConversationReference, TeamsConversationID, TeamsUserID, TenantID
from adapters.teams.references import (
    NAMESPACE,
    StoredConversationReferences,
    channel_reference,
    reference_from,
)
from bridge.errors import StoreError
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


# -- channel threads share their channel's reference -----------------------------------------


def thread_post(root: str, service_url: str = s.SERVICE_URL) -> ConversationReference:
    """The reference of a post that starts thread ``root`` in the channel."""
    activity = s.message(activity_id=root, conversation=f"{s.CHANNEL};messageid={root}")
    activity["serviceUrl"] = service_url
    reference = reference_from(parse_activity(activity), app_id=s.APP_ID)
    assert reference is not None
    return reference


def thread_id(root: str) -> TeamsConversationID:
    return TeamsConversationID(f"{s.CHANNEL};messageid={root}")


async def test_posts_that_start_threads_store_the_channel_reference_once() -> None:
    state = CountingState()
    references = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    for n in range(50):
        await references.record(thread_post(f"17300000000{n:02d}"))
    assert state.puts == 1
    assert await state.get(NAMESPACE, s.CHANNEL) is not None
    assert await state.get(NAMESPACE, str(thread_id("1730000000000"))) is None
    await references.record(thread_post("1730000000099", "https://smba.trafficmanager.net/amer/"))
    assert state.puts == 2  # the channel's reference changed: written again
    stored = await state.get(NAMESPACE, s.CHANNEL)
    assert stored is not None
    assert stored["service_url"] == "https://smba.trafficmanager.net/amer/"


async def test_a_thread_reference_is_derived_from_its_channel_after_a_restart() -> None:
    state = CountingState()
    writer = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    posted = thread_post("1730000000001")
    await writer.record(posted)
    reader = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    assert await reader.get(thread_id("1730000000001")) == posted
    other = await reader.get(thread_id("1730000000002"))  # a thread the bridge never saw
    assert other == replace(posted, conversation_id=thread_id("1730000000002"))
    channel = await reader.get(TeamsConversationID(s.CHANNEL))
    assert channel == channel_reference(posted)
    gets = state.gets
    for _ in range(3):
        await reader.get(thread_id("1730000000001"))
        await reader.get(TeamsConversationID(s.CHANNEL))
    assert state.gets == gets  # all cached, including that the threads have no record


async def test_a_thread_reference_stored_by_an_earlier_version_is_still_read() -> None:
    state = CountingState()
    old_url = "https://smba.trafficmanager.net/amer/"
    legacy = thread_post("1730000000001", old_url)  # earlier versions kept one per thread
    await state.put(NAMESPACE, legacy.conversation_id, {**asdict(legacy), "updated_at": None})
    channel = channel_reference(thread_post("1730000000001"))
    assert channel is not None
    await state.put(NAMESPACE, channel.conversation_id, asdict(channel))
    references = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    found = await references.get(legacy.conversation_id)  # its own record before the channel's
    assert found == legacy
    assert (await references.get(thread_id("1730000000002"))) == replace(
        channel, conversation_id=thread_id("1730000000002")
    )
    await references.record(thread_post("1730000000001"))  # a new post in that thread
    refreshed = await references.get(legacy.conversation_id)
    assert refreshed is not None
    assert refreshed.service_url == s.SERVICE_URL  # the channel's, as the channel says now


async def test_chats_keep_their_own_references() -> None:
    state = CountingState()
    references = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    chat = reference_from(parse_activity(s.message(conversation=s.GROUP_CHAT)), app_id=s.APP_ID)
    personal = reference_from(
        parse_activity(s.message(conversation=s.PERSONAL_CHAT)), app_id=s.APP_ID
    )
    assert chat is not None
    assert personal is not None
    for reference in (chat, personal, chat, personal):
        await references.record(reference)
    assert state.puts == 2
    reader = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    assert await reader.get(chat.conversation_id) == chat
    assert await reader.get(personal.conversation_id) == personal


class GatedState(CountingState):
    """Reads wait at a gate, so the test sees which reads are under way at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.reading: list[str] = []
        self.failure: Exception | None = None

    async def get(self, namespace: str, key: str) -> dict[str, Any] | None:
        self.reading.append(key)
        await asyncio.wait_for(self.gate.wait(), 5.0)
        if self.failure is not None:
            raise self.failure
        return await super().get(namespace, key)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_gets_of_one_conversation_share_one_read() -> None:
    state = GatedState()
    await MemoryStateStore.put(state, NAMESPACE, s.GROUP_CHAT, asdict(ref(s.GROUP_CHAT)))
    references = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    gets = [
        asyncio.ensure_future(references.get(TeamsConversationID(s.GROUP_CHAT))) for _ in range(20)
    ]
    await settle()
    assert state.reading == [s.GROUP_CHAT]
    state.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*gets), 5.0) == [ref(s.GROUP_CHAT)] * 20
    assert state.gets == 1


async def test_concurrent_gets_of_a_cold_thread_read_it_and_its_channel_at_once() -> None:
    state = GatedState()
    channel = channel_reference(thread_post("1730000000001"))
    assert channel is not None
    await MemoryStateStore.put(state, NAMESPACE, s.CHANNEL, asdict(channel))
    references = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    thread = thread_id("1730000000001")
    gets = [asyncio.ensure_future(references.get(thread)) for _ in range(20)]
    await settle()
    assert sorted(state.reading) == sorted([thread, s.CHANNEL])  # one round trip, two reads
    state.gate.set()
    found = await asyncio.wait_for(asyncio.gather(*gets), 5.0)
    assert found == [replace(channel, conversation_id=thread)] * 20
    assert state.gets == 2


async def test_a_failed_shared_read_fails_every_caller_and_is_not_remembered() -> None:
    state = GatedState()
    state.failure = StoreError("mongodb is down")
    references = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    gets = [
        asyncio.ensure_future(references.get(TeamsConversationID(s.GROUP_CHAT))) for _ in range(5)
    ]
    await settle()
    state.gate.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*gets, return_exceptions=True), 5.0)
    assert all(isinstance(o, StoreError) for o in outcomes)
    assert len(state.reading) == 1
    state.failure = None
    await MemoryStateStore.put(state, NAMESPACE, s.GROUP_CHAT, asdict(ref(s.GROUP_CHAT)))
    assert await references.get(TeamsConversationID(s.GROUP_CHAT)) == ref(s.GROUP_CHAT)


async def test_callers_waiting_on_a_cancelled_read_read_again() -> None:
    state = GatedState()
    await MemoryStateStore.put(state, NAMESPACE, s.GROUP_CHAT, asdict(ref(s.GROUP_CHAT)))
    references = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    first = asyncio.ensure_future(references.get(TeamsConversationID(s.GROUP_CHAT)))
    await settle()
    waiting = asyncio.ensure_future(references.get(TeamsConversationID(s.GROUP_CHAT)))
    await settle()
    first.cancel()  # the caller that reads gives up
    await settle()
    assert first.cancelled()
    state.gate.set()
    assert await asyncio.wait_for(waiting, 5.0) == ref(s.GROUP_CHAT)
    assert state.reading == [s.GROUP_CHAT, s.GROUP_CHAT]


async def test_a_channel_never_heard_from_is_addressed_like_a_known_one_of_the_tenant() -> None:
    state = CountingState()
    references = StoredConversationReferences(
        state, clock=FakeClock(), cache_size=16, home_tenant=s.TENANT
    )
    general = replace(
        ref("19:general@thread.tacv2;messageid=1"), conversation_type="channel", team_id="t1"
    )
    await references.record(general)
    restarted = StoredConversationReferences(
        state, clock=FakeClock(), cache_size=16, home_tenant=s.TENANT
    )
    incidents = await restarted.get(TeamsConversationID("19:incidents@thread.tacv2"))
    assert incidents is not None
    assert incidents.conversation_id == "19:incidents@thread.tacv2"
    assert (incidents.service_url, incidents.tenant_id, incidents.bot_id) == (
        general.service_url,
        general.tenant_id,
        general.bot_id,
    )
    assert incidents.channel_id == "19:incidents@thread.tacv2"
    thread = await restarted.get(TeamsConversationID("19:incidents@thread.tacv2;messageid=9"))
    assert thread is not None
    assert thread.conversation_id == "19:incidents@thread.tacv2;messageid=9"
    # Chats are never guessed, nor channels of a bot with no home tenant.
    assert await restarted.get(TeamsConversationID("19:chat@thread.v2")) is None
    no_home = StoredConversationReferences(state, clock=FakeClock(), cache_size=16)
    assert await no_home.get(TeamsConversationID("19:other@thread.tacv2")) is None


async def test_channels_of_another_tenant_do_not_become_the_home() -> None:
    state = CountingState()
    references = StoredConversationReferences(
        state, clock=FakeClock(), cache_size=16, home_tenant="home-tenant"
    )
    await references.record(
        replace(ref("19:theirs@thread.tacv2;messageid=1"), conversation_type="channel")
    )
    assert await references.get(TeamsConversationID("19:incidents@thread.tacv2")) is None


async def test_the_install_on_the_general_channel_lets_other_channels_be_addressed() -> None:
    state = CountingState()
    references = StoredConversationReferences(
        state, clock=FakeClock(), cache_size=16, home_tenant=s.TENANT
    )
    for document in (s.installation_update(), s.conversation_update(event_type="teamRenamed")):
        installed = reference_from(parse_activity(document), app_id=s.APP_ID)
        assert installed is not None
        assert installed.conversation_id == s.CHANNEL  # the channel itself, not a thread
        await references.record(installed)
    restarted = StoredConversationReferences(
        state, clock=FakeClock(), cache_size=16, home_tenant=s.TENANT
    )
    assert await restarted.get(TeamsConversationID(s.CHANNEL)) == installed
    incidents = await restarted.get(TeamsConversationID("19:incidents@thread.tacv2"))
    assert incidents is not None
    assert (incidents.service_url, incidents.tenant_id, incidents.bot_id) == (
        s.SERVICE_URL,
        s.TENANT,
        s.BOT_ID,
    )
    thread = await restarted.get(TeamsConversationID("19:incidents@thread.tacv2;messageid=5"))
    assert thread is not None
    assert thread.conversation_id == "19:incidents@thread.tacv2;messageid=5"


async def test_a_chat_never_becomes_the_home_channel() -> None:
    state = CountingState()
    references = StoredConversationReferences(
        state, clock=FakeClock(), cache_size=16, home_tenant=s.TENANT
    )
    chat = reference_from(
        parse_activity(s.installation_update(conversation=s.GROUP_CHAT)), app_id=s.APP_ID
    )
    assert chat is not None
    await references.record(chat)
    assert state.puts == 1
    assert await references.get(TeamsConversationID("19:incidents@thread.tacv2")) is None
