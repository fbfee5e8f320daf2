"""Structured logging with structlog.

One call configures both structlog and the standard library (aiohttp,
pymongo and the SDKs log through it), so every line has one format: JSON
when asked for or when stderr is not a terminal, readable otherwise. Context
(incident, event, platform, room) is bound with ``structlog.contextvars``.

A redaction step runs last before rendering: values under secret-looking keys
are replaced, and credentials inside URLs are masked, so no secret reaches a
log line even when a caller passes one by mistake.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"(token|secret|password|passwd|authorization|api[_-]?key|credential|private[_-]?key|cookie)",
    re.IGNORECASE,
)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]+(:[^/@\s]*)?@", re.I)
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def scrub_text(text: str) -> str:
    """Mask credentials in free text: ``user:pass@`` in URLs and bearer tokens."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    return _BEARER.sub(r"\1" + REDACTED, text)


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 5:
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v, depth + 1) for v in value]
    return value


def redact_secrets(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: no secret values in any log line."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(value)
    return event_dict


def configure_logging(*, fmt: str, level: str, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library; call once, from the entry point."""
    stream = stream if stream is not None else sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer()
        final: list[Processor] = [structlog.processors.format_exc_info, redact_secrets, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        final = [redact_secrets, renderer]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty libraries stay at warning unless debugging.
    for noisy in ("pymongo", "aiohttp.access", "mautrix", "msal", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def context_snapshot() -> MutableMapping[str, Any]:
    """The context currently bound through contextvars (for tests and error reports)."""
    return structlog.contextvars.get_contextvars()
