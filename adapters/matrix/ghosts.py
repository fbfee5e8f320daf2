"""Ghost users of Teams people on Matrix: lazy registration, profiles and room membership.

A Teams user appears on Matrix as a ghost ``@<prefix><escaped id>:<server>``
that the application service registers the first time it is needed and then
masquerades as with ``?user_id=``. Bridge notices are posted by the AS bot.

Display names: a ghost is shown as ``"<Teams name> (Teams)"``, so Matrix
readers can tell a mirrored Teams person from a Matrix user of the same name.
The name is set only when it differs from what the homeserver holds, because
every change re-sends the ghost's membership event in every room it is in.

What the manager knows about profiles and memberships is kept in two bounded
LRU caches (``cache_size`` entries each): memory does not grow with the number
of users or rooms. A forgotten entry costs one idempotent request to learn
again. A membership entry is dropped by the sender when a send is refused
(the ghost may have been kicked), and the send is retried once after joining.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import structlog

from adapters.matrix.client import CLIENT_V3, MatrixRequestError, path
from adapters.matrix.ids import GhostNamespace, MatrixRoomID, MatrixUserID
from bridge.errors import PermanentDeliveryError
from bridge.model import Platform, Sender

log = structlog.get_logger(__name__)

GHOST_NAME_SUFFIX: Final = " (Teams)"
MAX_DISPLAYNAME_CHARS: Final = 256
"""Synapse refuses longer display names."""
_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e]")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class MatrixRequester(Protocol):
    """What the Matrix outbound side needs of ``MatrixClient`` (a fake in unit tests)."""

    async def request(
        self,
        method: str,
        api_path: str,
        *,
        json: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
        user_id: str | None = None,
        ts_ms: int | None = None,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]: ...


class BoundedLRU(Generic[K, V]):
    """A mapping that keeps at most ``capacity`` entries, evicting the least recently used."""

    __slots__ = ("_capacity", "_entries")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    @property
    def capacity(self) -> int:
        return self._capacity

    def get(self, key: K) -> V | None:
        """The value for ``key`` (marking it recently used), or None."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True, kw_only=True)
class GhostProfile:
    """A ghost's profile as last set on (or read from) the homeserver."""

    display_name: str | None
    avatar_url: str | None


def ghost_display_name(sender: Sender) -> str:
    """How a Teams person is named on Matrix: ``"<name> (Teams)"``, within Synapse's limit.

    Control and direction-override characters are removed and whitespace is
    collapsed; a sender without a name is shown by their Teams user id.
    """
    name = " ".join(_CONTROL_CHARS.sub(" ", sender.display_name).split())
    if not name:
        name = sender.user_id
    room = MAX_DISPLAYNAME_CHARS - len(GHOST_NAME_SUFFIX)
    if len(name) > room:
        name = name[: room - 1].rstrip() + "\u2026"
    return name + GHOST_NAME_SUFFIX


class GhostManager:
    """Registers ghosts, keeps their profiles current and gets them into rooms."""

    def __init__(
        self, *, client: MatrixRequester, namespace: GhostNamespace, cache_size: int
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._profiles: BoundedLRU[MatrixUserID, GhostProfile] = BoundedLRU(cache_size)
        self._members: BoundedLRU[tuple[MatrixUserID, MatrixRoomID], bool] = BoundedLRU(cache_size)

    @property
    def namespace(self) -> GhostNamespace:
        return self._namespace

    @property
    def cached_profiles(self) -> int:
        return len(self._profiles)

    @property
    def cached_memberships(self) -> int:
        return len(self._members)

    def matrix_user_of(self, sender: Sender) -> MatrixUserID:
        """The MXID that stands for ``sender`` on Matrix (for mentions): no request made."""
        if sender.platform is Platform.TEAMS:
            return self._namespace.ghost_for(sender.user_id)
        if sender.platform is Platform.BRIDGE:
            return self._namespace.bot
        return MatrixUserID(sender.user_id)

    async def ensure_ghost(self, sender: Sender, *, avatar_url: str | None = None) -> MatrixUserID:
        """The MXID to post as for ``sender``: its ghost, registered and named, or the bot.

        ``avatar_url`` (an ``mxc://`` URI), when given, becomes the ghost's avatar.
        A Matrix user cannot be posted as: that raises ``PermanentDeliveryError``.
        """
        if sender.platform is Platform.BRIDGE:
            return self._namespace.bot
        if sender.platform is not Platform.TEAMS:
            raise PermanentDeliveryError(
                f"cannot post on Matrix as a {sender.platform.value} user; "
                "only Teams ghosts and the bridge bot post"
            )
        user = self._namespace.ghost_for(sender.user_id)
        profile = self._profiles.get(user)
        if profile is None:
            await self._register(user)
            profile = await self._fetch_profile(user)
        wanted_name = ghost_display_name(sender)
        if profile.display_name != wanted_name:
            await self._client.request(
                "PUT",
                path(CLIENT_V3, "profile", user, "displayname"),
                json={"displayname": wanted_name},
                user_id=user,
            )
            log.info("matrix_ghost_renamed", matrix_user_id=user)
        wanted_avatar = profile.avatar_url if avatar_url is None else avatar_url
        if wanted_avatar != profile.avatar_url:
            await self._client.request(
                "PUT",
                path(CLIENT_V3, "profile", user, "avatar_url"),
                json={"avatar_url": wanted_avatar},
                user_id=user,
            )
            log.info("matrix_ghost_avatar_set", matrix_user_id=user)
        self._profiles.put(user, GhostProfile(display_name=wanted_name, avatar_url=wanted_avatar))
        return user

    async def _register(self, user: MatrixUserID) -> None:
        localpart = user[1:].split(":", 1)[0]
        try:
            await self._client.request(
                "POST",
                path(CLIENT_V3, "register"),
                json={
                    "type": "m.login.application_service",
                    "username": localpart,
                    "inhibit_login": True,
                },
            )
        except MatrixRequestError as exc:
            if exc.errcode != "M_USER_IN_USE":
                raise
        else:
            log.info("matrix_ghost_registered", matrix_user_id=user)

    async def _fetch_profile(self, user: MatrixUserID) -> GhostProfile:
        try:
            body = await self._client.request("GET", path(CLIENT_V3, "profile", user), user_id=user)
        except MatrixRequestError as exc:
            if exc.status != 404:
                raise
            body = {}
        name, avatar = body.get("displayname"), body.get("avatar_url")
        return GhostProfile(
            display_name=name if isinstance(name, str) else None,
            avatar_url=avatar if isinstance(avatar, str) else None,
        )

    async def ensure_joined(self, user_id: MatrixUserID, room_id: MatrixRoomID) -> None:
        """Make ``user_id`` (a ghost or the bot) a member of the room.

        A ghost refused entry (a private room) is invited by the bot, which
        joins first if it has to, and then joins. The bot cannot invite itself:
        its refusal is raised.
        """
        if (user_id, room_id) in self._members:
            self._members.put((user_id, room_id), value=True)  # mark recently used
            return
        try:
            await self._join(user_id, room_id)
        except MatrixRequestError as exc:
            if exc.errcode != "M_FORBIDDEN" or user_id == self._namespace.bot:
                raise
            log.info("matrix_ghost_needs_invite", matrix_user_id=user_id, matrix_room_id=room_id)
            await self.ensure_bot_joined(room_id)
            await self._client.request(
                "POST",
                path(CLIENT_V3, "rooms", room_id, "invite"),
                json={"user_id": user_id},
            )
            await self._join(user_id, room_id)
        self._members.put((user_id, room_id), value=True)

    async def ensure_bot_joined(self, room_id: MatrixRoomID) -> None:
        await self.ensure_joined(self._namespace.bot, room_id)

    def forget_membership(self, user_id: MatrixUserID, room_id: MatrixRoomID) -> None:
        """Drop what is known of a membership (after a refusal: the user may have been kicked)."""
        self._members.discard((user_id, room_id))

    async def _join(self, user_id: MatrixUserID, room_id: MatrixRoomID) -> None:
        await self._client.request(
            "POST",
            path(CLIENT_V3, "join", room_id),
            json={},
            user_id=None if user_id == self._namespace.bot else user_id,
        )
        log.debug("matrix_joined", matrix_user_id=user_id, matrix_room_id=room_id)
