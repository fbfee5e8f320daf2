"""The records kept around creates: one round trip before a first create, one round for many keys.

Teams has no idempotency key, so before a create each idempotency key it carries is
recorded as in flight (``records.AmbiguousSend``): if the process dies before the
answer, the next one knows that create may have been delivered. ``open_creates``
does that for all the keys of one create at once (concurrently):

- a key never sent before gets its record inserted (``claim``): one round trip, and
  nothing is read (the usual case: only a key with a record can have been sent);
- a key with a record (the outbox retries it, maybe in another process) has the
  record read and judged: delivered already (the activity it produced is the
  answer; nothing is sent); in flight (the process that made the create died before
  the answer: one more create of unknown outcome, ``interrupted``); out of budget
  (``AMBIGUOUS_BUDGET`` creates of unknown outcome were made: never sent a third
  time); otherwise marked in flight again and sent.

``CreateRecords`` then carries the records of one create through its attempts and
writes each change (in flight, not sent, ambiguous, delivered) for all its keys at
once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import structlog

from adapters.teams.ids import TeamsActivityID, TeamsConversationID
from adapters.teams.records import AmbiguousSend, AmbiguousSendRecorder
from bridge.errors import BridgeError, RetryableDeliveryError, StoreError

log = structlog.get_logger(__name__)

AMBIGUOUS_BUDGET: Final = 2
"""Creates of unknown outcome allowed per idempotency key: the first and one retry."""
INTERRUPTED: Final = "interrupted"
"""The reason recorded for a create whose process died before its answer."""


@dataclass(frozen=True, slots=True)
class Ready:
    """The key may be sent: its record is stored in flight."""

    record: AmbiguousSend
    """``attempts`` counts the creates of unknown outcome made for the key before."""


@dataclass(frozen=True, slots=True)
class Delivered:
    """A create for the key succeeded before: its activity is the answer."""

    activity_id: TeamsActivityID


@dataclass(frozen=True, slots=True)
class Exhausted:
    """The key's creates of unknown outcome used up the budget: it is not sent again."""

    attempts: int


Opening = Ready | Delivered | Exhausted


@dataclass(frozen=True, slots=True)
class Pending:
    """A key about to be created, with its record when this process knows it already."""

    idempotency_key: str
    known: AmbiguousSend | None = None
    """The record as stored, not in flight (a key this process put back in its queue)."""


async def open_creates(
    recorder: AmbiguousSendRecorder,
    pending: Sequence[Pending],
    conversation_id: TeamsConversationID,
    *,
    now: Callable[[], datetime],
) -> list[Opening]:
    """Judge and mark the keys of one create (see the module docstring), all at once.

    A store failure is a ``RetryableDeliveryError``; the keys marked by then are
    marked not in flight again (as far as the store lets).
    """
    outcomes = await asyncio.gather(
        *(_open(recorder, entry, conversation_id, now) for entry in pending),
        return_exceptions=True,
    )
    openings = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if not failures:
        return openings
    marked = [opening.record.not_sent() for opening in openings if isinstance(opening, Ready)]
    await save_all(recorder, marked)
    error = failures[0]
    if isinstance(error, StoreError):
        raise RetryableDeliveryError(f"cannot record the create: {error}") from error
    raise error


async def _open(
    recorder: AmbiguousSendRecorder,
    entry: Pending,
    conversation_id: TeamsConversationID,
    now: Callable[[], datetime],
) -> Opening:
    record = entry.known
    if record is None:
        claimed = await recorder.claim(entry.idempotency_key, conversation_id)
        if claimed is not None:
            return Ready(claimed)
        record = await recorder.lookup(entry.idempotency_key) or AmbiguousSend(
            idempotency_key=entry.idempotency_key, conversation_id=conversation_id, first_at=now()
        )
    if record.activity_id is not None:
        return Delivered(record.activity_id)
    interrupted = record.in_flight
    if interrupted:  # its process died during the create: it may have been delivered
        record = record.ambiguous(INTERRUPTED, at=now())
    if record.attempts >= AMBIGUOUS_BUDGET:
        if interrupted:
            await recorder.save(record)
        return Exhausted(record.attempts)
    record = record.started()
    await recorder.save(record)
    return Ready(record)


class CreateRecords:
    """The records of the keys one create carries, through its attempts; each change is
    written for every key at once."""

    def __init__(
        self,
        recorder: AmbiguousSendRecorder,
        records: Sequence[AmbiguousSend],
        *,
        now: Callable[[], datetime],
    ) -> None:
        self._recorder = recorder
        self._records = tuple(records)
        self._now = now

    def __len__(self) -> int:
        return len(self._records)

    @property
    def attempts(self) -> int:
        """The most creates of unknown outcome any of the keys has had so far."""
        return max((record.attempts for record in self._records), default=0)

    async def started(self) -> None:
        """Mark the create in flight before it is made (unless it is marked already)."""
        if all(record.in_flight for record in self._records):
            return
        self._records = tuple(record.started() for record in self._records)
        failures = await save_all(self._recorder, self._records, log_failures=False)
        if failures:
            error = failures[0]
            raise RetryableDeliveryError(f"cannot record the create: {error}") from error

    async def not_sent(self) -> None:
        """The create was refused for sure: nothing was posted."""
        self._records = tuple(record.not_sent() for record in self._records)
        await save_all(self._recorder, self._records)

    async def ambiguous(self, reason: str) -> None:
        """The create may or may not have produced a message."""
        at = self._now()
        self._records = tuple(record.ambiguous(reason, at=at) for record in self._records)
        await save_all(self._recorder, self._records)

    async def delivered(self, activity_id: TeamsActivityID) -> None:
        at = self._now()
        self._records = tuple(record.delivered(activity_id, at=at) for record in self._records)
        await save_all(self._recorder, self._records)


async def save_all(
    recorder: AmbiguousSendRecorder,
    records: Sequence[AmbiguousSend],
    *,
    log_failures: bool = True,
) -> list[BridgeError]:
    """Write the records concurrently; the store's refusals are returned (and logged)."""
    if not records:
        return []
    outcomes = await asyncio.gather(
        *(recorder.save(record) for record in records), return_exceptions=True
    )
    failures: list[BridgeError] = []
    for outcome in outcomes:
        if isinstance(outcome, BridgeError):
            failures.append(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
    if log_failures:
        for failure in failures:
            log.error("teams_ambiguous_record_failed", error=str(failure))
    return failures
