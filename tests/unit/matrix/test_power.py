"""Power levels per the spec: explicit users, then users_default; malformed is 0."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.matrix.power import CREATOR_LEVEL, RoomPower, level_of


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"users": {"@a:x": 100}}, 100),
        ({"users": {"@b:x": 100}}, 0),
        ({"users": {"@b:x": 100}, "users_default": 10}, 10),
        ({"users": {"@a:x": "50"}}, 50),  # older room versions allow strings
        ({"users": {"@a:x": True}}, 0),
        ({"users": {"@a:x": "lots"}}, 0),
        ({"users": {"@a:x": -5}}, -5),
        ({"users": "not a mapping", "users_default": 20}, 20),
        ({}, 0),
    ],
)
def test_level_of(content: dict[str, Any], expected: int) -> None:
    assert level_of(content, "@a:x") == expected


def test_creators_outrank_every_level_from_room_version_12() -> None:
    levels = {"users": {"@b:x": 100}}
    v12 = RoomPower(levels=levels, creators=frozenset({"@a:x"}), creators_outrank=True)
    assert v12.level("@a:x") == CREATOR_LEVEL
    assert v12.level("@b:x") == 100
    v11 = RoomPower(levels=levels, creators=frozenset({"@a:x"}), creators_outrank=False)
    assert v11.level("@a:x") == 0  # an ordinary user once the levels say otherwise


def test_without_a_power_levels_event_the_creator_has_100() -> None:
    power = RoomPower(levels=None, creators=frozenset({"@a:x"}), creators_outrank=False)
    assert (power.level("@a:x"), power.level("@b:x")) == (100, 0)
