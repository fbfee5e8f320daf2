"""``AccessRules`` on the settings' roles and the Matrix adapter's power levels."""

from __future__ import annotations

from collections.abc import Mapping

from bridge.config.core import RunbookRoleSettings
from bridge.runbooks.access import PrivilegeLookup, aad_groups_of, matches
from bridge.runbooks.model import Access
from bridge.runbooks.ports import Actor


def roles_from(settings: Mapping[str, RunbookRoleSettings]) -> dict[str, Access]:
    return {
        name: Access(
            aad_object_ids=role.aad_object_ids,
            aad_groups=role.aad_groups,
            mxids=role.mxids,
            matrix_power_level=role.matrix_power_level,
        )
        for name, role in settings.items()
    }


class RoleAccess:
    """Matches an actor against an ``Access`` (platform ids, the named roles, the power
    level in the Matrix room said in, the AAD groups the Teams activity carried)."""

    def __init__(self, roles: Mapping[str, Access], privilege: PrivilegeLookup | None) -> None:
        self._roles = dict(roles)
        self._privilege = privilege

    async def allows(self, access: Access, actor: Actor) -> bool:
        data = actor.event.data if actor.event is not None else {}
        return await matches(
            access,
            actor.sender,
            actor.room,
            self._roles,
            self._privilege,
            groups=aad_groups_of(actor.sender, data),
        )
