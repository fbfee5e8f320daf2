"""Downloading what Teams users attach: hosted images with the bot's token, files by their link.

- Inline images are hosted content under the conversation's service URL
  (``.../v3/attachments/{id}/views/original``): fetched with the bot's bearer
  token, and only from an allow-listed serviceUrl host (the token never goes
  anywhere else).
- Shared files come with a pre-authenticated ``downloadUrl`` (a credential:
  content.py keeps only the file's ``contentUrl`` in the timeline, which a bot
  cannot open). ``FileLinks`` notes each message's download links as it is
  converted and keeps them, before the message is stored, in the StateStore
  (namespace ``teams_file_links``, keyed by a digest of the ``contentUrl``, never
  logged) for ``FILE_LINK_TTL``; the download finds the link there, and fetches it
  without the bot's token (https only; plain http only on loopback; redirects
  followed only under the same rule).

Every download is streamed and capped: a declared or actual size over the cap
raises ``MediaTooLargeError``; a refusal is permanent, a rate limit, a server
error or a lost connection retryable.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import structlog
from yarl import URL

from adapters.teams.activity import TeamsActivity
from adapters.teams.connector import InvalidatingTokenProvider
from adapters.teams.content import FILE_DOWNLOAD_INFO
from adapters.teams.convert import ActivityConverter
from adapters.teams.ids import TokenProvider
from adapters.teams.render import fetchable
from bridge.errors import (
    MediaTooLargeError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StoreError,
)
from bridge.model import AppendResult, Attachment, InboundEvent
from bridge.ports import Clock, InboundSink, StateStore

log = structlog.get_logger(__name__)

LINKS_NAMESPACE: Final = "teams_file_links"
FILE_LINK_TTL: Final = timedelta(days=1)
HOSTED_CONTENT_MARKER: Final = "/v3/attachments/"
CHUNK_BYTES: Final = 64 * 1024
MAX_REDIRECTS: Final = 3
PENDING_LINKS: Final = 1024
"""Links noted but not yet kept (between conversion and storing); oldest dropped first."""


class FileLinks:
    """Download links of shared files, from conversion until the file is carried."""

    def __init__(self, state: StateStore, *, clock: Clock, capacity: int = PENDING_LINKS) -> None:
        self._state = state
        self._clock = clock
        self._capacity = capacity
        self._pending: OrderedDict[str, str] = OrderedDict()

    def note(self, activity: TeamsActivity) -> None:
        """Remember the download links of an activity being converted (in memory)."""
        for entry in activity.attachments:
            if entry.get("contentType") != FILE_DOWNLOAD_INFO:
                continue
            content = entry.get("content")
            content_url = entry.get("contentUrl")
            link = content.get("downloadUrl") if isinstance(content, dict) else None
            if isinstance(content_url, str) and isinstance(link, str) and fetchable(link):
                self._pending[content_url] = link
                self._pending.move_to_end(content_url)
        while len(self._pending) > self._capacity:
            self._pending.popitem(last=False)

    async def keep(self, events: Sequence[InboundEvent]) -> None:
        """Store the links of the files these events carry (before the events are stored)."""
        expires = self._clock.now() + FILE_LINK_TTL
        for event in events:
            for attachment in event.body.attachments:
                link = self._pending.pop(attachment.url, None)
                if link is not None:
                    await self._state.put(
                        LINKS_NAMESPACE,
                        _digest(attachment.url),
                        {"download_url": link, "expires_at": expires},
                    )

    async def lookup(self, content_url: str) -> str | None:
        """The download link of a file, unless it is unknown or expired."""
        try:
            document = await self._state.get(LINKS_NAMESPACE, _digest(content_url))
        except StoreError as exc:
            raise RetryableDeliveryError(f"file link unavailable: {exc}") from exc
        if document is None:
            return None
        expires = document.get("expires_at")
        link = document.get("download_url")
        if expires is None or expires <= self._clock.now() or not isinstance(link, str):
            return None
        return link

    def converter(self, *, app_id: str, clock: Clock) -> ActivityConverter:
        """An ``ActivityConverter`` that notes each activity's download links."""
        return _NotingConverter(app_id=app_id, clock=clock, links=self)

    def sink(self, inner: InboundSink) -> InboundSink:
        """``inner``, keeping the noted links of events before they are stored."""
        return _KeepingSink(inner, self)


class _NotingConverter(ActivityConverter):
    def __init__(self, *, app_id: str, clock: Clock, links: FileLinks) -> None:
        super().__init__(app_id=app_id, clock=clock)
        self._links = links

    def convert(self, activity: TeamsActivity) -> list[InboundEvent]:
        events = super().convert(activity)
        if any(e.body.attachments for e in events):
            self._links.note(activity)
        return events


class _KeepingSink:
    def __init__(self, inner: InboundSink, links: FileLinks) -> None:
        self._inner = inner
        self._links = links

    async def accept(self, events: Sequence[InboundEvent]) -> list[AppendResult | None]:
        await self._links.keep(events)
        return await self._inner.accept(events)


class TeamsFiles:
    """``SupportsMedia.download`` for Teams (see the module doc)."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        tokens: TokenProvider,
        links: FileLinks,
        service_url_allowed: Callable[[str], bool],
        timeout_s: float,
    ) -> None:
        self._session = session
        self._tokens = tokens
        self._links = links
        self._service_url_allowed = service_url_allowed
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(5.0, timeout_s))

    async def download(self, attachment: Attachment, *, max_bytes: int) -> bytes:
        url = attachment.url
        if HOSTED_CONTENT_MARKER in urlsplit(url).path:
            if not self._service_url_allowed(url):
                raise PermanentDeliveryError(
                    "the image is hosted outside the allowed serviceUrl hosts"
                )
            return await self._hosted(url, max_bytes)
        link = await self._links.lookup(url)
        if link is None:
            raise PermanentDeliveryError("Teams gave the bot no download link for this file")
        return await self._linked(link, max_bytes)

    async def _hosted(self, url: str, max_bytes: int) -> bytes:
        token = await self._tokens.token()
        for attempt in range(2):
            headers = {"Authorization": f"Bearer {token}"}
            status, data = await self._fetch(URL(url, encoded=True), headers, max_bytes)
            if (
                status == 401
                and attempt == 0
                and isinstance(self._tokens, InvalidatingTokenProvider)
            ):
                self._tokens.invalidate()
                token = await self._tokens.token()
                continue
            return _checked(status, data, "hosted content")
        raise PermanentDeliveryError("hosted content: the bot's token was refused")

    async def _linked(self, link: str, max_bytes: int) -> bytes:
        url = URL(link, encoded=True)
        for _ in range(MAX_REDIRECTS + 1):
            status, data = await self._fetch(url, {}, max_bytes)
            if status not in (301, 302, 303, 307, 308):
                return _checked(status, data, "file download")
            location = data.decode("utf-8", "replace")
            url = url.join(URL(location, encoded=True))
            if not fetchable(str(url)):
                raise PermanentDeliveryError("file download: redirected to a refused address")
        raise PermanentDeliveryError("file download: too many redirects")

    async def _fetch(self, url: URL, headers: dict[str, str], max_bytes: int) -> tuple[int, bytes]:
        """(status, body) of a GET; a redirect's body is its ``Location``."""
        try:
            async with self._session.get(
                url, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.status in (301, 302, 303, 307, 308):
                    return response.status, response.headers.get("Location", "").encode()
                if response.status == 429 or response.status >= 500:
                    raise RetryableDeliveryError(
                        f"Teams media download: HTTP {response.status}",
                        retry_after=_seconds(response.headers.get("Retry-After")),
                    )
                if response.status != 200:
                    return response.status, b""
                declared = response.content_length
                if declared is not None and declared > max_bytes:
                    raise MediaTooLargeError(size=declared, limit=max_bytes)
                chunks: list[bytes] = []
                received = 0
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    received += len(chunk)
                    if received > max_bytes:
                        raise MediaTooLargeError(size=None, limit=max_bytes)
                    chunks.append(chunk)
                return 200, b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryableDeliveryError(
                f"Teams media download failed: {type(exc).__name__}"
            ) from exc


def _checked(status: int, data: bytes, what: str) -> bytes:
    if status == 200:
        log.info("teams_media_downloaded", size=len(data))
        return data
    raise PermanentDeliveryError(f"{what}: HTTP {status}")


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _digest(content_url: str) -> str:
    return hashlib.sha256(content_url.encode()).hexdigest()
