"""Ordered queues, one per conversation, each served by one worker task the queues own.

An operation takes its place (a ``Slot``) the moment it is called, before
anything is awaited, so operations keep their call order even when preparing
them awaits (a lookup in the store). The worker of a lane serves prepared slots
from the head; it starts with the first slot and ends when the lane is empty.
A caller who gives up withdraws a slot that has not started; one under way
finishes. ``close`` cancels every worker and fails what is still queued.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import structlog

from bridge.errors import BridgeError, RetryableDeliveryError

log = structlog.get_logger(__name__)

OpT = TypeVar("OpT")
CLOSE_TIMEOUT_S = 5.0


class Depth(Protocol):
    """Where the number of queued operations is reported (a Prometheus gauge)."""

    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class Done:
    """What a preparation returns when the operation needs no call (already carried out)."""

    result: Any


@dataclass(eq=False, slots=True, kw_only=True)
class Slot(Generic[OpT]):
    """An operation's place in its lane; ``operation`` is set once it is prepared."""

    key: str
    future: asyncio.Future[Any]
    deadline: float
    ready: asyncio.Event
    operation: OpT | None = None

    def settle(self, result: Any = None, *, error: BaseException | None = None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


@dataclass(eq=False, slots=True)
class Lane(Generic[OpT]):
    key: str
    queue: deque[Slot[OpT]]
    task: asyncio.Task[None] | None = None


class Lanes(Generic[OpT]):
    def __init__(
        self,
        *,
        serve: Callable[[Lane[OpT]], Coroutine[Any, Any, None]],
        monotonic: Callable[[], float],
        queue_timeout_s: float,
        depth: Depth,
    ) -> None:
        self._serve = serve
        self._monotonic = monotonic
        self._queue_timeout_s = queue_timeout_s
        self._depth = depth
        self._lanes: dict[str, Lane[OpT]] = {}
        self._in_flight: dict[str, asyncio.Future[Any]] = {}
        self.closed = False

    @property
    def queued(self) -> int:
        return sum(len(lane.queue) for lane in self._lanes.values())

    def in_flight(self, key: str) -> asyncio.Future[Any] | None:
        """The pending operation with this idempotency key, if any."""
        return self._in_flight.get(key)

    def reserve(self, lane_key: str, key: str) -> Slot[OpT]:
        """Take a place at the end of ``lane_key``'s queue (nothing is awaited)."""
        if self.closed:
            raise RetryableDeliveryError("the Teams sender is stopping")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        slot: Slot[OpT] = Slot(
            key=key,
            future=future,
            deadline=self._monotonic() + self._queue_timeout_s,
            ready=asyncio.Event(),
        )
        lane = self._lanes.get(lane_key)
        if lane is None:
            lane = Lane(lane_key, deque())
            self._lanes[lane_key] = lane
        lane.queue.append(slot)
        self._depth.inc()
        self._in_flight[key] = future
        future.add_done_callback(lambda _: self._forget(slot))
        if lane.task is None:
            lane.task = asyncio.get_running_loop().create_task(
                self._worker(lane), name=f"teams-lane:{lane_key}"
            )
        return slot

    async def run(self, slot: Slot[OpT], prepare: Coroutine[Any, Any, OpT | Done]) -> Any:
        """Prepare the operation in its place, then wait until its worker has carried it out."""
        try:
            prepared = await prepare
        except BaseException as exc:
            self.withdraw(slot)
            if isinstance(exc, Exception):
                slot.settle(error=exc)
            else:
                slot.future.cancel()
            raise
        if isinstance(prepared, Done):
            self.withdraw(slot)
            slot.settle(prepared.result)
            return prepared.result
        slot.operation = prepared
        slot.ready.set()
        try:
            return await asyncio.shield(slot.future)
        except asyncio.CancelledError:
            # The caller gave up: an operation not started yet is withdrawn; one under
            # way finishes, and its result answers a repeat of the same idempotency key.
            if self.withdraw(slot):
                slot.future.cancel()
            raise

    def withdraw(self, slot: Slot[OpT]) -> bool:
        """Take a slot out of its queue if it still waits there; whether it did."""
        slot.ready.set()  # a worker waiting for it to be prepared moves on
        for lane in self._lanes.values():
            if slot in lane.queue:
                lane.queue.remove(slot)
                self._depth.dec()
                return True
        return False

    # -- for the worker ------------------------------------------------------------------

    async def head(self, lane: Lane[OpT]) -> Slot[OpT] | None:
        """The prepared slot at the head of the queue (waiting for it to be prepared)."""
        while self.peek(lane) is not None:
            slot = lane.queue[0]
            if slot.operation is not None:
                return slot
            remaining = slot.deadline - self._monotonic()
            try:
                await asyncio.wait_for(slot.ready.wait(), max(remaining, 0.0))
            except TimeoutError:
                if self.withdraw(slot):
                    slot.settle(
                        error=RetryableDeliveryError("preparing the operation took too long")
                    )
        return None

    def peek(self, lane: Lane[OpT]) -> Slot[OpT] | None:
        """The head of the queue after dropping settled (withdrawn) slots."""
        while lane.queue and lane.queue[0].future.done():
            lane.queue.popleft()
            self._depth.dec()
        return lane.queue[0] if lane.queue else None

    def pop(self, lane: Lane[OpT]) -> Slot[OpT]:
        slot = lane.queue.popleft()
        self._depth.dec()
        return slot

    def put_back(self, lane: Lane[OpT], slots: Sequence[Slot[OpT]]) -> None:
        """Return popped slots to the head of the queue, in their order (served next)."""
        lane.queue.extendleft(reversed(slots))
        self._depth.inc(len(slots))

    async def close(self) -> None:
        """Cancel every worker (bounded wait); fail what is still queued. Idempotent."""
        self.closed = True
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
        for lane in list(self._lanes.values()):
            self._fail(lane, RetryableDeliveryError("the Teams sender stopped"))
        self._lanes.clear()

    async def _worker(self, lane: Lane[OpT]) -> None:
        try:
            await self._serve(lane)
        except asyncio.CancelledError:
            self._fail(lane, RetryableDeliveryError("the Teams sender stopped"))
            raise
        except Exception:
            log.exception("teams_worker_failed", conversation=lane.key)
            self._fail(lane, RetryableDeliveryError("the Teams sender's worker failed"))
        finally:
            lane.task = None
            if self._lanes.get(lane.key) is lane:
                del self._lanes[lane.key]

    def _fail(self, lane: Lane[OpT], error: BridgeError) -> None:
        while lane.queue:
            self.pop(lane).settle(error=error)

    def _forget(self, slot: Slot[OpT]) -> None:
        future = slot.future
        if not future.cancelled():
            future.exception()  # retrieved: a caller who gave up leaves no warning behind
        if self._in_flight.get(slot.key) is future:
            del self._in_flight[slot.key]
