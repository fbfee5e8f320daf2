"""The TCP gate forwards while open; closed, it refuses new connections and cuts live ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from devtools.servers import free_port
from tests.support.tcp_gate import LOOPBACK, TcpGate

IO_WITHIN_S = 5.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, LOOPBACK, 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


async def _round_trip(port: int, payload: bytes) -> bytes:
    async with asyncio.timeout(IO_WITHIN_S):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            writer.write(payload)
            await writer.drain()
            return await reader.readexactly(len(payload))
        finally:
            writer.close()


async def test_forwards_both_ways_while_open(echo_port: int) -> None:
    async with TcpGate(echo_port) as gate:
        assert await _round_trip(gate.port, b"ping") == b"ping"
        assert [c.forwarded for c in gate.connections] == [True]


async def test_closed_refuses_new_connections_and_cuts_live_ones(echo_port: int) -> None:
    async with TcpGate(echo_port) as gate:
        port = gate.port
        async with asyncio.timeout(IO_WITHIN_S):
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            writer.write(b"a")
            assert await reader.readexactly(1) == b"a"

            await gate.close()
            assert not gate.is_open
            assert await reader.read(1) == b""  # cut by the gate
            writer.close()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(LOOPBACK, port)

            await gate.open()
        assert gate.port == port
        assert await _round_trip(port, b"back") == b"back"
        assert len(gate.connections) == 2


async def test_a_target_that_is_down_gets_the_client_cut() -> None:
    async with TcpGate(free_port()) as gate, asyncio.timeout(IO_WITHIN_S):
        reader, writer = await asyncio.open_connection(LOOPBACK, gate.port)
        assert await reader.read(1) == b""
        writer.close()
    assert [c.forwarded for c in gate.connections] == [False]
