"""The mutable registry of the emulated tenant: users, teams, conversations, messages.

Everything it hands out is an immutable snapshot; a change replaces the stored object.
A team's channels share the team's roster and the bot's installation in the team; a
chat has its own. A team's owners are members of its roster marked as owners (a user
taken off the roster is no longer an owner).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from devtools.teams_emulator.ids import IdFactory
from devtools.teams_emulator.model import (
    AccountID,
    ActivityID,
    Blob,
    Bot,
    Conversation,
    ConversationID,
    ConversationKind,
    Message,
    Team,
    TeamID,
    TenantID,
    User,
    split_thread,
)

GENERAL_CHANNEL = "General"


class UnknownError(LookupError):
    """No such user, team or conversation in the directory."""


class Directory:
    def __init__(self, *, ids: IdFactory, tenant_id: TenantID, bot: Bot) -> None:
        self._ids = ids
        self.tenant_id = tenant_id
        self.bot = bot
        self._users: dict[AccountID, User] = {}
        self._teams: dict[TeamID, Team] = {}
        self._conversations: dict[ConversationID, Conversation] = {}
        self._rosters: dict[str, list[AccountID]] = {}
        self._owners: dict[TeamID, list[AccountID]] = {}
        self._bot_installed: dict[str, bool] = {}
        self._chat_serial = 0
        self._messages: dict[ActivityID, Message] = {}
        self._order: dict[ConversationID, list[ActivityID]] = {}
        self._blobs: dict[str, Blob] = {}

    # -- users ------------------------------------------------------------------

    def add_user(
        self, name: str, *, email: str | None = None, tenant_id: str | None = None
    ) -> User:
        if any(u.name == name for u in self._users.values()):
            raise ValueError(f"a user named {name!r} exists already")
        given, _, surname = name.partition(" ")
        handle = ".".join(part.lower() for part in name.split() if part) or "user"
        user = User(
            account_id=self._ids.user_account_id(name),
            aad_object_id=self._ids.aad_object_id(name),
            name=name,
            tenant_id=TenantID(tenant_id or self.tenant_id),
            email=email or f"{handle}@contoso.example",
            given_name=given,
            surname=surname,
        )
        self._users[user.account_id] = user
        return user

    @property
    def users(self) -> tuple[User, ...]:
        return tuple(self._users.values())

    def user(self, ref: User | str) -> User:
        """A user by object, ``29:`` id, AAD object id or display name."""
        key = ref.account_id if isinstance(ref, User) else ref
        found = self._users.get(AccountID(key)) or next(
            (u for u in self._users.values() if key in (u.aad_object_id, u.name)), None
        )
        if found is None:
            raise UnknownError(f"no user {key!r}")
        return found

    # -- teams and conversations -----------------------------------------------

    def team(self, ref: Team | str) -> Team:
        key = ref.team_id if isinstance(ref, Team) else ref
        found = self._teams.get(TeamID(key)) or next(
            (t for t in self._teams.values() if t.name == key), None
        )
        if found is None:
            raise UnknownError(f"no team {key!r}")
        return found

    @property
    def teams(self) -> tuple[Team, ...]:
        return tuple(self._teams.values())

    def team_of(self, ref: Team | Conversation | str) -> Team:
        """A team by object, one of its channels, its id, its name or its AAD group id."""
        if isinstance(ref, Team):
            return ref
        if isinstance(ref, Conversation):
            if ref.team is None:
                raise UnknownError(f"{ref.conversation_id!r} is not a team's channel")
            return ref.team
        by_group = self.team_by_group(ref)
        if by_group is not None:
            return by_group
        channel = self.find_conversation(ref)
        if channel is not None and channel.team is not None:
            return channel.team
        return self.team(ref)

    def team_by_group(self, aad_group_id: str) -> Team | None:
        """The team whose AAD group id (Graph's team id) is ``aad_group_id``."""
        wanted = aad_group_id.lower()
        return next((t for t in self._teams.values() if t.aad_group_id.lower() == wanted), None)

    # -- team owners -----------------------------------------------------------

    def set_team_owner(
        self, ref: Team | Conversation | str, user: User | str, *, owner: bool = True
    ) -> None:
        """Make ``user`` an owner of the team (adding them to it), or a plain member again."""
        team = self.team_of(ref)
        account = self.user(user).account_id
        owners = self._owners.setdefault(team.team_id, [])
        if owner:
            roster = self._rosters.setdefault(team.team_id, [])
            if account not in roster:
                roster.append(account)
            if account not in owners:
                owners.append(account)
        elif account in owners:
            owners.remove(account)

    def owners(self, ref: Team | Conversation | str) -> tuple[User, ...]:
        team = self.team_of(ref)
        roster = self._rosters.get(team.team_id, [])
        owners = self._owners.get(team.team_id, [])
        return tuple(self._users[a] for a in owners if a in roster and a in self._users)

    def is_owner(self, team: Team, user: User) -> bool:
        return user.account_id in self._owners.get(team.team_id, []) and (
            user.account_id in self._rosters.get(team.team_id, [])
        )

    def _ensure_team(self, team_name: str, members: Sequence[User] | None) -> Team:
        existing = next((t for t in self._teams.values() if t.name == team_name), None)
        if existing is not None:
            if members is not None:
                self.add_members(self.conversation(existing.team_id), members)
            return existing
        team = Team(
            team_id=TeamID(self._ids.channel_id(team_name, GENERAL_CHANNEL)),
            aad_group_id=self._ids.aad_group_id(team_name),
            name=team_name,
            tenant_id=self.tenant_id,
        )
        self._teams[team.team_id] = team
        roster = members if members is not None else self.users
        self._rosters[team.team_id] = [u.account_id for u in roster]
        self._bot_installed[team.team_id] = True
        self._store(
            Conversation(
                conversation_id=ConversationID(team.team_id),
                kind=ConversationKind.CHANNEL,
                tenant_id=self.tenant_id,
                team=team,
            )
        )
        return team

    def add_channel(
        self,
        team_name: str,
        channel_name: str = GENERAL_CHANNEL,
        *,
        members: Sequence[User] | None = None,
        owners: Sequence[User] = (),
    ) -> Conversation:
        """A channel (created with its team, whose roster is ``members`` or every user);
        ``owners`` become owners of the team (and members)."""
        team = self._ensure_team(team_name, members)
        for owner in owners:
            self.set_team_owner(team, owner)
        if channel_name == GENERAL_CHANNEL:
            return self.conversation(team.team_id)
        channel_id = self._ids.channel_id(team_name, channel_name)
        existing = self._conversations.get(channel_id)
        if existing is not None:
            return existing
        return self._store(
            Conversation(
                conversation_id=channel_id,
                kind=ConversationKind.CHANNEL,
                tenant_id=self.tenant_id,
                name=channel_name,
                team=team,
            )
        )

    def add_chat(
        self, members: Sequence[User], *, personal: bool = False, topic: str | None = None
    ) -> Conversation:
        """A group chat of ``members`` with the bot, or the bot's personal chat with one user."""
        if personal:
            if len(members) != 1:
                raise ValueError("a personal chat has exactly one user")
            return self.personal_chat(members[0])
        if len(members) < 2:
            raise ValueError("a group chat has at least two users")
        self._chat_serial += 1
        conversation = Conversation(
            conversation_id=self._ids.group_chat_id(self._chat_serial),
            kind=ConversationKind.GROUP_CHAT,
            tenant_id=self.tenant_id,
            name=topic,
        )
        self._rosters[conversation.conversation_id] = [u.account_id for u in members]
        self._bot_installed[conversation.conversation_id] = True
        return self._store(conversation)

    def personal_chat(self, user: User) -> Conversation:
        """The bot's one personal chat with ``user`` (the same id every time)."""
        conversation_id = self._ids.personal_chat_id(user.account_id)
        existing = self._conversations.get(conversation_id)
        if existing is not None:
            return existing
        self._rosters[conversation_id] = [user.account_id]
        self._bot_installed[conversation_id] = True
        return self._store(
            Conversation(
                conversation_id=conversation_id,
                kind=ConversationKind.PERSONAL,
                tenant_id=user.tenant_id,
            )
        )

    def _store(self, conversation: Conversation) -> Conversation:
        self._conversations[conversation.conversation_id] = conversation
        self._order.setdefault(conversation.conversation_id, [])
        return conversation

    @property
    def conversations(self) -> tuple[Conversation, ...]:
        return tuple(self._conversations.values())

    def find_conversation(self, conversation_id: str) -> Conversation | None:
        """A conversation by id; a channel thread id finds its channel."""
        base, _root = split_thread(conversation_id)
        return self._conversations.get(base)

    def conversation(self, ref: Conversation | str) -> Conversation:
        key = ref.conversation_id if isinstance(ref, Conversation) else ref
        found = self.find_conversation(key)
        if found is None:
            raise UnknownError(f"no conversation {key!r}")
        return found

    def channels(self, team: Team) -> tuple[Conversation, ...]:
        return tuple(c for c in self._conversations.values() if c.team == team)

    def label(self, ref: Conversation | str) -> str:
        """A name for people: the team and channel, the chat topic, or who is in the chat."""
        conversation = self.conversation(ref)
        if conversation.team is not None or conversation.name:
            return conversation.label
        names = ", ".join(u.name for u in self.members(conversation))
        if conversation.kind is ConversationKind.PERSONAL:
            return f"Chat with {names}"
        return names or conversation.conversation_id

    def set_service_url(self, ref: Conversation | str, service_url: str | None) -> Conversation:
        return self._store(replace(self.conversation(ref), service_url=service_url))

    # -- rosters and the bot's installation -------------------------------------

    def _roster_key(self, conversation: Conversation) -> str:
        return conversation.team.team_id if conversation.team else conversation.conversation_id

    def members(self, ref: Conversation | str) -> tuple[User, ...]:
        roster = self._rosters.get(self._roster_key(self.conversation(ref)), [])
        return tuple(self._users[a] for a in roster if a in self._users)

    def add_members(self, ref: Conversation | str, users: Iterable[User]) -> None:
        roster = self._rosters.setdefault(self._roster_key(self.conversation(ref)), [])
        roster.extend(u.account_id for u in users if u.account_id not in roster)

    def remove_members(self, ref: Conversation | str, users: Iterable[User]) -> None:
        key = self._roster_key(self.conversation(ref))
        gone = {u.account_id for u in users}
        self._rosters[key] = [a for a in self._rosters.get(key, []) if a not in gone]

    def bot_installed(self, ref: Conversation | str) -> bool:
        return self._bot_installed.get(self._roster_key(self.conversation(ref)), False)

    def set_bot_installed(self, ref: Conversation | str, *, installed: bool) -> None:
        self._bot_installed[self._roster_key(self.conversation(ref))] = installed

    # -- messages --------------------------------------------------------------

    def add_message(self, message: Message) -> Message:
        self._messages[message.activity_id] = message
        self._order.setdefault(message.conversation_id, []).append(message.activity_id)
        return message

    def replace_message(self, message: Message) -> Message:
        if message.activity_id not in self._messages:
            raise UnknownError(f"no message {message.activity_id!r}")
        self._messages[message.activity_id] = message
        return message

    def message(self, activity_id: str) -> Message | None:
        return self._messages.get(ActivityID(activity_id))

    def messages(self, ref: Conversation | str) -> tuple[Message, ...]:
        """Messages of a conversation in order; a thread id gives that thread only."""
        key = ref.conversation_id if isinstance(ref, Conversation) else ref
        base, root = split_thread(key)
        found = (self._messages[a] for a in self._order.get(base, []))
        if root is None:
            return tuple(found)
        return tuple(m for m in found if m.thread_root == root)

    # -- attachment bytes --------------------------------------------------------

    def add_blob(self, blob: Blob) -> Blob:
        self._blobs[blob.blob_id] = blob
        return blob

    def blob(self, blob_id: str) -> Blob | None:
        return self._blobs.get(blob_id)
