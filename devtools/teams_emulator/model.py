"""The emulated Teams world as plain immutable data: who, where, and what was said.

Identifiers are ``NewType``s and look like the real ones: a user is ``29:...`` with
an AAD object id (a GUID), the bot is ``28:<app id>``, a channel conversation is
``19:...@thread.tacv2`` (a thread in it ``19:...@thread.tacv2;messageid=<root>``),
a group chat ``19:...@thread.v2``, a personal chat ``a:...``, and an activity id is
a millisecond-timestamp-like string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, NewType

TenantID = NewType("TenantID", str)
AppID = NewType("AppID", str)
AccountID = NewType("AccountID", str)
"""An account in ``from``/``recipient``: ``29:...`` (a user) or ``28:...`` (a bot)."""
AadObjectID = NewType("AadObjectID", str)
TeamID = NewType("TeamID", str)
"""A team: the conversation id of its General channel."""
AadGroupID = NewType("AadGroupID", str)
ConversationID = NewType("ConversationID", str)
"""A conversation as the connector addresses it, possibly a channel thread (``;messageid=``)."""
ActivityID = NewType("ActivityID", str)
AttachmentID = NewType("AttachmentID", str)

THREAD_MARKER: Final = ";messageid="

JSONObject = dict[str, Any]


class ConversationKind(StrEnum):
    """``conversation.conversationType`` on the wire."""

    CHANNEL = "channel"
    GROUP_CHAT = "groupChat"
    PERSONAL = "personal"


def split_thread(conversation_id: str) -> tuple[ConversationID, ActivityID | None]:
    """``19:x@thread.tacv2;messageid=17`` -> (``19:x@thread.tacv2``, ``17``)."""
    base, marker, root = conversation_id.partition(THREAD_MARKER)
    return ConversationID(base), (ActivityID(root) if marker and root else None)


def thread_conversation_id(base: ConversationID, root: ActivityID) -> ConversationID:
    return ConversationID(f"{base}{THREAD_MARKER}{root}")


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    account_id: AccountID
    aad_object_id: AadObjectID
    name: str
    tenant_id: TenantID
    email: str
    given_name: str
    surname: str
    timezone_name: str = "America/Los_Angeles"
    utc_offset_minutes: int = -420

    def channel_account(self) -> JSONObject:
        """The user as ``from`` carries it."""
        return {"id": self.account_id, "name": self.name, "aadObjectId": self.aad_object_id}

    def member(self) -> JSONObject:
        """The user as the members API returns it (a TeamsChannelAccount)."""
        return {
            "id": self.account_id,
            "name": self.name,
            "aadObjectId": self.aad_object_id,
            "givenName": self.given_name,
            "surname": self.surname,
            "email": self.email,
            "userPrincipalName": self.email,
            "tenantId": self.tenant_id,
            "userRole": "user",
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Bot:
    account_id: AccountID
    app_id: AppID
    name: str

    def channel_account(self) -> JSONObject:
        return {"id": self.account_id, "name": self.name}


@dataclass(frozen=True, slots=True, kw_only=True)
class Team:
    team_id: TeamID
    aad_group_id: AadGroupID
    name: str
    tenant_id: TenantID


@dataclass(frozen=True, slots=True, kw_only=True)
class Conversation:
    """A channel, a group chat or a personal chat (threads live inside channels)."""

    conversation_id: ConversationID
    kind: ConversationKind
    tenant_id: TenantID
    name: str | None = None
    """The channel name (None for a team's General channel, as Teams sends it) or chat topic."""
    team: Team | None = None
    service_url: str | None = None
    """Overrides the emulator's service URL in activities of this conversation."""

    @property
    def is_group(self) -> bool:
        return self.kind is not ConversationKind.PERSONAL

    def thread(self, root: ActivityID) -> ConversationID:
        """The id of a channel thread whose root post is ``root``."""
        if self.kind is not ConversationKind.CHANNEL:
            raise ValueError("only channel conversations have threads")
        return thread_conversation_id(self.conversation_id, root)

    @property
    def label(self) -> str:
        if self.kind is ConversationKind.CHANNEL and self.team is not None:
            return f"{self.team.name} > {self.name or 'General'}"
        return self.name or self.conversation_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Reaction:
    reaction_type: str
    account_id: AccountID
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One message in a conversation, in its current state."""

    activity_id: ActivityID
    conversation_id: ConversationID
    """The base conversation (a channel or chat id, never a thread id)."""
    thread_root: ActivityID | None
    """In a channel, the root post of the thread (a root post names itself); else None."""
    reply_to_id: ActivityID | None
    sender_id: AccountID
    sender_name: str
    from_bot: bool
    text: str
    text_format: str
    attachments: tuple[Mapping[str, Any], ...] = ()
    entities: tuple[Mapping[str, Any], ...] = ()
    created_at: datetime
    edited_at: datetime | None = None
    edit_count: int = 0
    deleted: bool = False
    deleted_at: datetime | None = None
    reactions: tuple[Reaction, ...] = ()

    @property
    def html(self) -> str | None:
        """The HTML form of the message, when it has one."""
        for attachment in self.attachments:
            if attachment.get("contentType") == "text/html":
                content = attachment.get("content")
                return content if isinstance(content, str) else None
        if self.text_format == "xml":
            return self.text
        return None

    @property
    def wire_conversation_id(self) -> ConversationID:
        """The conversation id an activity about this message carries."""
        if self.thread_root is None:
            return self.conversation_id
        return thread_conversation_id(self.conversation_id, self.thread_root)

    def to_json(self) -> JSONObject:
        return {
            "id": self.activity_id,
            "conversationId": self.conversation_id,
            "threadRoot": self.thread_root,
            "replyToId": self.reply_to_id,
            "from": {"id": self.sender_id, "name": self.sender_name, "isBot": self.from_bot},
            "text": self.text,
            "textFormat": self.text_format,
            "html": self.html,
            "attachments": [
                {"contentType": a.get("contentType"), "name": a.get("name")}
                for a in self.attachments
                if a.get("contentType") != "text/html"
            ],
            "created": self.created_at.isoformat(),
            "edited": self.edited_at.isoformat() if self.edited_at else None,
            "editCount": self.edit_count,
            "deleted": self.deleted,
            "reactions": [{"type": r.reaction_type, "user": r.account_id} for r in self.reactions],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Blob:
    """Bytes behind an inline image or a file attachment."""

    blob_id: str
    data: bytes
    content_type: str
    name: str
    download_secret: str | None = None
    """For a file: the ``tempauth`` its pre-authenticated download URL carries."""
