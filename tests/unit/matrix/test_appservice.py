"""The AS endpoints over real HTTP with the in-memory store: durability and auth rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from adapters.matrix.appservice import TRANSACTIONS_NAMESPACE, AppServiceEndpoints
from bridge.errors import StoreError
from bridge.timeline.memory import MemoryStateStore
from tests.support.fakes import FakeClock

TOKEN = "hs-secret-token"


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[Mapping[str, Any]]] = []
        self.fail = False

    async def __call__(self, events: Sequence[Mapping[str, Any]]) -> None:
        if self.fail:
            raise StoreError("down")
        self.batches.append(list(events))


@pytest.fixture
async def setup() -> Any:
    recorder = Recorder()
    state = MemoryStateStore()
    endpoints = AppServiceEndpoints(
        hs_token=TOKEN,
        state=state,
        clock=FakeClock(),
        on_transaction=recorder,
        accepting=lambda: True,
    )
    app = web.Application()
    app.add_routes(endpoints.routes())
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client, recorder, state
    await client.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = {"events": [{"type": "m.room.message", "event_id": "$1"}]}


async def test_replayed_transaction_is_processed_once(setup: Any) -> None:
    client, recorder, state = setup
    for _ in range(3):
        response = await client.put("/_matrix/app/v1/transactions/t1", json=BODY, headers=AUTH)
        assert response.status == 200
    legacy = await client.put("/transactions/t1", json=BODY, headers=AUTH)
    assert legacy.status == 200
    assert len(recorder.batches) == 1
    assert await state.get(TRANSACTIONS_NAMESPACE, "t1") is not None


async def test_storage_failure_answers_503_and_does_not_record_the_transaction(setup: Any) -> None:
    client, recorder, state = setup
    recorder.fail = True
    response = await client.put("/_matrix/app/v1/transactions/t2", json=BODY, headers=AUTH)
    assert response.status == 503
    assert await state.get(TRANSACTIONS_NAMESPACE, "t2") is None
    recorder.fail = False
    response = await client.put("/_matrix/app/v1/transactions/t2", json=BODY, headers=AUTH)
    assert response.status == 200
    assert len(recorder.batches) == 1


async def test_bad_bodies_are_rejected_without_recording(setup: Any) -> None:
    client, recorder, state = setup
    response = await client.put("/_matrix/app/v1/transactions/t3", data=b"{", headers=AUTH)
    assert response.status == 400
    response = await client.put(
        "/_matrix/app/v1/transactions/t3", json={"events": "nope"}, headers=AUTH
    )
    assert response.status == 400
    assert recorder.batches == []
    assert await state.get(TRANSACTIONS_NAMESPACE, "t3") is None


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}, {"Authorization": "Bearer "}],
)
async def test_anything_but_the_bearer_token_is_forbidden(
    setup: Any, headers: dict[str, str]
) -> None:
    client, recorder, _ = setup
    for method, url in [
        ("PUT", "/_matrix/app/v1/transactions/t4"),
        ("PUT", f"/_matrix/app/v1/transactions/t4?access_token={TOKEN}"),
        ("POST", "/_matrix/app/v1/ping"),
        ("GET", "/_matrix/app/v1/users/@teams_x:example.org"),
        ("GET", "/_matrix/app/v1/rooms/%23alias:example.org"),
    ]:
        response = await client.request(method, url, json=BODY, headers=headers)
        assert response.status == 403, url
        assert (await response.json())["errcode"] == "M_FORBIDDEN"
    assert recorder.batches == []


async def test_ping_and_queries_with_the_token(setup: Any) -> None:
    client, _, _ = setup
    assert (await client.post("/_matrix/app/v1/ping", json={}, headers=AUTH)).status == 200
    user = await client.get("/_matrix/app/v1/users/@teams_x:example.org", headers=AUTH)
    assert user.status == 404
