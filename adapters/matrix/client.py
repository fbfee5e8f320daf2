"""A thin client-server API client for the application service.

mautrix's HTTP layer discards the ``Retry-After`` header and retries on its
own terms, so requests go through this client instead: the AS token in the
``Authorization`` header (never the URL), masquerading with ``?user_id=``,
timestamp massaging with ``?ts=``, 429 honouring ``Retry-After``, 5xx and
connection errors retried with capped, jittered exponential backoff, and
every other 4xx raised as permanent.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog

from bridge.errors import PermanentDeliveryError, RetryableDeliveryError

log = structlog.get_logger(__name__)

CLIENT_V3 = "/_matrix/client/v3"
CLIENT_V1 = "/_matrix/client/v1"
MEDIA_V3 = "/_matrix/media/v3"

Sleep = Callable[[float], Awaitable[None]]


def path(prefix: str, *segments: str) -> str:
    """An API path with every segment percent-encoded (ids contain ``!``, ``$``, ``:``)."""
    return prefix + "".join("/" + quote(s, safe="") for s in segments)


class MatrixRequestError(PermanentDeliveryError):
    """The homeserver refused the request for good (a 4xx other than 429)."""

    def __init__(self, status: int, errcode: str, message: str) -> None:
        super().__init__(f"{status} {errcode}: {message}")
        self.status = status
        self.errcode = errcode


class MatrixUnavailableError(RetryableDeliveryError):
    """Rate limited, a server error or no connection, after the client's own retries.

    ``ambiguous``: the request may have been carried out (a server error, a timeout or
    a connection lost after sending), which matters for requests without a transaction id.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, ambiguous: bool = False
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.ambiguous = ambiguous


def _retry_after(response_headers: Mapping[str, str], body: Mapping[str, Any]) -> float | None:
    header = response_headers.get("Retry-After")
    if header is not None:
        try:
            return max(0.0, float(header))
        except ValueError:
            return None
    millis = body.get("retry_after_ms")
    return max(0.0, millis / 1000) if isinstance(millis, int | float) else None


class MatrixClient:
    """Requests to the homeserver as the AS bot or, with ``user_id``, as a ghost."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        as_token: str,
        timeout_s: float = 30.0,
        max_attempts: int = 4,
        max_backoff_s: float = 10.0,
        max_retry_after_s: float = 60.0,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {as_token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_attempts = max_attempts
        self._max_backoff = max_backoff_s
        self._max_retry_after = max_retry_after_s
        self._sleep = sleep
        self._jitter = jitter

    def _backoff(self, attempt: int) -> float:
        base: float = min(self._max_backoff, 0.25 * 2.0**attempt)
        return base * (0.5 + self._jitter())  # full range 0.5x..1.5x

    async def request(
        self,
        method: str,
        api_path: str,
        *,
        json: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
        user_id: str | None = None,
        ts_ms: int | None = None,
        query: Mapping[str, str] | None = None,
        retry_ambiguous: bool = True,
    ) -> dict[str, Any]:
        """One request, retried per the module doc. ``retry_ambiguous=False`` is for a request
        the homeserver cannot deduplicate (``createRoom``): an outcome that may have been
        carried out is raised at once as an ambiguous ``MatrixUnavailableError``."""
        params = dict(query or {})
        if user_id is not None:
            params["user_id"] = user_id
        if ts_ms is not None:
            params["ts"] = str(ts_ms)
        headers = dict(self._auth)
        if content_type is not None:
            headers["Content-Type"] = content_type
        url = self._base + api_path
        for attempt in range(self._max_attempts):
            last_attempt = attempt == self._max_attempts - 1
            try:
                async with self._session.request(
                    method,
                    url,
                    json=json,
                    data=data,
                    params=params,
                    headers=headers,
                    timeout=self._timeout,
                ) as response:
                    body = await _json_body(response)
                    if 200 <= response.status < 300:
                        return body
                    status, headers_in = response.status, response.headers
            except (aiohttp.ClientError, TimeoutError) as exc:
                sent = not isinstance(exc, aiohttp.ClientConnectorError)
                if last_attempt or (sent and not retry_ambiguous):
                    raise MatrixUnavailableError(
                        f"homeserver unreachable: {type(exc).__name__}", ambiguous=sent
                    ) from exc
                delay = self._backoff(attempt)
                log.info("matrix_request_retry", reason=type(exc).__name__, delay_s=round(delay, 3))
                await self._sleep(delay)
                continue
            errcode = str(body.get("errcode", "M_UNKNOWN"))
            message = str(body.get("error", ""))[:300]
            if status == 429:
                wait = _retry_after(headers_in, body)
                wait = self._backoff(attempt) if wait is None else wait
                if last_attempt or wait > self._max_retry_after:
                    raise MatrixUnavailableError(f"rate limited ({errcode})", retry_after=wait)
                log.info("matrix_rate_limited", delay_s=round(wait, 3))
                await self._sleep(wait)
                continue
            if status >= 500:
                if last_attempt or not retry_ambiguous:
                    raise MatrixUnavailableError(
                        f"homeserver error {status} {errcode}", ambiguous=True
                    )
                delay = self._backoff(attempt)
                log.info("matrix_request_retry", reason=status, delay_s=round(delay, 3))
                await self._sleep(delay)
                continue
            raise MatrixRequestError(status, errcode, message)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises


async def _json_body(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return body if isinstance(body, dict) else {}
