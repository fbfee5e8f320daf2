"""Matrix outbound without a server: event content, txn ids, ghost caches, re-joining."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import pytest

from adapters.matrix.client import MatrixRequestError
from adapters.matrix.content import (
    MAX_CONTENT_BYTES,
    TRUNCATED_MARKER,
    Mention,
    add_pills,
    attachment_content,
    bridge_info_content,
    bridge_state_key,
    edit_content,
    fit_content,
    message_parts,
    parse_mxc,
    reaction_content,
    relates_to,
    text_content,
    timestamp_ms,
    txn_id,
)
from adapters.matrix.ghosts import BoundedLRU, GhostManager, ghost_display_name
from adapters.matrix.ids import GhostNamespace, MatrixRoomID, MatrixUserID
from adapters.matrix.outbound import MatrixSender
from bridge.errors import PermanentDeliveryError
from bridge.model import (
    Attachment,
    Body,
    MessageStyle,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
)
from bridge.ports import OutboundMessage
from tests.support.fakes import EventBuilder, FakeClock

NAMESPACE = GhostNamespace(prefix="teams_", server_name="example.org", bot_localpart="bridge")
ALICE = Mention(name="Alice", user_id=MatrixUserID("@alice:example.org"))
BOB = Mention(name="Bob Stone", user_id=MatrixUserID("@teams_bob:example.org"))
TEAMS_CAROL = Sender(
    platform=Platform.TEAMS, user_id=RemoteUserID("AAD-Carol-1"), display_name="Carol"
)
BRIDGE = Sender(platform=Platform.BRIDGE, user_id=RemoteUserID("bridge"), display_name="Bridge")
ROOM = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!room:example.org"))
PRIVATE_ROOM = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!private"))
REPLIED = RemoteMessageID("$r")
ROOT = RemoteMessageID("$root")


# -- transaction ids and time -------------------------------------------------------------------


def test_txn_ids_are_stable_url_safe_and_distinct_per_kind_room_key_and_part() -> None:
    first = txn_id("send", "!a:example.org", "01JABC", 0)
    assert first == txn_id("send", "!a:example.org", "01JABC", 0)
    assert re.fullmatch(r"[A-Za-z0-9._~-]{1,64}", first)
    others = {
        txn_id("edit", "!a:example.org", "01JABC", 0),
        txn_id("send", "!b:example.org", "01JABC", 0),
        txn_id("send", "!a:example.org", "01JABD", 0),
        txn_id("send", "!a:example.org", "01JABC", 1),
        # Separators in the inputs cannot make two different triples collide.
        txn_id("send", "!a:example.org0", "1JABC", 0),
    }
    assert first not in others
    assert len(others) == 5
    assert re.fullmatch(r"[A-Za-z0-9._~-]+", txn_id("send", "!x", "key with/slash?&=", 3))


def test_timestamps_are_exact_milliseconds() -> None:
    moment = datetime(2026, 11, 1, 12, 0, 0, 999_999, tzinfo=UTC)
    assert timestamp_ms(moment) == 1_793_534_400_999
    assert timestamp_ms(moment.replace(tzinfo=None)) == 1_793_534_400_999


# -- text content --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "msgtype"),
    [
        (MessageStyle.TEXT, "m.text"),
        (MessageStyle.NOTICE, "m.notice"),
        (MessageStyle.EMOTE, "m.emote"),
    ],
)
def test_plain_text_has_msgtype_body_and_always_mentions(style: MessageStyle, msgtype: str) -> None:
    content = text_content(Body(text="disk full on db-1", style=style), [])
    assert content == {
        "msgtype": msgtype,
        "body": "disk full on db-1",
        "m.mentions": {"user_ids": []},
    }


def test_html_is_sanitized_and_marked_as_matrix_html() -> None:
    body = Body(
        text="see runbook", html='<b>see</b> <a href="javascript:x()">runbook</a><script>1</script>'
    )
    content = text_content(body, [])
    assert content["format"] == "org.matrix.custom.html"
    assert content["formatted_body"] == "<b>see</b> runbook"
    assert content["body"] == "see runbook"


def test_html_without_text_gets_a_plain_body() -> None:
    content = text_content(Body(html="<p>first</p><p>second</p>"), [])
    assert content["body"] == "first\nsecond"


def test_mentions_become_pills_and_m_mentions() -> None:
    body = Body(text="Alice and Bob Stone: look", html="<p>Alice and @Bob Stone: look</p>")
    content = text_content(body, [ALICE, BOB, ALICE])
    assert content["m.mentions"] == {"user_ids": ["@alice:example.org", "@teams_bob:example.org"]}
    assert content["formatted_body"] == (
        '<p><a href="https://matrix.to/#/@alice:example.org">Alice</a> and '
        '<a href="https://matrix.to/#/@teams_bob:example.org">Bob Stone</a>: look</p>'
    )


def test_mentions_in_plain_text_produce_a_formatted_body() -> None:
    content = text_content(Body(text="ping Alice\nnow"), [ALICE])
    assert content["formatted_body"] == (
        'ping <a href="https://matrix.to/#/@alice:example.org">Alice</a><br>now'
    )
    unnamed = text_content(Body(text="nobody named here"), [ALICE])
    assert "formatted_body" not in unnamed
    assert unnamed["m.mentions"] == {"user_ids": ["@alice:example.org"]}


def test_pills_skip_code_links_and_parts_of_words() -> None:
    ann = Mention(name="Ann", user_id=MatrixUserID("@ann:x"))
    ann_lee = Mention(name="Ann Lee", user_id=MatrixUserID("@annlee:x"))
    amp = Mention(name="R&D", user_id=MatrixUserID("@rd:x"))
    source = 'Annie <code>Ann</code> <a href="https://x">Ann</a> Ann Lee, Ann. R&amp;D'
    result = add_pills(source, [ann, ann_lee, amp])
    assert result == (
        'Annie <code>Ann</code> <a href="https://x">Ann</a> '
        '<a href="https://matrix.to/#/@annlee:x">Ann Lee</a>, '
        '<a href="https://matrix.to/#/@ann:x">Ann</a>. '
        '<a href="https://matrix.to/#/@rd:x">R&amp;D</a>'
    )


def test_pill_text_and_target_are_escaped() -> None:
    odd = Mention(name="<b>", user_id=MatrixUserID('@x"y:example.org'))
    assert add_pills("hi &lt;b&gt;", [odd]) == (
        'hi <a href="https://matrix.to/#/@x%22y:example.org">&lt;b&gt;</a>'
    )


# -- relations and parts -------------------------------------------------------------------------


def test_reply_and_thread_relations() -> None:
    assert relates_to(REPLIED, None) == {"m.in_reply_to": {"event_id": "$r"}}
    assert relates_to(None, ROOT) == {
        "rel_type": "m.thread",
        "event_id": "$root",
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": "$root"},
    }
    assert relates_to(REPLIED, ROOT) == {
        "rel_type": "m.thread",
        "event_id": "$root",
        "is_falling_back": False,
        "m.in_reply_to": {"event_id": "$r"},
    }
    assert relates_to(None, None) is None
    assert relates_to(REPLIED, None, in_thread_fallback=True) is None


def test_mxc_attachments_follow_the_text_as_media_events() -> None:
    image = Attachment(
        name="graph.png", mime_type="image/png", size=10, url="mxc://example.org/abc", width=4,
        height=3,
    )  # fmt: skip
    log_file = Attachment(name="app.log", mime_type="text/plain", url="mxc://example.org/def")
    remote = Attachment(name="teams.docx", mime_type="application/msword", url="https://x/y")
    body = Body(text="graphs", attachments=(image, log_file, remote))
    parts = message_parts(body, [], reply_to=REPLIED, thread_root=ROOT)
    assert [p["msgtype"] for p in parts] == ["m.text", "m.image", "m.file"]
    assert parts[0]["body"] == "graphs\n(attachment not bridged: teams.docx)"
    assert parts[1] == {
        "msgtype": "m.image",
        "body": "graph.png",
        "filename": "graph.png",
        "url": "mxc://example.org/abc",
        "info": {"mimetype": "image/png", "size": 10, "w": 4, "h": 3},
        "m.mentions": {"user_ids": []},
        "m.relates_to": {
            "rel_type": "m.thread",
            "event_id": "$root",
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": "$root"},
        },
    }
    assert parts[0]["m.relates_to"]["m.in_reply_to"] == {"event_id": "$r"}
    assert parts[2]["info"] == {"mimetype": "text/plain"}


def test_only_the_first_part_is_a_reply_outside_threads() -> None:
    image = Attachment(name="a.png", mime_type="image/png", url="mxc://example.org/a")
    parts = message_parts(Body(attachments=(image, image)), [], reply_to=REPLIED)
    assert parts[0]["m.relates_to"] == {"m.in_reply_to": {"event_id": "$r"}}
    assert "m.relates_to" not in parts[1]
    assert parts[0]["msgtype"] == "m.image"


def test_an_empty_message_is_refused() -> None:
    with pytest.raises(PermanentDeliveryError, match="nothing to send"):
        message_parts(Body(), [])


def test_attachment_kinds() -> None:
    base = Attachment(name="x", mime_type="video/mp4", url="mxc://s/m")
    assert attachment_content(base) is not None
    assert attachment_content(base)["msgtype"] == "m.video"  # type: ignore[index]
    assert attachment_content(replace(base, mime_type="audio/ogg"))["msgtype"] == "m.audio"  # type: ignore[index]
    assert attachment_content(replace(base, url="https://teams/x")) is None


def test_edit_replaces_the_target_with_new_content() -> None:
    content = edit_content(
        Body(text="fixed Alice", html="<i>fixed</i> Alice"), [ALICE], RemoteMessageID("$orig")
    )
    assert content == {
        "msgtype": "m.text",
        "body": "* fixed Alice",
        "m.new_content": {
            "msgtype": "m.text",
            "body": "fixed Alice",
            "format": "org.matrix.custom.html",
            "formatted_body": '<i>fixed</i> <a href="https://matrix.to/#/@alice:example.org">Alice</a>',
            "m.mentions": {"user_ids": ["@alice:example.org"]},
        },
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"},
        "m.mentions": {"user_ids": ["@alice:example.org"]},
    }


def test_reaction_and_bridge_info_content() -> None:
    assert reaction_content(RemoteMessageID("$t"), "👍") == {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": "$t", "key": "👍"}
    }
    assert (
        bridge_state_key("19:abc@thread.tacv2") == "incident-bridge://msteams/19:abc@thread.tacv2"
    )
    assert bridge_info_content(
        NAMESPACE.bot, teams_conversation_id="19:abc", teams_display_name="Ops"
    ) == {
        "bridgebot": "@bridge:example.org",
        "protocol": {"id": "msteams", "displayname": "Microsoft Teams"},
        "channel": {"id": "19:abc", "displayname": "Ops"},
    }


def test_mxc_parsing() -> None:
    assert parse_mxc("mxc://example.org/AbC_-1") == ("example.org", "AbC_-1")
    assert parse_mxc("mxc://[::1]:8448/x") == ("[::1]:8448", "x")
    for bad in ("https://example.org/x", "mxc://example.org/../etc", "mxc://example.org/", ""):
        with pytest.raises(PermanentDeliveryError):
            parse_mxc(bad)


def test_oversized_content_loses_its_html_then_its_tail() -> None:
    small = {"msgtype": "m.text", "body": "x", "m.mentions": {"user_ids": []}}
    assert fit_content(small, 1000) is small
    big_html = {**small, "format": "org.matrix.custom.html", "formatted_body": "<b>y</b>" * 200}
    assert fit_content(big_html, 1000) == small
    long_text = {**small, "body": 'é"' * 2000}
    fitted = fit_content(long_text, 1000)
    encoded = len(json.dumps(fitted, ensure_ascii=False, separators=(",", ":")).encode())
    assert encoded <= 1000
    assert fitted["body"].endswith(TRUNCATED_MARKER)
    huge = text_content(Body(text="z" * 200_000, html="<b>z</b>" * 20_000), [])
    assert len(json.dumps(huge, ensure_ascii=False).encode()) <= MAX_CONTENT_BYTES


# -- ghosts --------------------------------------------------------------------------------------


def test_ghost_display_names() -> None:
    assert ghost_display_name(TEAMS_CAROL) == "Carol (Teams)"
    messy = replace(TEAMS_CAROL, display_name=" Carol\n\u202eevil\x00 ")
    assert ghost_display_name(messy) == "Carol evil (Teams)"
    assert ghost_display_name(replace(TEAMS_CAROL, display_name="  ")) == "AAD-Carol-1 (Teams)"
    long_name = ghost_display_name(replace(TEAMS_CAROL, display_name="n" * 1000))
    assert len(long_name) == 256
    assert long_name.endswith("\u2026 (Teams)")


def test_lru_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache: BoundedLRU[str, int] = BoundedLRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3)
    assert len(cache) == 2
    assert "b" not in cache
    assert cache.get("a") == 1
    assert cache.get("c") == 3
    cache.discard("a")
    cache.discard("missing")
    assert len(cache) == 1
    with pytest.raises(ValueError, match="capacity"):
        BoundedLRU[str, int](0)


class FakeHomeserver:
    """Just enough client-server API for ghosts: registration, profiles, rooms and sends."""

    def __init__(self, namespace: GhostNamespace) -> None:
        self.bot = namespace.bot
        self.server = namespace.server_name
        self.calls: list[tuple[str, str, str | None]] = []
        self.users: set[str] = {self.bot}
        self.profiles: dict[str, dict[str, Any]] = {}
        self.members: dict[str, set[str]] = {}
        self.invited: dict[str, set[str]] = {}
        self.invite_only: set[str] = set()
        self.sent: dict[str, dict[str, Any]] = {}

    def kick(self, room: str, user: str) -> None:
        self.members[room].discard(user)
        self.invited.get(room, set()).discard(user)

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, p, _ in self.calls if m == method and fragment in p)

    async def request(
        self,
        method: str,
        api_path: str,
        *,
        json: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
        user_id: str | None = None,
        ts_ms: int | None = None,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        self.calls.append((method, unquote(api_path), user_id))
        acting = user_id or self.bot
        assert acting in self.users, f"{acting} acts before registering"
        route = [unquote(s) for s in api_path.split("/")[4:]]
        match method, route:
            case "POST", ["register"]:
                assert json is not None
                user = f"@{json['username']}:{self.server}"
                if user in self.users:
                    raise MatrixRequestError(400, "M_USER_IN_USE", "taken")
                self.users.add(user)
                return {"user_id": user}
            case "GET", ["profile", user]:
                return dict(self.profiles.get(user, {}))
            case "PUT", ["profile", user, field]:
                assert json is not None
                self.profiles.setdefault(user, {})[field] = json[field]
                return {}
            case "POST", ["join", room]:
                joined = self.members.setdefault(room, set())
                allowed = acting in joined or acting in self.invited.get(room, set())
                if room in self.invite_only and not allowed:
                    raise MatrixRequestError(403, "M_FORBIDDEN", "not invited")
                joined.add(acting)
                return {"room_id": room}
            case "POST", ["rooms", room, "invite"]:
                assert json is not None
                if acting not in self.members.get(room, set()):
                    raise MatrixRequestError(403, "M_FORBIDDEN", "not in room")
                self.invited.setdefault(room, set()).add(json["user_id"])
                return {}
            case "PUT", ["rooms", room, "send", _, txn]:
                if acting not in self.members.get(room, set()):
                    raise MatrixRequestError(403, "M_FORBIDDEN", "not in room")
                assert json is not None
                self.sent.setdefault(txn, {"sender": acting, "content": dict(json), "ts": ts_ms})
                return {"event_id": f"${txn}"}
        raise AssertionError(f"unexpected {method} {api_path}")


async def test_ghosts_register_once_and_rename_only_on_change() -> None:
    homeserver = FakeHomeserver(NAMESPACE)
    ghosts = GhostManager(client=homeserver, namespace=NAMESPACE, cache_size=16)
    ghost = await ghosts.ensure_ghost(TEAMS_CAROL)
    assert ghost == NAMESPACE.ghost_for("AAD-Carol-1")
    assert homeserver.profiles[ghost] == {"displayname": "Carol (Teams)"}
    await ghosts.ensure_ghost(TEAMS_CAROL)
    assert homeserver.count("POST", "/register") == 1
    assert homeserver.count("PUT", "/displayname") == 1

    await ghosts.ensure_ghost(replace(TEAMS_CAROL, display_name="Carol Diaz"))
    assert homeserver.profiles[ghost]["displayname"] == "Carol Diaz (Teams)"
    await ghosts.ensure_ghost(TEAMS_CAROL, avatar_url="mxc://example.org/face")
    assert homeserver.profiles[ghost]["avatar_url"] == "mxc://example.org/face"
    assert homeserver.count("PUT", "/displayname") == 3
    assert await ghosts.ensure_ghost(BRIDGE) == NAMESPACE.bot


async def test_a_forgotten_ghost_is_reregistered_but_not_renamed() -> None:
    homeserver = FakeHomeserver(NAMESPACE)
    ghosts = GhostManager(client=homeserver, namespace=NAMESPACE, cache_size=2)
    senders = [replace(TEAMS_CAROL, user_id=RemoteUserID(f"user-{n}")) for n in range(3)]
    for sender in senders:
        await ghosts.ensure_ghost(sender)
    assert ghosts.cached_profiles == 2
    await ghosts.ensure_ghost(senders[0])  # evicted: asks again (user in use), name unchanged
    assert homeserver.count("POST", "/register") == 4
    assert homeserver.count("PUT", "/displayname") == 3


async def test_matrix_users_are_not_posted_as() -> None:
    ghosts = GhostManager(client=FakeHomeserver(NAMESPACE), namespace=NAMESPACE, cache_size=16)
    matrix_user = Sender(
        platform=Platform.MATRIX, user_id=RemoteUserID("@dave:example.org"), display_name="Dave"
    )
    with pytest.raises(PermanentDeliveryError, match="matrix user"):
        await ghosts.ensure_ghost(matrix_user)
    assert ghosts.matrix_user_of(matrix_user) == "@dave:example.org"
    assert ghosts.matrix_user_of(TEAMS_CAROL) == NAMESPACE.ghost_for("AAD-Carol-1")
    assert ghosts.matrix_user_of(BRIDGE) == NAMESPACE.bot


async def test_membership_cache_is_bounded_and_private_rooms_need_the_bot() -> None:
    homeserver = FakeHomeserver(NAMESPACE)
    homeserver.invite_only.add("!private")
    homeserver.invited["!private"] = {NAMESPACE.bot}
    ghosts = GhostManager(client=homeserver, namespace=NAMESPACE, cache_size=2)
    ghost = await ghosts.ensure_ghost(TEAMS_CAROL)

    await ghosts.ensure_joined(ghost, MatrixRoomID("!private"))
    assert homeserver.members["!private"] == {NAMESPACE.bot, ghost}
    assert homeserver.count("POST", "/invite") == 1

    for room in ("!a", "!b"):
        await ghosts.ensure_joined(ghost, MatrixRoomID(room))
    assert ghosts.cached_memberships == 2
    joins = homeserver.count("POST", "/join/")
    await ghosts.ensure_joined(ghost, MatrixRoomID("!b"))
    assert homeserver.count("POST", "/join/") == joins

    homeserver.invite_only.add("!locked")
    with pytest.raises(MatrixRequestError) as refused:
        await ghosts.ensure_bot_joined(MatrixRoomID("!locked"))
    assert refused.value.errcode == "M_FORBIDDEN"


def _sender_for(homeserver: FakeHomeserver, cache_size: int = 16) -> MatrixSender:
    return MatrixSender(
        client=homeserver,
        ghosts=GhostManager(client=homeserver, namespace=NAMESPACE, cache_size=cache_size),
        namespace=NAMESPACE,
        max_media_bytes=10,
        media=NoMedia(),
    )


class NoMedia:
    async def fetch(self, server_name: str, media_id: str, *, max_bytes: int) -> bytes:
        raise AssertionError("no download expected")


def _message(builder: EventBuilder, sender: Sender, room: RoomRef = ROOM) -> OutboundMessage:
    event = replace(builder.message("db-1 is back"), sender=sender)
    return OutboundMessage(event=event, target=room)


async def test_a_kicked_ghost_rejoins_and_the_send_is_retried_once() -> None:
    homeserver = FakeHomeserver(NAMESPACE)
    homeserver.invite_only.add("!private")
    homeserver.invited["!private"] = {NAMESPACE.bot}
    sender = _sender_for(homeserver)
    builder = EventBuilder(FakeClock())
    message = _message(builder, TEAMS_CAROL, PRIVATE_ROOM)

    first = await sender.send(message, idempotency_key="k1")
    ghost = NAMESPACE.ghost_for(TEAMS_CAROL.user_id)
    homeserver.kick("!private", ghost)

    second = await sender.send(_message(builder, TEAMS_CAROL, PRIVATE_ROOM), idempotency_key="k2")
    assert first != second
    assert homeserver.count("POST", "/invite") == 2
    assert [c["sender"] for c in homeserver.sent.values()] == [ghost, ghost]
    assert homeserver.sent[txn_id("send", "!private", "k1")]["ts"] == timestamp_ms(
        message.event.occurred_at
    )


async def test_refusals_other_than_forbidden_are_not_retried() -> None:
    homeserver = FakeHomeserver(NAMESPACE)
    sender = _sender_for(homeserver)
    builder = EventBuilder(FakeClock())
    teams_room = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID("19:x"))
    with pytest.raises(PermanentDeliveryError, match="not a Matrix room"):
        await sender.send(_message(builder, TEAMS_CAROL, teams_room), idempotency_key="k")
    with pytest.raises(PermanentDeliveryError, match="too large"):
        await sender.upload(b"x" * 11, Attachment(name="a", mime_type="text/plain"))
    assert not homeserver.calls


async def test_bridge_notices_are_posted_by_the_bot() -> None:
    homeserver = FakeHomeserver(NAMESPACE)
    sender = _sender_for(homeserver)
    ref = await sender.send(_message(EventBuilder(FakeClock()), BRIDGE), idempotency_key="n1")
    assert ref == RemoteRef(
        room=ROOM, message_id=RemoteMessageID("$" + txn_id("send", ROOM.room_id, "n1"))
    )
    assert all(user is None for _, _, user in homeserver.calls)
