"""Authenticated media downloads from the homeserver, streamed and capped."""

from __future__ import annotations

import json
from typing import Final, Protocol

import aiohttp

from adapters.matrix.client import (
    CLIENT_V1,
    MatrixRequestError,
    MatrixUnavailableError,
    path,
)
from bridge.errors import MediaTooLargeError

DOWNLOAD_CHUNK_BYTES: Final = 64 * 1024


class MediaFetcher(Protocol):
    """Where media bytes come from (``MatrixMediaDownloader``; a fake in unit tests)."""

    async def fetch(self, server_name: str, media_id: str, *, max_bytes: int) -> bytes: ...


class MatrixMediaDownloader:
    """Authenticated media downloads (``/_matrix/client/v1/media``), streamed and capped.

    ``MatrixClient`` reads JSON only; media bytes are fetched here with the
    AS token in the ``Authorization`` header. Rate limits, server errors and
    lost connections raise ``MatrixUnavailableError`` (retryable) without
    retrying here; other refusals raise ``MatrixRequestError``.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        as_token: str,
        timeout_s: float = 120.0,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {as_token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def fetch(self, server_name: str, media_id: str, *, max_bytes: int) -> bytes:
        url = self._base + path(CLIENT_V1, "media", "download", server_name, media_id)
        try:
            async with self._session.get(
                url, headers=self._auth, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.status != 200:
                    raise await _media_error(response)
                declared = response.content_length
                if declared is not None and declared > max_bytes:
                    raise _too_large(max_bytes, declared)
                chunks: list[bytes] = []
                received = 0
                async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK_BYTES):
                    received += len(chunk)
                    if received > max_bytes:
                        raise _too_large(max_bytes, None)
                    chunks.append(chunk)
                return b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MatrixUnavailableError(f"media download failed: {type(exc).__name__}") from exc


def _too_large(max_bytes: int, declared: int | None) -> MediaTooLargeError:
    return MediaTooLargeError(size=declared, limit=max_bytes)


async def _media_error(response: aiohttp.ClientResponse) -> Exception:
    raw = await response.content.read(4096)
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    errcode = str(body.get("errcode", "M_UNKNOWN"))
    if response.status == 429 or response.status >= 500:
        header = response.headers.get("Retry-After")
        retry_after = float(header) if header is not None and header.isdigit() else None
        return MatrixUnavailableError(
            f"media download: {response.status} {errcode}", retry_after=retry_after
        )
    return MatrixRequestError(response.status, errcode, str(body.get("error", ""))[:300])
