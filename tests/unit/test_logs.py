from __future__ import annotations

import io
import json
import logging

import structlog

from bridge.logs import configure_logging, scrub_text


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_bound_context_and_no_secrets() -> None:
    stream = io.StringIO()
    configure_logging(fmt="json", level="info", stream=stream)
    log = structlog.get_logger("test")
    structlog.contextvars.bind_contextvars(incident_id="INC-1", platform="matrix")
    try:
        log.info(
            "event_stored",
            hs_token="canary-hs-token",
            uri="mongodb://bridge:canary-password@db:27017/x",
            detail={"access_token": "canary-nested"},
            header="Bearer canary-bearer",
        )
        logging.getLogger("aiohttp.server").warning("from the standard library")
    finally:
        structlog.contextvars.clear_contextvars()
    lines = _json_lines(stream)
    assert lines[0]["event"] == "event_stored"
    assert lines[0]["incident_id"] == "INC-1"
    assert lines[0]["platform"] == "matrix"
    assert lines[0]["level"] == "info"
    assert lines[1]["event"] == "from the standard library"
    assert "canary" not in stream.getvalue()


def test_scrub_text_masks_url_credentials_and_bearer_tokens() -> None:
    assert scrub_text("mongodb://u:p@h:1/db") == "mongodb://***@h:1/db"
    assert "abc" not in scrub_text("Authorization: Bearer abc.def")
    assert scrub_text("plain text") == "plain text"


def test_console_format_is_readable() -> None:
    stream = io.StringIO()
    configure_logging(fmt="console", level="info", stream=stream)
    structlog.get_logger("test").info("hello_world", room="!r:x")
    out = stream.getvalue()
    assert "hello_world" in out
    assert "room" in out
    assert not out.lstrip().startswith("{")
