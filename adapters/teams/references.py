"""Conversation references: what a proactive send needs, kept in the core's StateStore.

Namespace ``teams_conversations``, keyed by conversation id. Every accepted
activity refreshes the reference of its conversation; for a channel thread the
channel's own reference is kept too, so a new thread can be started there. A
bounded in-memory cache saves the write when nothing changed (and the read on
sends); the store is the truth, so references survive restarts.

A stored reference whose serviceUrl the settings no longer allow is not handed
out (the bot's token must never leave the serviceUrl allow-list).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import structlog

from adapters.teams.activity import TeamsActivity
from adapters.teams.ids import (
    ConversationReference,
    TeamsConversationID,
    TeamsUserID,
    TenantID,
)
from bridge.ports import Clock, StateStore

log = structlog.get_logger(__name__)

NAMESPACE = "teams_conversations"


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


def channel_reference(reference: ConversationReference) -> ConversationReference | None:
    """The reference of the channel a thread reference belongs to (None if not a thread)."""
    base, marker, _ = reference.conversation_id.partition(";messageid=")
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


class StoredConversationReferences:
    """``ConversationReferences`` on a ``StateStore``, with a bounded cache."""

    def __init__(
        self,
        state: StateStore,
        *,
        clock: Clock,
        cache_size: int,
        service_url_allowed: Callable[[str], bool] | None = None,
    ) -> None:
        self._state = state
        self._clock = clock
        self._cache_size = cache_size
        self._allowed = service_url_allowed
        self._cache: OrderedDict[str, ConversationReference] = OrderedDict()

    async def get(self, conversation_id: TeamsConversationID) -> ConversationReference | None:
        reference = self._cache.get(conversation_id)
        if reference is not None:
            self._cache.move_to_end(conversation_id)
        else:
            document = await self._state.get(NAMESPACE, conversation_id)
            if document is None:
                return None
            reference = _decode(document)
            if reference is None:
                log.warning("teams_conversation_reference_unreadable", conversation=conversation_id)
                return None
            self._remember(reference)
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
        self._remember(reference)

    async def record(self, reference: ConversationReference) -> None:
        """Store a reference and, for a channel thread, its channel's."""
        await self.put(reference)
        channel = channel_reference(reference)
        if channel is not None:
            await self.put(channel)

    def _remember(self, reference: ConversationReference) -> None:
        self._cache[reference.conversation_id] = reference
        self._cache.move_to_end(reference.conversation_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


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
