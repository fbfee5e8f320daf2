"""The whole product on loopback for one test: Synapse, MongoDB, the Teams emulator, the daemon.

``open_stack`` builds, in order: the Teams emulator (in this process, its bot
endpoint the daemon's ``/api/messages``), two Teams users and the Teams
conversations asked for (group chats, or the General channel of a team), a
Matrix user with one private room per conversation and the bridge's bot
invited, the settings file linking each pair, the daemon (a child process on
the port the homeserver's registration names); then the bot is installed in
each Teams conversation (the daemon stores the conversation reference) and the
bot has joined each Matrix room. Everything is stopped on the way out.
``open_platforms`` is the same without the daemon, for stacks that run it otherwise
(several replicas behind a proxy on that port).

With ``incidents=True`` the bridge also runs incidents: the General channel of an
"Incidents" team (the bot installed, not linked) where incident threads start, the
Matrix user as the on-call responder, the first Teams user an operator, and a fresh
timeline API token.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from devtools.servers import MongoServer, SynapseServer
from devtools.teams_emulator import Conversation, EmulatorKeys, TeamsEmulator, User
from tests.e2e.daemon import BridgeDaemon
from tests.e2e.settings import (
    TEAMS_APP_ID,
    TEAMS_APP_PASSWORD,
    TEAMS_TENANT_ID,
    DaemonSettings,
    IncidentOptions,
    LinkedPair,
    Operators,
)
from tests.integration.matrix_fixtures import MatrixAppService
from tests.support.matrix_user import MatrixUser
from tests.support.waiting import eventually

DATABASE: Final = "incident_bridge_e2e"
BOT_POWER_LEVEL: Final = 50
"""Enough for the bot to publish the bridge metadata state events."""
SETUP_WITHIN_S: Final = 30.0
SETTLE_WITHIN_S: Final = 30.0
TEAM_NAME: Final = "Operations"
INCIDENT_TEAM_NAME: Final = "Incidents"
"""Its General channel is where incident threads start: installing the bot in a team
reaches the bridge from the General channel only, and the bridge posts only to channels
it has heard from."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pair:
    """A linked room pair: the Matrix room and the emulator's conversation."""

    matrix_room: str
    teams: Conversation

    @property
    def teams_id(self) -> str:
        return self.teams.conversation_id


@dataclass(frozen=True, slots=True, kw_only=True)
class StackServers:
    """The long-lived servers a stack runs against, and where it keeps its files."""

    mongo: MongoServer
    synapse: SynapseServer
    appservice: MatrixAppService
    keys: EmulatorKeys
    workdir: Path


class Stack:
    """A running bridge with its linked rooms; see the module documentation."""

    def __init__(
        self,
        *,
        servers: StackServers,
        session: aiohttp.ClientSession,
        emulator: TeamsEmulator,
        daemon: BridgeDaemon,
        matrix: MatrixUser,
        matrix_token: str,
        teams_users: tuple[User, User],
        pairs: tuple[Pair, ...],
        mongo: AsyncMongoClient[dict[str, Any]],
        incident_channel: Conversation | None = None,
        api_token: str | None = None,
    ) -> None:
        self.servers = servers
        self.session = session
        self.emulator = emulator
        self.daemon = daemon
        self.matrix = matrix
        self.matrix_token = matrix_token
        self.teams_users = teams_users
        self.pairs = pairs
        self.incident_channel = incident_channel
        """Where incident threads start (``incidents=True`` only)."""
        self.api_token = api_token
        """The timeline API's bearer token (``incidents=True`` only)."""
        self._mongo = mongo

    @property
    def bot_mxid(self) -> str:
        return str(self.servers.appservice.registration.namespace.bot)

    def ghost_of(self, user: User) -> str:
        """The Matrix ghost of a Teams user (keyed on the AAD object id)."""
        namespace = self.servers.appservice.registration.namespace
        return str(namespace.ghost_for(user.aad_object_id))

    def is_bridge_user(self, mxid: str) -> bool:
        namespace = self.servers.appservice.registration.namespace
        return namespace.is_own(mxid)

    @property
    def database(self) -> AsyncDatabase[dict[str, Any]]:
        return self._mongo[DATABASE]

    async def timeline(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        return [doc async for doc in self.database["timeline"].find(query)]

    async def queued_count(self) -> int:
        """Events still owed to some room (their ``queue`` is not empty)."""
        return int(await self.database["timeline"].count_documents({"queue.0": {"$exists": True}}))

    async def settled(self, *, within: float = SETTLE_WITHIN_S) -> None:
        """Wait until nothing is left to deliver (after what was sent has been stored) and
        every delivery worker has let go of its room."""

        async def drained() -> bool:
            self.ensure_alive()
            # A room released until a retry is due keeps a lease with no owner.
            leases = await self.database["outbox_leases"].count_documents({"owner": {"$ne": ""}})
            return leases == 0 and await self.queued_count() == 0

        await eventually(drained, within=within, interval=0.1, what="the outbox to drain")

    def ensure_alive(self) -> None:
        """Fails when the bridge stopped on its own."""
        self.daemon.ensure_alive()

    async def restart(self) -> None:
        await self.daemon.restart(self.session)

    async def kill_and_restart(self) -> None:
        await self.daemon.kill()
        await self.daemon.start(self.session)


async def _private_room(user: MatrixUser, bot: str, name: str) -> str:
    body = await user.call(
        "POST",
        "/_matrix/client/v3/createRoom",
        json={
            "preset": "private_chat",
            "name": name,
            "invite": [bot],
            "power_level_content_override": {"users": {bot: BOT_POWER_LEVEL}},
        },
    )
    return str(body["room_id"])


async def _register(
    session: aiohttp.ClientSession, synapse: SynapseServer
) -> tuple[MatrixUser, str]:
    localpart = f"mara{secrets.token_hex(4)}"
    user_id, token = await asyncio.to_thread(synapse.register_user, localpart, "pw-e2e")
    await _set_display_name(session, synapse, user_id, token, "Mara Matrix")
    return MatrixUser(session, synapse.base_url, user_id, token), token


async def _set_display_name(
    session: aiohttp.ClientSession, synapse: SynapseServer, user_id: str, token: str, name: str
) -> None:
    url = f"{synapse.base_url}/_matrix/client/v3/profile/{user_id}/displayname"
    async with session.put(
        url, json={"displayname": name}, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200, await response.text()


@dataclass(frozen=True, slots=True, kw_only=True)
class Platforms:
    """Both platforms ready for a bridge that is not running yet: the emulator, the users,
    the linked rooms, and the settings of a daemon on the registration's port."""

    session: aiohttp.ClientSession
    emulator: TeamsEmulator
    matrix: MatrixUser
    matrix_token: str
    teams_users: tuple[User, User]
    pairs: tuple[Pair, ...]
    settings: DaemonSettings
    mongo: AsyncMongoClient[dict[str, Any]]
    incident_channel: Conversation | None = None
    api_token: str | None = None


@asynccontextmanager
async def open_platforms(
    servers: StackServers, *, chats: int = 1, channels: int = 0, incidents: bool = False
) -> AsyncIterator[Platforms]:
    """The emulator, users and rooms of a stack (see ``open_stack``), without the bridge."""
    port = servers.appservice.port
    async with (
        aiohttp.ClientSession() as session,
        TeamsEmulator(
            TEAMS_APP_ID,
            TEAMS_APP_PASSWORD,
            TEAMS_TENANT_ID,
            keys=servers.keys,
            bot_endpoint=f"http://127.0.0.1:{port}/api/messages",
        ) as emulator,
    ):
        avery = emulator.add_user("Avery Teams")
        blake = emulator.add_user("Blake Teams")
        conversations: list[Conversation] = [
            emulator.add_chat([avery, blake], topic=f"incident chat {n}") for n in range(chats)
        ]
        conversations += [
            emulator.add_channel(f"{TEAM_NAME} {n}", members=[avery, blake])
            for n in range(channels)
        ]
        incident_channel = (
            emulator.add_channel(INCIDENT_TEAM_NAME, members=[avery, blake]) if incidents else None
        )
        matrix, matrix_token = await _register(session, servers.synapse)
        bot = str(servers.appservice.registration.namespace.bot)
        pairs = tuple(
            [
                Pair(
                    matrix_room=await _private_room(matrix, bot, f"linked room {n}"),
                    teams=conversation,
                )
                for n, conversation in enumerate(conversations)
            ]
        )
        api_token = secrets.token_urlsafe(24) if incidents else None
        settings = DaemonSettings(
            mongo_uri=servers.mongo.uri,
            database=DATABASE,
            port=port,
            synapse_url=servers.synapse.base_url,
            server_name=servers.synapse.server_name,
            registration=servers.appservice.registration,
            emulator_base=emulator.base_url,
            emulator_service_url=emulator.service_url,
            openid_metadata_url=emulator.openid_metadata_url,
            links=[
                LinkedPair(matrix_room=p.matrix_room, teams_conversation=p.teams_id) for p in pairs
            ],
            incidents=(
                IncidentOptions(
                    matrix_responders=[matrix.user_id],
                    teams_channel=incident_channel.conversation_id,
                )
                if incident_channel is not None
                else None
            ),
            operators=Operators(teams=[avery.aad_object_id]) if incidents else None,
            api_token=api_token,
        )
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers.mongo.uri, tz_aware=True)
        try:
            yield Platforms(
                session=session,
                emulator=emulator,
                matrix=matrix,
                matrix_token=matrix_token,
                teams_users=(avery, blake),
                pairs=pairs,
                settings=settings,
                mongo=mongo,
                incident_channel=incident_channel,
                api_token=api_token,
            )
        finally:
            await mongo.close()


@asynccontextmanager
async def open_stack(
    servers: StackServers, *, chats: int = 1, channels: int = 0, incidents: bool = False
) -> AsyncIterator[Stack]:
    """A running stack with ``chats`` group-chat pairs, then ``channels`` channel pairs
    (and incidents, see the module documentation)."""
    async with open_platforms(
        servers, chats=chats, channels=channels, incidents=incidents
    ) as platforms:
        config = platforms.settings.write(servers.workdir / "bridge.yaml")
        daemon = BridgeDaemon(
            config=config, port=servers.appservice.port, log_path=servers.workdir / "bridge.log"
        )
        try:
            await daemon.start(platforms.session)
            stack = Stack(
                servers=servers,
                session=platforms.session,
                emulator=platforms.emulator,
                daemon=daemon,
                matrix=platforms.matrix,
                matrix_token=platforms.matrix_token,
                teams_users=platforms.teams_users,
                pairs=platforms.pairs,
                mongo=platforms.mongo,
                incident_channel=platforms.incident_channel,
                api_token=platforms.api_token,
            )
            await install_bot(stack)
            yield stack
        finally:
            await daemon.close()


async def install_bot(stack: Stack) -> None:
    """Install the bot in each Teams conversation (the bridge stores its reference) and
    wait until the bot has joined each Matrix room."""
    for pair in stack.pairs:
        installed, added = await stack.emulator.install_bot(pair.teams)
        assert installed.ok, (installed.status, installed.error)
        assert added.ok, (added.status, added.error)
        await _bot_joined(stack.matrix, pair.matrix_room, stack.bot_mxid)
    if stack.incident_channel is not None:
        installed, added = await stack.emulator.install_bot(stack.incident_channel)
        assert installed.ok, (installed.status, installed.error)
        assert added.ok, (added.status, added.error)


async def _bot_joined(user: MatrixUser, room_id: str, bot: str) -> None:
    async def joined() -> bool:
        state = await user.member_state(room_id, bot)
        return state is not None and state.get("membership") == "join"

    await eventually(joined, within=SETUP_WITHIN_S, interval=0.1, what=f"the bot in {room_id}")
