"""Identifiers shaped like the ones Teams hands out.

Directory ids (users, teams, channels, chats) are derived from a seed, so an
emulator started twice with the same seed and the same directory presents the
same ids (the local stack relies on it); a fresh random seed gives fresh ids.
Activity ids are millisecond timestamps from the clock, strictly increasing.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import uuid

from devtools.teams_emulator.clock import Clock
from devtools.teams_emulator.model import (
    AadGroupID,
    AadObjectID,
    AccountID,
    ActivityID,
    AttachmentID,
    ConversationID,
)


class IdFactory:
    def __init__(self, seed: str, clock: Clock) -> None:
        self._seed = seed
        self._clock = clock
        self._last_activity_ms = 0
        self._serial = itertools.count(1)

    def _digest(self, *parts: str) -> bytes:
        material = "\x1f".join((self._seed, *parts)).encode()
        return hashlib.sha256(material).digest() + hashlib.sha256(material + b"\x00").digest()

    def _b64(self, *parts: str, length: int) -> str:
        return base64.urlsafe_b64encode(self._digest(*parts)).decode().rstrip("=")[:length]

    def guid(self, *parts: str) -> str:
        return str(uuid.UUID(bytes=self._digest(*parts)[:16], version=4))

    def user_account_id(self, name: str) -> AccountID:
        return AccountID("29:1" + self._b64("user", name, length=78))

    def aad_object_id(self, name: str) -> AadObjectID:
        return AadObjectID(self.guid("aad", name))

    def aad_group_id(self, team_name: str) -> AadGroupID:
        return AadGroupID(self.guid("group", team_name))

    def channel_id(self, team_name: str, channel_name: str) -> ConversationID:
        return ConversationID(
            f"19:{self._digest('channel', team_name, channel_name).hex()[:32]}@thread.tacv2"
        )

    def group_chat_id(self, serial: int) -> ConversationID:
        return ConversationID(f"19:{self._digest('chat', str(serial)).hex()[:32]}@thread.v2")

    def personal_chat_id(self, account_id: str) -> ConversationID:
        return ConversationID("a:1" + self._b64("personal", account_id, length=118))

    def activity_id(self) -> ActivityID:
        """A millisecond timestamp, bumped when two activities share a millisecond."""
        now_ms = int(self._clock.now().timestamp() * 1000)
        self._last_activity_ms = max(now_ms, self._last_activity_ms + 1)
        return ActivityID(str(self._last_activity_ms))

    def event_activity_id(self) -> ActivityID:
        """The id of a system event (reaction, membership, installation): ``f:<guid>``."""
        return ActivityID("f:" + self.guid("event", str(next(self._serial))))

    def attachment_id(self) -> AttachmentID:
        return AttachmentID(
            "0-wus-d1-" + self._digest("attachment", str(next(self._serial))).hex()[:32]
        )

    def unique(self, kind: str) -> str:
        """A fresh GUID for anything else (trace ids, file ids, token ids)."""
        return self.guid(kind, str(next(self._serial)))
