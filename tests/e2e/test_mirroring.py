"""Each kind of message, each direction, through the whole daemon: it arrives right, and once.

One stack for the module: a Matrix room linked to a Teams group chat (pair 0) and
another linked to a team's General channel (pair 1), where threads live.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from tests.e2e.arrivals import has_body, matrix_event, teams_message
from tests.e2e.observe import bot_messages, is_edit, relation, room_history, token
from tests.e2e.stack import Pair, Stack, StackServers, open_stack
from tests.e2e.tally import mirror_statuses, tally


@pytest.fixture(scope="module")
async def stack(module_servers: StackServers) -> AsyncIterator[Stack]:
    async with open_stack(module_servers, chats=1, channels=1) as running:
        yield running


def _chat(stack: Stack) -> Pair:
    return stack.pairs[0]


def _channel(stack: Stack) -> Pair:
    return stack.pairs[1]


async def _assert_once(stack: Stack, pair: Pair, *tokens: str) -> None:
    """After delivery settled: each token once on the other side, once in the timeline."""
    await stack.settled()
    counts = await tally(stack, pair)
    for t in tokens:
        mirrored = counts.matrix_by_bridge if t.startswith("t2m") else counts.teams_by_bot
        assert mirrored[t] == 1, f"{t} mirrored {mirrored[t]} times"
        assert counts.timeline_messages[t] == 1, f"{t} has {counts.timeline_messages[t]} records"
        assert await mirror_statuses(stack, t) == [["sent"]], t
    assert counts.misplaced() == {k: [] for k in counts.misplaced()}


def _content(event: Mapping[str, Any]) -> Mapping[str, Any]:
    content = event.get("content")
    assert isinstance(content, Mapping), event
    return content


async def test_plain_text_arrives_once_each_way(stack: Stack) -> None:
    chat = _chat(stack)
    avery, _ = stack.teams_users
    t2m, m2t = token("t2m", "plain", 1), token("m2t", "plain", 1)

    delivery = await stack.emulator.post_message(chat.teams, avery, f"disk full on db-1 {t2m}")
    assert delivery.ok, delivery
    await stack.matrix.send(chat.matrix_room, {"msgtype": "m.text", "body": f"on it {m2t}"})

    mirrored = await matrix_event(stack, chat.matrix_room, has_body(t2m), what="the Teams line")
    posted = await teams_message(stack, chat.teams_id, lambda m: m2t in m.text, what="the line")
    assert mirrored["sender"] == stack.ghost_of(avery)
    assert _content(mirrored)["body"] == f"disk full on db-1 {t2m}"
    assert _content(mirrored)["m.mentions"] == {"user_ids": []}
    assert posted.text == f"<b>Mara Matrix</b> <i>(Matrix)</i>: on it {m2t}"
    await _assert_once(stack, chat, t2m, m2t)


async def test_formatting_arrives_formatted_each_way(stack: Stack) -> None:
    chat = _chat(stack)
    avery, _ = stack.teams_users
    t2m, m2t = token("t2m", "format", 1), token("m2t", "format", 1)
    rich = (
        "<p><b>db-1</b> is <i>down</i>, run <code>failover --now</code></p>"
        "<ul><li>page on-call</li><li>freeze deploys</li></ul>"
        '<p>see <a href="https://runbooks.example.org/db">the runbook</a> {token}</p>'
    )

    delivery = await stack.emulator.post_message(
        chat.teams,
        avery,
        f"db-1 is down, run failover --now page on-call freeze deploys see the runbook {t2m}",
        html=rich.format(token=t2m),
    )
    assert delivery.ok, delivery
    await stack.matrix.send(
        chat.matrix_room,
        {
            "msgtype": "m.text",
            "body": f"**db-1** is _down_ {m2t}",
            "format": "org.matrix.custom.html",
            "formatted_body": rich.format(token=m2t),
        },
    )

    mirrored = await matrix_event(stack, chat.matrix_room, has_body(t2m), what="the rich line")
    posted = await teams_message(stack, chat.teams_id, lambda m: m2t in m.text, what="rich line")
    content = _content(mirrored)
    assert content.get("format") == "org.matrix.custom.html"
    for html in (str(content.get("formatted_body")), posted.text):
        assert "<b>db-1</b>" in html or "<strong>db-1</strong>" in html, html
        assert "<i>down</i>" in html or "<em>down</em>" in html, html
        assert "<code>failover --now</code>" in html, html
        assert "<li>page on-call</li>" in html, html
        assert '<a href="https://runbooks.example.org/db">the runbook</a>' in html, html
    await _assert_once(stack, chat, t2m, m2t)


async def test_mentions_become_pills_and_real_mentions(stack: Stack) -> None:
    chat = _chat(stack)
    avery, blake = stack.teams_users
    t2m, m2t = token("t2m", "mention", 1), token("m2t", "mention", 1)
    blake_ghost = stack.ghost_of(blake)

    delivery = await stack.emulator.post_message(
        chat.teams, avery, f"can you take this {t2m}", mentions=[blake]
    )
    assert delivery.ok, delivery
    mirrored = await matrix_event(stack, chat.matrix_room, has_body(t2m), what="the mention")
    content = _content(mirrored)
    assert content["m.mentions"] == {"user_ids": [blake_ghost]}
    assert f'href="https://matrix.to/#/{blake_ghost}"' in str(content.get("formatted_body")), (
        content
    )

    avery_ghost = stack.ghost_of(avery)
    await stack.matrix.send(
        chat.matrix_room,
        {
            "msgtype": "m.text",
            "body": f"Avery Teams (Teams): thanks {m2t}",
            "format": "org.matrix.custom.html",
            "formatted_body": (
                f'<a href="https://matrix.to/#/{avery_ghost}">Avery Teams (Teams)</a>: thanks {m2t}'
            ),
            "m.mentions": {"user_ids": [avery_ghost]},
        },
    )
    posted = await teams_message(stack, chat.teams_id, lambda m: m2t in m.text, what="mention")
    mentions = [e for e in posted.entities if e.get("type") == "mention"]
    assert [m["mentioned"]["id"] for m in mentions] == [avery.aad_object_id], posted.entities
    assert mentions[0]["text"] in posted.text
    assert mentions[0]["text"].startswith("<at>")
    await _assert_once(stack, chat, t2m, m2t)


async def test_teams_thread_replies_mirror_into_a_matrix_thread(stack: Stack) -> None:
    channel = _channel(stack)
    avery, blake = stack.teams_users
    root_token, reply_token = token("t2m", "thread", 1), token("t2m", "thread", 2)

    root = await stack.emulator.post_message(channel.teams, avery, f"db-1 alert {root_token}")
    assert root.ok, root
    reply = await stack.emulator.post_message(
        channel.teams, blake, f"looking {reply_token}", thread_root=root.activity_id
    )
    assert reply.ok, reply

    mirrored_root = await matrix_event(
        stack, channel.matrix_room, has_body(root_token), what="the thread root"
    )
    mirrored_reply = await matrix_event(
        stack, channel.matrix_room, has_body(reply_token), what="the thread reply"
    )
    assert relation(mirrored_root) == {}
    assert relation(mirrored_reply).get("rel_type") == "m.thread"
    assert relation(mirrored_reply).get("event_id") == mirrored_root["event_id"]
    assert mirrored_reply["sender"] == stack.ghost_of(blake)
    await _assert_once(stack, channel, root_token, reply_token)


async def test_matrix_thread_reply_and_reply_land_in_the_teams_thread(stack: Stack) -> None:
    channel = _channel(stack)
    avery, blake = stack.teams_users
    root_token, reply_token = token("t2m", "mxthread", 1), token("t2m", "mxthread", 2)
    in_thread, as_reply = token("m2t", "mxthread", 1), token("m2t", "mxthread", 2)

    root = await stack.emulator.post_message(channel.teams, avery, f"api 500s {root_token}")
    assert root.ok, root
    reply = await stack.emulator.post_message(
        channel.teams, blake, f"since 10:02 {reply_token}", thread_root=root.activity_id
    )
    assert reply.ok, reply
    mx_root = await matrix_event(stack, channel.matrix_room, has_body(root_token), what="root")
    mx_reply = await matrix_event(stack, channel.matrix_room, has_body(reply_token), what="reply")

    await stack.matrix.send(
        channel.matrix_room,
        {
            "msgtype": "m.text",
            "body": f"rolling back {in_thread}",
            "m.relates_to": {
                "rel_type": "m.thread",
                "event_id": mx_root["event_id"],
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": mx_root["event_id"]},
            },
        },
    )
    await stack.matrix.send(
        channel.matrix_room,
        {
            "msgtype": "m.text",
            "body": f"which deploy? {as_reply}",
            "m.relates_to": {"m.in_reply_to": {"event_id": mx_reply["event_id"]}},
        },
    )

    threaded = await teams_message(
        stack, channel.teams_id, lambda m: in_thread in m.text, what="the thread reply"
    )
    replied = await teams_message(
        stack, channel.teams_id, lambda m: as_reply in m.text, what="the reply"
    )
    assert threaded.thread_root == root.activity_id, "a new channel post, not a reply in the thread"
    assert replied.thread_root == root.activity_id, "a new channel post, not a reply in the thread"
    await _assert_once(stack, channel, root_token, reply_token, in_thread, as_reply)


async def test_teams_reply_to_a_bridged_matrix_post_threads_under_it(stack: Stack) -> None:
    channel = _channel(stack)
    avery, _ = stack.teams_users
    post, answer = token("m2t", "mxroot", 1), token("t2m", "mxroot", 1)

    original = await stack.matrix.send(
        channel.matrix_room, {"msgtype": "m.text", "body": f"status page is stale {post}"}
    )
    posted = await teams_message(stack, channel.teams_id, lambda m: post in m.text, what="post")
    assert posted.thread_root == posted.activity_id  # a new post in the channel
    delivery = await stack.emulator.post_message(
        channel.teams, avery, f"fixed {answer}", thread_root=posted.activity_id
    )
    assert delivery.ok, delivery

    mirrored = await matrix_event(stack, channel.matrix_room, has_body(answer), what="the answer")
    assert relation(mirrored).get("rel_type") == "m.thread", relation(mirrored)
    assert relation(mirrored).get("event_id") == original
    await _assert_once(stack, channel, post, answer)


async def test_edits_replace_the_mirror_each_way(stack: Stack) -> None:
    chat = _chat(stack)
    avery, _ = stack.teams_users
    t2m, m2t = token("t2m", "edit", 1), token("m2t", "edit", 1)

    sent = await stack.emulator.post_message(chat.teams, avery, f"cpu at 90% {t2m}")
    assert sent.ok, sent
    mirrored = await matrix_event(stack, chat.matrix_room, has_body(t2m), what="the original")
    original = await stack.matrix.send(
        chat.matrix_room, {"msgtype": "m.text", "body": f"restarting web-3 {m2t}"}
    )
    posted = await teams_message(stack, chat.teams_id, lambda m: m2t in m.text, what="original")
    bot_count = len(bot_messages(stack.emulator, chat.teams_id))

    edited = await stack.emulator.edit_message(sent.activity_id, f"cpu at 99% {t2m}")
    assert edited.ok, edited
    await stack.matrix.send(
        chat.matrix_room,
        {
            "msgtype": "m.text",
            "body": f"* restarting web-4 {m2t}",
            "m.new_content": {"msgtype": "m.text", "body": f"restarting web-4 {m2t}"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        },
    )

    replacement = await matrix_event(
        stack, chat.matrix_room, lambda e: is_edit(e) and t2m in str(e), what="the m.replace"
    )
    assert replacement["sender"] == stack.ghost_of(avery)
    assert relation(replacement).get("event_id") == mirrored["event_id"]
    assert _content(replacement)["m.new_content"]["body"] == f"cpu at 99% {t2m}"
    updated = await teams_message(
        stack, chat.teams_id, lambda m: "web-4" in m.text and m2t in m.text, what="the update"
    )
    assert updated.activity_id == posted.activity_id
    assert updated.edit_count == 1
    assert len(bot_messages(stack.emulator, chat.teams_id)) == bot_count
    await _assert_once(stack, chat, t2m, m2t)
    edits = await stack.timeline({"kind": "edit"})
    assert sum(1 for d in edits if t2m in str(d.get("body")) or m2t in str(d.get("body"))) == 2


async def test_deletes_remove_the_mirror_each_way(stack: Stack) -> None:
    chat = _chat(stack)
    avery, _ = stack.teams_users
    t2m, m2t = token("t2m", "delete", 1), token("m2t", "delete", 1)

    sent = await stack.emulator.post_message(chat.teams, avery, f"wrong channel {t2m}")
    assert sent.ok, sent
    mirrored = await matrix_event(stack, chat.matrix_room, has_body(t2m), what="the original")
    original = await stack.matrix.send(
        chat.matrix_room, {"msgtype": "m.text", "body": f"ignore me {m2t}"}
    )
    posted = await teams_message(stack, chat.teams_id, lambda m: m2t in m.text, what="original")
    bot_count = len(bot_messages(stack.emulator, chat.teams_id))

    deleted = await stack.emulator.delete_message(sent.activity_id)
    assert deleted.ok, deleted
    await stack.matrix.redact(chat.matrix_room, original)

    redaction = await matrix_event(
        stack,
        chat.matrix_room,
        lambda e: (
            e.get("type") == "m.room.redaction"
            and mirrored["event_id"] in (e.get("redacts"), _content(e).get("redacts"))
        ),
        what="the redaction",
    )
    assert redaction["sender"] == stack.ghost_of(avery)
    gone = await teams_message(
        stack, chat.teams_id, lambda m: m.activity_id == posted.activity_id and m.deleted,
        what="the delete",
    )  # fmt: skip
    assert gone.deleted
    assert len(bot_messages(stack.emulator, chat.teams_id)) == bot_count
    await stack.settled()
    history = await room_history(stack.matrix, chat.matrix_room)
    still = [e for e in history if e.get("event_id") == mirrored["event_id"]]
    assert still, "the mirrored message vanished from the history"
    assert "body" not in _content(still[0]), "the mirrored message was not redacted"
    redactions = await stack.timeline({"kind": "redaction"})
    targets = {r["relations"][0]["target"]["message_id"] for r in redactions}
    assert {sent.activity_id, original} <= targets
