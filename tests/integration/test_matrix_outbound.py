"""Matrix outbound against the session's Synapse: what a Matrix user sees of bridged Teams people.

The bridge's own AS endpoint does not listen here: Synapse queues its
transactions, which these tests do not need. The bot joins each test room
itself after the user's invite.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from adapters.matrix.client import CLIENT_V3, MatrixClient, MatrixRequestError, path
from adapters.matrix.content import bridge_state_key
from adapters.matrix.ghosts import GhostManager
from adapters.matrix.ids import GhostNamespace, MatrixRoomID, MatrixUserID
from adapters.matrix.media import MatrixMediaDownloader
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
    TimelineEvent,
)
from bridge.ports import OutboundMessage
from devtools.servers import SynapseServer
from tests.integration.matrix_fixtures import MatrixAppService
from tests.support.fakes import EventBuilder, FakeClock
from tests.support.matrix_user import MatrixUser
from tests.support.waiting import eventually

DEADLINE_S = 20.0
MAX_MEDIA_BYTES = 64 * 1024
TEAMS_TIME = datetime(2026, 10, 30, 9, 15, 42, 123_000, tzinfo=UTC)
TEAMS_TIME_MS = 1_793_351_742_123


@dataclass(frozen=True)
class Scene:
    """A Matrix user's private room with the bot in it, and the bridge's outbound side."""

    user: MatrixUser
    user_token: str
    room: RoomRef
    sender: MatrixSender
    client: MatrixClient
    namespace: GhostNamespace
    dana: Sender
    builder: EventBuilder

    @property
    def room_id(self) -> MatrixRoomID:
        return MatrixRoomID(self.room.room_id)

    def ghost(self, sender: Sender) -> MatrixUserID:
        return self.namespace.ghost_for(sender.user_id)

    def message(
        self,
        body: Body,
        *,
        sender: Sender | None = None,
        reply_to: str | None = None,
        thread_root: str | None = None,
        occurred_at: datetime | None = None,
    ) -> OutboundMessage:
        event: TimelineEvent = replace(
            self.builder.message(body.text, occurred_at=occurred_at),
            body=body,
            sender=sender or self.dana,
        )
        return OutboundMessage(
            event=event,
            target=self.room,
            reply_to=RemoteMessageID(reply_to) if reply_to else None,
            thread_root=RemoteMessageID(thread_root) if thread_root else None,
        )

    async def event(self, event_id: str) -> dict[str, Any]:
        room, event = quote(self.room_id, safe=""), quote(event_id, safe="")
        return await self.user.call("GET", f"/_matrix/client/v3/rooms/{room}/event/{event}")

    async def timeline(self) -> list[dict[str, Any]]:
        return await self.user.messages(self.room_id, limit=100)

    async def seen(self, event_id: str) -> dict[str, Any]:
        """The event as the user reads it in the room's timeline, waited for (bounded)."""

        async def find() -> dict[str, Any] | None:
            return next((e for e in await self.timeline() if e["event_id"] == event_id), None)

        return await eventually(find, within=DEADLINE_S, what=f"{event_id} in the timeline")


@pytest.fixture
async def scene(
    synapse_server: SynapseServer, matrix_app_service: MatrixAppService
) -> AsyncIterator[Scene]:
    registration = matrix_app_service.registration
    namespace = registration.namespace
    suffix = uuid.uuid4().hex[:8]
    user_id, token = await asyncio.to_thread(
        synapse_server.register_user, f"oncall-{suffix}", "oncall-password"
    )
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        client = MatrixClient(
            session=http,
            base_url=synapse_server.base_url,
            as_token=registration.as_token,
            timeout_s=DEADLINE_S,
            max_attempts=2,
        )
        sender = MatrixSender(
            client=client,
            ghosts=GhostManager(client=client, namespace=namespace, cache_size=32),
            namespace=namespace,
            max_media_bytes=MAX_MEDIA_BYTES,
            media=MatrixMediaDownloader(
                session=http,
                base_url=synapse_server.base_url,
                as_token=registration.as_token,
                timeout_s=DEADLINE_S,
            ),
        )
        user = MatrixUser(http, synapse_server.base_url, user_id, token)
        room_id = await user.create_room(invite=[namespace.bot], name=f"incident {suffix}")
        await client.request("POST", path(CLIENT_V3, "join", room_id), json={})
        yield Scene(
            user=user,
            user_token=token,
            room=RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(room_id)),
            sender=sender,
            client=client,
            namespace=namespace,
            dana=Sender(
                platform=Platform.TEAMS,
                user_id=RemoteUserID(f"aad-dana-{suffix}"),
                display_name="Dana Kim",
            ),
            builder=EventBuilder(FakeClock()),
        )


async def test_a_message_arrives_once_from_the_named_ghost_at_the_teams_time(scene: Scene) -> None:
    message = scene.message(Body(text="db-1 failover started"), occurred_at=TEAMS_TIME)
    ref = await scene.sender.send(message, idempotency_key=message.event.id)

    seen = await scene.seen(ref.message_id)
    ghost = scene.ghost(scene.dana)
    assert seen["sender"] == ghost
    assert seen["origin_server_ts"] == TEAMS_TIME_MS
    assert seen["content"] == {
        "msgtype": "m.text",
        "body": "db-1 failover started",
        "m.mentions": {"user_ids": []},
    }
    member = await scene.user.member_state(scene.room_id, ghost)
    assert member is not None
    assert member["membership"] == "join"
    assert member["displayname"] == "Dana Kim (Teams)"

    again = await scene.sender.send(message, idempotency_key=message.event.id)
    assert again == ref
    bodies = [e["content"].get("body") for e in await scene.timeline()]
    assert bodies.count("db-1 failover started") == 1


async def test_edits_redactions_and_reactions(scene: Scene) -> None:
    original = scene.message(Body(text="restart the pods"))
    ref = await scene.sender.send(original, idempotency_key=original.event.id)
    ghost = scene.ghost(scene.dana)

    edit = scene.message(Body(text="restart the api pods"))
    await scene.sender.edit(ref, edit, idempotency_key=edit.event.id)

    async def the_edit() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in await scene.timeline()
                if e["content"].get("m.relates_to", {}).get("rel_type") == "m.replace"
            ),
            None,
        )

    replacement = await eventually(the_edit, within=DEADLINE_S, what="the edit")
    assert replacement["sender"] == ghost
    assert replacement["content"]["m.relates_to"]["event_id"] == ref.message_id
    assert replacement["content"]["body"] == "* restart the api pods"
    assert replacement["content"]["m.new_content"]["body"] == "restart the api pods"

    reaction = await scene.sender.react(ref, scene.dana, "👍", idempotency_key="react-1")
    seen = await scene.seen(reaction.message_id)
    assert seen["type"] == "m.reaction"
    assert seen["sender"] == ghost
    assert seen["content"]["m.relates_to"] == {
        "rel_type": "m.annotation",
        "event_id": ref.message_id,
        "key": "👍",
    }
    # Past the homeserver's memory of the transaction, the same reaction is found again.
    same = await scene.sender.react(ref, scene.dana, "👍", idempotency_key="react-1-later")
    assert same == reaction

    await scene.sender.redact(reaction, scene.dana, idempotency_key="unreact-1")
    assert (await scene.event(reaction.message_id))["content"] == {}

    await scene.sender.redact(ref, scene.dana, idempotency_key="redact-1")
    redacted = await scene.event(ref.message_id)
    assert redacted["content"] == {}
    assert "redacted_because" in redacted["unsigned"]
    await scene.sender.redact(ref, scene.dana, idempotency_key="redact-1-again")


async def test_replies_threads_and_formatted_mentions(scene: Scene) -> None:
    root = await scene.sender.send(scene.message(Body(text="root")), idempotency_key="root")

    reply = scene.message(Body(text="on it"), reply_to=root.message_id)
    reply_ref = await scene.sender.send(reply, idempotency_key=reply.event.id)
    assert (await scene.seen(reply_ref.message_id))["content"]["m.relates_to"] == {
        "m.in_reply_to": {"event_id": root.message_id}
    }

    in_thread = scene.message(Body(text="thread note"), thread_root=root.message_id)
    thread_ref = await scene.sender.send(in_thread, idempotency_key=in_thread.event.id)
    relation = (await scene.seen(thread_ref.message_id))["content"]["m.relates_to"]
    assert relation["rel_type"] == "m.thread"
    assert relation["event_id"] == root.message_id
    assert relation["is_falling_back"] is True

    oncall = Sender(
        platform=Platform.MATRIX, user_id=RemoteUserID(scene.user.user_id), display_name="Oncall"
    )
    lee = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-lee"), display_name="Lee")
    body = Body(
        text="Oncall and Lee: check db-1",
        html=(
            '<b>Oncall</b> and Lee: check <a href="javascript:alert(1)">db-1</a><script>x</script>'
        ),
        style=MessageStyle.NOTICE,
        mentions=(oncall, lee),
    )
    notice = scene.message(body)
    notice_ref = await scene.sender.send(notice, idempotency_key=notice.event.id)
    content = (await scene.seen(notice_ref.message_id))["content"]
    lee_ghost = scene.namespace.ghost_for("aad-lee")
    assert content["msgtype"] == "m.notice"
    assert content["format"] == "org.matrix.custom.html"
    assert content["formatted_body"] == (
        f'<b><a href="https://matrix.to/#/{scene.user.user_id}">Oncall</a></b> and '
        f'<a href="https://matrix.to/#/{lee_ghost}">Lee</a>: check db-1'
    )
    assert content["m.mentions"] == {"user_ids": [scene.user.user_id, lee_ghost]}


async def test_media_upload_send_and_authenticated_download(scene: Scene) -> None:
    data = os.urandom(3000)
    uploaded = await scene.sender.upload(
        data, Attachment(name="graph.png", mime_type="image/png", is_image=True, width=2, height=1)
    )
    assert uploaded.url.startswith("mxc://")
    assert uploaded.size == 3000

    message = scene.message(Body(text="latency graph", attachments=(uploaded,)))
    first = await scene.sender.send(message, idempotency_key=message.event.id)
    assert (await scene.seen(first.message_id))["content"]["body"] == "latency graph"

    async def the_image() -> dict[str, Any] | None:
        return next(
            (e for e in await scene.timeline() if e["content"].get("msgtype") == "m.image"), None
        )

    image = await eventually(the_image, within=DEADLINE_S, what="the image event")
    assert image["sender"] == scene.ghost(scene.dana)
    assert image["content"]["url"] == uploaded.url
    assert image["content"]["info"] == {"mimetype": "image/png", "size": 3000, "w": 2, "h": 1}

    assert await scene.sender.download(uploaded, max_bytes=3000) == data
    with pytest.raises(PermanentDeliveryError, match="too large"):
        await scene.sender.download(uploaded, max_bytes=2999)
    server, media_id = uploaded.url.removeprefix("mxc://").split("/")
    async with scene.user.session.get(
        f"{scene.user.base}/_matrix/client/v1/media/download/{server}/{media_id}",
        headers={"Authorization": f"Bearer {scene.user_token}"},
    ) as response:
        assert response.status == 200
        assert await response.read() == data

    missing = replace(uploaded, url=f"mxc://{server}/doesnotexist")
    with pytest.raises(MatrixRequestError) as not_found:
        await scene.sender.download(missing, max_bytes=3000)
    assert not_found.value.status == 404
    with pytest.raises(PermanentDeliveryError, match="too large"):
        await scene.sender.upload(b"x" * (MAX_MEDIA_BYTES + 1), uploaded)


async def test_bridge_info_needs_power_and_is_readable_by_the_user(scene: Scene) -> None:
    conversation = "19:ops@thread.tacv2"
    with pytest.raises(PermanentDeliveryError, match="power level"):
        await scene.sender.set_bridge_info(
            scene.room_id, teams_conversation_id=conversation, teams_display_name="Ops"
        )

    room = quote(scene.room_id, safe="")
    levels_path = f"/_matrix/client/v3/rooms/{room}/state/m.room.power_levels"
    levels = await scene.user.call("GET", levels_path)
    levels.setdefault("users", {})[scene.namespace.bot] = 50
    await scene.user.call("PUT", levels_path, json=levels)

    await scene.sender.set_bridge_info(
        scene.room_id, teams_conversation_id=conversation, teams_display_name="Ops"
    )
    key = quote(bridge_state_key(conversation), safe="")
    expected = {
        "bridgebot": scene.namespace.bot,
        "protocol": {"id": "msteams", "displayname": "Microsoft Teams"},
        "channel": {"id": conversation, "displayname": "Ops"},
    }
    for event_type in ("m.bridge", "uk.half-shot.bridge"):
        state = await scene.user.call(
            "GET", f"/_matrix/client/v3/rooms/{room}/state/{event_type}/{key}"
        )
        assert state == expected


async def test_a_kicked_ghost_is_invited_back(scene: Scene) -> None:
    first = scene.message(Body(text="before"))
    await scene.sender.send(first, idempotency_key=first.event.id)
    ghost = scene.ghost(scene.dana)
    room = quote(scene.room_id, safe="")
    await scene.user.call("POST", f"/_matrix/client/v3/rooms/{room}/kick", json={"user_id": ghost})

    second = scene.message(Body(text="after"))
    ref = await scene.sender.send(second, idempotency_key=second.event.id)
    assert (await scene.seen(ref.message_id))["sender"] == ghost
    member = await scene.user.member_state(scene.room_id, ghost)
    assert member is not None
    assert member["membership"] == "join"


async def test_a_room_the_bot_cannot_enter_refuses_permanently(scene: Scene) -> None:
    closed = await scene.user.create_room(invite=[], name="no bridge here")
    target = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(closed))
    message = replace(scene.message(Body(text="hello?")), target=target)
    with pytest.raises(PermanentDeliveryError) as refused:
        await scene.sender.send(message, idempotency_key=message.event.id)
    assert isinstance(refused.value, MatrixRequestError)
    assert refused.value.status == 403
    assert not refused.value.retryable

    with pytest.raises(PermanentDeliveryError):
        await scene.sender.redact(
            RemoteRef(room=target, message_id=RemoteMessageID("$nothing")),
            scene.dana,
            idempotency_key="redact-closed",
        )
