"""A thin typed client of the Bot Framework connector REST API (v3) that Teams serves.

Every call takes the conversation's service URL (from its stored conversation
reference) and carries the bot's bearer token. Failures map onto the bridge's
error tree, and each says whether the request may have been carried out
(``ambiguous``), which matters for creates: Teams has no idempotency key, so
a create that timed out or got a 5xx may still have produced a message.

| outcome | error | ambiguous |
|---|---|---|
| 429 | retryable, ``retry_after`` from ``Retry-After`` | no |
| 412, 408 | retryable | no |
| 500, 502, 503, 504 (other 5xx) | retryable | yes |
| timeout, connection lost after sending | retryable | yes |
| connection refused or connect timeout | retryable | no |
| 401 | the token is refreshed and the request made once more; then permanent | no |
| 404 on delete | success (already gone) | - |
| 413 and every other 4xx | permanent | no |
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import aiohttp
from yarl import URL

from adapters.teams.ids import TeamsActivityID, TeamsConversationID, TokenProvider
from adapters.teams.render import serialize
from bridge.errors import PermanentDeliveryError, RetryableDeliveryError

MAX_RESPONSE_BYTES = 4 * 1024 * 1024
Observer = Callable[[str, str], None]
"""Called once per HTTP request with the operation and its outcome (a status or an error kind)."""


@runtime_checkable
class InvalidatingTokenProvider(Protocol):
    """A token provider that can forget its cached token (the connector refused it)."""

    async def token(self) -> str: ...

    def invalidate(self) -> None: ...


class ConnectorRetryableError(RetryableDeliveryError):
    """The connector call failed for now; ``ambiguous`` if it may have been carried out."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        ambiguous: bool,
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.ambiguous = ambiguous
        self.reason = reason or (f"http_{status}" if status is not None else "connection")
        """A short label for records and metrics: ``http_502``, ``timeout``..."""


class ConnectorPermanentError(PermanentDeliveryError):
    """The connector refused the call for good."""

    def __init__(self, message: str, *, status: int | None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class CreatedConversation:
    conversation_id: TeamsConversationID
    activity_id: TeamsActivityID | None
    service_url: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TeamsMember:
    """A member of a conversation as the connector lists it."""

    user_id: str
    """The ``29:`` channel account id."""
    name: str
    aad_object_id: str | None
    raw: Mapping[str, Any]


class ConnectorClient:
    """Calls to one bot's connector endpoints; stateless apart from the shared HTTP session."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        tokens: TokenProvider,
        timeout_s: float,
        observe: Observer | None = None,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._session = session
        self._tokens = tokens
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(5.0, timeout_s))
        self._observe = observe
        self._wall_clock = wall_clock or (lambda: datetime.now(UTC))

    async def create_conversation(
        self, service_url: str, parameters: Mapping[str, Any]
    ) -> CreatedConversation:
        """``POST /v3/conversations``: a new channel thread, group chat or 1:1 chat.

        A create: a timeout or a 5xx may have produced the conversation (``ambiguous``)."""
        body = await self._request(
            "create_conversation", "POST", _url(service_url), payload=parameters, create=True
        )
        conversation_id = _field(body, "id")
        activity_id = body.get("activityId") if isinstance(body, dict) else None
        new_service_url = body.get("serviceUrl") if isinstance(body, dict) else None
        return CreatedConversation(
            conversation_id=TeamsConversationID(conversation_id),
            activity_id=TeamsActivityID(activity_id) if isinstance(activity_id, str) else None,
            service_url=new_service_url if isinstance(new_service_url, str) else None,
        )

    async def send_to_conversation(
        self,
        service_url: str,
        conversation_id: TeamsConversationID,
        activity: Mapping[str, Any],
    ) -> TeamsActivityID:
        """``POST /v3/conversations/{id}/activities``."""
        url = _url(service_url, conversation_id, "activities")
        body = await self._request("send", "POST", url, payload=activity, create=True)
        return TeamsActivityID(_field(body, "id"))

    async def reply_to_activity(
        self,
        service_url: str,
        conversation_id: TeamsConversationID,
        reply_to_id: TeamsActivityID,
        activity: Mapping[str, Any],
    ) -> TeamsActivityID:
        """``POST /v3/conversations/{id}/activities/{replyToId}``."""
        url = _url(service_url, conversation_id, "activities", reply_to_id)
        body = await self._request("reply", "POST", url, payload=activity, create=True)
        return TeamsActivityID(_field(body, "id"))

    async def update_activity(
        self,
        service_url: str,
        conversation_id: TeamsConversationID,
        activity_id: TeamsActivityID,
        activity: Mapping[str, Any],
    ) -> None:
        """``PUT /v3/conversations/{id}/activities/{activityId}``."""
        url = _url(service_url, conversation_id, "activities", activity_id)
        await self._request("update", "PUT", url, payload={**activity, "id": activity_id})

    async def delete_activity(
        self,
        service_url: str,
        conversation_id: TeamsConversationID,
        activity_id: TeamsActivityID,
    ) -> None:
        """``DELETE /v3/conversations/{id}/activities/{activityId}``; already gone is fine."""
        url = _url(service_url, conversation_id, "activities", activity_id)
        await self._request("delete", "DELETE", url, missing_ok=True)

    async def get_members(
        self, service_url: str, conversation_id: TeamsConversationID
    ) -> list[TeamsMember]:
        """``GET /v3/conversations/{id}/members``."""
        body = await self._request("members", "GET", _url(service_url, conversation_id, "members"))
        if not isinstance(body, list):
            raise ConnectorPermanentError("members: the response is not a list", status=None)
        return [
            TeamsMember(
                user_id=str(item.get("id", "")),
                name=str(item.get("name", "")),
                aad_object_id=item.get("aadObjectId") if item.get("aadObjectId") else None,
                raw=item,
            )
            for item in body
            if isinstance(item, dict)
        ]

    # -- one HTTP request -----------------------------------------------------------

    async def _request(
        self,
        operation: str,
        method: str,
        url: URL,
        *,
        payload: Mapping[str, Any] | None = None,
        create: bool = False,
        missing_ok: bool = False,
    ) -> Any:
        data = serialize(dict(payload)) if payload is not None else None
        token = await self._tokens.token()
        refreshed = False
        while True:
            status, body, headers = await self._send(
                operation, method, url, token=token, data=data, create=create
            )
            if status == 401 and not refreshed:
                refreshed = True
                token = await self._fresh_token()
                continue
            return self._result(
                operation, status, body, headers, create=create, missing_ok=missing_ok
            )

    async def _fresh_token(self) -> str:
        if isinstance(self._tokens, InvalidatingTokenProvider):
            self._tokens.invalidate()
        return await self._tokens.token()

    async def _send(
        self,
        operation: str,
        method: str,
        url: URL,
        *,
        token: str,
        data: bytes | None,
        create: bool,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, timeout=self._timeout
            ) as response:
                body = await response.content.read(MAX_RESPONSE_BYTES)
                self._note(operation, str(response.status))
                return response.status, body, dict(response.headers)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            self._note(operation, "connect_error")
            raise ConnectorRetryableError(
                f"{operation}: cannot connect ({type(exc).__name__})",
                status=None,
                ambiguous=False,
                reason="connect_error",
            ) from exc
        except TimeoutError as exc:
            self._note(operation, "timeout")
            raise ConnectorRetryableError(
                f"{operation}: timed out", status=None, ambiguous=create, reason="timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            self._note(operation, "connection_lost")
            raise ConnectorRetryableError(
                f"{operation}: connection lost ({type(exc).__name__})",
                status=None,
                ambiguous=create,
                reason="connection_lost",
            ) from exc

    def _result(
        self,
        operation: str,
        status: int,
        body: bytes,
        headers: Mapping[str, str],
        *,
        create: bool,
        missing_ok: bool,
    ) -> Any:
        if 200 <= status < 300:
            return _json(body)
        if status == 404 and missing_ok:
            return None
        detail = f"{operation}: HTTP {status}{_error_code(body)}"
        if status == 429:
            raise ConnectorRetryableError(
                detail,
                status=status,
                ambiguous=False,
                retry_after=parse_retry_after(headers.get("Retry-After"), self._wall_clock()),
            )
        if status in (408, 412):
            raise ConnectorRetryableError(detail, status=status, ambiguous=False)
        if status >= 500 and status not in (501, 505):
            raise ConnectorRetryableError(
                detail,
                status=status,
                ambiguous=create,
                retry_after=parse_retry_after(headers.get("Retry-After"), self._wall_clock()),
            )
        raise ConnectorPermanentError(detail, status=status)

    def _note(self, operation: str, outcome: str) -> None:
        if self._observe is not None:
            self._observe(operation, outcome)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _url(service_url: str, *segments: str) -> URL:
    base = service_url.rstrip("/")
    path = "/".join(quote(segment, safe="") for segment in segments)
    return URL(f"{base}/v3/conversations" + (f"/{path}" if path else ""), encoded=True)


def _json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _field(body: Any, name: str) -> str:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        # Delivered (2xx) but unidentified: the message may exist without an id we can use.
        raise ConnectorRetryableError(
            f"the connector's answer has no {name}",
            status=None,
            ambiguous=True,
            reason="no_id",
        )
    return value


def _error_code(body: bytes) -> str:
    parsed = _json(body)
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return f" ({error['code'][:64]})"
    return ""
