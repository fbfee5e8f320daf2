"""Who may run what: decided on platform ids (MXID, AAD object id), never display names."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import structlog

from bridge.commands.registry import CommandRequest, Permission
from bridge.config.core import CommandSettings
from bridge.errors import BridgeError
from bridge.model import Platform
from bridge.ports import ChatAdapter, SupportsPrivilege

log = structlog.get_logger(__name__)


RequestCheck = Callable[[CommandRequest], Awaitable[bool]]

TEAM_OWNER = 100
"""The privilege a Teams adapter gives an owner of the room's team (when it is set to
look team owners up; otherwise every Teams user has 0)."""


def operator_threshold(platform: Platform, settings: CommandSettings) -> int | None:
    """The privilege at which a platform's user is an operator in the room (None: never
    by privilege)."""
    if platform is Platform.MATRIX:
        return settings.matrix_power_level
    if platform is Platform.TEAMS:
        return TEAM_OWNER
    return None


class Authorizer:
    def __init__(
        self,
        settings: CommandSettings,
        adapters: Mapping[Platform, ChatAdapter],
        *,
        commander: RequestCheck | None = None,
    ) -> None:
        """``commander`` tells whether a request's sender commands the incident it is about
        (``Permission.COMMANDER``); without it, only operators have that permission."""
        self._settings = settings
        self._adapters = adapters
        self._commander = commander

    async def allows(self, permission: Permission, request: CommandRequest) -> bool:
        if permission is Permission.ANYONE:
            return True
        if await self.is_operator(request):
            return True
        if permission is Permission.COMMANDER and self._commander is not None:
            return await self._commander(request)
        return False

    async def is_operator(self, request: CommandRequest) -> bool:
        sender = request.sender
        operators = self._settings.operators
        if sender.platform is Platform.MATRIX and sender.user_id in operators.matrix:
            return True
        if sender.platform is Platform.TEAMS and sender.user_id in operators.teams:
            return True
        adapter = self._adapters.get(sender.platform)
        threshold = operator_threshold(sender.platform, self._settings)
        if threshold is None or not isinstance(adapter, SupportsPrivilege):
            return False
        try:
            level = await adapter.privilege(request.room, sender.user_id)
        except BridgeError as exc:
            log.warning("privilege_lookup_failed", error=str(exc))
            return False  # deny when unsure
        return level >= threshold
