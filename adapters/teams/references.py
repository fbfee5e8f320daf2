"""Conversation references: what a proactive send needs, kept in the core's StateStore.

Namespace ``teams_conversations``, keyed by conversation id. Every accepted
activity refreshes the reference of its conversation. A channel thread
(``<channel id>;messageid=<root>``) has no record of its own: its channel's is kept,
and the thread's reference is derived from it when a send needs one, so a post
that starts a thread costs no write when its channel's reference is stored
already. Chats keep their own. A bounded in-memory cache saves the write when
nothing changed (and the read on sends); concurrent reads of one conversation
share one round trip; the store is the truth, so references survive restarts.

A thread's reference is found, in this order: in the cache; stored under the
thread's own id (earlier versions of the bridge kept one per thread); derived
from the channel's.

A stored reference whose serviceUrl the settings no longer allow is not handed
out (the bot's token must never leave the serviceUrl allow-list).

Teams' Entra (AAD) group ids, which Microsoft Graph addresses a team by, are kept
apart (``StoredTeamGroups``, namespace ``teams_team_groups``, keyed by the team id
of ``channelData.team.id``): activities in a team's channels name it in
``channelData.team.aadGroupId``; each team's is written once, and again only if it
changed.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from typing import Any, Final, Generic, TypeVar

import structlog

from adapters.teams.activity import THREAD_MARKER, TeamsActivity
from adapters.teams.ids import (
    ConversationReference,
    TeamsConversationID,
    TeamsUserID,
    TenantID,
)
from bridge.ports import Clock, StateStore

log = structlog.get_logger(__name__)

NAMESPACE = "teams_conversations"
TEAM_GROUPS_NAMESPACE = "teams_team_groups"
MAX_ID_LENGTH = 256
_DERIVED: Final = None
"""Cached for a thread: no record under its own id, derived from its channel's."""
_T = TypeVar("_T")


def reference_from(activity: TeamsActivity, *, app_id: str) -> ConversationReference | None:
    """The reference an accepted activity implies, or None if it lacks the essentials."""
    conversation_id = activity.conversation_id
    tenant = activity.tenant_id
    if not conversation_id or not activity.service_url or tenant is None:
        return None
    bot = activity.recipient
    return ConversationReference(
        conversation_id=conversation_id,
        service_url=activity.service_url,
        tenant_id=tenant,
        conversation_type=activity.conversation_type or _guess_type(conversation_id),
        bot_id=bot.id if bot is not None else TeamsUserID(f"28:{app_id}"),
        team_id=activity.team_id,
        channel_id=activity.team_channel_id or _channel_of(activity),
    )


def team_group_from(activity: TeamsActivity) -> tuple[str, str] | None:
    """(team id, the team's AAD group id) when the activity names both, else None."""
    team = activity.channel_data.get("team") if activity.channel_data is not None else None
    if not isinstance(team, dict):
        return None
    team_id, group_id = team.get("id"), team.get("aadGroupId")
    if not isinstance(team_id, str) or not isinstance(group_id, str):
        return None
    if not (0 < len(team_id) <= MAX_ID_LENGTH and 0 < len(group_id) <= MAX_ID_LENGTH):
        return None
    return team_id, group_id


def channel_reference(reference: ConversationReference) -> ConversationReference | None:
    """The reference of the channel a thread reference belongs to (None if not a thread)."""
    base, marker, _ = reference.conversation_id.partition(THREAD_MARKER)
    if not marker or reference.conversation_type != "channel":
        return None
    return ConversationReference(
        conversation_id=TeamsConversationID(base),
        service_url=reference.service_url,
        tenant_id=reference.tenant_id,
        conversation_type=reference.conversation_type,
        bot_id=reference.bot_id,
        team_id=reference.team_id,
        channel_id=reference.channel_id or base,
    )


def thread_reference(
    channel: ConversationReference, thread_id: TeamsConversationID
) -> ConversationReference:
    """The reference of a thread in ``channel``: the channel's, addressed to the thread."""
    return replace(channel, conversation_id=thread_id)


class StoredConversationReferences:
    """``ConversationReferences`` on a ``StateStore``, with a bounded cache."""

    def __init__(
        self,
        state: StateStore,
        *,
        clock: Clock,
        cache_size: int,
        service_url_allowed: Callable[[str], bool] | None = None,
        home_tenant: str | None = None,
    ) -> None:
        """``home_tenant``: the bot's own tenant. A channel of it with no reference of its
        own (the bot's install announced only the team's General channel) is addressed
        with the last channel reference seen in that tenant: same service URL, tenant and
        bot, that channel's id."""
        self._state = state
        self._home = home_tenant
        self._clock = clock
        self._cache_size = cache_size
        self._allowed = service_url_allowed
        self._cache: OrderedDict[str, ConversationReference | None] = OrderedDict()
        """References by conversation id; ``_DERIVED`` for a thread without its own."""
        self._loads: _SharedLoads[ConversationReference | None] = _SharedLoads(self._load)

    async def get(self, conversation_id: TeamsConversationID) -> ConversationReference | None:
        reference = await self._find(conversation_id)
        if reference is None:
            return None
        if self._allowed is not None and not self._allowed(reference.service_url):
            log.warning("teams_service_url_no_longer_allowed", conversation=conversation_id)
            return None
        return reference

    async def put(self, reference: ConversationReference) -> None:
        """Store the reference unless the same one is known to be stored already."""
        if self._cache.get(reference.conversation_id) == reference:
            self._cache.move_to_end(reference.conversation_id)
            return
        document: dict[str, Any] = {**asdict(reference), "updated_at": self._clock.now()}
        await self._state.put(NAMESPACE, reference.conversation_id, document)
        self._remember(reference.conversation_id, reference)

    async def record(self, reference: ConversationReference) -> None:
        """Store what an activity's reference needs: a chat's own, a channel thread's channel,
        and, for any channel of the bot's own tenant (a thread's, or the channel itself as
        in the install's and the team's events on the General channel), the tenant's
        fallback channel reference."""
        channel = channel_reference(reference)
        if channel is None:
            await self.put(reference)
            if not _is_channel_reference(reference):
                return
            channel = reference
        else:
            await self.put(channel)
            self._remember(reference.conversation_id, _DERIVED)  # fresher than a record of its own
        if self._home is not None and channel.tenant_id == self._home:
            await self.put(replace(channel, conversation_id=_home_key(self._home)))

    async def _find(self, conversation_id: TeamsConversationID) -> ConversationReference | None:
        base, marker, _ = conversation_id.partition(THREAD_MARKER)
        if not marker:
            return await self._base(conversation_id)
        channel_id = TeamsConversationID(base)
        if conversation_id in self._cache:
            cached = self._cache[conversation_id]
            self._cache.move_to_end(conversation_id)
            if cached is not None:
                return cached
        else:
            own = await self._thread_record(conversation_id, channel_id)
            if own is not None:
                return own
        channel = await self._base(channel_id)
        return thread_reference(channel, conversation_id) if channel is not None else None

    async def _thread_record(
        self, thread_id: TeamsConversationID, channel_id: TeamsConversationID
    ) -> ConversationReference | None:
        """A thread's record of its own (an earlier version's), read in the same round trip
        as its channel's when that is not cached; remembered either way."""
        if channel_id in self._cache:
            own = await self._loads(thread_id)
        else:
            own, _ = await asyncio.gather(self._loads(thread_id), self._base(channel_id))
        self._remember(thread_id, own if own is not None else _DERIVED)
        return own

    async def _base(self, conversation_id: TeamsConversationID) -> ConversationReference | None:
        """A conversation's own reference (a channel's, a chat's): cached, else read."""
        cached = self._cache.get(conversation_id)
        if cached is not None:
            self._cache.move_to_end(conversation_id)
            return cached
        reference = await self._loads(conversation_id)
        if reference is None and self._home is not None and _is_channel(conversation_id):
            home = await self._loads(_home_key(self._home))
            if home is not None:
                log.info("teams_channel_reference_derived", conversation=conversation_id)
                reference = replace(
                    home, conversation_id=conversation_id, channel_id=conversation_id, team_id=None
                )
        if reference is not None:
            self._remember(conversation_id, reference)
        return reference

    async def _load(self, conversation_id: str) -> ConversationReference | None:
        document = await self._state.get(NAMESPACE, conversation_id)
        if document is None:
            return None
        reference = _decode(document)
        if reference is None:
            log.warning("teams_conversation_reference_unreadable", conversation=conversation_id)
        return reference

    def _remember(self, conversation_id: str, reference: ConversationReference | None) -> None:
        self._cache[conversation_id] = reference
        self._cache.move_to_end(conversation_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


class StoredTeamGroups:
    """Each team's AAD group id on a ``StateStore``, with a bounded cache."""

    def __init__(self, state: StateStore, *, clock: Clock, cache_size: int) -> None:
        self._state = state
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._loads: _SharedLoads[str | None] = _SharedLoads(self._load)

    async def record(self, team_id: str, aad_group_id: str) -> None:
        """Store the team's group id unless the same one is known to be stored already."""
        if self._cache.get(team_id) == aad_group_id:
            self._cache.move_to_end(team_id)
            return
        document: dict[str, Any] = {"aad_group_id": aad_group_id, "updated_at": self._clock.now()}
        await self._state.put(TEAM_GROUPS_NAMESPACE, team_id, document)
        self._remember(team_id, aad_group_id)

    async def get(self, team_id: str) -> str | None:
        """The team's AAD group id, or None when no activity has named it yet."""
        cached = self._cache.get(team_id)
        if cached is not None:
            self._cache.move_to_end(team_id)
            return cached
        group_id = await self._loads(team_id)
        if group_id is not None:
            self._remember(team_id, group_id)
        return group_id

    async def _load(self, team_id: str) -> str | None:
        document = await self._state.get(TEAM_GROUPS_NAMESPACE, team_id)
        value = document.get("aad_group_id") if document is not None else None
        return value if isinstance(value, str) and value else None

    def _remember(self, team_id: str, group_id: str) -> None:
        self._cache[team_id] = group_id
        self._cache.move_to_end(team_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


class _SharedLoads(Generic[_T]):
    """Concurrent loads of one key share one call of ``load``: its result or its error.

    A waiter whose loader was cancelled (and who was not) loads again itself.
    """

    def __init__(self, load: Callable[[str], Awaitable[_T]]) -> None:
        self._load = load
        self._pending: dict[str, asyncio.Future[_T]] = {}

    async def __call__(self, key: str) -> _T:
        while (pending := self._pending.get(key)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if pending.cancelled() and task is not None and not task.cancelling():
                    continue  # the loader gave up, this caller did not: load again
                raise
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self._pending[key] = future
        try:
            value = await self._load(key)
        except Exception as exc:
            future.set_exception(exc)
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._pending[key]
        future.set_result(value)
        return value


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a shared load's error as seen: the loader itself raised it."""
    if not future.cancelled():
        future.exception()


def _decode(document: dict[str, Any]) -> ConversationReference | None:
    try:
        return ConversationReference(
            conversation_id=TeamsConversationID(_req(document, "conversation_id")),
            service_url=_req(document, "service_url"),
            tenant_id=TenantID(_req(document, "tenant_id")),
            conversation_type=_req(document, "conversation_type"),
            bot_id=TeamsUserID(_req(document, "bot_id")),
            team_id=_opt(document, "team_id"),
            channel_id=_opt(document, "channel_id"),
        )
    except (KeyError, TypeError):
        return None


def _req(document: dict[str, Any], key: str) -> str:
    value = document[key]
    if not isinstance(value, str):
        raise TypeError(key)
    return value


def _opt(document: dict[str, Any], key: str) -> str | None:
    value = document.get(key)
    return value if isinstance(value, str) else None


def _guess_type(conversation_id: str) -> str:
    if conversation_id.startswith("a:"):
        return "personal"
    if "@thread.tacv2" in conversation_id or "@thread.skype" in conversation_id:
        return "channel"
    return "groupChat"


def _channel_of(activity: TeamsActivity) -> str | None:
    if activity.conversation_type == "channel":
        return activity.base_conversation_id
    return None


def _home_key(tenant: str) -> TeamsConversationID:
    """Where the last channel reference seen in the bot's own tenant is kept."""
    return TeamsConversationID(f"home-channel:{tenant}")


def _is_channel_reference(reference: ConversationReference) -> bool:
    """A channel's own reference (not a thread's, not a chat's)."""
    return reference.conversation_type == "channel" and _is_channel(reference.conversation_id)


def _is_channel(conversation_id: str) -> bool:
    """A channel's conversation id (``19:...@thread.tacv2`` or ``@thread.skype``), not a
    chat's (chats are ``19:...@thread.v2``, ``a:...``, ``19:..._...@unq.gbl.spaces``)."""
    return conversation_id.startswith("19:") and conversation_id.endswith(
        ("@thread.tacv2", "@thread.skype")
    )
