"""The parts of a Bot Framework activity the bridge reads, parsed from untrusted JSON.

Parsed by hand rather than with the SDK's pydantic ``Activity``: that model logs
validation failures (input values included) at error level, reads the edit event
type from ``event_type`` while Teams sends ``channelData.eventType``, and types many
optional fields as non-optional. Here every field is checked for its JSON type,
unknown fields are ignored, and anything malformed raises ``ActivityParseError``
(answered with 400).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from adapters.teams.ids import (
    AadObjectID,
    TeamsActivityID,
    TeamsConversationID,
    TeamsUserID,
    TenantID,
)

THREAD_MARKER = ";messageid="
MAX_LIST_ITEMS = 256
"""Longer lists (members, entities, attachments) are not a real activity."""

JSON = Mapping[str, Any]
T = TypeVar("T")


class ActivityParseError(ValueError):
    """The request body is not an activity the bridge can read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TeamsAccount:
    """A ``ChannelAccount``: a user (``29:...``) or a bot (``28:...``)."""

    id: TeamsUserID
    name: str = ""
    aad_object_id: AadObjectID | None = None
    role: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TeamsActivity:
    type: str
    id: TeamsActivityID | None
    timestamp: datetime | None
    service_url: str | None
    channel_id: str | None
    sender: TeamsAccount | None
    recipient: TeamsAccount | None
    conversation_id: TeamsConversationID | None
    conversation_type: str | None
    conversation_tenant_id: TenantID | None
    text: str | None = None
    text_format: str | None = None
    reply_to_id: TeamsActivityID | None = None
    action: str | None = None
    attachments: tuple[JSON, ...] = ()
    entities: tuple[JSON, ...] = ()
    channel_data: JSON | None = None
    members_added: tuple[TeamsAccount, ...] = ()
    members_removed: tuple[TeamsAccount, ...] = ()
    reactions_added: tuple[str, ...] = ()
    reactions_removed: tuple[str, ...] = ()

    @property
    def event_type(self) -> str | None:
        """``channelData.eventType`` (editMessage, softDeleteMessage, channelCreated ...)."""
        return _str_at(self.channel_data, "eventType")

    @property
    def channel_tenant_id(self) -> TenantID | None:
        """``channelData.tenant.id``."""
        value = _str_at(_obj_at(self.channel_data, "tenant"), "id")
        return TenantID(value) if value else None

    @property
    def tenant_ids(self) -> tuple[TenantID, ...]:
        """Every tenant the activity names (the conversation's and channelData's)."""
        return tuple(t for t in (self.conversation_tenant_id, self.channel_tenant_id) if t)

    @property
    def tenant_id(self) -> TenantID | None:
        return self.conversation_tenant_id or self.channel_tenant_id

    @property
    def team_id(self) -> str | None:
        """``channelData.team.id``: the team (the id of its General channel)."""
        return _str_at(_obj_at(self.channel_data, "team"), "id")

    @property
    def team_channel_id(self) -> str | None:
        """``channelData.channel.id``: the channel (without a thread suffix)."""
        return _str_at(_obj_at(self.channel_data, "channel"), "id")

    @property
    def base_conversation_id(self) -> TeamsConversationID | None:
        """The conversation without a channel thread's ``;messageid=`` suffix."""
        if self.conversation_id is None:
            return None
        return TeamsConversationID(self.conversation_id.partition(THREAD_MARKER)[0])

    @property
    def thread_root_id(self) -> TeamsActivityID | None:
        """The root post of the channel thread the activity belongs to, if any."""
        if self.conversation_id is None:
            return None
        _, marker, root = self.conversation_id.partition(THREAD_MARKER)
        return TeamsActivityID(root) if marker and root else None


def parse_activity(document: Any) -> TeamsActivity:
    """Read an activity from decoded JSON, or raise ``ActivityParseError``."""
    if not isinstance(document, dict):
        raise ActivityParseError("an activity is a JSON object")
    activity_type = _opt_str(document, "type")
    if not activity_type:
        raise ActivityParseError("type is required")
    conversation = _opt_obj(document, "conversation")
    conversation_id = _opt_str(conversation, "id") if conversation is not None else None
    tenant = _opt_str(conversation, "tenantId") if conversation is not None else None
    conversation_type = (
        _opt_str(conversation, "conversationType") if conversation is not None else None
    )
    activity_id = _opt_str(document, "id")
    reply_to = _opt_str(document, "replyToId")
    return TeamsActivity(
        type=activity_type,
        id=TeamsActivityID(activity_id) if activity_id else None,
        timestamp=_opt_time(document, "timestamp"),
        service_url=_opt_str(document, "serviceUrl"),
        channel_id=_opt_str(document, "channelId"),
        sender=_opt_account(document, "from"),
        recipient=_opt_account(document, "recipient"),
        conversation_id=TeamsConversationID(conversation_id) if conversation_id else None,
        conversation_type=conversation_type,
        conversation_tenant_id=TenantID(tenant) if tenant else None,
        text=_opt_str(document, "text"),
        text_format=_opt_str(document, "textFormat"),
        reply_to_id=TeamsActivityID(reply_to) if reply_to else None,
        action=_opt_str(document, "action"),
        attachments=tuple(_opt_list(document, "attachments", _as_obj)),
        entities=tuple(_opt_list(document, "entities", _as_obj)),
        channel_data=_opt_obj(document, "channelData"),
        members_added=tuple(_opt_list(document, "membersAdded", _as_account)),
        members_removed=tuple(_opt_list(document, "membersRemoved", _as_account)),
        reactions_added=tuple(_opt_list(document, "reactionsAdded", _as_reaction)),
        reactions_removed=tuple(_opt_list(document, "reactionsRemoved", _as_reaction)),
    )


def parse_timestamp(value: str) -> datetime:
    """An ISO 8601 time as aware UTC; Teams sends up to seven fractional digits."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    if dot:  # Python reads at most six fractional digits
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, zone = rest[:digits], rest[digits:]
        text = f"{head}.{(fraction + '000000')[:6]}{zone}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ActivityParseError("timestamp is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _opt_str(document: JSON, key: str) -> str | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ActivityParseError(f"{key} must be a string")
    return value


def _opt_obj(document: JSON, key: str) -> JSON | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ActivityParseError(f"{key} must be an object")
    return value


def _opt_time(document: JSON, key: str) -> datetime | None:
    value = _opt_str(document, key)
    return parse_timestamp(value) if value else None


def _opt_list(document: JSON, key: str, item: Callable[[Any, str], T]) -> list[T]:
    value = document.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ActivityParseError(f"{key} must be a list")
    if len(value) > MAX_LIST_ITEMS:
        raise ActivityParseError(f"{key} has too many items")
    return [item(entry, key) for entry in value]


def _as_obj(value: Any, key: str) -> JSON:
    if not isinstance(value, dict):
        raise ActivityParseError(f"{key} items must be objects")
    return value


def _as_account(value: Any, key: str) -> TeamsAccount:
    account = _account(value)
    if account is None:
        raise ActivityParseError(f"{key} items must be accounts with an id")
    return account


def _as_reaction(value: Any, key: str) -> str:
    reaction_type = _str_at(value if isinstance(value, dict) else None, "type")
    if not reaction_type:
        raise ActivityParseError(f"{key} items must have a type")
    return reaction_type


def _opt_account(document: JSON, key: str) -> TeamsAccount | None:
    value = document.get(key)
    if value is None:
        return None
    account = _account(value)
    if account is None:
        raise ActivityParseError(f"{key} must be an account with an id")
    return account


def _account(value: Any) -> TeamsAccount | None:
    if not isinstance(value, dict):
        return None
    account_id = value.get("id")
    if not isinstance(account_id, str) or not account_id:
        return None
    name = value.get("name")
    aad = value.get("aadObjectId")
    role = value.get("role")
    return TeamsAccount(
        id=TeamsUserID(account_id),
        name=name if isinstance(name, str) else "",
        aad_object_id=AadObjectID(aad) if isinstance(aad, str) and aad else None,
        role=role if isinstance(role, str) else None,
    )


def _obj_at(document: JSON | None, key: str) -> JSON | None:
    if document is None:
        return None
    value = document.get(key)
    return value if isinstance(value, dict) else None


def _str_at(document: JSON | None, key: str) -> str | None:
    if document is None:
        return None
    value = document.get(key)
    return value if isinstance(value, str) and value else None
