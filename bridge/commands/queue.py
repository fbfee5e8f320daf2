"""A bounded queue of stored messages whose commands are still to run, and its workers.

Intake waits when the queue is full (backpressure to the platform) instead of
holding an unbounded number of pending commands in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from bridge.commands.processor import CommandProcessor
from bridge.model import AppendResult, TimelineEvent
from bridge.tasks import TaskOwner

log = structlog.get_logger(__name__)


class CommandQueue:
    def __init__(self, processor: CommandProcessor, *, workers: int = 4, size: int = 1000) -> None:
        self._processor = processor
        self._queue: asyncio.Queue[TimelineEvent] = asyncio.Queue(maxsize=size)
        self._tasks = TaskOwner("commands")
        self._workers = workers

    async def offer(self, results: Sequence[AppendResult]) -> None:
        for result in results:
            if self._processor.wants(result):
                await self._queue.put(result.event)

    def start(self) -> None:
        for number in range(self._workers):
            self._tasks.start(self._work(), name=f"worker-{number}")

    async def drain(self) -> None:
        """Wait until every queued command has been handled (tests, shutdown)."""
        await self._queue.join()

    async def stop(self) -> None:
        await self._tasks.close()

    async def _work(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._processor.handle(event)
            except Exception:
                log.exception("command_processing_failed", event_id=event.id)
            finally:
                self._queue.task_done()
