"""Reactions and files across the bridge, both ways, with the real pieces.

One bridge process runs in the test: both adapters (built by their
``create_adapter`` as the daemon builds them) on one web application, served on
the port the session's Synapse calls for the application service, the relay's
intake and delivery service, and a fresh database on the session's
MongoDB-protocol server. The Teams emulator is the channel (it signs and posts
to ``/api/messages``), the connector and the token authority. A real Matrix user
talks to Synapse; a Teams user is the emulator's.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from aiohttp import web
from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern

from adapters.matrix import MatrixAdapter
from adapters.matrix import create_adapter as create_matrix
from adapters.teams import TeamsAdapter
from adapters.teams import create_adapter as create_teams
from bridge.clock import SystemClock
from bridge.config import Settings
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    Kind,
    MirrorStatus,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomLink,
    RoomRef,
    Sender,
    TimelineEvent,
)
from bridge.relay.delivery import DeliveryService, DeliverySettings
from bridge.relay.intake import Intake
from bridge.runtime import AdapterContext
from bridge.tasks import TaskOwner
from bridge.timeline.mongo import MongoTimelineStore
from bridge.timeline.state import MongoStateStore
from devtools.servers import LOOPBACK, MongoServer, SynapseServer
from devtools.teams_emulator import (
    ActivityID,
    Conversation,
    EmulatorKeys,
    FileUpload,
    InlineImage,
    Message,
    TeamsEmulator,
    User,
)
from tests.integration.matrix_fixtures import MatrixAppService
from tests.support.matrix_user import MatrixUser
from tests.support.waiting import eventually

APP_ID: Final = "5c1d7e3f-9b42-4c8f-8d26-3e7f9a2b1c04"
APP_PASSWORD: Final = "reactions-media-secret"
TENANT: Final = "6c9f3a2d-1e4b-4d7c-8f8a-2b3c4d5e6f70"
MAX_MEDIA_BYTES: Final = 100 * 1024
WITHIN_S: Final = 20.0
PNG: Final = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\xa5\xf6"
    b"E@\x00\x00\x00\x00IEND\xaeB`\x82"
)
PDF: Final = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"


@pytest.fixture(scope="module")
def emulator_keys() -> EmulatorKeys:
    return EmulatorKeys.generate(datetime.now(UTC))


@pytest.fixture
async def emulator(
    emulator_keys: EmulatorKeys, matrix_app_service: MatrixAppService
) -> AsyncIterator[TeamsEmulator]:
    async with TeamsEmulator(
        APP_ID,
        APP_PASSWORD,
        TENANT,
        keys=emulator_keys,
        bot_endpoint=f"{matrix_app_service.url}/api/messages",
    ) as emu:
        yield emu


@dataclass(frozen=True)
class Oncall:
    """A real Matrix user and their access token (for authenticated media downloads)."""

    user: MatrixUser
    token: str


@pytest.fixture
async def oncall(synapse_server: SynapseServer) -> AsyncIterator[Oncall]:
    localpart = f"oncall-{secrets.token_hex(3)}"
    user_id, token = await asyncio.to_thread(
        synapse_server.register_user, localpart, "oncall-password"
    )
    async with aiohttp.ClientSession() as session:
        yield Oncall(MatrixUser(session, synapse_server.base_url, user_id, token), token)


@dataclass
class RunningBridge:
    """One bridge process: both adapters, intake, delivery, stores, on the AS port."""

    settings: Settings
    store: MongoTimelineStore
    matrix: MatrixAdapter
    teams: TeamsAdapter
    delivery: DeliveryService
    tasks: TaskOwner
    runner: web.AppRunner
    client: AsyncMongoClient[dict[str, Any]]

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.delivery.stop(deadline_s=5)
        await self.tasks.close()
        await self.teams.stop()
        await self.matrix.stop()
        await self.client.close()


def bridge_settings(
    emu: TeamsEmulator,
    synapse: SynapseServer,
    appservice: MatrixAppService,
    mongo: MongoServer,
    database: str,
    oncall: str,
) -> Settings:
    registration = appservice.registration
    return Settings.model_validate(
        {
            "mongo": {"uri": mongo.uri, "database": database},
            "http": {"public_url": appservice.url},
            "matrix": {
                "enabled": True,
                "homeserver_url": synapse.base_url,
                "server_name": synapse.server_name,
                "as_id": registration.as_id,
                "as_token": registration.as_token,
                "hs_token": registration.hs_token,
                "bot_localpart": registration.bot_localpart,
                "invites": {"users": [oncall]},
                "max_media_bytes": MAX_MEDIA_BYTES,
            },
            "teams": {
                "enabled": True,
                "app_id": APP_ID,
                "tenant_id": TENANT,
                "auth": {"type": "client_secret", "client_secret": APP_PASSWORD},
                "openid_metadata_url": emu.openid_metadata_url,
                "authority": emu.token_authority,
                "allowed_service_url_hosts": [urlsplit(emu.service_url).netloc],
            },
        }
    )


async def start_bridge(settings: Settings, port: int) -> RunningBridge:
    clock = SystemClock()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo.uri.get_secret_value(), tz_aware=True
    )
    store = MongoTimelineStore(
        client, settings.mongo.database, clock=clock, write_concern=WriteConcern(w=1, j=True)
    )
    await store.ensure_indexes()
    app = web.Application()
    ids, metrics = UlidFactory(), BridgeMetrics()
    context = AdapterContext(
        settings=settings,
        clock=clock,
        ids=ids,
        metrics=metrics,
        store=store,
        state=MongoStateStore(store.database),
        web_app=app,
    )
    matrix, teams = create_matrix(context), create_teams(context)
    delivery = DeliveryService(
        store=store,
        clock=clock,
        adapters={Platform.MATRIX: matrix, Platform.TEAMS: teams},
        metrics=metrics,
        owner=f"test-{uuid.uuid4().hex[:6]}",
        settings=DeliverySettings(poll_interval_s=0.05, linger_s=0.2),
        ids=ids,
    )

    async def on_stored(results: Sequence[AppendResult]) -> None:
        delivery.offer(results)

    intake = Intake(
        store=store,
        clock=clock,
        ids=ids,
        metrics=metrics,
        adapters=[matrix, teams],
        on_stored=on_stored,
        link_cache_ttl_s=0.0,
    )
    await matrix.start(intake)
    await teams.start(intake)
    tasks = TaskOwner("test-bridge")
    tasks.start(delivery.run(), name="delivery")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, port).start()
    running = RunningBridge(
        settings=settings,
        store=store,
        matrix=matrix,
        teams=teams,
        delivery=delivery,
        tasks=tasks,
        runner=runner,
        client=client,
    )

    async def ready() -> bool:
        return matrix.ready and teams.ready

    await eventually(ready, within=WITHIN_S, what="both adapters to be ready")
    return running


@dataclass
class Scene:
    """A Matrix room and a Teams channel linked by the bridge, with people in both."""

    bridge: RunningBridge
    emulator: TeamsEmulator
    oncall: MatrixUser
    token: str
    room_id: str
    channel: Conversation
    dana: User
    erin: User
    ghosts: Callable[[str], str]

    @property
    def matrix_room(self) -> RoomRef:
        return RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(self.room_id))

    @property
    def teams_room(self) -> RoomRef:
        return RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(self.channel.conversation_id))

    async def matrix_events(self) -> list[dict[str, Any]]:
        return list(reversed(await self.oncall.messages(self.room_id, limit=100)))

    async def in_matrix(self, found: Callable[[list[dict[str, Any]]], Any], what: str) -> Any:
        async def probe() -> Any:
            return found(await self.matrix_events())

        return await eventually(probe, within=WITHIN_S, what=what)

    async def mirrored_in_teams(self, matrix_event_id: str) -> Message:
        """The Teams message that mirrors a Matrix message, once delivered."""
        origin = RemoteRef(room=self.matrix_room, message_id=RemoteMessageID(matrix_event_id))

        async def probe() -> Message | None:
            event = await self.bridge.store.find_by_origin(origin, Kind.MESSAGE)
            mirror = event.mirror_in(self.teams_room) if event is not None else None
            if mirror is None or mirror.message_id is None:
                return None
            return self.emulator.message(mirror.message_id)

        found: Message = await eventually(probe, within=WITHIN_S, what="the Teams copy")
        return found

    async def teams_text(self, activity_id: str, wanted: Callable[[str], bool], what: str) -> str:
        async def probe() -> str | None:
            message = self.emulator.message(activity_id)
            return message.text if message is not None and wanted(message.text) else None

        found: str = await eventually(probe, within=WITHIN_S, what=what)
        return found

    async def teams_post(self, text: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        """Dana posts in the channel; returns her activity id and its Matrix copy."""
        delivery = await self.emulator.post_message(self.channel, self.dana, text, **kwargs)
        assert delivery.status == 200, delivery.body
        activity_id = str(delivery.activity["id"])
        ghost = self.ghosts(self.dana.aad_object_id)

        def copy(events: list[dict[str, Any]]) -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in events
                    if e["sender"] == ghost
                    and e["type"] == "m.room.message"
                    and e["content"].get("body") == text
                ),
                None,
            )

        return activity_id, await self.in_matrix(copy, f"{text!r} in Matrix")

    async def media(self, mxc: str) -> bytes:
        server, media_id = mxc.removeprefix("mxc://").split("/", 1)
        url = (
            f"{self.oncall.base}/_matrix/client/v1/media/download/"
            f"{quote(server, safe='')}/{quote(media_id, safe='')}"
        )
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.oncall.session.get(url, headers=headers) as response:
            assert response.status == 200, await response.text()
            return await response.read()

    async def stored(self, room: RoomRef, message_id: str, kind: Kind) -> TimelineEvent:
        ref = RemoteRef(room=room, message_id=RemoteMessageID(message_id))

        async def probe() -> TimelineEvent | None:
            return await self.bridge.store.find_by_origin(ref, kind)

        found: TimelineEvent = await eventually(probe, within=WITHIN_S, what="the stored event")
        return found


@pytest.fixture
async def scene(
    emulator: TeamsEmulator,
    synapse_server: SynapseServer,
    matrix_app_service: MatrixAppService,
    mongo_server: MongoServer,
    oncall: Oncall,
) -> AsyncIterator[Scene]:
    database = f"reactions_{uuid.uuid4().hex[:10]}"
    user = oncall.user
    settings = bridge_settings(
        emulator, synapse_server, matrix_app_service, mongo_server, database, user.user_id
    )
    bridge = await start_bridge(settings, matrix_app_service.port)
    scene: Scene | None = None
    try:
        namespace = matrix_app_service.registration.namespace
        room_id = await user.create_room(invite=[namespace.bot], name="incident")

        async def bot_joined() -> bool:
            state = await user.member_state(room_id, namespace.bot)
            return state is not None and state.get("membership") == "join"

        await eventually(bot_joined, within=WITHIN_S, what="the bot to join")
        dana, erin = emulator.add_user("Dana Ops"), emulator.add_user("Erin SRE")
        channel = emulator.add_channel("Operations", "Incidents", members=[dana, erin])
        emulator.set_bot_installed(channel, installed=True)
        scene = Scene(
            bridge=bridge,
            emulator=emulator,
            oncall=user,
            token=oncall.token,
            room_id=room_id,
            channel=channel,
            dana=dana,
            erin=erin,
            ghosts=namespace.ghost_for,
        )
        await bridge.store.save_link(
            RoomLink(
                matrix_room=scene.matrix_room,
                teams_room=scene.teams_room,
                created_at=SystemClock().now(),
            )
        )
        await scene.teams_post("bridge check")  # the bridge learns the channel's reference
        yield scene
    finally:
        await (scene.bridge if scene is not None else bridge).stop()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
        await client.drop_database(database)
        await client.close()


def reactions_to(target: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e["type"] == "m.reaction"
        and e["content"].get("m.relates_to", {}).get("event_id") == target
    ]


# -- reactions ----------------------------------------------------------------------------


async def test_a_teams_reaction_and_its_removal_show_up_and_vanish_on_matrix(
    scene: Scene,
) -> None:
    activity_id, copy = await scene.teams_post("db-1 is down")
    ghost = scene.ghosts(scene.erin.aad_object_id)

    assert (await scene.emulator.react(activity_id, scene.erin, "like")).status == 200

    def liked(events: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((e for e in reactions_to(copy["event_id"], events) if e["content"]), None)

    reaction = await scene.in_matrix(liked, "Erin's reaction in Matrix")
    assert reaction["sender"] == ghost
    assert reaction["content"]["m.relates_to"]["key"] == "👍"

    removed = await scene.emulator.react(activity_id, scene.erin, "like", removed=True)
    assert removed.status == 200

    def gone(events: list[dict[str, Any]]) -> bool:
        mine = [e for e in events if e["event_id"] == reaction["event_id"]]
        return bool(mine) and mine[0]["content"] == {}  # redacted

    await scene.in_matrix(gone, "Erin's reaction to be redacted")
    events = await scene.matrix_events()
    assert [e for e in reactions_to(copy["event_id"], events) if e["content"]] == []
    by_ghost = [e for e in events if e["type"] == "m.reaction" and e["sender"] == ghost]
    assert [e["event_id"] for e in by_ghost] == [reaction["event_id"]]  # never a second one


async def test_a_matrix_reaction_and_un_react_change_the_teams_line_across_a_restart_and_an_edit(
    scene: Scene, matrix_app_service: MatrixAppService
) -> None:
    name = scene.oncall.user_id[1:].split(":")[0]
    header = f"<b>{name}</b> <i>(Matrix)</i>: "
    message_id = await scene.oncall.send(
        scene.room_id, {"msgtype": "m.text", "body": "restarting db-1"}
    )
    posted = await scene.mirrored_in_teams(message_id)
    assert posted.text == header + "restarting db-1"

    like = await scene.oncall.send(
        scene.room_id,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": message_id, "key": "👍"}},
        event_type="m.reaction",
    )
    await scene.teams_text(
        posted.activity_id,
        lambda t: t == f"{header}restarting db-1<br>👍 {name}",
        "the reaction line",
    )

    await scene.bridge.stop()  # the line is rebuilt from what is stored
    scene.bridge = await start_bridge(scene.bridge.settings, matrix_app_service.port)

    await scene.oncall.send(
        scene.room_id,
        {
            "msgtype": "m.text",
            "body": "* restarting db-2",
            "m.new_content": {"msgtype": "m.text", "body": "restarting db-2"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": message_id},
        },
    )
    await scene.teams_text(
        posted.activity_id,
        lambda t: t == f"{header}restarting db-2<br>👍 {name}",
        "the edit, keeping the line",
    )

    await scene.oncall.redact(scene.room_id, like)
    await scene.teams_text(
        posted.activity_id, lambda t: t == f"{header}restarting db-2", "the line to go"
    )


async def test_a_matrix_reaction_on_a_teams_users_message_is_a_bot_reply_kept_up_to_date(
    scene: Scene,
) -> None:
    activity_id, copy = await scene.teams_post("disk full on db-3")
    name = scene.oncall.user_id[1:].split(":")[0]
    party = await scene.oncall.send(
        scene.room_id,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": copy["event_id"], "key": "🎉"}},
        event_type="m.reaction",
    )
    thread = scene.channel.thread(ActivityID(activity_id))

    async def summary() -> Message | None:
        replies = [m for m in scene.emulator.messages(thread) if m.from_bot and not m.deleted]
        return replies[0] if replies and f"🎉 {name}" in replies[0].text else None

    reply = await eventually(summary, within=WITHIN_S, what="the reaction reply")
    assert "Dana Ops" in reply.text
    assert "disk full on db-3" in reply.text

    await scene.oncall.redact(scene.room_id, party)

    async def deleted() -> bool:
        found = scene.emulator.message(reply.activity_id)
        return found is not None and found.deleted

    await eventually(deleted, within=WITHIN_S, what="the reaction reply to be deleted")


async def test_matrix_finds_the_ghosts_reaction_to_take_back_without_its_id(scene: Scene) -> None:
    _, copy = await scene.teams_post("quiet hours")
    target = RemoteRef(room=scene.matrix_room, message_id=RemoteMessageID(copy["event_id"]))
    erin = Sender(
        platform=Platform.TEAMS,
        user_id=RemoteUserID(scene.erin.aad_object_id),
        display_name=scene.erin.name,
    )
    matrix = scene.bridge.matrix
    shown = await matrix.react(target, erin, "🔥", idempotency_key="fire-1")
    assert await matrix.unreact(target, erin, "🔥", idempotency_key="fire-2") == shown
    assert await matrix.unreact(target, erin, "🔥", idempotency_key="fire-3") is None

    def redacted(events: list[dict[str, Any]]) -> bool:
        return any(e["event_id"] == shown.message_id and e["content"] == {} for e in events)

    await scene.in_matrix(redacted, "the reaction to be redacted")


# -- media --------------------------------------------------------------------------------


async def fetch(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


async def test_a_matrix_image_and_file_reach_teams_where_they_can_be_fetched(
    scene: Scene,
) -> None:
    image_uri = await scene.oncall.upload(PNG, "image/png", "graph.png")
    image_id = await scene.oncall.send(
        scene.room_id,
        {
            "msgtype": "m.image",
            "body": "graph.png",
            "url": image_uri,
            "info": {"mimetype": "image/png", "size": len(PNG)},
        },
    )
    posted = await scene.mirrored_in_teams(image_id)
    images = [a for a in posted.attachments if str(a.get("contentType", "")).startswith("image/")]
    assert len(images) == 1
    assert images[0]["contentType"] == "image/png"
    url = str(images[0]["contentUrl"])
    assert url.startswith(f"{scene.bridge.settings.http.public_url}/media/")
    assert await fetch(url) == (200, "image/png", PNG)
    assert (await fetch(url + "x"))[0] == 404

    file_uri = await scene.oncall.upload(PDF, "application/pdf", "runbook.pdf")
    file_id = await scene.oncall.send(
        scene.room_id,
        {
            "msgtype": "m.file",
            "body": "runbook.pdf",
            "url": file_uri,
            "info": {"mimetype": "application/pdf", "size": len(PDF)},
        },
    )
    linked = await scene.mirrored_in_teams(file_id)
    assert "[file] runbook.pdf</a>" in linked.text
    link = linked.text.split('<a href="', 1)[1].split('"', 1)[0]
    status, content_type, data = await fetch(link)
    assert (status, content_type, data) == (200, "application/octet-stream", PDF)


async def test_a_teams_inline_image_and_file_reach_matrix_with_the_right_bytes(
    scene: Scene,
) -> None:
    await scene.teams_post(
        "graphs and the report",
        images=[InlineImage(PNG, "image/png")],
        files=[FileUpload("report.pdf", PDF, "application/pdf")],
    )
    ghost = scene.ghosts(scene.dana.aad_object_id)

    def media(events: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        found = [
            e
            for e in events
            if e["sender"] == ghost and e["content"].get("msgtype") in ("m.image", "m.file")
        ]
        return found if len(found) == 2 else None

    image, document = await scene.in_matrix(media, "the image and the file in Matrix")
    assert image["content"]["msgtype"] == "m.image"
    assert image["content"]["info"]["mimetype"] == "image/png"
    assert await scene.media(image["content"]["url"]) == PNG
    assert document["content"]["msgtype"] == "m.file"
    assert document["content"]["body"] == "report.pdf"
    assert document["content"]["info"]["mimetype"] == "application/pdf"
    assert await scene.media(document["content"]["url"]) == PDF


async def test_an_oversized_teams_file_gives_a_visible_notice_in_matrix(scene: Scene) -> None:
    big = bytes(200 * 1024)
    delivery = await scene.emulator.post_message(
        scene.channel, scene.dana, "the core dump", files=[FileUpload("core.bin", big)]
    )
    assert delivery.status == 200
    notice = "📎 core.bin (200 KB) could not be carried: larger than 100 KB"

    def noted(events: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((e for e in events if notice in e["content"].get("body", "")), None)

    message = await scene.in_matrix(noted, "the notice in Matrix")
    assert message["content"]["body"] == f"the core dump\n{notice}"
    events = await scene.matrix_events()
    assert not [e for e in events if e["content"].get("msgtype") == "m.file"]
    stored = await scene.stored(
        RoomRef(
            platform=Platform.TEAMS,
            room_id=RemoteRoomID(scene.channel.thread(ActivityID(str(delivery.activity["id"])))),
        ),
        str(delivery.activity["id"]),
        Kind.MESSAGE,
    )
    mirror = stored.mirror_in(scene.matrix_room)
    assert mirror is not None
    assert mirror.status is MirrorStatus.SENT
    assert mirror.message_id == message["event_id"]
