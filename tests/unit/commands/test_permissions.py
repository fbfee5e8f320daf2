"""Who is an operator: allow-lists, Matrix power levels, Teams team owners (platform ids)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.commands.parse import parse_command
from bridge.commands.permissions import TEAM_OWNER, Authorizer
from bridge.commands.registry import CommandRequest, Permission
from bridge.config.core import CommandSettings, OperatorSettings
from bridge.errors import StoreError
from bridge.model import Platform, RemoteUserID, RoomRef, Sender
from tests.support.adapters import FakeAdapter
from tests.support.fakes import MATRIX_ROOM, TEAMS_ROOM, EventBuilder, FakeClock


@dataclass
class PrivilegedAdapter(FakeAdapter):
    """A platform that knows each user's privilege in a room (Teams: team owners)."""

    levels: dict[str, int] = field(default_factory=dict)
    failing: bool = False
    asked: list[tuple[RoomRef, str]] = field(default_factory=list)

    async def privilege(self, room: RoomRef, user_id: RemoteUserID) -> int:
        self.asked.append((room, user_id))
        if self.failing:
            raise StoreError("the team record could not be read")
        return self.levels.get(user_id, 0)


def _sender(platform: Platform, user_id: str, name: str) -> Sender:
    return Sender(platform=platform, user_id=RemoteUserID(user_id), display_name=name)


OWNER = _sender(Platform.TEAMS, "11111111-1111-1111-1111-111111111111", "Olga Owner")
MEMBER = _sender(Platform.TEAMS, "22222222-2222-2222-2222-222222222222", "Olga Owner")
LISTED = _sender(Platform.TEAMS, "33333333-3333-3333-3333-333333333333", "Lia Listed")
MOD = _sender(Platform.MATRIX, "@mod:example.org", "Mod")


def _request(sender: Sender, room: RoomRef) -> CommandRequest:
    command = parse_command("!bridge unlink")
    assert command is not None
    return CommandRequest(
        command=command,
        event=EventBuilder(FakeClock()).message("!bridge unlink", room=room),
        room=room,
        sender=sender,
        links=(),
    )


def _authorizer(teams: PrivilegedAdapter, matrix: PrivilegedAdapter) -> Authorizer:
    settings = CommandSettings(
        operators=OperatorSettings(teams=(LISTED.user_id,)), matrix_power_level=50
    )
    return Authorizer(settings, {Platform.TEAMS: teams, Platform.MATRIX: matrix})


async def test_a_team_owner_is_an_operator_and_a_namesake_member_is_not() -> None:
    teams = PrivilegedAdapter(Platform.TEAMS, levels={OWNER.user_id: TEAM_OWNER})
    matrix = PrivilegedAdapter(Platform.MATRIX, levels={MOD.user_id: 50})
    authorizer = _authorizer(teams, matrix)
    assert await authorizer.allows(Permission.OPERATOR, _request(OWNER, TEAMS_ROOM))
    assert not await authorizer.allows(Permission.OPERATOR, _request(MEMBER, TEAMS_ROOM))
    assert await authorizer.allows(Permission.OPERATOR, _request(LISTED, TEAMS_ROOM))
    assert await authorizer.allows(Permission.OPERATOR, _request(MOD, MATRIX_ROOM))
    assert (TEAMS_ROOM, OWNER.user_id) in teams.asked


async def test_a_failed_lookup_denies() -> None:
    teams = PrivilegedAdapter(Platform.TEAMS, levels={OWNER.user_id: TEAM_OWNER}, failing=True)
    authorizer = _authorizer(teams, PrivilegedAdapter(Platform.MATRIX))
    assert not await authorizer.allows(Permission.OPERATOR, _request(OWNER, TEAMS_ROOM))


async def test_without_privileges_only_the_allow_list_counts() -> None:
    settings = CommandSettings(operators=OperatorSettings(teams=(LISTED.user_id,)))
    authorizer = Authorizer(settings, {Platform.TEAMS: FakeAdapter(Platform.TEAMS)})
    assert not await authorizer.allows(Permission.OPERATOR, _request(OWNER, TEAMS_ROOM))
    assert await authorizer.allows(Permission.OPERATOR, _request(LISTED, TEAMS_ROOM))
