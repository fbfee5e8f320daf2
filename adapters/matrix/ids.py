"""Matrix identifiers, and the mapping between Teams users and their ghost users."""

from __future__ import annotations

import re
from typing import NewType

MatrixUserID = NewType("MatrixUserID", str)
MatrixRoomID = NewType("MatrixRoomID", str)
"""Opaque: room v12 ids have no ``:server`` part, so never parse a server from one."""
MatrixEventID = NewType("MatrixEventID", str)
MatrixTxnID = NewType("MatrixTxnID", str)

_LOCALPART_SAFE = re.compile(r"[a-z0-9._\-]")


def escape_localpart(value: str) -> str:
    """A reversible encoding of any string into Matrix localpart characters.

    Lower-case letters, digits, ``.``, ``_`` and ``-`` stay; everything else
    (including upper case) becomes ``=xx`` per UTF-8 byte.
    """
    out: list[str] = []
    for char in value:
        if _LOCALPART_SAFE.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"={byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)


def unescape_localpart(value: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(value):
        if value[i] == "=" and i + 2 < len(value) + 1:
            raw.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(value[i].encode())
            i += 1
    return raw.decode("utf-8")


def server_of(user_id: str) -> str:
    """The server name of a user id (user ids, unlike room ids, always carry one)."""
    _, _, server = user_id.partition(":")
    return server


class GhostNamespace:
    """Which MXIDs are the bridge's own ghosts, and the ghost of a Teams user."""

    def __init__(self, *, prefix: str, server_name: str, bot_localpart: str) -> None:
        self.prefix = prefix
        self.server_name = server_name
        self.bot = MatrixUserID(f"@{bot_localpart}:{server_name}")
        self._pattern = re.compile(
            rf"^@{re.escape(prefix)}[a-z0-9._=\-/]+:{re.escape(server_name)}$"
        )

    def ghost_for(self, teams_user_id: str) -> MatrixUserID:
        """A stable ghost MXID: the same Teams user always maps to the same ghost."""
        return MatrixUserID(
            f"@{self.prefix}{escape_localpart(teams_user_id.lower())}:{self.server_name}"
        )

    def teams_user_of(self, user_id: str) -> str | None:
        """The Teams user a ghost stands for, or None for any other user."""
        if not self.is_ghost(user_id):
            return None
        localpart = user_id[1:].split(":", 1)[0]
        return unescape_localpart(localpart[len(self.prefix) :])

    def is_ghost(self, user_id: str) -> bool:
        return bool(self._pattern.match(user_id))

    def is_own(self, user_id: str) -> bool:
        return user_id == self.bot or self.is_ghost(user_id)

    def user_regex(self) -> str:
        """The exclusive user namespace for the registration file."""
        return f"@{re.escape(self.prefix)}.*:{re.escape(self.server_name)}"
