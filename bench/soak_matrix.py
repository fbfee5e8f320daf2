"""The soak's Matrix side: a user on the client-server API, and a forward reader of its rooms.

``MatrixClient`` sends, edits and reacts as one real Synapse user. ``MatrixReader``
pages each room forward (``/messages?dir=f``) from a sync token taken before the
traffic began, so it sees every event since then in room order, with no gaps, and
keeps only what the soak counts: the tokens of new messages (by the bridge or by
people), which event carries each bridged token, and the edits and reactions the
bridge posted on which event. Each ``catch_up`` reads only what is new.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

import aiohttp

TOKEN: Final = re.compile(r"\b(?:t2m|m2t)-\d{6}\b")
"""Every soak message carries one: direction and sequence number (``t2m-000042``)."""
PAGE: Final = 500


def token(direction: str, n: int) -> str:
    return f"{direction}-{n:06d}"


def tokens_in(text: str) -> list[str]:
    return TOKEN.findall(text)


class MatrixError(RuntimeError):
    """The homeserver refused a request."""


def _q(value: str) -> str:
    return quote(value, safe="")


class MatrixClient:
    """One Matrix user, by access token."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, user_id: str, access_token: str
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.user_id = user_id
        self._headers = {"Authorization": f"Bearer {access_token}"}
        self._txn = itertools.count()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        async with self.session.request(
            method, self.base_url + path, json=json, params=params, headers=self._headers
        ) as response:
            body = await response.json(content_type=None)
            if response.status >= 300 or not isinstance(body, dict):
                raise MatrixError(f"{method} {path} answered {response.status}: {body}")
            return body

    async def send(
        self, room_id: str, content: Mapping[str, Any], event_type: str = "m.room.message"
    ) -> str:
        txn = f"soak{next(self._txn)}"
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/send/{_q(event_type)}/{txn}"
        return str((await self.call("PUT", path, json=content))["event_id"])

    async def say(self, room_id: str, text: str) -> str:
        return await self.send(room_id, {"msgtype": "m.text", "body": text})

    async def edit(self, room_id: str, event_id: str, text: str) -> str:
        return await self.send(
            room_id,
            {
                "msgtype": "m.text",
                "body": f"* {text}",
                "m.new_content": {"msgtype": "m.text", "body": text},
                "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
            },
        )

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        return await self.send(room_id, content, "m.reaction")

    async def set_display_name(self, name: str) -> None:
        path = f"/_matrix/client/v3/profile/{_q(self.user_id)}/displayname"
        await self.call("PUT", path, json={"displayname": name})

    async def create_room(self, *, name: str, invite: str, power_level: int) -> str:
        body = await self.call(
            "POST",
            "/_matrix/client/v3/createRoom",
            json={
                "preset": "private_chat",
                "name": name,
                "invite": [invite],
                "power_level_content_override": {"users": {invite: power_level}},
            },
        )
        return str(body["room_id"])

    async def membership(self, room_id: str, user_id: str) -> str | None:
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/state/m.room.member/{_q(user_id)}"
        try:
            body = await self.call("GET", path)
        except MatrixError:
            return None
        value = body.get("membership")
        return value if isinstance(value, str) else None

    async def sync_token(self) -> str:
        """A position in every room's timeline: now."""
        params = {"timeout": "0", "filter": '{"room":{"timeline":{"limit":1}}}'}
        return str((await self.call("GET", "/_matrix/client/v3/sync", params=params))["next_batch"])


def _relation(content: Mapping[str, Any]) -> Mapping[str, Any]:
    relates = content.get("m.relates_to")
    return relates if isinstance(relates, Mapping) else {}


class MatrixReader:
    """See the module docstring. ``is_bridge(mxid)``: the bridge's bot or one of its ghosts."""

    def __init__(
        self,
        client: MatrixClient,
        rooms: Sequence[str],
        *,
        since: str,
        is_bridge: Callable[[str], bool],
    ) -> None:
        self._client = client
        self._is_bridge = is_bridge
        self._from = dict.fromkeys(rooms, since)
        self.bridged: Counter[str] = Counter()
        """Tokens of new messages the bridge posted."""
        self.by_people: Counter[str] = Counter()
        """Tokens of new messages real Matrix users posted."""
        self.event_of: dict[str, str] = {}
        """A bridged token -> the (first) event that carries it."""
        self.edits: Counter[str] = Counter()
        """An event id -> the edits of it the bridge posted."""
        self.reactions: Counter[str] = Counter()
        """An event id -> the reactions to it the bridge posted."""

    async def catch_up(self) -> None:
        for room in self._from:
            await self._read_room(room)

    async def _read_room(self, room: str) -> None:
        path = f"/_matrix/client/v3/rooms/{_q(room)}/messages"
        while True:
            params = {"dir": "f", "limit": str(PAGE), "from": self._from[room]}
            page = await self._client.call("GET", path, params=params)
            chunk = page.get("chunk")
            end = page.get("end")
            if isinstance(end, str):
                self._from[room] = end
            if not isinstance(chunk, list) or not chunk or not isinstance(end, str):
                return
            for event in chunk:
                if isinstance(event, dict):
                    self._note(event)

    def _note(self, event: Mapping[str, Any]) -> None:
        content = event.get("content")
        if not isinstance(content, Mapping):
            return
        bridged = self._is_bridge(str(event.get("sender", "")))
        relation = _relation(content)
        target = str(relation.get("event_id", ""))
        kind = event.get("type")
        if kind == "m.reaction":
            if bridged and target:
                self.reactions[target] += 1
            return
        if kind != "m.room.message":
            return
        if relation.get("rel_type") == "m.replace":
            if bridged and target:
                self.edits[target] += 1
            return
        found = tokens_in(str(content.get("body", "")))
        if not bridged:
            self.by_people.update(found)
            return
        self.bridged.update(found)
        for found_token in found:
            self.event_of.setdefault(found_token, str(event.get("event_id", "")))
