"""The round-robin proxy that stands for a Kubernetes Service in end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from devtools.servers import free_port
from tests.support.http_proxy import ProxiedRequest, RoundRobinProxy


@dataclass
class Upstream:
    """A replica: answers with its name and what it got; ``ready`` drives ``/readyz``."""

    name: str
    ready: bool = True
    got: list[tuple[str, str, str, bytes, str | None]] = field(default_factory=list)

    def app(self) -> web.Application:
        async def readyz(_request: web.Request) -> web.Response:
            return web.Response(status=200 if self.ready else 503)

        async def vanish(request: web.Request) -> web.Response:
            assert request.transport is not None
            request.transport.close()
            return web.Response()

        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            self.got.append(
                (
                    request.method,
                    request.path,
                    request.query_string,
                    body,
                    request.headers.get("X-Test"),
                )
            )
            return web.Response(status=201, body=self.name.encode(), headers={"X-From": self.name})

        app = web.Application()
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/vanish", vanish)
        app.router.add_route("*", "/{tail:.*}", echo)
        return app


@dataclass
class Rig:
    session: aiohttp.ClientSession
    upstreams: dict[str, Upstream]
    servers: dict[str, TestServer]

    def url(self, name: str) -> str:
        return str(self.servers[name].make_url("")).rstrip("/")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    upstreams = {name: Upstream(name) for name in ("a", "b", "c")}
    servers = {name: TestServer(u.app(), host="127.0.0.1") for name, u in upstreams.items()}
    for server in servers.values():
        await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Rig(session=session, upstreams=upstreams, servers=servers)
    for server in servers.values():
        await server.close()


async def _get(rig: Rig, proxy: RoundRobinProxy, path: str) -> tuple[int, str]:
    async with rig.session.get(proxy.url + path) as response:
        return response.status, await response.text()


async def test_requests_go_round_robin_and_come_back_unchanged(rig: Rig) -> None:
    async with RoundRobinProxy(readiness_path=None) as proxy:
        for name in ("a", "b", "c"):
            proxy.add(name, rig.url(name))
        answered = []
        for n in range(6):
            async with rig.session.put(
                f"{proxy.url}/_matrix/app/v1/transactions/t{n}?access=1",
                data=b"payload %d" % n,
                headers={"X-Test": "kept"},
            ) as response:
                assert response.status == 201
                assert response.headers["X-From"] == await response.text()
                answered.append(await response.text())
    assert answered == ["a", "b", "c", "a", "b", "c"]
    assert proxy.requests == {"a": 2, "b": 2, "c": 2}
    assert rig.upstreams["b"].got[0] == (
        "PUT",
        "/_matrix/app/v1/transactions/t1",
        "access=1",
        b"payload 1",
        "kept",
    )


async def test_an_upstream_that_refuses_the_connection_is_skipped(rig: Rig) -> None:
    async with RoundRobinProxy(readiness_path=None) as proxy:
        proxy.add("dead", f"http://127.0.0.1:{free_port()}")
        proxy.add("a", rig.url("a"))
        answers = [await _get(rig, proxy, "/x") for _ in range(4)]
    assert answers == [(201, "a")] * 4
    assert sum(e.skipped.count("dead") for e in proxy.exchanges) == 2
    assert "dead" not in proxy.requests


async def test_an_upstream_that_took_the_request_and_vanished_is_a_502(rig: Rig) -> None:
    async with RoundRobinProxy(readiness_path=None) as proxy:
        proxy.add("a", rig.url("a"))
        assert await _get(rig, proxy, "/vanish") == (502, "the upstream's answer was lost")
    assert proxy.requests == {"a": 1}


async def test_readiness_decides_the_rotation(rig: Rig) -> None:
    rig.upstreams["b"].ready = False
    async with RoundRobinProxy(poll_interval_s=0.02) as proxy:
        proxy.add("a", rig.url("a"))
        proxy.add("b", rig.url("b"))
        assert not proxy.is_up("a")
        await proxy.wait_until("a", up=True, within=5)
        assert [(await _get(rig, proxy, "/x"))[1] for _ in range(3)] == ["a"] * 3

        rig.upstreams["b"].ready = True
        await proxy.wait_until("b", up=True, within=5)
        rig.upstreams["a"].ready = False
        await proxy.wait_until("a", up=False, within=5)
        assert [(await _get(rig, proxy, "/x"))[1] for _ in range(3)] == ["b"] * 3
        assert proxy.marked_down_at("a", after=0.0) is not None


async def test_duplicated_requests_reach_two_upstreams_and_lost_answers_are_502(rig: Rig) -> None:
    def marked(request: ProxiedRequest) -> bool:
        return request.path == "/twice"

    async with RoundRobinProxy(readiness_path=None) as proxy:
        for name in ("a", "b", "c"):
            proxy.add(name, rig.url(name))
        proxy.duplicate_when(marked)
        assert (await _get(rig, proxy, "/twice"))[0] == 201
        assert (await _get(rig, proxy, "/once"))[0] == 201
        proxy.duplicate_when(None)
        proxy.drop_answer_when(marked)
        assert (await _get(rig, proxy, "/twice"))[0] == 502
        again = await proxy.send_to("c", proxy.exchanges[0].request)
    assert again.status == 201
    assert again.body == b"c"
    first, second, third = proxy.exchanges
    assert first.duplicated
    assert sorted(a.upstream for a in first.answers) == ["a", "b"]
    assert not second.duplicated
    assert third.answer_dropped
    assert sum(proxy.requests.values()) == 5
