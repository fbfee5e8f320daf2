"""The daemon with the Matrix side on: ready against a real Synapse, storing what users say."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from bridge import exitcodes
from devtools.servers import LOOPBACK, MongoServer, SynapseServer
from tests.integration.matrix_fixtures import MatrixAppService
from tests.support.matrix_user import MatrixUser
from tests.support.waiting import eventually


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
async def daemon(
    mongo_server: MongoServer, synapse_server: SynapseServer, matrix_app_service: MatrixAppService
) -> AsyncIterator[tuple[subprocess.Popen[str], str, str]]:
    database = f"daemon_matrix_{secrets.token_hex(4)}"
    reg = matrix_app_service.registration
    env = {
        **os.environ,
        "BRIDGE__MONGO__URI": mongo_server.uri,
        "BRIDGE__MONGO__DATABASE": database,
        "BRIDGE__HTTP__HOST": LOOPBACK,
        "BRIDGE__HTTP__PORT": str(matrix_app_service.port),
        "BRIDGE__LOGGING__FORMAT": "json",
        "BRIDGE__MATRIX__ENABLED": "true",
        "BRIDGE__MATRIX__HOMESERVER_URL": synapse_server.base_url,
        "BRIDGE__MATRIX__SERVER_NAME": synapse_server.server_name,
        "BRIDGE__MATRIX__AS_TOKEN": reg.as_token,
        "BRIDGE__MATRIX__HS_TOKEN": reg.hs_token,
        "BRIDGE__MATRIX__INVITES__SERVERS": f"[{synapse_server.server_name}]",
    }
    proc = _start(env)
    try:
        yield proc, matrix_app_service.url, database
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
        await client.drop_database(database)
        await client.close()


async def test_daemon_is_ready_with_matrix_and_stores_a_users_message(
    daemon: tuple[subprocess.Popen[str], str, str],
    synapse_server: SynapseServer,
    mongo_server: MongoServer,
    matrix_app_service: MatrixAppService,
) -> None:
    proc, base, database = daemon
    async with aiohttp.ClientSession() as session:

        async def ready() -> dict[str, Any] | None:
            try:
                async with session.get(f"{base}/readyz") as response:
                    body: dict[str, Any] = await response.json()
                    return body if response.status == 200 else None
            except aiohttp.ClientConnectionError:
                return None

        report = await eventually(ready, within=60, what="the daemon to be ready")
        assert report["checks"] == {"mongodb": "ok", "matrix": "ok"}

        user_id, token = synapse_server.register_user(f"erin{secrets.token_hex(3)}", "pw")
        erin = MatrixUser(session, synapse_server.base_url, user_id, token)
        bot = matrix_app_service.registration.namespace.bot
        room_id = await erin.create_room(invite=[bot])

        async def bot_joined() -> bool:
            state = await erin.member_state(room_id, bot)
            return state is not None and state.get("membership") == "join"

        await eventually(bot_joined, what="the daemon's bot to join")
        event_id = await erin.send(room_id, {"msgtype": "m.text", "body": "db latency up"})

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
    try:
        timeline = client[database]["timeline"]

        async def stored() -> dict[str, Any] | None:
            return await timeline.find_one({"origin.message_id": event_id})

        doc = await eventually(stored, what="the message in MongoDB")
        assert doc["body"]["text"] == "db latency up"
        assert doc["sender"]["user_id"] == user_id
    finally:
        await client.close()

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 15) == exitcodes.OK
