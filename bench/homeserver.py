"""A tiny Matrix homeserver on loopback that answers the application service at once.

It speaks just enough of the client-server API for the bridge's Matrix adapter
(registration, profiles, joins, the AS ping, sends, state) and answers every
request immediately, so a benchmark measures the bridge and not a homeserver.
Each ``PUT .../send/...`` is stamped with ``time.monotonic()`` when its handler
starts, and the message's benchmark sequence number (``bench <n>`` in its body)
is recorded with the room and the transaction id.

Like a homeserver, a repeated transaction id gets the same event id back and is
not a new message; a second transaction id carrying the same sequence number is
a duplicate delivery.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self
from urllib.parse import unquote

from aiohttp import web

SEQUENCE: Final = re.compile(r"\bbench (\d+)\b")
"""How a benchmark message names its sequence number in its text."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MatrixArrival:
    """A message the bridge sent into a Matrix room."""

    seq: int
    matrix_room_id: str
    txn_id: str
    at: float
    """``time.monotonic()`` when the request reached the handler."""


class FakeHomeserver:
    """See the module docstring. ``arrivals`` holds every new transaction, in arrival order."""

    def __init__(self, *, server_name: str) -> None:
        self._server_name = server_name
        self._runner: web.AppRunner | None = None
        self._events: dict[tuple[str, str], str] = {}
        self._changed = asyncio.Event()
        self.arrivals: list[MatrixArrival] = []
        self.retried_transactions = 0
        self.url = ""

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_put("/_matrix/client/v3/rooms/{room}/send/{type}/{txn}", self._send)
        app.router.add_put("/_matrix/client/v3/rooms/{room}/state/{type}/{key:.*}", self._state)
        app.router.add_get(
            "/_matrix/client/v3/rooms/{room}/state/m.room.member/{user}", self._member
        )
        app.router.add_post("/_matrix/client/v3/register", self._register)
        app.router.add_get("/_matrix/client/v3/profile/{user}", self._not_found)
        app.router.add_get("/_matrix/client/versions", self._versions)
        app.router.add_post("/_matrix/client/v3/join/{room}", self._join)
        app.router.add_route("*", "/{tail:.*}", self._empty)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = next(a[1] for a in self._runner.addresses if isinstance(a, tuple))
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def changed(self) -> None:
        """Return after the next new message arrives."""
        await self._changed.wait()

    async def _send(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        room = unquote(request.match_info["room"])
        txn = request.match_info["txn"]
        body = await request.json()
        known = self._events.get((room, txn))
        if known is not None:
            self.retried_transactions += 1
            return web.json_response({"event_id": known})
        event_id = f"$bench{len(self._events)}:{self._server_name}"
        self._events[room, txn] = event_id
        text = body.get("body", "") if isinstance(body, dict) else ""
        for match in SEQUENCE.finditer(str(text)):
            self.arrivals.append(
                MatrixArrival(seq=int(match.group(1)), matrix_room_id=room, txn_id=txn, at=at)
            )
        self._changed.set()
        self._changed = asyncio.Event()
        return web.json_response({"event_id": event_id})

    async def _state(self, request: web.Request) -> web.Response:
        del request
        return web.json_response({"event_id": f"$state{len(self._events)}:{self._server_name}"})

    async def _member(self, request: web.Request) -> web.Response:
        user = unquote(request.match_info["user"])
        name = user[1:].split(":", 1)[0].capitalize()
        return web.json_response({"membership": "join", "displayname": name})

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        username = body.get("username", "") if isinstance(body, dict) else ""
        return web.json_response({"user_id": f"@{username}:{self._server_name}"})

    async def _not_found(self, request: web.Request) -> web.Response:
        del request
        return web.json_response({"errcode": "M_NOT_FOUND", "error": "no profile"}, status=404)

    async def _versions(self, request: web.Request) -> web.Response:
        del request
        return web.json_response({"versions": ["v1.11"]})

    async def _join(self, request: web.Request) -> web.Response:
        return web.json_response({"room_id": unquote(request.match_info["room"])})

    async def _empty(self, request: web.Request) -> web.Response:
        del request
        return web.json_response({})
