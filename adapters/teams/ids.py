"""Teams identifiers and the records both directions of the Teams adapter share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType, Protocol

TeamsConversationID = NewType("TeamsConversationID", str)
"""A conversation: ``19:...@thread.tacv2`` (channel), with ``;messageid=<root>`` for a thread."""
TeamsActivityID = NewType("TeamsActivityID", str)
TeamsUserID = NewType("TeamsUserID", str)
"""A channel account id (``29:...``); the bot's own is ``28:<app id>``."""
AadObjectID = NewType("AadObjectID", str)
"""A user's Entra ID (Azure AD) object id: the stable identity the bridge keys users on."""
TenantID = NewType("TenantID", str)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationReference:
    """What a proactive send needs, persisted so it survives restarts."""

    conversation_id: TeamsConversationID
    service_url: str
    tenant_id: TenantID
    conversation_type: str
    """``channel``, ``groupChat`` or ``personal``."""
    bot_id: TeamsUserID
    team_id: str | None = None
    channel_id: str | None = None


class ConversationReferences(Protocol):
    """Persisted conversation references (backed by the core's StateStore)."""

    async def get(self, conversation_id: TeamsConversationID) -> ConversationReference | None: ...

    async def put(self, reference: ConversationReference) -> None: ...


class TokenProvider(Protocol):
    """Bearer tokens for the bot's outbound calls to the connector."""

    async def token(self) -> str:
        """A valid access token (cached and refreshed before expiry)."""
