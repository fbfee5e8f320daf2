"""The channel side: Teams posting activities to the bot's messaging endpoint, signed.

Each method builds the activity Teams would send, updates the emulated world (a
user's post is in the conversation whatever the bot answers), POSTs it to the bot
with a freshly minted channel token, and returns the ``Delivery``: the activity and
the bot's HTTP status. ``deliver`` posts any activity with any ``Authorization``
header; ``redeliver`` posts the same activity again (same id), as Teams does when
the bot was slow to answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import aiohttp

from devtools.teams_emulator import activities
from devtools.teams_emulator.clock import Clock
from devtools.teams_emulator.directory import Directory
from devtools.teams_emulator.ids import IdFactory
from devtools.teams_emulator.model import (
    ActivityID,
    Blob,
    Bot,
    Conversation,
    ConversationID,
    ConversationKind,
    JSONObject,
    Message,
    Reaction,
    User,
    split_thread,
    thread_conversation_id,
)
from devtools.teams_emulator.records import Delivery, DeliveryOutcome

TEAMS_USER_AGENT: Final = "Microsoft-SkypeBotApi (Microsoft-BotFramework 3.0)"


@dataclass(frozen=True, slots=True)
class InlineImage:
    """An image pasted into a message; the bot fetches it from the connector with its token."""

    data: bytes
    content_type: str = "image/png"


@dataclass(frozen=True, slots=True)
class FileUpload:
    """A file shared in a message; the bot fetches it from its pre-authenticated URL."""

    name: str
    data: bytes
    content_type: str = "application/octet-stream"


class NotStartedError(RuntimeError):
    """The emulator must be started (``async with``) first."""


class ChannelSide:
    def __init__(
        self,
        *,
        directory: Directory,
        ids: IdFactory,
        clock: Clock,
        mint: Callable[[str], str],
        default_service_url: Callable[[], str],
        base_url: Callable[[], str],
        bot_endpoint: str | None,
        delivery_timeout_s: float,
    ) -> None:
        self._directory = directory
        self._ids = ids
        self._clock = clock
        self._mint = mint
        self._default_service_url = default_service_url
        self._base_url = base_url
        self.bot_endpoint = bot_endpoint
        self.delivery_timeout_s = delivery_timeout_s
        self.deliveries: list[Delivery] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def bot(self) -> Bot:
        return self._directory.bot

    def service_url_of(self, conversation: Conversation) -> str:
        return conversation.service_url or self._default_service_url()

    # -- delivering ------------------------------------------------------------

    def _ready(self, endpoint: str | None = None) -> tuple[aiohttp.ClientSession, str]:
        """The HTTP client and where activities go; fails before anything changes when
        nothing can be sent."""
        if self._session is None:
            raise NotStartedError("start the emulator before delivering activities")
        target = endpoint or self.bot_endpoint
        if not target:
            raise ValueError("no bot endpoint: set bot_endpoint first")
        return self._session, target

    async def deliver(
        self,
        activity: Mapping[str, Any],
        *,
        authorization: str | None = None,
        unsigned: bool = False,
        endpoint: str | None = None,
        timeout_s: float | None = None,
    ) -> Delivery:
        """POST ``activity`` to the bot.

        Without ``authorization`` it is signed with a valid channel token for its
        ``serviceUrl``; ``unsigned=True`` sends no ``Authorization`` header at all.
        The bot has ``timeout_s`` (default ``delivery_timeout_s``) to answer.
        """
        session, target = self._ready(endpoint)
        if authorization is None and not unsigned:
            authorization = "Bearer " + self._mint(str(activity.get("serviceUrl", "")))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": TEAMS_USER_AGENT,
        }
        if authorization is not None:
            headers["Authorization"] = authorization
        sent_at = self._clock.now()
        started = time.monotonic()
        status: int | None = None
        body, error = "", None
        outcome = DeliveryOutcome.ANSWERED
        try:
            timeout = aiohttp.ClientTimeout(total=timeout_s or self.delivery_timeout_s)
            async with session.post(
                target, json=dict(activity), headers=headers, timeout=timeout
            ) as response:
                status = response.status
                body = await response.text()
        except TimeoutError:
            outcome, error = DeliveryOutcome.TIMED_OUT, "the bot did not answer in time"
        except aiohttp.ClientError as exc:
            outcome, error = DeliveryOutcome.UNREACHABLE, f"{type(exc).__name__}: {exc}"
        delivery = Delivery(
            activity=activity,
            endpoint=target,
            authorization=authorization,
            outcome=outcome,
            status=status,
            body=body,
            error=error,
            sent_at=sent_at,
            elapsed_s=time.monotonic() - started,
        )
        self.deliveries.append(delivery)
        return delivery

    async def redeliver(
        self, sent: Delivery | Mapping[str, Any], *, authorization: str | None = None
    ) -> Delivery:
        """Deliver the same activity again, unchanged (same id), with a fresh token."""
        activity = sent.activity if isinstance(sent, Delivery) else sent
        return await self.deliver(activity, authorization=authorization)

    # -- lookups ---------------------------------------------------------------

    def _context(
        self, conversation: Conversation, wire_id: str, service_url: str | None = None
    ) -> activities.Context:
        return activities.Context(
            bot=self.bot,
            conversation=conversation,
            wire_conversation_id=ConversationID(wire_id),
            service_url=service_url or self.service_url_of(conversation),
        )

    def _account(self, ref: User | Bot | str) -> User | Bot:
        if isinstance(ref, Bot):
            return ref
        if isinstance(ref, str) and ref == self.bot.account_id:
            return self.bot
        return self._directory.user(ref)

    def _message(self, ref: Message | str) -> Message:
        key = ref.activity_id if isinstance(ref, Message) else ref
        found = self._directory.message(key)
        if found is None:
            raise LookupError(f"no message {key!r}")
        return found

    def _user_message(self, ref: Message | str) -> tuple[Message, User]:
        found = self._message(ref)
        if found.from_bot:
            raise ValueError("users cannot edit or delete the bot's messages")
        return found, self._directory.user(found.sender_id)

    def _default_actor(self, conversation: Conversation) -> User:
        members = self._directory.members(conversation) or self._directory.users
        if not members:
            raise ValueError("the directory has no users")
        return members[0]

    # -- messages --------------------------------------------------------------

    def compose_message(
        self,
        conversation: Conversation | str,
        user: User | str,
        text: str = "",
        *,
        thread_root: str | None = None,
        mentions: Sequence[User | Bot | str] = (),
        mention_bot: bool = False,
        html: str | None = None,
        text_format: str = "plain",
        images: Sequence[InlineImage] = (),
        files: Sequence[FileUpload] = (),
        send_reply_to_id: bool = True,
        service_url: str | None = None,
    ) -> tuple[JSONObject, Message]:
        """The activity of a user's post and the message it adds (nothing stored yet)."""
        if isinstance(conversation, str):
            _base, root_in_id = split_thread(conversation)
            thread_root = thread_root or root_in_id
        target = self._directory.conversation(conversation)
        sender = self._directory.user(user)
        activity_id = self._ids.activity_id()
        reply_to: ActivityID | None = None
        root: ActivityID | None = None
        wire_id: str = target.conversation_id
        if target.kind is ConversationKind.CHANNEL:
            if thread_root is not None:  # a reply's id stands for its thread
                known = self._directory.message(thread_root)
                thread_root = known.thread_root if known and known.thread_root else thread_root
            root = ActivityID(thread_root) if thread_root else activity_id
            wire_id = thread_conversation_id(target.conversation_id, root)
            reply_to = ActivityID(thread_root) if thread_root else None
        elif thread_root is not None:
            raise ValueError("only channel posts have threads")
        context = self._context(target, wire_id, service_url)
        accounts = ([self.bot] if mention_bot else []) + [self._account(m) for m in mentions]
        full_text = activities.with_mentions(text, accounts)
        if html is not None:
            rich = html
        elif text_format == "xml":  # the text is the HTML already
            rich = full_text
        else:
            rich = activities.text_to_html(full_text, accounts)
        attachments: list[JSONObject] = []
        extra: list[JSONObject] = []
        for image in images:
            blob = self._directory.add_blob(
                Blob(
                    blob_id=self._ids.attachment_id(),
                    data=image.data,
                    content_type=image.content_type,
                    name="image",
                )
            )
            url = f"{context.service_url}v3/attachments/{blob.blob_id}/views/original"
            rich += activities.image_html(url, blob.blob_id)
            extra.append(activities.image_attachment(url))
        for upload in files:
            unique_id = self._ids.unique("file").upper()
            secret = self._ids.unique("tempauth")
            blob = self._directory.add_blob(
                Blob(
                    blob_id=unique_id,
                    data=upload.data,
                    content_type=upload.content_type,
                    name=upload.name,
                    download_secret=secret,
                )
            )
            base = self._base_url()
            extra.append(
                activities.file_attachment(
                    name=upload.name,
                    unique_id=unique_id,
                    download_url=f"{base}/_files/{unique_id}?tempauth={secret}",
                    content_url=f"{base}/_sharepoint/{unique_id}/{upload.name}",
                    etag=f'"{{{unique_id}}},1"',
                )
            )
        attachments = [activities.html_attachment(rich), *extra]
        now = self._clock.now()
        activity = activities.message(
            context,
            activity_id=activity_id,
            now=now,
            sender=sender,
            text=full_text,
            text_format=text_format,
            attachments=attachments,
            mentions=accounts,
            reply_to_id=reply_to if send_reply_to_id else None,
        )
        message = Message(
            activity_id=activity_id,
            conversation_id=target.conversation_id,
            thread_root=root,
            reply_to_id=reply_to,
            sender_id=sender.account_id,
            sender_name=sender.name,
            from_bot=False,
            text=full_text,
            text_format=text_format,
            attachments=tuple(attachments),
            entities=tuple(activities.mention_entities(accounts)),
            created_at=now,
        )
        return activity, message

    async def post_message(
        self,
        conversation: Conversation | str,
        user: User | str,
        text: str = "",
        *,
        thread_root: str | None = None,
        mentions: Sequence[User | Bot | str] = (),
        mention_bot: bool = False,
        html: str | None = None,
        text_format: str = "plain",
        images: Sequence[InlineImage] = (),
        files: Sequence[FileUpload] = (),
        send_reply_to_id: bool = True,
        service_url: str | None = None,
    ) -> Delivery:
        """A user posts: a new channel post, a reply in a thread, or a chat message."""
        self._ready()
        activity, message = self.compose_message(
            conversation,
            user,
            text,
            thread_root=thread_root,
            mentions=mentions,
            mention_bot=mention_bot,
            html=html,
            text_format=text_format,
            images=images,
            files=files,
            send_reply_to_id=send_reply_to_id,
            service_url=service_url,
        )
        self._directory.add_message(message)
        return await self.deliver(activity)

    async def edit_message(
        self, message: Message | str, text: str, *, html: str | None = None
    ) -> Delivery:
        """The author edits a message: ``messageUpdate`` / ``editMessage``, the message's id."""
        self._ready()
        found, sender = self._user_message(message)
        now = self._clock.now()
        rich = html if html is not None else activities.text_to_html(text, [])
        attachments = [
            activities.html_attachment(rich),
            *(a for a in found.attachments if a.get("contentType") != "text/html"),
        ]
        updated = self._directory.replace_message(
            replace(
                found,
                text=text,
                attachments=tuple(attachments),
                edited_at=now,
                edit_count=found.edit_count + 1,
            )
        )
        conversation = self._directory.conversation(found.conversation_id)
        activity = activities.message_update(
            self._context(conversation, found.wire_conversation_id),
            activity_id=found.activity_id,
            now=now,
            sender=sender,
            event_type="editMessage",
            text=updated.text,
            text_format=updated.text_format,
            attachments=attachments,
            entities=list(updated.entities),
        )
        return await self.deliver(activity)

    async def delete_message(self, message: Message | str) -> Delivery:
        """The author deletes a message: ``messageDelete`` / ``softDeleteMessage``."""
        self._ready()
        found, sender = self._user_message(message)
        now = self._clock.now()
        self._directory.replace_message(replace(found, deleted=True, deleted_at=now))
        conversation = self._directory.conversation(found.conversation_id)
        activity = activities.message_delete(
            self._context(conversation, found.wire_conversation_id),
            activity_id=found.activity_id,
            now=now,
            sender=sender,
        )
        return await self.deliver(activity)

    async def undelete_message(self, message: Message | str) -> Delivery:
        """The author restores a deleted message: ``messageUpdate`` / ``undeleteMessage``."""
        self._ready()
        found, sender = self._user_message(message)
        now = self._clock.now()
        restored = self._directory.replace_message(replace(found, deleted=False, deleted_at=None))
        conversation = self._directory.conversation(found.conversation_id)
        activity = activities.message_update(
            self._context(conversation, found.wire_conversation_id),
            activity_id=found.activity_id,
            now=now,
            sender=sender,
            event_type="undeleteMessage",
            text=restored.text,
            text_format=restored.text_format,
            attachments=list(restored.attachments),
            entities=list(restored.entities),
        )
        return await self.deliver(activity)

    async def react(
        self,
        message: Message | str,
        user: User | str,
        reaction: str = "like",
        *,
        removed: bool = False,
    ) -> Delivery:
        """A user adds (or with ``removed=True`` takes back) a reaction on a message."""
        self._ready()
        found = self._message(message)
        sender = self._directory.user(user)
        now = self._clock.now()
        others = tuple(
            r
            for r in found.reactions
            if not (r.account_id == sender.account_id and r.reaction_type == reaction)
        )
        mine = (
            ()
            if removed
            else (Reaction(reaction_type=reaction, account_id=sender.account_id, at=now),)
        )
        self._directory.replace_message(replace(found, reactions=others + mine))
        conversation = self._directory.conversation(found.conversation_id)
        activity = activities.message_reaction(
            self._context(conversation, found.wire_conversation_id),
            activity_id=self._ids.event_activity_id(),
            now=now,
            sender=sender,
            target_id=found.activity_id,
            reaction_type=reaction,
            added=not removed,
        )
        return await self.deliver(activity)

    # -- membership and installation ---------------------------------------------

    def _membership_conversation(self, conversation: Conversation | str) -> Conversation:
        """Team events arrive on the team's General channel."""
        target = self._directory.conversation(conversation)
        if target.team is not None:
            return self._directory.conversation(target.team.team_id)
        return target

    async def update_members(
        self,
        conversation: Conversation | str,
        accounts: Sequence[User | Bot | str],
        *,
        added: bool,
        by: User | str | None = None,
    ) -> Delivery:
        """``conversationUpdate`` with ``membersAdded``/``membersRemoved`` (the bot included)."""
        self._ready()
        target = self._membership_conversation(conversation)
        resolved = [self._account(a) for a in accounts]
        actor = self._directory.user(by) if by is not None else self._default_actor(target)
        users = [a for a in resolved if isinstance(a, User)]
        if added:
            self._directory.add_members(target, users)
        else:
            self._directory.remove_members(target, users)
        if any(isinstance(a, Bot) for a in resolved):
            self._directory.set_bot_installed(target, installed=added)
        activity = activities.conversation_update(
            self._context(target, target.conversation_id),
            activity_id=self._ids.event_activity_id(),
            now=self._clock.now(),
            sender=actor,
            accounts=resolved,
            added=added,
        )
        return await self.deliver(activity)

    async def installation_update(
        self, conversation: Conversation | str, *, action: str = "add", by: User | str | None = None
    ) -> Delivery:
        """``installationUpdate`` with ``action`` ``add`` or ``remove``."""
        self._ready()
        target = self._membership_conversation(conversation)
        actor = self._directory.user(by) if by is not None else self._default_actor(target)
        self._directory.set_bot_installed(target, installed=action.startswith("add"))
        activity = activities.installation_update(
            self._context(target, target.conversation_id),
            activity_id=self._ids.event_activity_id(),
            now=self._clock.now(),
            sender=actor,
            action=action,
        )
        return await self.deliver(activity)

    async def team_event(
        self, channel: Conversation | str, event_type: str, *, by: User | str | None = None
    ) -> Delivery:
        """A team or channel event (``channelCreated``, ``channelRenamed``, ``teamRenamed``...)."""
        self._ready()
        subject = self._directory.conversation(channel)
        if subject.team is None:
            raise ValueError("team events happen in channels")
        target = self._membership_conversation(subject)
        actor = self._directory.user(by) if by is not None else self._default_actor(target)
        activity = activities.team_event(
            self._context(target, target.conversation_id),
            activity_id=self._ids.event_activity_id(),
            now=self._clock.now(),
            sender=actor,
            channel=subject,
            event_type=event_type,
        )
        return await self.deliver(activity)
