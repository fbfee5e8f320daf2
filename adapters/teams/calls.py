"""One connector call within Teams' limits: paced, retried, careful with creates.

- Every attempt takes a slot from the ``Pacer`` first (the conversation's and
  the tenant's sliding windows).
- 429: the conversation pauses for ``Retry-After`` (the pacer holds every call
  into it until then), and the call is made again.
- 412, 408, 5xx, timeouts, lost connections: exponential backoff with jitter,
  for at most ``max_attempts`` attempts, then a ``RetryableDeliveryError`` for
  the core's outbox to retry later.
- A create (send or reply) is marked in flight before each attempt (the first
  mark is made when the create is opened, see ``creates``); one that may have
  been carried out (a timeout or a 5xx) is recorded as ambiguous for each
  idempotency key it carries and made once more at most; a second such outcome
  is final (``PermanentDeliveryError``). Every such record is written for all
  the keys of a combined activity at once. Updates and deletes are idempotent
  and retried freely.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from prometheus_client import Counter, Gauge, Histogram

from adapters.teams.connector import ConnectorRetryableError
from adapters.teams.creates import AMBIGUOUS_BUDGET, CreateRecords
from adapters.teams.ids import TeamsActivityID, TeamsConversationID
from adapters.teams.pacing import Pacer, PacingSettings, Sleep, backoff_delay
from bridge.errors import PermanentDeliveryError, RetryableDeliveryError
from bridge.metrics import BridgeMetrics

log = structlog.get_logger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """Where an operation goes."""

    service_url: str
    conversation_id: TeamsConversationID
    """The conversation posted to (a channel thread's own id for a thread)."""
    conversation_key: str
    """The base conversation: what Teams' per-conversation limits count against."""
    tenant_id: str
    reply_to: TeamsActivityID | None = None


class OutboundMetrics:
    """The Teams sender's own metrics, on the process registry."""

    def __init__(self, metrics: BridgeMetrics) -> None:
        registry = metrics.registry
        self.requests = Counter(
            "bridge_teams_connector_requests",
            "HTTP requests to the Teams connector, by operation and outcome (status or error).",
            ["operation", "outcome"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "bridge_teams_rate_limited",
            "429 answers from the Teams connector (each pauses its conversation).",
            registry=registry,
        )
        self.ambiguous_creates = Counter(
            "bridge_teams_ambiguous_creates",
            "Messages whose create timed out or got a 5xx, so may have been delivered, by reason.",
            ["reason"],
            registry=registry,
        )
        self.coalesced = Counter(
            "bridge_teams_coalesced_messages",
            "Messages sent as one line of a combined activity.",
            registry=registry,
        )
        self.split = Counter(
            "bridge_teams_split_messages",
            "Messages too large for one activity, posted as several.",
            registry=registry,
        )
        self.queued = Gauge(
            "bridge_teams_outbound_queued",
            "Operations waiting for their turn in a conversation's queue.",
            registry=registry,
        )
        self.pacing_wait = Histogram(
            "bridge_teams_pacing_wait_seconds",
            "Time a connector call waited for a slot in Teams' rate-limit windows.",
            buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
            registry=registry,
        )

    def observe_request(self, operation: str, outcome: str) -> None:
        self.requests.labels(operation=operation, outcome=outcome).inc()


class PacedCalls:
    def __init__(
        self,
        *,
        pacer: Pacer,
        settings: PacingSettings,
        sleep: Sleep,
        jitter: Callable[[], float],
        metrics: OutboundMetrics,
    ) -> None:
        self._pacer = pacer
        self._settings = settings
        self._sleep = sleep
        self._jitter = jitter
        self._metrics = metrics

    async def acquire(self, address: Address) -> None:
        """Take a slot for the next call into ``address``'s conversation."""
        waited = await self._pacer.acquire(address.conversation_key, address.tenant_id)
        self._metrics.pacing_wait.observe(waited)

    def delay(self, address: Address) -> float:
        return self._pacer.delay(address.conversation_key, address.tenant_id)

    async def call(
        self,
        address: Address,
        request: Callable[[], Awaitable[_T]],
        *,
        creates: CreateRecords | None = None,
        prior_ambiguous: int = 0,
        slot_held: bool = False,
    ) -> _T:
        """Make one connector call within the limits, retrying what may be retried.

        ``creates`` marks a create and holds the records of the idempotency keys it
        carries (several for a combined activity): marked in flight before each
        attempt, not sent or ambiguous by its outcome; the caller records what a
        successful create produced (``CreateRecords.delivered``). ``prior_ambiguous``
        counts creates of unknown outcome made for them before; ``slot_held`` says the
        first attempt's slot is already taken.
        """
        settings = self._settings
        attempts = 0
        ambiguous = prior_ambiguous
        while True:
            if not slot_held:
                await self.acquire(address)
            slot_held = False
            attempts += 1
            if creates is not None:
                await creates.started()
            try:
                result = await request()
            except ConnectorRetryableError as exc:
                if creates is not None and not exc.ambiguous:
                    await creates.not_sent()
                if exc.status == 429:
                    pause = self._rate_limited(address, exc)
                    if pause > settings.max_retry_after_s or attempts >= settings.max_attempts:
                        raise RetryableDeliveryError(str(exc), retry_after=pause) from exc
                    continue  # the pacer holds the conversation until the pause is over
                if creates is not None and exc.ambiguous:
                    ambiguous += 1
                    await self._record_ambiguous(creates, address, exc.reason)
                    if ambiguous >= AMBIGUOUS_BUDGET:
                        raise PermanentDeliveryError(
                            f"{exc}; the create may have been delivered and was already sent "
                            "again once: not retried further (recorded as ambiguous)"
                        ) from exc
                backoff = backoff_delay(
                    attempts,
                    base_s=settings.backoff_base_s,
                    cap_s=settings.backoff_cap_s,
                    jitter=self._jitter(),
                )
                backoff = max(backoff, min(exc.retry_after or 0.0, settings.max_retry_after_s))
                if attempts >= settings.max_attempts:
                    raise RetryableDeliveryError(str(exc), retry_after=backoff) from exc
                await self._sleep(backoff)
                continue
            return result

    def _rate_limited(self, address: Address, exc: ConnectorRetryableError) -> float:
        pause = exc.retry_after
        pause = self._settings.default_retry_after_s if pause is None else pause
        self._pacer.pause(address.conversation_key, pause)
        self._metrics.rate_limited.inc()
        log.warning(
            "teams_rate_limited", conversation=address.conversation_key, retry_after_s=pause
        )
        return pause

    async def _record_ambiguous(
        self, creates: CreateRecords, address: Address, reason: str
    ) -> None:
        self._metrics.ambiguous_creates.labels(reason=reason).inc(len(creates))
        log.warning(
            "teams_create_ambiguous",
            conversation=address.conversation_key,
            reason=reason,
            messages=len(creates),
        )
        await creates.ambiguous(reason)
