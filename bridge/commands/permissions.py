"""Who may run what: decided on platform ids (MXID, AAD object id), never display names."""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from bridge.commands.registry import CommandRequest, Permission
from bridge.config.core import CommandSettings
from bridge.errors import BridgeError
from bridge.model import Platform
from bridge.ports import ChatAdapter, SupportsPrivilege

log = structlog.get_logger(__name__)


class Authorizer:
    def __init__(self, settings: CommandSettings, adapters: Mapping[Platform, ChatAdapter]) -> None:
        self._settings = settings
        self._adapters = adapters

    async def allows(self, permission: Permission, request: CommandRequest) -> bool:
        if permission is Permission.ANYONE:
            return True
        return await self.is_operator(request)

    async def is_operator(self, request: CommandRequest) -> bool:
        sender = request.sender
        operators = self._settings.operators
        if sender.platform is Platform.MATRIX and sender.user_id in operators.matrix:
            return True
        if sender.platform is Platform.TEAMS and sender.user_id in operators.teams:
            return True
        adapter = self._adapters.get(sender.platform)
        if sender.platform is Platform.MATRIX and isinstance(adapter, SupportsPrivilege):
            try:
                level = await adapter.privilege(request.room, sender.user_id)
            except BridgeError as exc:
                log.warning("privilege_lookup_failed", error=str(exc))
                return False  # deny when unsure
            return level >= self._settings.matrix_power_level
        return False
