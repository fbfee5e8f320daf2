"""A round-robin HTTP reverse proxy on loopback: a Kubernetes Service in front of replicas.

Each request (method, path, query, headers, body) goes to the next upstream in turn and
the upstream's answer goes back unchanged. An upstream that is marked down is left out
of the rotation, and one that refuses the connection is skipped for the next one (nothing
reached it, so sending elsewhere is safe); an upstream that took the request and then
failed to answer gets the client a 502, as a real load balancer would. With a readiness
path the proxy polls each upstream (``GET /readyz``) and marks it up on a 200 and down
on anything else, the way endpoints follow a readiness probe; an upstream added then
starts down, like a pod that has not passed its probe yet.

Faults for tests: ``duplicate_when(predicate)`` sends each matching request to two
upstreams at once (a platform's replay landing on two replicas) and answers with the
first 2xx; ``drop_answer_when(predicate)`` forwards a matching request and then answers
502, as if the answer was lost on the way back, so the platform sends it again.

``requests`` counts requests per upstream; ``exchanges`` records every client request
(with its body, so it can be sent again with ``send_to``); ``transitions`` records when
each upstream was marked up or down.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

LOOPBACK: Final = "127.0.0.1"
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
"""Headers that belong to one connection, not to the request (Host and length are redone)."""
NO_UPSTREAM: Final = 503
LOST_ANSWER: Final = 502


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxiedRequest:
    """A request as the client sent it."""

    method: str
    path: str
    query_string: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def path_qs(self) -> str:
        return f"{self.path}?{self.query_string}" if self.query_string else self.path


RequestPredicate = Callable[[ProxiedRequest], bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """What one upstream answered (``status`` None: it took the request, then no answer)."""

    upstream: str
    status: int | None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchange:
    """One client request and how the proxy handled it."""

    request: ProxiedRequest
    status: int
    """What the client got."""
    answers: tuple[Answer, ...]
    """Every upstream that took the request (two for a duplicated one)."""
    skipped: tuple[str, ...]
    """Upstreams that refused the connection before one took it."""
    duplicated: bool
    answer_dropped: bool
    started: float
    """``time.monotonic()`` when the request arrived."""
    elapsed_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    upstream: str
    up: bool
    at: float
    """``time.monotonic()``."""


class _RefusedError(Exception):
    """The upstream did not take the connection: nothing was sent."""


class _Upstream:
    __slots__ = ("base_url", "name", "up")

    def __init__(self, name: str, base_url: str, *, up: bool) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.up = up


class RoundRobinProxy:
    """See the module documentation. ``readiness_path`` None: no polling, upstreams are
    up when added (until ``mark``)."""

    def __init__(
        self,
        *,
        port: int = 0,
        readiness_path: str | None = "/readyz",
        poll_interval_s: float = 0.25,
        probe_timeout_s: float = 1.0,
        request_timeout_s: float = 30.0,
    ) -> None:
        self._port = port
        self._readiness_path = readiness_path
        self._poll_interval_s = poll_interval_s
        self._probe_timeout = aiohttp.ClientTimeout(total=probe_timeout_s)
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._upstreams: dict[str, _Upstream] = {}
        self._cursor = 0
        self._duplicate: RequestPredicate | None = None
        self._drop_answer: RequestPredicate | None = None
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self.requests: Counter[str] = Counter()
        """Requests that reached each upstream (duplicates and replays included)."""
        self.exchanges: list[Exchange] = []
        self.transitions: list[Transition] = []

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the proxy is already started")
        # One connection per request: a stopped upstream refuses the next one cleanly
        # instead of failing on a pooled connection that it closed.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=512),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, self._port)
        await site.start()
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                self._port = int(address[1])
        if self._readiness_path is not None:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name="proxy-readiness"
            )

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._port}"

    # -- upstreams ------------------------------------------------------------------
    def add(self, name: str, base_url: str, *, up: bool | None = None) -> None:
        """A new upstream, last in the rotation; down until its readiness passes (when
        polling), unless ``up`` says otherwise."""
        if name in self._upstreams:
            raise ValueError(f"upstream {name} exists")
        start_up = self._readiness_path is None if up is None else up
        self._upstreams[name] = _Upstream(name, base_url, up=start_up)
        self.transitions.append(Transition(upstream=name, up=start_up, at=time.monotonic()))

    def remove(self, name: str) -> None:
        self._upstreams.pop(name, None)

    async def mark(self, name: str, *, up: bool) -> None:
        await self._set(self._upstreams[name], up=up)

    def is_up(self, name: str) -> bool:
        upstream = self._upstreams.get(name)
        return upstream is not None and upstream.up

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._upstreams)

    def marked_down_at(self, name: str, *, after: float) -> float | None:
        """When ``name`` was first marked down after ``after`` (monotonic), if it was."""
        return next(
            (t.at for t in self.transitions if t.upstream == name and not t.up and t.at >= after),
            None,
        )

    async def wait_until(self, name: str, *, up: bool, within: float) -> None:
        """Until the proxy has marked ``name`` up (or down); fails after ``within`` s."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.is_up(name) is up), within
                )
            except TimeoutError:
                state = "up" if up else "down"
                raise AssertionError(
                    f"the proxy did not mark {name} {state} within {within} s"
                ) from None

    async def _set(self, upstream: _Upstream, *, up: bool) -> None:
        if upstream.up is up:
            return
        upstream.up = up
        self.transitions.append(Transition(upstream=upstream.name, up=up, at=time.monotonic()))
        async with self._changed:
            self._changed.notify_all()

    async def _poll(self) -> None:
        while True:
            upstreams = list(self._upstreams.values())
            ready = await asyncio.gather(*(self._probe(u) for u in upstreams))
            for upstream, up in zip(upstreams, ready, strict=True):
                if upstream.name in self._upstreams:
                    await self._set(upstream, up=up)
            await asyncio.sleep(self._poll_interval_s)

    async def _probe(self, upstream: _Upstream) -> bool:
        assert self._session is not None
        assert self._readiness_path is not None
        try:
            async with self._session.get(
                upstream.base_url + self._readiness_path, timeout=self._probe_timeout
            ) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    # -- faults ---------------------------------------------------------------------
    def duplicate_when(self, predicate: RequestPredicate | None) -> None:
        """Send each request that matches to two upstreams at once (None: stop)."""
        self._duplicate = predicate

    def drop_answer_when(self, predicate: RequestPredicate | None) -> None:
        """Forward each request that matches, then answer 502 (None: stop)."""
        self._drop_answer = predicate

    # -- forwarding -----------------------------------------------------------------
    async def send_to(self, name: str, request: ProxiedRequest) -> Answer:
        """Send a request (one recorded in ``exchanges``) to one upstream, as a platform
        sending it again would; it counts in ``requests``."""
        try:
            return await self._send(self._upstreams[name], request)
        except _RefusedError as exc:
            return Answer(upstream=name, status=None, error=str(exc))

    def _rotation(self) -> list[_Upstream]:
        """The upstreams that are up, the next one in turn first."""
        live = [u for u in self._upstreams.values() if u.up]
        if not live:
            return []
        start = self._cursor % len(live)
        self._cursor += 1
        return live[start:] + live[:start]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        proxied = ProxiedRequest(
            method=request.method,
            path=request.path,
            query_string=request.query_string,
            headers=tuple(request.headers.items()),
            body=await request.read(),
        )
        duplicated = self._duplicate is not None and self._duplicate(proxied)
        rotation = self._rotation()
        skipped: list[str] = []
        if duplicated and len(rotation) >= 2:
            answers = list(
                await asyncio.gather(
                    self._send_or_skip([rotation[0]], proxied, skipped),
                    self._send_or_skip([rotation[1]], proxied, skipped),
                )
            )
        else:
            answers = [await self._send_or_skip(rotation, proxied, skipped)]
        taken = tuple(a for a in answers if a is not None)
        answer = next((a for a in taken if a.ok), taken[0] if taken else None)
        dropped = (
            answer is not None and self._drop_answer is not None and self._drop_answer(proxied)
        )
        if answer is None:
            response = web.Response(status=NO_UPSTREAM, text="no upstream available")
        elif dropped or answer.status is None:
            response = web.Response(status=LOST_ANSWER, text="the upstream's answer was lost")
        else:
            headers = CIMultiDict((k, v) for k, v in answer.headers if k.lower() not in HOP_BY_HOP)
            response = web.Response(status=answer.status, body=answer.body, headers=headers)
        self.exchanges.append(
            Exchange(
                request=proxied,
                status=response.status,
                answers=taken,
                skipped=tuple(skipped),
                duplicated=duplicated,
                answer_dropped=dropped,
                started=started,
                elapsed_s=time.monotonic() - started,
            )
        )
        return response

    async def _send_or_skip(
        self, candidates: list[_Upstream], request: ProxiedRequest, skipped: list[str]
    ) -> Answer | None:
        """The answer of the first candidate that takes the connection (None: none did)."""
        for upstream in candidates:
            try:
                return await self._send(upstream, request)
            except _RefusedError:
                skipped.append(upstream.name)
        return None

    async def _send(self, upstream: _Upstream, request: ProxiedRequest) -> Answer:
        assert self._session is not None, "start the proxy first"
        headers = CIMultiDict((k, v) for k, v in request.headers if k.lower() not in HOP_BY_HOP)
        headers["X-Forwarded-For"] = LOOPBACK
        try:
            async with self._session.request(
                request.method,
                upstream.base_url + request.path_qs,
                headers=headers,
                data=request.body if request.body else None,
                timeout=self._request_timeout,
                allow_redirects=False,
            ) as response:
                self.requests[upstream.name] += 1
                body = await response.read()
                return Answer(
                    upstream=upstream.name,
                    status=response.status,
                    headers=tuple(response.headers.items()),
                    body=body,
                )
        except aiohttp.ClientConnectorError as exc:
            raise _RefusedError(f"{upstream.name}: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.requests[upstream.name] += 1
            return Answer(upstream=upstream.name, status=None, error=f"{type(exc).__name__}")
