"""The drill's Matrix client: the demo user, logged in with a password like any client.

It keeps one ``/sync`` long poll running (a task owned by ``MatrixDemoClient.synced``)
and remembers every timeline event and invite it has seen, so a step waits for the
event it expects instead of polling the homeserver.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any, Final, TypeVar
from urllib.parse import quote

import aiohttp

from devtools.drill_waits import DrillError

SYNC_TIMEOUT_MS: Final = 5000
REQUEST_TIMEOUT_S: Final = 30.0
RETRY_AFTER_ERROR_S: Final = 1.0
SYNC_FILTER: Final = json.dumps(
    {
        "room": {"timeline": {"limit": 50}, "state": {"lazy_load_members": True}},
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
    }
)

Event = Mapping[str, Any]
T = TypeVar("T")


def event_text(event: Event) -> str:
    """What a client shows for a message: the newest text of an edit, else the body."""
    content = event.get("content")
    if not isinstance(content, Mapping):
        return ""
    new = content.get("m.new_content")
    if isinstance(new, Mapping) and isinstance(new.get("body"), str):
        return str(new["body"])
    body = content.get("body")
    return body if isinstance(body, str) else ""


def _q(value: str) -> str:
    return quote(value, safe="")


class MatrixDemoClient:
    """A Matrix user on the client-server API (see the module documentation)."""

    def __init__(self, session: aiohttp.ClientSession, homeserver_url: str) -> None:
        self._session = session
        self._base = homeserver_url.rstrip("/")
        self._token = ""
        self.user_id = ""
        self._timelines: dict[str, list[Event]] = {}
        self._invites: dict[str, list[Event]] = {}
        self._changed = asyncio.Condition()
        self._last_error: str | None = None

    async def login(self, user: str, password: str) -> str:
        """Log in with a password; the user's MXID."""
        body = await self._call(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
                "initial_device_display_name": "local stack drill",
            },
        )
        self._token = str(body["access_token"])
        self.user_id = str(body["user_id"])
        return self.user_id

    @asynccontextmanager
    async def synced(self) -> AsyncIterator[MatrixDemoClient]:
        """Keep syncing while the block runs (after ``login``)."""
        task = asyncio.create_task(self._sync_forever(), name="drill-matrix-sync")
        try:
            yield self
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    async def send_text(self, room_id: str, text: str) -> str:
        txn = f"drill-{secrets.token_hex(8)}"
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/send/m.room.message/{txn}"
        body = await self._call("PUT", path, {"msgtype": "m.text", "body": text})
        return str(body["event_id"])

    async def join(self, room_id: str) -> None:
        await self._call("POST", f"/_matrix/client/v3/join/{_q(room_id)}", {})

    async def wait_event(
        self, room_id: str, match: Callable[[Event], bool], *, within: float, what: str
    ) -> Event:
        """The first event seen in ``room_id`` that ``match``es, waiting for it if need be."""

        def found() -> Event | None:
            return next((e for e in self._timelines.get(room_id, ()) if match(e)), None)

        return await self._wait(found, within=within, what=what)

    async def wait_invite(self, room_id: str, *, within: float, what: str) -> None:
        def found() -> bool | None:
            return True if room_id in self._invites or room_id in self._timelines else None

        await self._wait(found, within=within, what=what)

    async def _wait(self, found: Callable[[], T | None], *, within: float, what: str) -> T:
        try:
            async with asyncio.timeout(within), self._changed:
                while (result := found()) is None:
                    await self._changed.wait()
                return result
        except TimeoutError:
            why = f" (last sync error: {self._last_error})" if self._last_error else ""
            raise DrillError(f"timed out after {within:g} s waiting for {what}{why}") from None

    async def _sync_forever(self) -> None:
        since: str | None = None
        while True:
            params = {
                "filter": SYNC_FILTER,
                "timeout": "0" if since is None else str(SYNC_TIMEOUT_MS),
            }
            if since is not None:
                params["since"] = since
            try:
                body = await self._call("GET", "/_matrix/client/v3/sync", params=params)
            except (aiohttp.ClientError, TimeoutError, DrillError) as exc:
                self._last_error = str(exc) or type(exc).__name__
                await asyncio.sleep(RETRY_AFTER_ERROR_S)  # a pause before trying again
                continue
            self._last_error = None
            since = str(body["next_batch"])
            async with self._changed:
                self._take(body)
                self._changed.notify_all()

    def _take(self, body: Mapping[str, Any]) -> None:
        rooms = body.get("rooms", {})
        for room_id, room in rooms.get("join", {}).items():
            events = room.get("timeline", {}).get("events", [])
            self._timelines.setdefault(room_id, []).extend(events)
        for room_id, room in rooms.get("invite", {}).items():
            self._invites[room_id] = list(room.get("invite_state", {}).get("events", []))

    async def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        async with self._session.request(
            method,
            self._base + path,
            json=body,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        ) as response:
            text = await response.text()
            if response.status != 200:
                raise DrillError(f"Matrix {method} {path}: {response.status} {text}")
        answer = json.loads(text)
        if not isinstance(answer, dict):
            raise DrillError(f"Matrix {method} {path}: not a JSON object")
        return answer
