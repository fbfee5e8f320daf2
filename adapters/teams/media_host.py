"""Files from Matrix, served to Teams by the bridge: ``GET /media/{token}``.

A bot cannot upload a file into a channel, so a carried file stays with the
bridge and the Teams message points at it: an image as an activity attachment
(``contentType`` image/..., ``contentUrl``), which Teams fetches and shows; any
other file as a link. ``upload`` stores the bytes in the StateStore (namespace
``teams_media`` for the description, ``teams_media_chunks`` for the bytes in
pieces well under MongoDB's document limit) under a random 256-bit token and
answers ``{http.public_url}/media/{token}``.

Trade-offs, by design:

- The token is the only key: whoever has the URL can fetch the file, as with
  Teams' and SharePoint's own pre-authenticated links. It is never logged.
- Files are capped (``MAX_MEDIA_BYTES``) and kept as long as the messages that
  show them; nothing expires them yet.
- Only common raster images are served inline with their type; everything else
  (SVG and HTML included) goes as ``application/octet-stream``, as a download,
  with ``nosniff`` and a sandboxing content security policy: a served file can
  never run script in the bridge's origin.
- ``public_url`` must be reachable by Teams (https in production).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import replace
from typing import Final
from urllib.parse import quote

import structlog
from aiohttp import web

from bridge.errors import MediaTooLargeError, RetryableDeliveryError, StoreError
from bridge.model import Attachment
from bridge.ports import Clock, StateStore

log = structlog.get_logger(__name__)

MEDIA_NAMESPACE: Final = "teams_media"
CHUNK_NAMESPACE: Final = "teams_media_chunks"
MEDIA_PATH: Final = "/media/{token}"
MAX_MEDIA_BYTES: Final = 25 * 1024 * 1024
CHUNK_BYTES: Final = 1024 * 1024
INLINE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"})
_TOKEN: Final = re.compile(r"^[A-Za-z0-9_-]{43}$")
_SAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._ -]")
_SECURITY_HEADERS: Final = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'none'; sandbox"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "private, max-age=86400"),
)


class MediaHost:
    """Stores carried files and serves them by token (see the module doc)."""

    def __init__(
        self,
        *,
        state: StateStore,
        public_url: str,
        clock: Clock,
        max_bytes: int = MAX_MEDIA_BYTES,
    ) -> None:
        self._state = state
        self._base = public_url.rstrip("/")
        self._clock = clock
        self.max_bytes = max_bytes

    def routes(self) -> list[web.RouteDef]:
        return [web.get(MEDIA_PATH, self.serve)]

    async def upload(self, data: bytes, attachment: Attachment) -> Attachment:
        if len(data) > self.max_bytes:
            raise MediaTooLargeError(size=len(data), limit=self.max_bytes)
        token = secrets.token_urlsafe(32)
        pieces = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
        try:
            for index, piece in enumerate(pieces):
                await self._state.put(CHUNK_NAMESPACE, f"{token}:{index}", {"data": piece})
            await self._state.put(
                MEDIA_NAMESPACE,
                token,
                {
                    "name": attachment.name or "file",
                    "mime_type": attachment.mime_type or "application/octet-stream",
                    "size": len(data),
                    "chunks": len(pieces),
                    "stored_at": self._clock.now(),
                },
            )
        except StoreError as exc:
            raise RetryableDeliveryError(f"the file could not be stored: {exc}") from exc
        log.info("teams_media_stored", size=len(data), chunks=len(pieces))
        return replace(attachment, url=f"{self._base}/media/{token}", size=len(data))

    async def serve(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        if _TOKEN.match(token) is None:
            raise web.HTTPNotFound
        try:
            described = await self._state.get(MEDIA_NAMESPACE, token)
        except StoreError:
            raise web.HTTPServiceUnavailable(headers={"Retry-After": "5"}) from None
        if described is None:
            raise web.HTTPNotFound
        mime = str(described.get("mime_type", ""))
        inline = mime in INLINE_TYPES
        name = _SAFE_NAME.sub("_", str(described.get("name", "file")))[:200] or "file"
        disposition = "inline" if inline else "attachment"
        response = web.StreamResponse(
            headers={
                **dict(_SECURITY_HEADERS),
                "Content-Type": mime if inline else "application/octet-stream",
                "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(name)}",
            }
        )
        response.content_length = int(described.get("size", 0))
        await response.prepare(request)
        if request.method != "HEAD":
            for index in range(int(described.get("chunks", 0))):
                piece = await self._state.get(CHUNK_NAMESPACE, f"{token}:{index}")
                if piece is None:
                    log.warning("teams_media_chunk_missing", chunk=index)
                    break
                await response.write(bytes(piece.get("data", b"")))
        await response.write_eof()
        return response
