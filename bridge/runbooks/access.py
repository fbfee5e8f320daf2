"""Who may run and who may approve a runbook: platform ids only, default deny.

A sender matches an ``Access`` when any of its rules matches: their AAD object id (a
Teams sender's ``user_id``) is listed; one of their AAD groups is listed (only when the
Teams activity carried the groups: see ``aad_groups_of``); their MXID is listed; they
are a Matrix user at or above ``matrix_power_level`` in the Matrix room the command was
said in; or one of the named roles matches them by the same rules. Display names never
count. An ``Access`` with no rules matches nobody; an unknown role matches nobody; a
failed power-level lookup counts as no match. The requester of a run never approves it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from bridge.errors import BridgeError
from bridge.model import Platform, RemoteUserID, RoomRef, Sender
from bridge.runbooks.model import Access, Runbook

log = structlog.get_logger(__name__)

PrivilegeLookup = Callable[[RoomRef, RemoteUserID], Awaitable[int]]
"""The user's power level in the room (``SupportsPrivilege.privilege`` of the Matrix
adapter fits)."""

AAD_GROUPS: Final = "aad_groups"
"""The key of a Teams event's ``data`` holding the sender's AAD group ids, where the
activity carries them."""


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str
    """Why, in a few words (for the reply and the audit trail)."""


def aad_groups_of(sender: Sender, data: Mapping[str, Any]) -> frozenset[str]:
    """The AAD group ids a Teams event's ``data`` carries for its sender (none otherwise,
    and never for a sender of another platform)."""
    if sender.platform is not Platform.TEAMS:
        return frozenset()
    groups = data.get(AAD_GROUPS)
    if not isinstance(groups, list | tuple):
        return frozenset()
    return frozenset(g.lower() for g in groups if isinstance(g, str) and g)


async def may_run(
    runbook: Runbook,
    sender: Sender,
    *,
    room: RoomRef,
    roles: Mapping[str, Access],
    privilege: PrivilegeLookup | None,
    groups: Collection[str] = (),
) -> Verdict:
    """Whether ``sender``, speaking in ``room``, may request a run of ``runbook``."""
    if await matches(
        runbook.access, sender, room=room, roles=roles, privilege=privilege, groups=groups
    ):
        return Verdict(allowed=True, reason="allowed")
    return Verdict(allowed=False, reason=f"you may not run {runbook.name}")


async def may_approve(
    runbook: Runbook,
    approver: Sender,
    requester: Sender,
    *,
    room: RoomRef,
    roles: Mapping[str, Access],
    privilege: PrivilegeLookup | None,
    groups: Collection[str] = (),
) -> Verdict:
    """Whether ``approver``, speaking in ``room``, may approve (or deny) a run of
    ``runbook`` that ``requester`` asked for. The run's rooms, its expiry, replays and its
    arguments are the run service's to check."""
    if same_person(approver, requester):
        return Verdict(allowed=False, reason="the requester cannot approve their own run")
    approvers = runbook.approvals.approvers
    if await matches(
        approvers, approver, room=room, roles=roles, privilege=privilege, groups=groups
    ):
        return Verdict(allowed=True, reason="approver")
    return Verdict(allowed=False, reason=f"you may not approve runs of {runbook.name}")


def same_person(a: Sender, b: Sender) -> bool:
    """The same platform account (ids only; AAD ids compared without case)."""
    if a.platform is not b.platform:
        return False
    if a.platform is Platform.TEAMS:
        return a.user_id.lower() == b.user_id.lower()
    return a.user_id == b.user_id


async def matches(
    access: Access,
    sender: Sender,
    room: RoomRef,
    roles: Mapping[str, Access],
    privilege: PrivilegeLookup | None,
    *,
    groups: Collection[str] = (),
) -> bool:
    """Whether any rule of ``access`` (or of the roles it names) matches ``sender``."""
    rules = [access]
    for name in access.roles:
        role = roles.get(name)
        if role is None:
            log.warning("runbook_role_unknown", role=name)
            continue
        rules.append(role)
    if any(_matches_ids(rule, sender, groups) for rule in rules):
        return True
    levels = [r.matrix_power_level for r in rules if r.matrix_power_level is not None]
    if not levels or sender.platform is not Platform.MATRIX:
        return False
    if room.platform is not Platform.MATRIX or privilege is None:
        return False
    try:
        level = await privilege(room, sender.user_id)
    except BridgeError as exc:
        log.warning("runbook_privilege_lookup_failed", error=str(exc))
        return False  # deny when unsure
    return level >= min(levels)


def _matches_ids(rule: Access, sender: Sender, groups: Collection[str]) -> bool:
    if sender.platform is Platform.MATRIX:
        return sender.user_id in rule.mxids
    if sender.platform is not Platform.TEAMS:
        return False
    user = sender.user_id.lower()
    if any(user == listed.lower() for listed in rule.aad_object_ids):
        return True
    wanted = {g.lower() for g in rule.aad_groups}
    return any(g.lower() in wanted for g in groups)
