"""The servers the integration tests run against are real, not stand-ins."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from pymongo import AsyncMongoClient, WriteConcern
from pymongo.errors import DuplicateKeyError

from devtools.servers import MongoServer, SynapseServer

DEADLINE_SECONDS = 20.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=DEADLINE_SECONDS)


def _mongo_client(uri: str) -> AsyncMongoClient[dict[str, Any]]:
    # timeoutMS bounds every operation, server selection included.
    return AsyncMongoClient(uri, timeoutMS=int(DEADLINE_SECONDS * 1000))


async def test_mongodb_stores_reads_and_enforces_unique_index(mongo_server: MongoServer) -> None:
    client = _mongo_client(mongo_server.uri)
    try:
        db = client[f"harness_{uuid.uuid4().hex}"]
        docs = db["docs"]
        await docs.create_index("key", unique=True)

        inserted = await docs.insert_one({"key": "a", "n": 1})
        assert await docs.find_one({"_id": inserted.inserted_id}) == {
            "_id": inserted.inserted_id,
            "key": "a",
            "n": 1,
        }

        with pytest.raises(DuplicateKeyError):
            await docs.insert_one({"key": "a", "n": 2})

        journaled = docs.with_options(write_concern=WriteConcern(w=1, j=True))
        result = await journaled.insert_one({"key": "b", "n": 3})
        assert result.acknowledged
        assert await docs.count_documents({}) == 2

        await client.drop_database(db.name)
    finally:
        await client.close()


async def test_mongodb_keeps_data_across_stop_and_kill(tmp_path: Path) -> None:
    server = MongoServer(tmp_path / "mongo")
    await asyncio.to_thread(server.start)
    client = _mongo_client(server.uri)
    try:
        port = server.port
        docs = client["harness"]["restart"]
        await docs.insert_one({"_id": "before-stop"})

        await asyncio.to_thread(server.stop)
        assert not server.running
        await asyncio.to_thread(server.start)
        assert server.port == port

        # The same client reconnects to the restarted server on its own.
        assert await docs.find_one({"_id": "before-stop"}) == {"_id": "before-stop"}
        # Only a journaled write is sure to survive a SIGKILL right after its
        # acknowledgement: an unjournaled w=1 write can still be in the server's
        # log buffer. The timeline store journals the writes it acknowledges.
        journaled = docs.with_options(write_concern=WriteConcern(w=1, j=True))
        await journaled.insert_one({"_id": "before-kill"})

        await asyncio.to_thread(server.kill)
        assert not server.running
        await asyncio.to_thread(server.start)

        ids = await docs.distinct("_id")
        assert sorted(ids) == ["before-kill", "before-stop"]
    finally:
        await client.close()
        await asyncio.to_thread(server.stop)


async def _matrix(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    token: str,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    async with http.request(
        method,
        path,
        json=body,
        params=params,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        payload: dict[str, Any] = await response.json()
        assert response.status == 200, (method, path, response.status, payload)
        return payload


async def test_synapse_delivers_a_message_between_two_users(
    synapse_server: SynapseServer,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    alice_id, alice_token = await asyncio.to_thread(
        synapse_server.register_user, f"alice-{suffix}", "alice-password"
    )
    bob_id, bob_token = await asyncio.to_thread(
        synapse_server.register_user, f"bob-{suffix}", "bob-password"
    )
    assert alice_id == f"@alice-{suffix}:{synapse_server.server_name}"
    assert bob_id == f"@bob-{suffix}:{synapse_server.server_name}"

    async with aiohttp.ClientSession(synapse_server.base_url, timeout=HTTP_TIMEOUT) as http:
        created = await _matrix(
            http,
            "POST",
            "/_matrix/client/v3/createRoom",
            alice_token,
            {"preset": "private_chat", "name": f"harness {suffix}"},
        )
        room_id: str = created["room_id"]
        room = quote(room_id, safe="")

        await _matrix(
            http,
            "POST",
            f"/_matrix/client/v3/rooms/{room}/invite",
            alice_token,
            {"user_id": bob_id},
        )
        # A private_chat room is invite-only: bob's join succeeds only through the invite.
        await _matrix(http, "POST", f"/_matrix/client/v3/rooms/{room}/join", bob_token, {})

        body = f"incident harness check {suffix}"
        sent = await _matrix(
            http,
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/send/m.room.message/txn-{suffix}",
            alice_token,
            {"msgtype": "m.text", "body": body},
        )
        event_id: str = sent["event_id"]

        deadline = time.monotonic() + DEADLINE_SECONDS
        seen: dict[str, Any] | None = None
        while seen is None:
            page = await _matrix(
                http,
                "GET",
                f"/_matrix/client/v3/rooms/{room}/messages",
                bob_token,
                params={"dir": "b", "limit": "20"},
            )
            seen = next((e for e in page["chunk"] if e["event_id"] == event_id), None)
            if seen is None:
                assert time.monotonic() < deadline, f"bob never saw {event_id}"
                await asyncio.sleep(0.1)

    assert seen["type"] == "m.room.message"
    assert seen["sender"] == alice_id
    assert seen["content"]["body"] == body
