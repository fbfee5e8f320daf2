"""A real Matrix user for tests: the client-server API over aiohttp, with its access token."""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import quote

import aiohttp

_txn = itertools.count()


def _q(value: str) -> str:
    return quote(value, safe="")


class MatrixUser:
    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, user_id: str, token: str
    ) -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        self.user_id = user_id
        self._headers = {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, path: str, *, json: Any = None, data: bytes | None = None,
        headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        async with self.session.request(
            method,
            self.base + path,
            json=json,
            data=data,
            params=params,
            headers={**self._headers, **(headers or {})},
        ) as response:
            body = await response.json(content_type=None)
            if response.status >= 300:
                raise AssertionError(f"{method} {path} -> {response.status}: {body}")
            assert isinstance(body, dict)
            return body

    async def create_room(self, *, invite: list[str], name: str = "room") -> str:
        body = await self.call(
            "POST",
            "/_matrix/client/v3/createRoom",
            json={"preset": "private_chat", "invite": invite, "name": name},
        )
        return str(body["room_id"])

    async def send(
        self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message"
    ) -> str:
        txn = f"t{next(_txn)}"
        body = await self.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/send/{_q(event_type)}/{txn}",
            json=content,
        )
        return str(body["event_id"])

    async def redact(self, room_id: str, event_id: str) -> str:
        txn = f"r{next(_txn)}"
        body = await self.call(
            "PUT", f"/_matrix/client/v3/rooms/{_q(room_id)}/redact/{_q(event_id)}/{txn}", json={}
        )
        return str(body["event_id"])

    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        body = await self.call(
            "POST",
            "/_matrix/media/v3/upload",
            data=data,
            headers={"Content-Type": content_type},
            params={"filename": filename},
        )
        return str(body["content_uri"])

    async def member_state(self, room_id: str, user_id: str) -> dict[str, Any] | None:
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/state/m.room.member/{_q(user_id)}"
        async with self.session.get(self.base + path, headers=self._headers) as response:
            if response.status == 404:
                return None
            body = await response.json()
            assert isinstance(body, dict)
            return body

    async def messages(self, room_id: str, limit: int = 50) -> list[dict[str, Any]]:
        body = await self.call(
            "GET",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/messages",
            params={"dir": "b", "limit": str(limit)},
        )
        chunk = body.get("chunk", [])
        assert isinstance(chunk, list)
        return chunk
