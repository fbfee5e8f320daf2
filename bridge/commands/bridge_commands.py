"""``!bridge status | link | confirm CODE | unlink``: managing room links from chat.

Linking pairs two rooms on different platforms: ``!bridge link`` in one room
gives a short-lived, single-use code; ``!bridge confirm CODE`` in the other
completes it. Both steps need an operator. Re-linking a room that is already
linked elsewhere needs ``--replace``; the old link's removal and the new link
are both recorded.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Final

from bridge.commands.registry import (
    CommandFailedError,
    CommandRegistry,
    CommandRequest,
    CommandSpec,
    Permission,
    UsageError,
)
from bridge.links import LinkService
from bridge.model import Platform, RemoteRoomID, RoomLink, RoomRef, ThreadStyle
from bridge.ports import Clock, StateStore, TimelineStore

CODES: Final = "pairing_codes"
USED: Final = "pairing_codes_used"
_ALPHABET: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_STATUS_COUNT: Final = 1000
"""Queued messages counted by ``!bridge status`` (more shows as "1000+")."""


def _describe(room: RoomRef) -> str:
    return f"{room.platform.value} {room.room_id}"


class BridgeCommands:
    def __init__(
        self,
        *,
        store: TimelineStore,
        state: StateStore,
        links: LinkService,
        clock: Clock,
        code_ttl: timedelta,
    ) -> None:
        self._store = store
        self._state = state
        self._links = links
        self._clock = clock
        self._ttl = code_ttl

    def register(self, registry: CommandRegistry) -> None:
        for verb, usage, summary, permission, handler in (
            ("status", "!bridge status", "show this room's links and pending deliveries",
             Permission.ANYONE, self.status),
            ("link", "!bridge link [--replies]",
             "start linking this room (gives a code for the other room); --replies shows "
             "Teams threads as reply chains in Matrix", Permission.OPERATOR, self.link),
            ("confirm", "!bridge confirm CODE [--replace]",
             "finish linking with the code from the other room", Permission.OPERATOR,
             self.confirm),
            ("unlink", "!bridge unlink", "remove this room's links", Permission.OPERATOR,
             self.unlink),
        ):  # fmt: skip
            registry.add(
                CommandSpec(
                    group="bridge",
                    verb=verb,
                    usage=usage,
                    summary=summary,
                    permission=permission,
                    handler=handler,
                )
            )

    async def status(self, request: CommandRequest) -> str:
        if not request.links:
            return "This room is not linked. An operator can start with !bridge link."
        lines = []
        for link in request.links:
            other = link.other(request.room)
            pending = len(await self._store.pending(other, limit=_STATUS_COUNT))
            waiting = f"{pending}+" if pending >= _STATUS_COUNT else str(pending)
            lines.append(f"Linked to {_describe(other)}; {waiting} message(s) waiting to be sent.")
        return "\n".join(lines)

    async def link(self, request: CommandRequest) -> str:
        code = "".join(secrets.choice(_ALPHABET) for _ in range(8))
        expires = self._clock.now() + self._ttl
        await self._state.put(
            CODES,
            code,
            {
                "platform": request.room.platform.value,
                "room_id": request.room.room_id,
                "requested_by": request.sender.user_id,
                "expires_at": expires.isoformat(),
                "threads": (
                    ThreadStyle.REPLY if "replies" in request.command.flags else ThreadStyle.THREAD
                ).value,
            },
        )
        minutes = max(1, int(self._ttl.total_seconds() // 60))
        other = "Matrix" if request.room.platform is Platform.TEAMS else "Teams"
        return (
            f"Pairing code {code} (single use, valid {minutes} min). An operator says "
            f"!bridge confirm {code} in the {other} room to link it with this one."
        )

    async def confirm(self, request: CommandRequest) -> str:
        if len(request.command.args) != 2:
            raise UsageError("give the code from the other room")
        code = request.command.args[1].upper()
        record = await self._state.get(CODES, code)
        if record is None or datetime.fromisoformat(record["expires_at"]) < self._clock.now():
            raise CommandFailedError("That code is unknown or expired; run !bridge link again.")
        origin = RoomRef(
            platform=Platform(record["platform"]), room_id=RemoteRoomID(record["room_id"])
        )
        if origin.platform is request.room.platform:
            raise CommandFailedError("Confirm the code in a room on the other platform.")
        matrix, teams = (
            (origin, request.room) if origin.platform is Platform.MATRIX else (request.room, origin)
        )
        new = RoomLink(
            matrix_room=matrix,
            teams_room=teams,
            created_at=self._clock.now(),
            created_by=request.sender,
            threads=ThreadStyle(record.get("threads", ThreadStyle.THREAD.value)),
        )
        existing = [
            link
            for room in (matrix, teams)
            for link in await self._store.links_for(room)
            if (link.matrix_room, link.teams_room) != (matrix, teams)
        ]
        if existing and "replace" not in request.command.flags:
            rooms = ", ".join(sorted({_describe(lnk.other(matrix)) for lnk in existing}))
            raise CommandFailedError(
                f"A room here is already linked ({rooms}). Add --replace to move the link."
            )
        if not await self._state.insert_once(USED, code, {"by": request.sender.user_id}):
            raise CommandFailedError("That code was already used; run !bridge link again.")
        await self._state.delete(CODES, code)
        for link in existing:
            await self._links.unlink(link, by=request.sender)
        await self._links.link(new, by=request.sender)
        moved = f" (replacing {len(existing)} earlier link(s))" if existing else ""
        return f"Linked {_describe(matrix)} with {_describe(teams)}{moved}."

    async def unlink(self, request: CommandRequest) -> str:
        if not request.links:
            raise CommandFailedError("This room is not linked.")
        for link in request.links:
            await self._links.unlink(link, by=request.sender)
        return f"Removed {len(request.links)} link(s) of this room."
