"""Inbound activities shaped as Teams sends them to a bot (pure functions, no I/O).

Shapes follow activities captured from Teams: ``timestamp`` in UTC with seven
fractional digits, ``localTimestamp`` in the sender's offset, ``channelData`` with
``tenant`` (and, in a channel, ``teamsChannelId``/``teamsTeamId``/``channel``/``team``
carrying ids only; names appear in membership events), a ``clientInfo`` entity, the
message text with ``<at>Name</at>`` for mentions plus a ``text/html`` attachment with
the rich form. A channel post's conversation id names its thread
(``;messageid=<root>``; a new post is its own root).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from devtools.teams_emulator.model import (
    Bot,
    Conversation,
    ConversationID,
    ConversationKind,
    JSONObject,
    User,
)

CHANNEL_ID: Final = "msteams"
MENTION_ITEMTYPE: Final = "http://schema.skype.com/Mention"
IMAGE_ITEMTYPE: Final = "http://schema.skype.com/AMSImage"
FILE_DOWNLOAD_INFO: Final = "application/vnd.microsoft.teams.file.download.info"
REACTION_TYPES: Final = ("like", "heart", "laugh", "surprised", "sad", "angry")


def wire_timestamp(moment: datetime) -> str:
    """``2025-10-08T17:33:01.4953740Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def wire_local_timestamp(moment: datetime, offset_minutes: int) -> str:
    """``2025-10-08T10:33:01.4953740-07:00``."""
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return local.strftime("%Y-%m-%dT%H:%M:%S.%f") + f"0{sign}{hours:02d}:{minutes:02d}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """Where an activity happens and who receives it."""

    bot: Bot
    conversation: Conversation
    wire_conversation_id: ConversationID
    service_url: str


def _account(account: User | Bot) -> JSONObject:
    return account.channel_account()


def channel_data(
    conversation: Conversation, *, event_type: str | None = None, with_names: bool = False
) -> JSONObject:
    data: JSONObject = {}
    team = conversation.team
    if conversation.kind is ConversationKind.CHANNEL and team is not None:
        data["teamsChannelId"] = conversation.conversation_id
        data["teamsTeamId"] = team.team_id
        channel: JSONObject = {"id": conversation.conversation_id}
        team_data: JSONObject = {"id": team.team_id, "aadGroupId": team.aad_group_id}
        if with_names:
            if conversation.name is not None:
                channel["name"] = conversation.name
            team_data["name"] = team.name
        data["channel"] = channel
        data["team"] = team_data
    if event_type is not None:
        data["eventType"] = event_type
    data["tenant"] = {"id": conversation.tenant_id}
    return data


def envelope(
    context: Context,
    *,
    activity_type: str,
    activity_id: str,
    now: datetime,
    sender: User,
    data: JSONObject,
) -> JSONObject:
    conversation = context.conversation
    wire_conversation: JSONObject = {}
    if conversation.is_group:
        wire_conversation["isGroup"] = True
    wire_conversation["conversationType"] = conversation.kind.value
    wire_conversation["tenantId"] = conversation.tenant_id
    wire_conversation["id"] = context.wire_conversation_id
    return {
        "type": activity_type,
        "id": activity_id,
        "timestamp": wire_timestamp(now),
        "localTimestamp": wire_local_timestamp(now, sender.utc_offset_minutes),
        "serviceUrl": context.service_url,
        "channelId": CHANNEL_ID,
        "from": _account(sender),
        "conversation": wire_conversation,
        "recipient": context.bot.channel_account(),
        "channelData": data,
        "locale": "en-US",
        "localTimezone": sender.timezone_name,
    }


def client_info(sender: User) -> JSONObject:
    return {
        "locale": "en-US",
        "country": "US",
        "platform": "Web",
        "timezone": sender.timezone_name,
        "type": "clientInfo",
    }


def mention_tag(account: User | Bot) -> str:
    return f"<at>{account.name}</at>"


def with_mentions(text: str, mentions: Sequence[User | Bot]) -> str:
    """``text`` with ``<at>Name</at>`` for every mentioned account (prepended if absent)."""
    missing = [mention_tag(m) for m in mentions if mention_tag(m) not in text]
    return " ".join([*missing, text]) if missing else text


def mention_entities(mentions: Sequence[User | Bot]) -> list[JSONObject]:
    return [{"mentioned": _account(m), "text": mention_tag(m), "type": "mention"} for m in mentions]


def text_to_html(text: str, mentions: Sequence[User | Bot]) -> str:
    """The rich form Teams attaches: escaped text, mentions as ``<span itemtype=...>``."""
    rendered = html.escape(text, quote=False)
    for index, mention in enumerate(mentions):
        tag = html.escape(mention_tag(mention), quote=False)
        span = (
            f'<span itemtype="{MENTION_ITEMTYPE}" itemscope="" itemid="{index}">'
            f"{html.escape(mention.name, quote=False)}</span>"
        )
        rendered = rendered.replace(tag, span, 1)
    return f"<p>{rendered.replace(chr(10), '<br>')}</p>"


def image_html(url: str, blob_id: str) -> str:
    return (
        f'<p><img alt="image" src="{html.escape(url)}" width="250" height="250" '
        f'id="x_{html.escape(blob_id)}" itemscope="" itemtype="{IMAGE_ITEMTYPE}" '
        'style="vertical-align:bottom; width:250px; height:250px"></p>'
    )


def html_attachment(content: str) -> JSONObject:
    return {"contentType": "text/html", "content": content}


def image_attachment(url: str) -> JSONObject:
    return {"contentType": "image/*", "contentUrl": url}


def file_attachment(
    *, name: str, unique_id: str, download_url: str, content_url: str, etag: str
) -> JSONObject:
    file_type = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return {
        "contentType": FILE_DOWNLOAD_INFO,
        "contentUrl": content_url,
        "name": name,
        "content": {
            "downloadUrl": download_url,
            "uniqueId": unique_id,
            "fileType": file_type,
            "etag": etag,
        },
    }


def message(
    context: Context,
    *,
    activity_id: str,
    now: datetime,
    sender: User,
    text: str,
    text_format: str,
    attachments: Sequence[JSONObject],
    mentions: Sequence[User | Bot],
    reply_to_id: str | None,
) -> JSONObject:
    activity = envelope(
        context,
        activity_type="message",
        activity_id=activity_id,
        now=now,
        sender=sender,
        data=channel_data(context.conversation),
    )
    activity["text"] = text
    activity["textFormat"] = text_format
    activity["attachments"] = list(attachments)
    activity["entities"] = [*mention_entities(mentions), client_info(sender)]
    if reply_to_id is not None:
        activity["replyToId"] = reply_to_id
    return activity


def message_update(
    context: Context,
    *,
    activity_id: str,
    now: datetime,
    sender: User,
    event_type: str,
    text: str,
    text_format: str,
    attachments: Sequence[Mapping[str, Any]],
    entities: Sequence[Any],
) -> JSONObject:
    activity = envelope(
        context,
        activity_type="messageUpdate",
        activity_id=activity_id,
        now=now,
        sender=sender,
        data=channel_data(context.conversation, event_type=event_type),
    )
    activity["text"] = text
    activity["textFormat"] = text_format
    activity["attachments"] = list(attachments)
    activity["entities"] = [*entities, client_info(sender)]
    return activity


def message_delete(
    context: Context, *, activity_id: str, now: datetime, sender: User
) -> JSONObject:
    return envelope(
        context,
        activity_type="messageDelete",
        activity_id=activity_id,
        now=now,
        sender=sender,
        data=channel_data(context.conversation, event_type="softDeleteMessage"),
    )


def message_reaction(
    context: Context,
    *,
    activity_id: str,
    now: datetime,
    sender: User,
    target_id: str,
    reaction_type: str,
    added: bool,
) -> JSONObject:
    activity = envelope(
        context,
        activity_type="messageReaction",
        activity_id=activity_id,
        now=now,
        sender=sender,
        data=channel_data(context.conversation),
    )
    activity["reactionsAdded" if added else "reactionsRemoved"] = [{"type": reaction_type}]
    activity["replyToId"] = target_id
    return activity


def conversation_update(
    context: Context,
    *,
    activity_id: str,
    now: datetime,
    sender: User,
    accounts: Sequence[User | Bot],
    added: bool,
) -> JSONObject:
    conversation = context.conversation
    event_type = None
    if conversation.kind is ConversationKind.CHANNEL:
        event_type = "teamMemberAdded" if added else "teamMemberRemoved"
    activity = envelope(
        context,
        activity_type="conversationUpdate",
        activity_id=activity_id,
        now=now,
        sender=sender,
        data=channel_data(conversation, event_type=event_type, with_names=True),
    )
    members = []
    for account in accounts:
        entry: JSONObject = {"id": account.account_id}
        if isinstance(account, User):
            entry["aadObjectId"] = account.aad_object_id
        members.append(entry)
    activity["membersAdded" if added else "membersRemoved"] = members
    return activity


def team_event(
    context: Context,
    *,
    activity_id: str,
    now: datetime,
    sender: User,
    channel: Conversation,
    event_type: str,
) -> JSONObject:
    """A ``conversationUpdate`` about a team or one of its channels (``channelCreated``,
    ``channelRenamed``, ``channelDeleted``, ``teamRenamed``...), on the team's conversation."""
    return envelope(
        context,
        activity_type="conversationUpdate",
        activity_id=activity_id,
        now=now,
        sender=sender,
        data=channel_data(channel, event_type=event_type, with_names=True),
    )


def installation_update(
    context: Context, *, activity_id: str, now: datetime, sender: User, action: str
) -> JSONObject:
    data = channel_data(context.conversation, with_names=True)
    data["source"] = {"name": "message"}
    activity = envelope(
        context,
        activity_type="installationUpdate",
        activity_id=activity_id,
        now=now,
        sender=sender,
        data=data,
    )
    activity["action"] = action
    return activity
