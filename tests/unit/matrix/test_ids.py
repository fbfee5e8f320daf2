from __future__ import annotations

from adapters.matrix.ids import GhostNamespace, escape_localpart, server_of, unescape_localpart

NS = GhostNamespace(prefix="teams_", server_name="example.org", bot_localpart="incident-bridge")


def test_ghost_of_a_teams_user_is_stable_and_reversible() -> None:
    aad = "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0"
    ghost = NS.ghost_for(aad)
    assert ghost == "@teams_0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0:example.org"
    assert NS.ghost_for(aad) == ghost
    assert NS.teams_user_of(ghost) == aad.lower()
    assert NS.is_own(ghost)
    assert NS.is_own("@incident-bridge:example.org")
    assert not NS.is_own("@alice:example.org")
    assert not NS.is_own("@teams_x:other.org")


def test_escaping_round_trips_any_text() -> None:
    for value in ["29:1abc/DEF", "ünïcode id", "a=b", "x" * 40]:
        escaped = escape_localpart(value)
        assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789._-=" for c in escaped)
        assert unescape_localpart(escaped) == value


def test_server_of_user_id() -> None:
    assert server_of("@alice:matrix.example.org:8448") == "matrix.example.org:8448"
