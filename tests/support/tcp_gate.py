"""A TCP forwarder on loopback that a test opens and closes, to cut one service off another.

``TcpGate(target_port)`` listens on a port of 127.0.0.1 (fixed for its whole life)
and forwards every connection to ``127.0.0.1:target_port``, byte for byte in both
directions. ``close()`` makes the target unreachable through the gate: the listening
socket is closed, so new connections are refused by the kernel (``ECONNREFUSED``, as
with a server that is down), and every forwarded connection is aborted (the client
sees a reset). ``open()`` listens on the same port again. The gate counts the
connections it accepted, with their times, so a test can see when a client came back.

Use it as an async context manager (started open)::

    async with TcpGate(synapse.port) as gate:
        ...  # point the client at gate.url
        await gate.close()
        ...
        await gate.open()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

LOOPBACK: Final = "127.0.0.1"
CHUNK: Final = 64 * 1024
STOP_WITHIN_S: Final = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class GateConnection:
    """A connection the gate accepted: when (monotonic seconds), and whether the target
    took it."""

    accepted_at: float
    forwarded: bool


class TcpGate:
    """See the module documentation."""

    def __init__(self, target_port: int, *, target_host: str = LOOPBACK, port: int = 0) -> None:
        self._target = (target_host, target_port)
        self._port = port
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: list[GateConnection] = []

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the gate has not been opened yet")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: what an HTTP client of the target is given instead."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._server is not None

    @property
    def connections(self) -> tuple[GateConnection, ...]:
        return tuple(self._connections)

    def accepted_since(self, since: float) -> list[GateConnection]:
        """Connections accepted at or after ``since`` (a ``time.monotonic()`` value)."""
        return [c for c in self._connections if c.accepted_at >= since]

    async def open(self) -> None:
        """Listen (again, on the same port) and forward; a no-op when open."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, LOOPBACK, self._port, reuse_address=True
        )
        if self._port == 0:
            self._port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Refuse new connections and cut the forwarded ones; a no-op when closed."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._wait_links()

    async def _wait_links(self) -> None:
        links = list(self._links)
        if links:
            _, pending = await asyncio.wait(links, timeout=STOP_WITHIN_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: forwarded until either side ends or the gate closes."""
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        self._writers.add(writer)
        accepted_at = time.monotonic()
        try:
            if self._server is None:  # closed while this connection was being accepted
                self._connections.append(GateConnection(accepted_at=accepted_at, forwarded=False))
                writer.transport.abort()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
            except OSError:
                self._connections.append(GateConnection(accepted_at=accepted_at, forwarded=False))
                writer.transport.abort()
                return
            self._connections.append(GateConnection(accepted_at=accepted_at, forwarded=True))
            self._writers.add(up_writer)
            try:
                async with asyncio.TaskGroup() as pumps:
                    pumps.create_task(_pump(reader, up_writer))
                    pumps.create_task(_pump(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._links.discard(task)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy bytes until end of stream, then half-close the other side; a reset ends it."""
    with contextlib.suppress(ConnectionError, OSError):
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
