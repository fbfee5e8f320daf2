"""Who may run and approve runbooks: platform ids only, default deny."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bridge.errors import BridgeError
from bridge.model import Platform, RemoteRoomID, RemoteUserID, RoomRef, Sender
from bridge.runbooks.access import (
    AAD_GROUPS,
    aad_groups_of,
    matches,
    may_approve,
    may_run,
    same_person,
)
from bridge.runbooks.model import Access, ApprovalPolicy, ExecSpec, Runbook

ALICE = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@alice:example.org"), display_name="Alice"
)
BOB = Sender(platform=Platform.MATRIX, user_id=RemoteUserID("@bob:example.org"), display_name="Bob")
AAD = "5f0c2a8e-3b1d-4c6f-9a7e-2d4b8c1e0f93"
GROUP = "0b7e4d2c-8a1f-4e3b-b6c9-5d2a7f1e8c40"
TEAMS_USER = Sender(platform=Platform.TEAMS, user_id=RemoteUserID(AAD.upper()), display_name="T")
MATRIX_ROOM = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!room:example.org"))
TEAMS_ROOM = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID("19:abc@thread.tacv2"))
ROLES = {"sre": Access(mxids=("@bob:example.org",)), "mods": Access(matrix_power_level=50)}


def runbook(access: Access, approvers: Access | None = None) -> Runbook:
    return Runbook(
        name="restart-api",
        description="",
        params=(),
        access=access,
        approvals=ApprovalPolicy(count=1, approvers=approvers or Access()),
        timeout=timedelta(minutes=1),
        executor=ExecSpec(argv=("/bin/true",)),
    )


class Levels:
    """Power levels by user, counting lookups."""

    def __init__(self, levels: dict[str, int], *, fail: bool = False) -> None:
        self.levels = levels
        self.fail = fail
        self.calls = 0

    async def __call__(self, room: RoomRef, user_id: RemoteUserID) -> int:
        self.calls += 1
        if self.fail:
            raise BridgeError("homeserver unreachable")
        return self.levels.get(user_id, 0)


async def allowed(
    access: Access,
    sender: Sender,
    *,
    room: RoomRef = MATRIX_ROOM,
    levels: Levels | None = None,
    groups: frozenset[str] = frozenset(),
) -> bool:
    verdict = await may_run(
        runbook(access), sender, room=room, roles=ROLES, privilege=levels, groups=groups
    )
    return verdict.allowed


async def test_default_deny() -> None:
    assert not await allowed(Access(), ALICE, levels=Levels({"@alice:example.org": 100}))
    assert not await allowed(Access(), TEAMS_USER, room=TEAMS_ROOM)


async def test_mxids_match_exactly() -> None:
    access = Access(mxids=("@alice:example.org",))
    assert await allowed(access, ALICE)
    assert not await allowed(access, BOB)
    upper = Sender(
        platform=Platform.MATRIX, user_id=RemoteUserID("@Alice:example.org"), display_name=""
    )
    assert not await allowed(access, upper)


async def test_aad_object_ids_match_without_case_and_only_for_teams_senders() -> None:
    access = Access(aad_object_ids=(AAD,))
    assert await allowed(access, TEAMS_USER, room=TEAMS_ROOM)
    impostor = Sender(platform=Platform.MATRIX, user_id=RemoteUserID(AAD), display_name="")
    assert not await allowed(access, impostor)


async def test_aad_groups_count_only_when_the_activity_carried_them() -> None:
    access = Access(aad_groups=(GROUP,))
    assert not await allowed(access, TEAMS_USER, room=TEAMS_ROOM)
    groups = aad_groups_of(TEAMS_USER, {AAD_GROUPS: [GROUP.upper(), 7, ""]})
    assert groups == frozenset({GROUP})
    assert await allowed(access, TEAMS_USER, room=TEAMS_ROOM, groups=groups)
    assert aad_groups_of(ALICE, {AAD_GROUPS: [GROUP]}) == frozenset()
    assert aad_groups_of(TEAMS_USER, {AAD_GROUPS: GROUP}) == frozenset()
    assert aad_groups_of(TEAMS_USER, {}) == frozenset()
    # Groups given for a Matrix sender never count.
    assert not await allowed(access, ALICE, groups=frozenset({GROUP}))


async def test_power_level_applies_to_matrix_users_in_matrix_rooms() -> None:
    access = Access(matrix_power_level=50)
    levels = Levels({"@alice:example.org": 50, "@bob:example.org": 49})
    assert await allowed(access, ALICE, levels=levels)
    assert not await allowed(access, BOB, levels=levels)
    assert not await allowed(access, ALICE, room=TEAMS_ROOM, levels=levels)
    assert not await allowed(access, TEAMS_USER, room=TEAMS_ROOM, levels=Levels({AAD: 100}))
    assert not await allowed(access, ALICE)  # no way to look levels up: deny


async def test_a_failed_power_level_lookup_denies() -> None:
    levels = Levels({}, fail=True)
    assert not await allowed(Access(matrix_power_level=0), ALICE, levels=levels)
    assert levels.calls == 1


async def test_power_levels_are_looked_up_only_when_ids_do_not_decide() -> None:
    levels = Levels({"@alice:example.org": 100})
    assert await allowed(
        Access(mxids=("@alice:example.org",), matrix_power_level=50), ALICE, levels=levels
    )
    assert levels.calls == 0


async def test_roles_match_by_their_own_rules_and_unknown_roles_match_nobody() -> None:
    assert await allowed(Access(roles=("sre",)), BOB)
    assert not await allowed(Access(roles=("sre",)), ALICE)
    assert await allowed(Access(roles=("mods",)), ALICE, levels=Levels({"@alice:example.org": 60}))
    assert not await allowed(Access(roles=("nobody",)), BOB)


async def test_display_names_never_count() -> None:
    access = Access(mxids=("@alice:example.org",), aad_object_ids=(AAD,), roles=("sre",))
    for name in ("@alice:example.org", AAD, "@bob:example.org", "Alice"):
        sender = Sender(
            platform=Platform.MATRIX, user_id=RemoteUserID("@eve:evil.org"), display_name=name
        )
        assert not await allowed(access, sender)
        teams = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("29:eve"), display_name=name)
        assert not await allowed(access, teams, room=TEAMS_ROOM)


async def test_bridge_senders_match_nothing() -> None:
    bot = Sender(
        platform=Platform.BRIDGE, user_id=RemoteUserID("@alice:example.org"), display_name=""
    )
    assert not await allowed(
        Access(mxids=("@alice:example.org",), matrix_power_level=0), bot, levels=Levels({})
    )


async def test_may_run_says_why_not() -> None:
    verdict = await may_run(runbook(Access()), ALICE, room=MATRIX_ROOM, roles=ROLES, privilege=None)
    assert (verdict.allowed, verdict.reason) == (False, "you may not run restart-api")


async def test_an_approver_needs_the_approver_rules_not_the_run_rules() -> None:
    book = runbook(Access(mxids=("@alice:example.org", "@bob:example.org")), Access(roles=("sre",)))
    ok = await may_approve(book, BOB, ALICE, room=MATRIX_ROOM, roles=ROLES, privilege=None)
    assert ok.allowed
    no = await may_approve(book, ALICE, BOB, room=MATRIX_ROOM, roles=ROLES, privilege=None)
    assert (no.allowed, no.reason) == (False, "you may not approve runs of restart-api")


async def test_the_requester_never_approves_even_with_the_role() -> None:
    book = runbook(Access(roles=("sre",)), Access(roles=("sre",)))
    verdict = await may_approve(book, BOB, BOB, room=MATRIX_ROOM, roles=ROLES, privilege=None)
    assert (verdict.allowed, verdict.reason) == (
        False,
        "the requester cannot approve their own run",
    )
    same_aad = Sender(platform=Platform.TEAMS, user_id=RemoteUserID(AAD), display_name="x")
    book = runbook(Access(aad_object_ids=(AAD,)), Access(aad_object_ids=(AAD,)))
    verdict = await may_approve(
        book, same_aad, TEAMS_USER, room=TEAMS_ROOM, roles=ROLES, privilege=None
    )
    assert not verdict.allowed


async def test_approvals_with_no_approver_rules_are_denied() -> None:
    book = runbook(Access(mxids=("@alice:example.org",)))
    verdict = await may_approve(book, BOB, ALICE, room=MATRIX_ROOM, roles=ROLES, privilege=None)
    assert not verdict.allowed


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (ALICE, ALICE, True),
        (ALICE, BOB, False),
        (
            TEAMS_USER,
            Sender(platform=Platform.TEAMS, user_id=RemoteUserID(AAD), display_name=""),
            True,
        ),
        (ALICE, Sender(platform=Platform.TEAMS, user_id=ALICE.user_id, display_name=""), False),
        (ALICE, Sender(platform=Platform.MATRIX, user_id=BOB.user_id, display_name="Alice"), False),
    ],
)
def test_same_person_compares_platform_ids(a: Sender, b: Sender, same: bool) -> None:
    assert same_person(a, b) is same


async def test_matches_is_usable_on_its_own() -> None:
    assert await matches(Access(mxids=(ALICE.user_id,)), ALICE, MATRIX_ROOM, {}, None)
