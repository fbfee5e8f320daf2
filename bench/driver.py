"""The benchmark process's handle on the load process (``bench.outside``).

``Driver`` starts the load process (multiprocessing, spawn), receives the
``World`` it built, and turns each request into an awaitable whose wait for
the answer runs in a thread, so the bridge's event loop keeps running. Every
wait is bounded; a load process that dies or does not answer in time raises.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Final, Self, TypeVar

from bench import outside
from bench.protocol import (
    Ack,
    Attach,
    Expect,
    Load,
    LoadReport,
    Reply,
    Request,
    Stop,
    World,
    WorldSpec,
)

START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 15.0
ANSWER_MARGIN_S: Final = 60.0
"""Added to a request's own duration before its answer is given up on."""

R = TypeVar("R", World, Ack, LoadReport)


class LoadProcessError(RuntimeError):
    """The load process died, or did not answer in time."""


class Driver:
    """The load process of one benchmark run; an async context manager."""

    def __init__(self, spec: WorldSpec) -> None:
        self._spec = spec
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._child_end: Connection | None = child
        self._process: BaseProcess = context.Process(
            target=outside.main, args=(child, spec), name="bench-outside", daemon=True
        )
        self._world: World | None = None

    @property
    def pid(self) -> int | None:
        """The load process's id while it runs."""
        return self._process.pid if self._process.is_alive() else None

    @property
    def world(self) -> World:
        if self._world is None:
            raise RuntimeError("the load process has not started")
        return self._world

    async def __aenter__(self) -> Self:
        self._process.start()
        if self._child_end is not None:
            self._child_end.close()  # the child holds its own copy
            self._child_end = None
        try:
            self._world = await self._answer(World, START_TIMEOUT_S)
        except BaseException:
            self._terminate()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._process.is_alive():
                await self._ask(Stop(), Ack, STOP_TIMEOUT_S)
        except LoadProcessError:
            pass
        finally:
            await asyncio.to_thread(self._process.join, STOP_TIMEOUT_S)
            self._terminate()
            self._connection.close()

    async def attach(self, bridge_url: str) -> None:
        await self._ask(Attach(bridge_url=bridge_url), Ack, START_TIMEOUT_S)

    async def load(self, load: Load) -> LoadReport:
        budget = load.seconds + load.settle_s + ANSWER_MARGIN_S
        return await self._ask(load, LoadReport, budget)

    async def expect(self, expect: Expect) -> LoadReport:
        return await self._ask(expect, LoadReport, expect.timeout_s + ANSWER_MARGIN_S)

    async def _ask(self, request: Request, kind: type[R], timeout_s: float) -> R:
        self._connection.send(request)
        return await self._answer(kind, timeout_s)

    async def _answer(self, kind: type[R], timeout_s: float) -> R:
        reply = await asyncio.to_thread(self._receive, timeout_s)
        if not isinstance(reply, kind):
            raise LoadProcessError(f"expected {kind.__name__}, got {type(reply).__name__}")
        return reply

    def _receive(self, timeout_s: float) -> Reply:
        try:
            if not self._connection.poll(timeout_s):
                raise LoadProcessError(f"the load process did not answer within {timeout_s:.0f} s")
            reply: Reply = self._connection.recv()
        except (EOFError, OSError) as exc:
            raise LoadProcessError(
                f"the load process is gone (exit code {self._process.exitcode})"
            ) from exc
        return reply

    def _terminate(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(STOP_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(STOP_TIMEOUT_S)
