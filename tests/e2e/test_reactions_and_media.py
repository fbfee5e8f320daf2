"""Reactions and media, each direction, through the whole daemon.

The intended behaviour: a Teams reaction becomes an ``m.reaction`` by the
reactor's ghost (taken back: redacted); a Matrix reaction becomes a reaction
line the bot keeps up to date in Teams (the last line of the bot's own message,
or a reply under a Teams user's message); files and images are carried both
ways with their bytes intact. Tests of a direction whose Teams capability is
not built yet are skipped until the adapter has it.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final
from urllib.parse import quote

import pytest

from adapters.teams import TeamsAdapter
from devtools.teams_emulator import FileUpload, InlineImage, Message
from tests.e2e.arrivals import EventPredicate, has_body, matrix_event, teams_message
from tests.e2e.observe import bot_messages, relation, room_history, token
from tests.e2e.stack import Stack, StackServers, open_stack
from tests.support.waiting import eventually

LOG_BYTES: Final = b"2026-11-28T10:02:01Z db-1 ERROR connection refused\n" * 20
_URL = re.compile(r"""(?:src|href)="(http[^"]+)\"""")

teams_reacts = pytest.mark.skipif(
    not (hasattr(TeamsAdapter, "react") and hasattr(TeamsAdapter, "unreact")),
    reason="the Teams adapter has no reaction line yet",
)
teams_media = pytest.mark.skipif(
    not (hasattr(TeamsAdapter, "download") and hasattr(TeamsAdapter, "upload")),
    reason="the Teams adapter carries no media yet",
)


def png(width: int = 2, height: int = 2) -> bytes:
    """A small valid PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
async def stack(module_servers: StackServers) -> AsyncIterator[Stack]:
    async with open_stack(module_servers, chats=1) as running:
        yield running


def _reaction_by(sender: str, target: str, key: str) -> EventPredicate:
    def match(event: Mapping[str, Any]) -> bool:
        relates = relation(event)
        return (
            event.get("type") == "m.reaction"
            and event.get("sender") == sender
            and relates.get("event_id") == target
            and relates.get("key") == key
        )

    return match


async def _react(stack: Stack, room: str, target: str, key: str) -> str:
    return await stack.matrix.send(
        room,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}},
        event_type="m.reaction",
    )


async def test_teams_reactions_become_reactions_of_the_ghosts(stack: Stack) -> None:
    pair = stack.pairs[0]
    avery, blake = stack.teams_users
    m2t, t2m = token("m2t", "react", 1), token("t2m", "react", 1)

    original = await stack.matrix.send(pair.matrix_room, {"msgtype": "m.text", "body": m2t})
    posted = await teams_message(stack, pair.teams_id, lambda m: m2t in m.text, what="post")
    sent = await stack.emulator.post_message(pair.teams, avery, f"deploy done {t2m}")
    assert sent.ok, sent
    mirrored = await matrix_event(stack, pair.matrix_room, has_body(t2m), what="the mirror")

    liked = await stack.emulator.react(posted.activity_id, avery, "like")
    hearted = await stack.emulator.react(sent.activity_id, blake, "heart")
    assert liked.ok, liked
    assert hearted.ok, hearted
    await matrix_event(
        stack, pair.matrix_room, _reaction_by(stack.ghost_of(avery), original, "👍"), what="👍"
    )
    await matrix_event(
        stack,
        pair.matrix_room,
        _reaction_by(stack.ghost_of(blake), str(mirrored["event_id"]), "❤️"),
        what="❤️",
    )
    await stack.settled()
    reactions = [
        e for e in await room_history(stack.matrix, pair.matrix_room) if e["type"] == "m.reaction"
    ]
    assert len(reactions) == 2, reactions


async def test_a_teams_reaction_taken_back_is_redacted(stack: Stack) -> None:
    pair = stack.pairs[0]
    avery, _ = stack.teams_users
    m2t = token("m2t", "unreact", 1)

    original = await stack.matrix.send(pair.matrix_room, {"msgtype": "m.text", "body": m2t})
    posted = await teams_message(stack, pair.teams_id, lambda m: m2t in m.text, what="post")
    assert (await stack.emulator.react(posted.activity_id, avery, "laugh")).ok
    reaction = await matrix_event(
        stack, pair.matrix_room, _reaction_by(stack.ghost_of(avery), original, "😆"), what="😆"
    )
    assert (await stack.emulator.react(posted.activity_id, avery, "laugh", removed=True)).ok

    async def redacted() -> bool:
        events = await room_history(stack.matrix, pair.matrix_room)
        return any(
            e["type"] == "m.room.redaction"
            and reaction["event_id"] in (e.get("redacts"), e.get("content", {}).get("redacts"))
            for e in events
        )

    await eventually(redacted, within=20, interval=0.1, what="the reaction redacted")


@teams_reacts
async def test_matrix_reactions_keep_one_reaction_line_on_the_bots_message(stack: Stack) -> None:
    pair = stack.pairs[0]
    m2t = token("m2t", "line", 1)
    original = await stack.matrix.send(pair.matrix_room, {"msgtype": "m.text", "body": m2t})
    posted = await teams_message(stack, pair.teams_id, lambda m: m2t in m.text, what="post")
    count = len(bot_messages(stack.emulator, pair.teams_id))

    thumbs = await _react(stack, pair.matrix_room, original, "👍")
    await _current(stack, posted, lambda m: "👍" in m.text and "Mara Matrix" in m.text, "👍")
    await _react(stack, pair.matrix_room, original, "🎉")
    await _current(stack, posted, lambda m: "👍" in m.text and "🎉" in m.text, "🎉")
    await stack.matrix.redact(pair.matrix_room, thumbs)
    final = await _current(stack, posted, lambda m: "👍" not in m.text and "🎉" in m.text, "undo")
    assert m2t in final.text
    assert len(bot_messages(stack.emulator, pair.teams_id)) == count


@teams_reacts
async def test_matrix_reactions_on_a_teams_message_keep_one_reply_up_to_date(
    stack: Stack,
) -> None:
    pair = stack.pairs[0]
    avery, _ = stack.teams_users
    t2m = token("t2m", "line", 1)
    sent = await stack.emulator.post_message(pair.teams, avery, f"is it fixed? {t2m}")
    assert sent.ok, sent
    mirrored = await matrix_event(stack, pair.matrix_room, has_body(t2m), what="the mirror")
    before = {m.activity_id for m in bot_messages(stack.emulator, pair.teams_id)}

    eyes = await _react(stack, pair.matrix_room, str(mirrored["event_id"]), "👀")
    line = await teams_message(
        stack,
        pair.teams_id,
        lambda m: m.activity_id not in before and "👀" in m.text and not m.deleted,
        what="the reaction line",
    )
    assert "Mara Matrix" in line.text
    done = await _react(stack, pair.matrix_room, str(mirrored["event_id"]), "✅")
    await _current(stack, line, lambda m: "👀" in m.text and "✅" in m.text, "✅")
    added = {m.activity_id for m in bot_messages(stack.emulator, pair.teams_id)} - before
    assert added == {line.activity_id}, "a reaction posted a new message instead of updating"
    await stack.matrix.redact(pair.matrix_room, eyes)
    await stack.matrix.redact(pair.matrix_room, done)
    await _current(stack, line, lambda m: m.deleted, "the line removed")


async def _current(stack: Stack, message: Message, predicate: Any, what: str) -> Message:
    """The same Teams message, once it satisfies ``predicate``."""

    async def probe() -> Message | None:
        stack.daemon.ensure_alive()
        now = stack.emulator.message(message.activity_id)
        return now if now is not None and predicate(now) else None

    return await eventually(probe, within=20, interval=0.1, what=what)


async def _matrix_media(stack: Stack, mxc: str) -> bytes:
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    url = (
        f"{stack.servers.synapse.base_url}/_matrix/client/v1/media/download/"
        f"{quote(server, safe='')}/{quote(media_id, safe='')}"
    )
    headers = {"Authorization": f"Bearer {stack.matrix_token}"}
    async with stack.session.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        return await response.read()


@teams_media
async def test_teams_files_and_images_arrive_in_matrix_intact(stack: Stack) -> None:
    pair = stack.pairs[0]
    avery, _ = stack.teams_users
    t2m = token("t2m", "media", 1)
    image = png()
    sent = await stack.emulator.post_message(
        pair.teams,
        avery,
        f"screenshot and log {t2m}",
        images=[InlineImage(image)],
        files=[FileUpload("db-1.log", LOG_BYTES, "text/plain")],
    )
    assert sent.ok, sent
    await matrix_event(stack, pair.matrix_room, has_body(t2m), what="the text")
    ghost = stack.ghost_of(avery)

    def media(msgtype: str) -> EventPredicate:
        def match(event: Mapping[str, Any]) -> bool:
            content = event.get("content", {})
            return (
                event.get("sender") == ghost
                and content.get("msgtype") == msgtype
                and str(content.get("url", "")).startswith("mxc://")
            )

        return match

    picture = await matrix_event(stack, pair.matrix_room, media("m.image"), what="the image")
    log_file = await matrix_event(stack, pair.matrix_room, media("m.file"), what="the file")
    assert await _matrix_media(stack, picture["content"]["url"]) == image
    assert await _matrix_media(stack, log_file["content"]["url"]) == LOG_BYTES
    assert log_file["content"].get("filename", log_file["content"]["body"]) == "db-1.log"


@teams_media
async def test_matrix_files_and_images_arrive_in_teams_intact(stack: Stack) -> None:
    pair = stack.pairs[0]
    image = png(3, 3)
    picture_name, log_name = f"{token('m2t', 'media', 1)}.png", f"{token('m2t', 'media', 2)}.log"
    image_uri = await stack.matrix.upload(image, "image/png", picture_name)
    log_uri = await stack.matrix.upload(LOG_BYTES, "text/plain", log_name)
    await stack.matrix.send(
        pair.matrix_room,
        {
            "msgtype": "m.image",
            "body": picture_name,
            "url": image_uri,
            "info": {"mimetype": "image/png", "size": len(image), "w": 3, "h": 3},
        },
    )
    await stack.matrix.send(
        pair.matrix_room,
        {
            "msgtype": "m.file",
            "body": log_name,
            "url": log_uri,
            "info": {"mimetype": "text/plain", "size": len(LOG_BYTES)},
        },
    )
    for name, data in ((picture_name, image), (log_name, LOG_BYTES)):
        carried = await teams_message(stack, pair.teams_id, _carrying(name), what=name)
        assert data in [await _fetch(stack, url) for url in _urls(carried)], name


def _carrying(name: str) -> Callable[[Message], bool]:
    """A bot message that names the file (in its text or one of its attachments)."""
    stem = name.rsplit(".", 1)[0]

    def match(message: Message) -> bool:
        return stem in message.text or any(stem in str(a) for a in message.attachments)

    return match


def _urls(message: Message) -> list[str]:
    urls = _URL.findall(message.text)
    urls += [
        str(a["contentUrl"])
        for a in message.attachments
        if str(a.get("contentUrl", "")).startswith("http")
    ]
    return urls


async def _fetch(stack: Stack, url: str) -> bytes:
    async with stack.session.get(url) as response:
        return await response.read() if response.status == 200 else b""
