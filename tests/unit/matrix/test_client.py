"""MatrixClient against a scripted local server: Retry-After, backoff, permanent errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.matrix.client import MatrixClient, MatrixRequestError, MatrixUnavailableError
from devtools.servers import free_port


@dataclass
class Script:
    responses: list[web.Response] = field(default_factory=list)
    seen: list[web.Request] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        return self.responses.pop(0) if self.responses else web.json_response({"ok": True})


@dataclass
class Rig:
    script: Script
    client: MatrixClient
    sleeps: list[float]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    script = Script()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    server = TestServer(app)
    await server.start_server()
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with aiohttp.ClientSession() as session:
        client = MatrixClient(
            session=session,
            base_url=str(server.make_url("")),
            as_token="secret-as-token",
            sleep=sleep,
            jitter=lambda: 0.5,
        )
        yield Rig(script, client, sleeps)
    await server.close()


async def test_429_waits_for_retry_after_then_succeeds(rig: Rig) -> None:
    rig.script.responses = [
        web.json_response({"errcode": "M_LIMIT_EXCEEDED"}, status=429, headers={"Retry-After": "3"})
    ]
    assert await rig.client.request("GET", "/x", user_id="@g:hs", ts_ms=5) == {"ok": True}
    assert rig.sleeps == [3.0]
    first = rig.script.seen[0]
    assert first.headers["Authorization"] == "Bearer secret-as-token"
    assert first.query["user_id"] == "@g:hs"
    assert first.query["ts"] == "5"
    assert "secret-as-token" not in str(first.url)


async def test_retry_after_ms_in_the_body_is_understood(rig: Rig) -> None:
    rig.script.responses = [
        web.json_response({"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 1500}, status=429)
    ]
    await rig.client.request("GET", "/x")
    assert rig.sleeps == [1.5]


async def test_a_long_retry_after_is_handed_to_the_caller(rig: Rig) -> None:
    rig.script.responses = [
        web.json_response(
            {"errcode": "M_LIMIT_EXCEEDED"}, status=429, headers={"Retry-After": "600"}
        )
    ]
    with pytest.raises(MatrixUnavailableError) as caught:
        await rig.client.request("GET", "/x")
    assert caught.value.retry_after == 600
    assert caught.value.retryable


async def test_server_errors_back_off_exponentially_then_give_up(rig: Rig) -> None:
    rig.script.responses = [web.json_response({}, status=502) for _ in range(4)]
    with pytest.raises(MatrixUnavailableError):
        await rig.client.request("GET", "/x")
    assert rig.sleeps == [0.25, 0.5, 1.0]  # jitter fixed at 1.0x


async def test_client_errors_are_permanent_and_not_retried(rig: Rig) -> None:
    rig.script.responses = [
        web.json_response({"errcode": "M_FORBIDDEN", "error": "not in room"}, status=403)
    ]
    with pytest.raises(MatrixRequestError) as caught:
        await rig.client.request("GET", "/x")
    assert (caught.value.status, caught.value.errcode) == (403, "M_FORBIDDEN")
    assert not caught.value.retryable
    assert len(rig.script.seen) == 1


async def test_connection_refused_is_retryable() -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with aiohttp.ClientSession() as session:
        client = MatrixClient(
            session=session,
            base_url=f"http://127.0.0.1:{free_port()}",
            as_token="t",
            sleep=sleep,
            max_attempts=2,
        )
        with pytest.raises(MatrixUnavailableError):
            await client.request("GET", "/x")
    assert len(sleeps) == 1


async def test_a_request_that_may_have_been_carried_out_is_not_repeated_when_asked(
    rig: Rig,
) -> None:
    rig.script.responses = [web.json_response({"errcode": "M_UNKNOWN"}, status=502)]
    with pytest.raises(MatrixUnavailableError) as caught:
        await rig.client.request("POST", "/createRoom", json={}, retry_ambiguous=False)
    assert caught.value.ambiguous
    assert len(rig.script.seen) == 1
    assert rig.sleeps == []


async def test_a_rate_limit_is_waited_out_even_when_repeats_are_not_wanted(rig: Rig) -> None:
    rig.script.responses = [
        web.json_response({"errcode": "M_LIMIT_EXCEEDED"}, status=429, headers={"Retry-After": "2"})
    ]
    answer = await rig.client.request("POST", "/createRoom", json={}, retry_ambiguous=False)
    assert answer == {"ok": True}
    assert rig.sleeps == [2.0]
