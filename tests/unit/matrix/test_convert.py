from __future__ import annotations

from typing import Any

from adapters.matrix.convert import convert_event
from adapters.matrix.ids import GhostNamespace
from bridge.model import Kind, MessageStyle, Platform, RelationKind

NS = GhostNamespace(prefix="teams_", server_name="example.org", bot_localpart="bridge")
ROOM = "!room:example.org"


def _event(event_type: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": event_type,
        "room_id": ROOM,
        "event_id": "$e1",
        "sender": "@alice:example.org",
        "origin_server_ts": 1_700_000_000_123,
        "content": content,
        **extra,
    }


def test_text_message() -> None:
    event = convert_event(
        _event("m.room.message", {"msgtype": "m.text", "body": "hi"}),
        namespace=NS,
        display_name="Alice",
    )
    assert event is not None
    assert event.kind is Kind.MESSAGE
    assert event.body.text == "hi"
    assert event.body.html is None
    assert event.sender.display_name == "Alice"
    assert event.occurred_at.timestamp() == 1_700_000_000.123
    assert event.origin.message_id == "$e1"


def test_reply_fallback_is_stripped() -> None:
    content = {
        "msgtype": "m.text",
        "body": "> <@bob:example.org> original\n\nmy answer",
        "format": "org.matrix.custom.html",
        "formatted_body": "<mx-reply><blockquote>original</blockquote></mx-reply>my answer",
        "m.relates_to": {"m.in_reply_to": {"event_id": "$orig"}},
    }
    event = convert_event(_event("m.room.message", content), namespace=NS, display_name=None)
    assert event is not None
    assert event.body.text == "my answer"
    assert event.body.html == "my answer"
    assert event.sender.display_name == "alice"  # localpart when the name is unknown
    reply = event.relation(RelationKind.REPLY)
    assert reply is not None
    assert reply.target.message_id == "$orig"


def test_pills_without_m_mentions_still_count() -> None:
    content = {
        "msgtype": "m.emote",
        "body": "pokes Bob",
        "format": "org.matrix.custom.html",
        "formatted_body": 'pokes <a href="https://matrix.to/#/@bob:example.org">Bob</a>',
    }
    event = convert_event(_event("m.room.message", content), namespace=NS, display_name="A")
    assert event is not None
    assert event.body.style is MessageStyle.EMOTE
    assert [(m.user_id, m.display_name) for m in event.body.mentions] == [
        ("@bob:example.org", "Bob")
    ]


def test_redaction_in_new_and_old_room_versions() -> None:
    new = convert_event(
        _event("m.room.redaction", {"redacts": "$x"}), namespace=NS, display_name="A"
    )
    old = convert_event(
        _event("m.room.redaction", {}, redacts="$y"), namespace=NS, display_name="A"
    )
    assert new is not None
    assert old is not None
    assert [r.target.message_id for r in (*new.relations, *old.relations)] == ["$x", "$y"]


def test_only_the_bots_membership_is_recorded() -> None:
    bot_invite = _event("m.room.member", {"membership": "invite"}, state_key=NS.bot)
    other = _event("m.room.member", {"membership": "join"}, state_key="@carol:example.org")
    event = convert_event(bot_invite, namespace=NS, display_name="A")
    assert event is not None
    assert event.kind is Kind.MEMBERSHIP
    assert event.data == {"user_id": NS.bot, "membership": "invite"}
    assert convert_event(other, namespace=NS, display_name="A") is None


def test_malformed_and_unsupported_events_are_skipped() -> None:
    assert convert_event({"type": "m.room.message"}, namespace=NS, display_name=None) is None
    assert (
        convert_event(_event("m.room.topic", {"topic": "x"}), namespace=NS, display_name=None)
        is None
    )
    bad_reaction = _event("m.reaction", {"m.relates_to": {"rel_type": "m.reference"}})
    assert convert_event(bad_reaction, namespace=NS, display_name=None) is None
    no_ts = _event("m.room.message", {"body": "x"})
    del no_ts["origin_server_ts"]
    assert convert_event(no_ts, namespace=NS, display_name=None) is None


def test_a_mentioned_ghost_maps_back_to_its_teams_user() -> None:
    ghost = NS.ghost_for("0f1e2d3c-aaaa-bbbb-cccc-000000000001")
    content = {
        "msgtype": "m.text",
        "body": "Dana, can you look?",
        "format": "org.matrix.custom.html",
        "formatted_body": f'<a href="https://matrix.to/#/{ghost}">Dana</a>, can you look?',
        "m.mentions": {"user_ids": [ghost]},
    }
    event = convert_event(_event("m.room.message", content), namespace=NS, display_name="A")
    assert event is not None
    (mention,) = event.body.mentions
    assert mention.platform is Platform.TEAMS
    assert mention.user_id == "0f1e2d3c-aaaa-bbbb-cccc-000000000001"
    assert mention.display_name == "Dana"
