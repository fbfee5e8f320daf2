"""Media across the bridge: files and images fetched on one platform, put on the other.

A message bound for the other platform keeps its attachments only if they are
carried: each one is downloaded through the origin platform's adapter
(``SupportsMedia.download``, capped at what the target accepts) and uploaded
through the target's (``SupportsMedia.upload``), and the message goes out with
the carried attachments (a Matrix ``mxc://`` URI, a URL the bridge serves to Teams).

An attachment that cannot be carried (larger than the target accepts, refused by
either side, or a platform without media) is never dropped silently: the message
goes out with a visible line in its place, e.g. ``📎 report.pdf (12 MB) could not
be carried: larger than 10 MB``, and ``media_not_carried`` is logged. A failure
that may pass (a rate limit, a server error, a lost connection) is raised, so
the outbox retries the whole message later, in order.

What was uploaded for a delivery is remembered (bounded, in memory) by the
delivery's idempotency key, so a retry in the same process does not upload the
same file again.
"""

from __future__ import annotations

import html
import mimetypes
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

import structlog

from bridge.errors import MediaTooLargeError, PermanentDeliveryError
from bridge.model import Attachment, Body, Platform, TimelineEvent
from bridge.ports import ChatAdapter, SupportsMedia

log = structlog.get_logger(__name__)

NOT_CARRIED_MARK: Final = "📎"
CACHE_SIZE: Final = 256
_IMAGE_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)
_VAGUE_TYPES: Final = frozenset({"", "application/octet-stream", "binary/octet-stream"})


@dataclass(frozen=True, slots=True, kw_only=True)
class NotCarried:
    """An attachment left behind, and why (for the visible line)."""

    attachment: Attachment
    reason: str
    size: int | None = None

    def line(self) -> str:
        size = self.size if self.size is not None else self.attachment.size
        shown = f" ({format_size(size)})" if size is not None else ""
        name = self.attachment.name or "file"
        return f"{NOT_CARRIED_MARK} {name}{shown} could not be carried: {self.reason}"


def format_size(size: int) -> str:
    """A size as people read it: ``512 bytes``, ``12 KB``, ``3.4 MB``, ``12 MB``."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{round(size / 1024)} KB"
    megabytes = size / (1024 * 1024)
    return f"{megabytes:.1f} MB" if megabytes < 10 else f"{round(megabytes)} MB"


def sniff_image_type(data: bytes) -> str | None:
    """The MIME type of common image formats, from their first bytes."""
    for signature, mime in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def with_known_type(attachment: Attachment, data: bytes) -> Attachment:
    """``attachment`` with a concrete MIME type (``image/*`` as sent by Teams is not one)
    and a file name that says it, as the target platform needs both."""
    mime = attachment.mime_type
    if mime.endswith("/*") or mime in _VAGUE_TYPES:
        sniffed = sniff_image_type(data)
        if sniffed is not None:
            mime = sniffed
        elif mime.endswith("/*") or not mime:
            mime = "application/octet-stream"
    name = attachment.name or "file"
    if "." not in name and mime not in _VAGUE_TYPES:
        extension = mimetypes.guess_extension(mime, strict=False)
        if extension:
            name += extension
    is_image = attachment.is_image or mime.startswith("image/")
    return replace(attachment, mime_type=mime, name=name, size=len(data), is_image=is_image)


def with_notices(body: Body, carried: tuple[Attachment, ...], left: list[NotCarried]) -> Body:
    """``body`` with the carried attachments, and a visible line for each one left behind."""
    if not left:
        return replace(body, attachments=carried)
    lines = [item.line() for item in left]
    text = "\n".join([body.text, *lines]) if body.text else "\n".join(lines)
    body_html = body.html
    if body_html is not None:
        body_html += "".join(f"<br>{html.escape(line, quote=False)}" for line in lines)
    return replace(body, text=text, html=body_html, attachments=carried)


class MediaCarrier:
    """Carries the attachments of one event to one target platform (see the module doc)."""

    def __init__(
        self, *, adapters: Mapping[Platform, ChatAdapter], cache_size: int = CACHE_SIZE
    ) -> None:
        self._adapters = adapters
        self._cache_size = cache_size
        self._carried: OrderedDict[tuple[str, int, str], Attachment] = OrderedDict()

    async def carry(self, event: TimelineEvent, target: ChatAdapter, key: str) -> TimelineEvent:
        """``event`` as it can be sent through ``target``: attachments carried or noted."""
        attachments = event.body.attachments
        if not attachments or event.origin.platform is target.platform:
            return event
        carried: list[Attachment] = []
        left: list[NotCarried] = []
        for index, attachment in enumerate(attachments):
            outcome = await self._carry_one(event, attachment, target, (key, index, attachment.url))
            if isinstance(outcome, NotCarried):
                left.append(outcome)
                log.warning(
                    "media_not_carried",
                    event_id=event.id,
                    target=target.platform.value,
                    reason=outcome.reason,
                    size=outcome.size,
                )
            else:
                carried.append(outcome)
        return replace(event, body=with_notices(event.body, tuple(carried), left))

    async def _carry_one(
        self,
        event: TimelineEvent,
        attachment: Attachment,
        target: ChatAdapter,
        cache_key: tuple[str, int, str],
    ) -> Attachment | NotCarried:
        done = self._carried.get(cache_key)
        if done is not None:
            return done
        origin = self._adapters.get(event.origin.platform)
        if not isinstance(origin, SupportsMedia) or not attachment.url:
            return NotCarried(
                attachment=attachment, reason=f"{_label(event.origin.platform)} offers no download"
            )
        if not isinstance(target, SupportsMedia):
            return NotCarried(
                attachment=attachment, reason=f"{_label(target.platform)} takes no files"
            )
        limit = target.max_media_bytes
        if attachment.size is not None and attachment.size > limit:
            return _too_large(attachment, MediaTooLargeError(size=attachment.size, limit=limit))
        try:
            data = await origin.download(attachment, max_bytes=limit)
        except MediaTooLargeError as exc:
            return _too_large(attachment, exc)
        except PermanentDeliveryError as exc:
            return NotCarried(attachment=attachment, reason=f"the download was refused ({exc})")
        if len(data) > limit:  # an adapter that read past the cap
            return _too_large(attachment, MediaTooLargeError(size=len(data), limit=limit))
        try:
            uploaded = await target.upload(data, with_known_type(attachment, data))
        except MediaTooLargeError as exc:
            return _too_large(attachment, exc)
        except PermanentDeliveryError as exc:
            return NotCarried(attachment=attachment, reason=f"the upload was refused ({exc})")
        self._remember(cache_key, uploaded)
        log.info("media_carried", event_id=event.id, size=len(data), target=target.platform.value)
        return uploaded

    def _remember(self, cache_key: tuple[str, int, str], attachment: Attachment) -> None:
        self._carried[cache_key] = attachment
        self._carried.move_to_end(cache_key)
        while len(self._carried) > self._cache_size:
            self._carried.popitem(last=False)


def _too_large(attachment: Attachment, exc: MediaTooLargeError) -> NotCarried:
    return NotCarried(
        attachment=attachment, reason=f"larger than {format_size(exc.limit)}", size=exc.size
    )


def _label(platform: Platform) -> str:
    return {Platform.MATRIX: "Matrix", Platform.TEAMS: "Teams"}.get(platform, platform.value)
