"""The connector's operations on the emulated world, free of HTTP.

Each returns the ``Reply`` the connector gives: the bot's messages are added,
updated and deleted here, with Teams' answers for what it refuses (403
``BotNotInConversationRoster``, 404, 400 ``BadArgument``/``BadSyntax``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from devtools.teams_emulator.clock import Clock
from devtools.teams_emulator.directory import Directory
from devtools.teams_emulator.ids import IdFactory
from devtools.teams_emulator.model import (
    ActivityID,
    Conversation,
    ConversationKind,
    Message,
    Reaction,
    User,
    split_thread,
    thread_conversation_id,
)
from devtools.teams_emulator.respond import Reply, error

PAGE_SIZE_DEFAULT: Final = 200


def message_problem(activity: Any) -> Reply | None:
    if not isinstance(activity, dict):
        return error(400, "BadSyntax", "The request body is not an activity.")
    kind = activity.get("type", "message")
    if kind != "message":
        return error(400, "BadArgument", f"Unsupported activity type {kind!r}.")
    text, attachments = activity.get("text"), activity.get("attachments")
    if text is not None and not isinstance(text, str):
        return error(400, "BadSyntax", "text must be a string.")
    if attachments is not None and not isinstance(attachments, list):
        return error(400, "BadSyntax", "attachments must be a list.")
    if not text and not attachments:
        return error(400, "BadArgument", "Text or attachments are required.")
    return None


def channel_id_of(body: Mapping[str, Any]) -> str | None:
    """``channelData.channel.id`` of conversation parameters, if any."""
    channel_data = body.get("channelData")
    channel = channel_data.get("channel") if isinstance(channel_data, dict) else None
    channel_id = channel.get("id") if isinstance(channel, dict) else None
    return channel_id if isinstance(channel_id, str) and channel_id else None


def not_found(what: str) -> Reply:
    return error(404, "NotFound", f"{what} was not found.")


def conversation_not_found() -> Reply:
    return error(404, "ConversationNotFound", "Conversation not found.")


def not_in_roster() -> Reply:
    return error(
        403, "BotNotInConversationRoster", "The bot is not part of the conversation roster."
    )


class Operations:
    def __init__(self, *, directory: Directory, ids: IdFactory, clock: Clock) -> None:
        self._directory = directory
        self._ids = ids
        self._clock = clock

    def _writable(self, conversation_id: str) -> Conversation | Reply:
        found = self._directory.find_conversation(conversation_id)
        if found is None:
            return conversation_not_found()
        if not self._directory.bot_installed(found):
            return not_in_roster()
        return found

    def _post_bot_message(
        self,
        conversation: Conversation,
        activity: dict[str, Any],
        *,
        thread_root: ActivityID | None,
        reply_to: ActivityID | None,
    ) -> Message:
        bot = self._directory.bot
        activity_id = self._ids.activity_id()
        root: ActivityID | None = None
        if conversation.kind is ConversationKind.CHANNEL:
            root = thread_root or activity_id
        attachments = activity.get("attachments") or []
        entities = activity.get("entities") or []
        message = Message(
            activity_id=activity_id,
            conversation_id=conversation.conversation_id,
            thread_root=root,
            reply_to_id=reply_to,
            sender_id=bot.account_id,
            sender_name=bot.name,
            from_bot=True,
            text=activity.get("text") or "",
            text_format=str(activity.get("textFormat") or "markdown"),
            attachments=tuple(a for a in attachments if isinstance(a, dict)),
            entities=tuple(e for e in entities if isinstance(e, dict)),
            created_at=self._clock.now(),
        )
        return self._directory.add_message(message)

    def create(self, body: Any) -> Reply:
        if not isinstance(body, dict):
            return error(400, "BadSyntax", "The request body is not conversation parameters.")
        channel_id = channel_id_of(body)
        if channel_id is not None:
            return self._create_thread(channel_id, body.get("activity"))
        if body.get("isGroup"):
            return error(400, "BadSyntax", "Group chats cannot be created by a bot.")
        return self._create_personal(body.get("members"), body.get("activity"))

    def _create_thread(self, channel_id: str, activity: Any) -> Reply:
        """A new post in a channel: the thread's id and the post's id."""
        target = self._writable(channel_id)
        if isinstance(target, Reply):
            return target
        if target.kind is not ConversationKind.CHANNEL:
            return error(400, "BadArgument", "channelData.channel.id is not a channel.")
        problem = message_problem(activity)
        if problem is not None:
            return problem
        assert isinstance(activity, dict)
        posted = self._post_bot_message(target, activity, thread_root=None, reply_to=None)
        thread = thread_conversation_id(target.conversation_id, posted.activity_id)
        return Reply(201, {"id": thread, "activityId": posted.activity_id})

    def _create_personal(self, members: Any, activity: Any) -> Reply:
        """The bot's personal chat with one user (the same id every time)."""
        if not isinstance(members, list) or len(members) != 1 or not isinstance(members[0], dict):
            return error(400, "BadSyntax", "A personal chat takes exactly one member.")
        try:
            user = self._directory.user(str(members[0].get("id")))
        except LookupError:
            return error(404, "NotFound", "The member was not found.")
        chat = self._directory.personal_chat(user)
        if not self._directory.bot_installed(chat):
            return not_in_roster()
        if activity is None:
            return Reply(201, {"id": chat.conversation_id})
        problem = message_problem(activity)
        if problem is not None:
            return problem
        assert isinstance(activity, dict)
        posted = self._post_bot_message(chat, activity, thread_root=None, reply_to=None)
        return Reply(201, {"id": chat.conversation_id, "activityId": posted.activity_id})

    def send(self, conversation_id: str, body: Any, reply_to: str | None) -> Reply:
        target = self._writable(conversation_id)
        if isinstance(target, Reply):
            return target
        if isinstance(body, dict) and body.get("type") == "typing":
            return Reply(201, {})
        problem = message_problem(body)
        if problem is not None:
            return problem
        assert isinstance(body, dict)
        _base, root_in_id = split_thread(conversation_id)
        thread_root: ActivityID | None = None
        reply_to_id: ActivityID | None = None
        if reply_to is not None:
            replied = self._directory.message(reply_to)
            if replied is None or replied.conversation_id != target.conversation_id:
                return not_found("The activity replied to")
            reply_to_id = replied.activity_id
            thread_root = replied.thread_root
        elif target.kind is ConversationKind.CHANNEL and root_in_id is not None:
            root = self._directory.message(root_in_id)
            if root is None or root.conversation_id != target.conversation_id:
                return not_found("The thread")
            thread_root = root.thread_root
        elif isinstance(body.get("replyToId"), str):
            reply_to_id = ActivityID(body["replyToId"])
        posted = self._post_bot_message(target, body, thread_root=thread_root, reply_to=reply_to_id)
        return Reply(201, {"id": posted.activity_id})

    def _own_message(self, conversation_id: str, activity_id: str) -> Message | Reply:
        target = self._writable(conversation_id)
        if isinstance(target, Reply):
            return target
        found = self._directory.message(activity_id)
        if found is None or found.conversation_id != target.conversation_id or found.deleted:
            return not_found("The activity")
        if not found.from_bot:
            return error(403, "Forbidden", "A bot can change only its own messages.")
        return found

    def update(self, conversation_id: str, activity_id: str, body: Any) -> Reply:
        found = self._own_message(conversation_id, activity_id)
        if isinstance(found, Reply):
            return found
        problem = message_problem(body)
        if problem is not None:
            return problem
        assert isinstance(body, dict)
        attachments = body.get("attachments") or []
        self._directory.replace_message(
            replace(
                found,
                text=body.get("text") or "",
                text_format=str(body.get("textFormat") or found.text_format),
                attachments=tuple(a for a in attachments if isinstance(a, dict)),
                entities=tuple(e for e in body.get("entities") or [] if isinstance(e, dict)),
                edited_at=self._clock.now(),
                edit_count=found.edit_count + 1,
            )
        )
        return Reply(200, {"id": found.activity_id})

    def delete(self, conversation_id: str, activity_id: str) -> Reply:
        found = self._own_message(conversation_id, activity_id)
        if isinstance(found, Reply):
            return found
        self._directory.replace_message(replace(found, deleted=True, deleted_at=self._clock.now()))
        return Reply(200)

    def react(
        self, conversation_id: str, activity_id: str, reaction_type: str, *, add: bool
    ) -> Reply:
        target = self._writable(conversation_id)
        if isinstance(target, Reply):
            return target
        found = self._directory.message(activity_id)
        if found is None or found.conversation_id != target.conversation_id or found.deleted:
            return not_found("The activity")
        bot = self._directory.bot.account_id
        kept = tuple(
            r
            for r in found.reactions
            if not (r.account_id == bot and r.reaction_type == reaction_type)
        )
        new = (
            (Reaction(reaction_type=reaction_type, account_id=bot, at=self._clock.now()),)
            if add
            else ()
        )
        self._directory.replace_message(replace(found, reactions=kept + new))
        return Reply(200, {})

    def member_list(self, conversation_id: str) -> tuple[User, ...] | Reply:
        found = self._directory.find_conversation(conversation_id)
        if found is None:
            return conversation_not_found()
        if not self._directory.bot_installed(found):
            return not_in_roster()
        return self._directory.members(found)

    # -- reads -------------------------------------------------------------------

    def members(self, conversation_id: str) -> Reply:
        members = self.member_list(conversation_id)
        if isinstance(members, Reply):
            return members
        return Reply(200, [u.member() for u in members])

    def member(self, conversation_id: str, member_id: str) -> Reply:
        """A member by Teams id or AAD object id."""
        members = self.member_list(conversation_id)
        if isinstance(members, Reply):
            return members
        for user in members:
            if member_id in (user.account_id, user.aad_object_id):
                return Reply(200, user.member())
        return error(404, "MemberNotFoundInConversation", "The member was not found.")

    def paged_members(
        self, conversation_id: str, page_size: str | None, continuation: str | None
    ) -> Reply:
        members = self.member_list(conversation_id)
        if isinstance(members, Reply):
            return members
        try:
            size = max(1, int(page_size or PAGE_SIZE_DEFAULT))
            start = int(continuation or 0)
        except ValueError:
            return error(400, "BadArgument", "Bad pageSize or continuationToken.")
        payload: dict[str, Any] = {"members": [u.member() for u in members[start : start + size]]}
        if start + size < len(members):
            payload["continuationToken"] = str(start + size)
        return Reply(200, payload)

    def team(self, team_id: str) -> Reply:
        try:
            team = self._directory.team(team_id)
        except LookupError:
            return not_found("The team")
        return Reply(
            200,
            {
                "id": team.team_id,
                "name": team.name,
                "aadGroupId": team.aad_group_id,
                "tenantId": team.tenant_id,
            },
        )

    def channels(self, team_id: str) -> Reply:
        """The team's channels; the General channel has no name, as in Teams."""
        try:
            team = self._directory.team(team_id)
        except LookupError:
            return not_found("The team")
        channels = [
            {"id": c.conversation_id, "name": c.name} for c in self._directory.channels(team)
        ]
        return Reply(200, {"conversations": channels})

    def attachment_info(self, attachment_id: str) -> Reply:
        blob = self._directory.blob(attachment_id)
        if blob is None or blob.download_secret is not None:
            return not_found("The attachment")
        views = [{"viewId": "original", "size": len(blob.data)}]
        return Reply(200, {"name": blob.name, "type": blob.content_type, "views": views})

    def attachment(self, attachment_id: str) -> Reply:
        """An inline image's bytes (files are downloaded from their own URL instead)."""
        blob = self._directory.blob(attachment_id)
        if blob is None or blob.download_secret is not None:
            return not_found("The attachment")
        return Reply(200, raw=blob.data, content_type=blob.content_type)
