"""The ``http`` executor against a local aiohttp server on loopback: the request as sent,
URL quoting and JSON literalness of hostile values (S6), statuses, redirects, timeout and
cancel (R12), and secrets never shown (S7)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import quote

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from bridge.runbooks.executors.base import MASK, ExecutorError, Invocation
from bridge.runbooks.executors.http import HttpExecutor
from bridge.runbooks.model import (
    Access,
    ApprovalPolicy,
    HttpSpec,
    ParamSpec,
    ParamType,
    Runbook,
    RunID,
    RunState,
    SecretRef,
    Value,
)

CANARY = "canary-http-secret-5d1e"


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes


@dataclass(kw_only=True)
class Server:
    """A loopback HTTP server on a thread (and event loop) of its own, so that tests on
    any event loop can use it. ``/status/N`` answers N, ``/redirect`` a 302 that carries
    the Authorization it got, ``/hang`` never answers (and notes when the client has
    gone), ``/big`` 1 MB, anything else echoes the request as JSON."""

    base_url: str = ""
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hanging: threading.Event = field(default_factory=threading.Event)
    client_gone: threading.Event = field(default_factory=threading.Event)

    def take(self) -> list[Received]:
        with self.lock:
            taken, self.received[:] = list(self.received), []
        return taken

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self.lock:
            self.received.append(
                Received(
                    method=request.method,
                    raw_path=request.raw_path,
                    headers=dict(request.headers),
                    body=body,
                )
            )
        path = request.path
        if path.startswith("/status/"):
            return web.Response(status=int(path.removeprefix("/status/")), text=f"said {path}")
        if path == "/redirect":
            token = request.headers.get("Authorization", "")
            location = f"{self.base_url}/elsewhere?token={quote(token)}&raw={token}"
            return web.Response(status=302, headers={"Location": location})
        if path == "/hang":
            return await self.hang()
        if path == "/big":
            return web.Response(body=b"x" * 1_000_000)
        echo = {"method": request.method, "raw_path": request.raw_path, "body": body.decode()}
        return web.json_response(echo)

    async def hang(self) -> web.StreamResponse:
        self.hanging.set()
        try:
            await asyncio.sleep(60)  # the client goes away long before; this bounds it
        except asyncio.CancelledError:
            self.client_gone.set()
            raise
        return web.Response(status=504)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    served = Server()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        app = web.Application(client_max_size=32 * 2**20)
        app.router.add_route("*", r"/{tail:[\s\S]*}", served.handle)  # newlines too
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        served.base_url = f"http://127.0.0.1:{port}"
        ready.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the test server did not start"
    try:
        yield served
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def invocation(
    spec: HttpSpec,
    args: dict[str, Value] | None = None,
    secrets: dict[str, str] | None = None,
    *,
    timeout_s: float = 30,
) -> Invocation:
    args = args or {}
    runbook = Runbook(
        name="http-under-test",
        description="a runbook under test",
        params=tuple(ParamSpec(name=name, type=ParamType.STRING) for name in args),
        access=Access(),
        approvals=ApprovalPolicy(),
        timeout=timedelta(seconds=timeout_s),
        executor=spec,
    )
    return Invocation(run_id=RunID("R-9"), runbook=runbook, args=args, secrets=secrets or {})


class Collected:
    def __init__(self) -> None:
        self.pieces: list[str] = []

    def __call__(self, text: str) -> None:
        self.pieces.append(text)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


async def run_once(
    spec: HttpSpec,
    args: dict[str, Value] | None = None,
    secrets: dict[str, str] | None = None,
    executor: HttpExecutor | None = None,
) -> tuple[RunState, str, str]:
    own = executor is None
    executor = executor or HttpExecutor()
    output = Collected()
    try:
        outcome = await executor.run(invocation(spec, args, secrets), output)
    finally:
        if own:
            await executor.close()
    return outcome.state, outcome.summary, output.text


async def test_the_request_is_sent_as_templated(server: Server) -> None:
    spec = HttpSpec(
        method="post",
        url=server.base_url + "/api/services/{service}/restart?reason={reason}&n={n}",
        headers={"Authorization": "Bearer {secret:TOKEN}", "X-Requested-By": "bridge {who}"},
        body={"service": "{service}", "n": "{n}", "force": "{force}", "note": "by {who}"},
        secrets=(SecretRef(name="TOKEN", env="RUNBOOK_TOKEN"),),
    )
    args: dict[str, Value] = {
        "service": "api",
        "reason": "deploy stuck",
        "n": 3,
        "force": True,
        "who": "@alice:example.org",
    }
    server.take()
    state, summary, output = await run_once(spec, args, {"TOKEN": CANARY})
    assert (state, summary) == (RunState.SUCCEEDED, "HTTP 200 OK")
    [got] = server.take()
    assert got.method == "POST"
    assert got.raw_path == "/api/services/api/restart?reason=deploy%20stuck&n=3"
    assert got.headers["Authorization"] == f"Bearer {CANARY}"
    assert got.headers["X-Requested-By"] == "bridge @alice:example.org"
    assert got.headers["Content-Type"] == "application/json"
    assert json.loads(got.body) == {
        "service": "api",
        "n": 3,
        "force": True,
        "note": "by @alice:example.org",
    }
    assert json.loads(output)["method"] == "POST"


@pytest.mark.parametrize(
    "hostile",
    [
        "../../admin",
        "../",
        "a/b",
        "x?admin=1",
        "x#frag",
        "%2e%2e",
        "%2e%2e%2fadmin",
        "%2F",
        "..%2f",
        "a b\r\nX-Injected: 1",
        "@evil.example:80",
        "\u2215etc\uff0fpasswd",
        "\x00",
        "{secret:TOKEN}",
    ],
)
async def test_a_hostile_value_stays_inside_its_path_segment_and_query_value(
    server: Server, hostile: str
) -> None:
    spec = HttpSpec(method="GET", url=server.base_url + "/items/{v}/details?q={v}&k=1")
    server.take()
    state, _, _ = await run_once(spec, {"v": hostile}, {"TOKEN": CANARY})
    assert state is RunState.SUCCEEDED
    [got] = server.take()
    quoted = quote(hostile, safe="")
    assert got.raw_path == f"/items/{quoted}/details?q={quoted}&k=1"
    url = URL(got.raw_path, encoded=True)
    assert url.path == f"/items/{hostile}/details"  # one segment, decoded once
    assert url.query["q"] == hostile
    assert dict(url.query) == {"q": hostile, "k": "1"}


@pytest.mark.parametrize("dots", [".", ".."])
async def test_a_value_that_would_be_a_dot_segment_is_refused(server: Server, dots: str) -> None:
    spec = HttpSpec(method="GET", url=server.base_url + "/items/{v}/details")
    server.take()
    with pytest.raises(ExecutorError, match=r"'\.' or '\.\.'"):
        await run_once(spec, {"v": dots})
    assert server.take() == []
    # In a query or inside a longer segment it is harmless, and sent.
    spec = HttpSpec(method="GET", url=server.base_url + "/items/x{v}?q={v}")
    state, _, _ = await run_once(spec, {"v": dots})
    assert state is RunState.SUCCEEDED


@pytest.mark.parametrize("value", ["a\r\nX-Injected: yes", "a\nb", "nul\x00"])
async def test_a_header_with_a_line_break_is_refused(server: Server, value: str) -> None:
    spec = HttpSpec(method="GET", url=server.base_url + "/echo", headers={"X-Note": "{v}"})
    server.take()
    with pytest.raises(ExecutorError, match="line break"):
        await run_once(spec, {"v": value})
    assert server.take() == []


@pytest.mark.parametrize(
    "url",
    ["{base}/../x", "ftp://127.0.0.1/x", "/relative/{v}", "{v}", "http:///nohost"],
)
async def test_a_url_that_is_not_absolute_http_or_has_dot_segments_is_refused(
    server: Server, url: str
) -> None:
    spec = HttpSpec(method="GET", url=url.replace("{base}", server.base_url))
    with pytest.raises(ExecutorError):
        await run_once(spec, {"v": "http://evil.example/"})


@pytest.mark.parametrize(
    ("status", "statuses", "state"),
    [
        (200, (200,), RunState.SUCCEEDED),
        (204, (200, 204), RunState.SUCCEEDED),
        (202, (200,), RunState.FAILED),
        (404, (200,), RunState.FAILED),
        (500, (200, 201, 202, 204), RunState.FAILED),
        (418, (418,), RunState.SUCCEEDED),
    ],
)
async def test_the_status_decides_the_outcome(
    server: Server, status: int, statuses: tuple[int, ...], state: RunState
) -> None:
    spec = HttpSpec(
        method="GET", url=server.base_url + f"/status/{status}", success_statuses=statuses
    )
    got_state, summary, _ = await run_once(spec)
    assert got_state is state
    assert summary.startswith(f"HTTP {status} ")


async def test_a_redirect_is_not_followed_and_secrets_are_masked_in_the_outcome(
    server: Server,
) -> None:
    spec = HttpSpec(
        method="GET",
        url=server.base_url + "/redirect",
        headers={"Authorization": "{secret:TOKEN}"},
    )
    server.take()
    state, summary, _ = await run_once(spec, {}, {"TOKEN": CANARY + "/+ x"})
    assert state is RunState.FAILED
    assert "HTTP 302 Found" in summary
    assert "redirect" in summary
    assert "not followed" in summary
    assert CANARY not in summary
    assert [got.raw_path for got in server.take()] == ["/redirect"]


async def test_the_body_is_capped_with_a_marker(server: Server) -> None:
    executor = HttpExecutor(max_output_bytes=1000)
    try:
        state, summary, output = await run_once(
            HttpSpec(method="GET", url=server.base_url + "/big"), executor=executor
        )
    finally:
        await executor.close()
    assert state is RunState.SUCCEEDED
    assert "output truncated" in summary
    assert output == "x" * 1000 + "\n[output truncated at 1000 bytes]\n"


async def test_a_refused_connection_is_a_failed_run() -> None:
    with socket_closed_port() as port:
        spec = HttpSpec(method="GET", url=f"http://127.0.0.1:{port}/x?t={{secret:T}}")
        state, summary, _ = await run_once(spec, {}, {"T": CANARY})
    assert state is RunState.FAILED
    assert summary.startswith("request failed")
    assert CANARY not in summary


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port with nothing listening (bound, never listened on, while held)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


async def test_a_read_timeout_within_the_run_is_a_failed_run(server: Server) -> None:
    server.hanging.clear()
    executor = HttpExecutor(read_timeout_s=0.3)
    started = time.monotonic()
    try:
        state, summary, _ = await run_once(
            HttpSpec(method="GET", url=server.base_url + "/hang"), executor=executor
        )
    finally:
        await executor.close()
    assert time.monotonic() - started < 3
    assert state is RunState.FAILED
    assert "timed out" in summary


async def test_r12_the_deadline_aborts_the_request_within_1s(server: Server) -> None:
    server.hanging.clear()
    server.client_gone.clear()
    executor = HttpExecutor()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    try:
        with pytest.raises(TimeoutError):
            await run_until(
                deadline, executor, HttpSpec(method="GET", url=server.base_url + "/hang")
            )
        returned_after = loop.time() - deadline
    finally:
        await executor.close()
    assert server.hanging.is_set()
    assert returned_after < 1.0, returned_after
    assert await asyncio.to_thread(server.client_gone.wait, 2.0), "the request was not aborted"


async def run_until(deadline: float, executor: HttpExecutor, spec: HttpSpec) -> None:
    async with asyncio.timeout_at(deadline):
        await executor.run(invocation(spec), Collected())


async def test_r12_cancel_aborts_the_request_within_5s(server: Server) -> None:
    server.hanging.clear()
    server.client_gone.clear()
    executor = HttpExecutor()
    spec = HttpSpec(method="POST", url=server.base_url + "/hang", body={"a": 1})
    runs = asyncio.create_task(executor.run(invocation(spec), Collected()))
    try:
        assert await asyncio.to_thread(server.hanging.wait, 5.0)
        started = time.monotonic()
        runs.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(runs, return_exceptions=True)
        elapsed = time.monotonic() - started
    finally:
        runs.cancel()
        await executor.close()
    assert runs.cancelled()
    assert elapsed < 5.0
    assert await asyncio.to_thread(server.client_gone.wait, 2.0), "the request was not aborted"


def test_the_plan_shows_the_request_with_secrets_masked(server: Server) -> None:
    spec = HttpSpec(
        method="put",
        url=server.base_url + "/hosts/{host}?key={secret:KEY}",
        headers={"Authorization": "Bearer {secret:TOKEN}", "X-Host": "{host}"},
        body={"host": "{host}", "count": "{n}", "auth": "{secret:TOKEN}"},
        secrets=(SecretRef(name="TOKEN", env="T"), SecretRef(name="KEY", file="/run/key")),
    )
    secrets = {"TOKEN": CANARY, "KEY": CANARY + "-key/x"}
    plan = HttpExecutor().plan(invocation(spec, {"host": "db 1/..", "n": 2}, secrets))
    lines = plan.splitlines()
    assert f"PUT {server.base_url}/hosts/db%201%2F..?key={MASK}" in lines
    assert f"Authorization: Bearer {MASK}" in lines
    assert "X-Host: db 1/.." in lines
    body_line = next(line for line in lines if line.startswith("body: "))
    assert json.loads(body_line.removeprefix("body: ")) == {
        "host": "db 1/..",
        "count": 2,
        "auth": MASK,
    }
    assert CANARY not in plan
    # A value that happens to hold a secret is masked too.
    plan = HttpExecutor().plan(invocation(spec, {"host": CANARY, "n": 2}, secrets))
    assert CANARY not in plan
    # A dry run needs no secret values: the spec's names are enough.
    assert MASK in HttpExecutor().plan(invocation(spec, {"host": "h", "n": 2}))


# S6: hostile values arrive as one JSON string each, and quoted whole in the URL.

FRAGMENTS = (
    "\n", "\r\n", ";", "&", "|", "$(id)", "`id`", "../", "..", ".", "/", "?", "#", "%",
    "%2e", "%2e%2e%2f", "%00", "\x00", "\\", '"', "'", "{", "}", "{v}", "{secret:TOKEN}",
    "\\u0000", "\u202e", "\uff1b", "\u037e", "\u2215", "\u0430", "\u200b", "\ufeff",
    "\U0001f600", "\ud800", "\udc80", " ", "=", "+", "@", ":", "<script>",
)  # fmt: skip

fragment_or_text = st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6))
small_values = st.lists(fragment_or_text, max_size=10).map("".join)
big_values = st.sampled_from(FRAGMENTS).map(lambda piece: (piece * 65_536)[:65_536])
batches = st.tuples(
    small_values, st.lists(small_values, min_size=40, max_size=60), st.lists(big_values, max_size=2)
)


def not_unicode(value: str) -> bool:
    """Lone surrogates: no UTF-8 request can carry them faithfully, so they are refused."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def url_refusable(value: str) -> bool:
    return not_unicode(value) or value in (".", "..")


def test_s6_hostile_values_arrive_literally(server: Server) -> None:
    counted = [0, 0]  # [values that arrived, requests refused before sending]

    async def send(in_url: str, in_body: list[str]) -> tuple[RunState, Received]:
        names = [f"p{index}" for index in range(len(in_body))]
        spec = HttpSpec(
            method="POST",
            url=server.base_url + "/s6/{u}?u={u}",
            body={"values": [f"{{{name}}}" for name in names], "fixed": "{u}!"},
        )
        args: dict[str, Value] = {"u": in_url, **dict(zip(names, in_body, strict=True))}
        executor = HttpExecutor(max_output_bytes=1)
        try:
            outcome = await executor.run(invocation(spec, args), Collected())
        finally:
            await executor.close()
        [got] = server.take()
        return outcome.state, got

    @settings(
        max_examples=330,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.function_scoped_fixture,
        ],
    )
    @given(parts=batches)
    def check(parts: tuple[str, list[str], list[str]]) -> None:
        in_url, small, big = parts
        in_body = small + big
        server.take()
        if url_refusable(in_url) or any(not_unicode(value) for value in in_body):
            with pytest.raises(ExecutorError):
                asyncio.run(send(in_url, in_body))
            assert server.take() == []
            counted[1] += 1
            in_url = "plain" if url_refusable(in_url) else in_url
            in_body = [value for value in in_body if not not_unicode(value)]
        state, got = asyncio.run(send(in_url, in_body))
        assert state is RunState.SUCCEEDED
        quoted = quote(in_url, safe="")
        assert got.raw_path == f"/s6/{quoted}?u={quoted}"
        assert URL(got.raw_path, encoded=True).path == f"/s6/{in_url}"
        assert json.loads(got.body) == {"values": in_body, "fixed": f"{in_url}!"}
        counted[0] += len(in_body) + 1

    check()
    assert counted[0] + counted[1] >= 10_000, counted  # values thrown at the executor
    assert counted[1] > 0, "no refusable value was ever generated"
