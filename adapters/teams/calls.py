"""One connector call within Teams' limits: paced, retried, careful with creates.

- Every attempt takes a slot from the ``Pacer`` first (the conversation's and
  the tenant's sliding windows).
- 429: the conversation pauses for ``Retry-After`` (the pacer holds every call
  into it until then), and the call is made again.
- 412, 408, 5xx, timeouts, lost connections: exponential backoff with jitter,
  for at most ``max_attempts`` attempts, then a ``RetryableDeliveryError`` for
  the core's outbox to retry later.
- A create (send or reply) that may have been carried out (a timeout or a 5xx)
  is recorded as ambiguous for each idempotency key it carries and made once
  more at most; a second such outcome is final (``PermanentDeliveryError``).
  Updates and deletes are idempotent and retried freely.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import structlog
from prometheus_client import Counter, Gauge, Histogram

from adapters.teams.connector import ConnectorRetryableError
from adapters.teams.ids import TeamsActivityID, TeamsConversationID
from adapters.teams.pacing import Pacer, PacingSettings, Sleep, backoff_delay
from adapters.teams.records import AmbiguousSendRecorder
from bridge.errors import (
    BridgeError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StoreError,
)
from bridge.metrics import BridgeMetrics

log = structlog.get_logger(__name__)

AMBIGUOUS_BUDGET: Final = 2
"""Creates of unknown outcome allowed per idempotency key: the first and one retry."""
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
        ambiguous: AmbiguousSendRecorder,
        metrics: OutboundMetrics,
    ) -> None:
        self._pacer = pacer
        self._settings = settings
        self._sleep = sleep
        self._jitter = jitter
        self._ambiguous = ambiguous
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
        create_keys: Sequence[str] | None = None,
        prior_ambiguous: int = 0,
        slot_held: bool = False,
    ) -> _T:
        """Make one connector call within the limits, retrying what may be retried.

        ``create_keys`` marks a create and names the idempotency keys it carries
        (several for a combined activity); ``prior_ambiguous`` counts creates of
        unknown outcome made for them before; ``slot_held`` says the first
        attempt's slot is already taken.
        """
        settings = self._settings
        attempts = 0
        ambiguous = prior_ambiguous
        while True:
            if not slot_held:
                await self.acquire(address)
            slot_held = False
            attempts += 1
            if create_keys is not None:
                await self._mark_in_flight(create_keys, address)
            try:
                result = await request()
            except ConnectorRetryableError as exc:
                if create_keys is not None and not exc.ambiguous:
                    await self._not_sent(create_keys)
                if exc.status == 429:
                    pause = self._rate_limited(address, exc)
                    if pause > settings.max_retry_after_s or attempts >= settings.max_attempts:
                        raise RetryableDeliveryError(str(exc), retry_after=pause) from exc
                    continue  # the pacer holds the conversation until the pause is over
                if create_keys is not None and exc.ambiguous:
                    ambiguous += 1
                    await self._record_ambiguous(create_keys, address, exc.reason)
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
            if create_keys is not None:
                await self._record_delivered(create_keys, result)
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

    async def _mark_in_flight(self, keys: Sequence[str], address: Address) -> None:
        """Note a create before making it: if the process dies before the answer, the next
        one knows this create may have been delivered (and flags a resend as ambiguous)."""
        try:
            for key in keys:
                await self._ambiguous.record_in_flight(key, address.conversation_id)
        except StoreError as exc:
            raise RetryableDeliveryError(f"cannot record the create: {exc}") from exc

    async def _not_sent(self, keys: Sequence[str]) -> None:
        try:
            for key in keys:
                await self._ambiguous.record_not_sent(key)
        except StoreError as exc:
            log.error("teams_ambiguous_record_failed", error=str(exc))  # noqa: TRY400

    async def _record_ambiguous(self, keys: Sequence[str], address: Address, reason: str) -> None:
        self._metrics.ambiguous_creates.labels(reason=reason).inc(len(keys))
        log.warning(
            "teams_create_ambiguous",
            conversation=address.conversation_key,
            reason=reason,
            messages=len(keys),
        )
        for key in keys:
            try:
                await self._ambiguous.record_ambiguous(key, address.conversation_id, reason)
            except BridgeError as exc:
                log.error("teams_ambiguous_record_failed", error=str(exc))  # noqa: TRY400

    async def _record_delivered(self, keys: Sequence[str], result: object) -> None:
        if not isinstance(result, str):
            return
        for key in keys:
            try:
                await self._ambiguous.record_delivered(key, TeamsActivityID(result))
            except BridgeError as exc:
                log.error("teams_ambiguous_record_failed", error=str(exc))  # noqa: TRY400
