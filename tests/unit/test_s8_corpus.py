"""S8: hostile HTML both ways through the real conversions; only the allow-list comes out.

Teams -> Matrix: the payload as the ``text/html`` twin of a Teams message, through
the Teams adapter's conversion and the Matrix content builder. Matrix -> Teams: the
payload as a ``formatted_body``, through the Matrix adapter's conversion and the
Teams renderer. The checks (``tests.support.xss_corpus``): each output is parsed
with ``html.parser`` (an independent reader) and checked tag by tag and attribute
by attribute against allow-lists written out there rather than imported; no
payload's ``forbidden`` string may appear anywhere in what is sent; and the
payload's visible text must be found, piece by piece and in order, in the
output's text.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

import pytest

from adapters.matrix.content import message_parts
from adapters.matrix.convert import convert_event
from adapters.matrix.ids import GhostNamespace
from adapters.teams.activity import parse_activity
from adapters.teams.convert import ActivityConverter
from adapters.teams.render import activity, render
from bridge.errors import PermanentDeliveryError
from bridge.formatting import ALLOWED_TAGS
from tests.support.fakes import EventBuilder, FakeClock
from tests.support.xss_corpus import (
    EVENT_HANDLERS,
    MATRIX_TAGS,
    TEAMS_TAGS,
    Payload,
    assert_allowed,
    assert_nothing_forbidden,
    assert_text_kept,
    corpus,
    squash,
    visible_text,
)
from tests.unit.teams import support as s

NS = GhostNamespace(prefix="teams_", server_name="example.org", bot_localpart="bridge")
PAYLOADS: Final = corpus()

# -- the two directions ------------------------------------------------------------------


def teams_message(html: str | None, text: str = "(plain twin)") -> dict[str, Any]:
    document = s.base_activity("message", activity_id="1730462400777")
    document["text"] = text
    document["textFormat"] = "plain"
    document["attachments"] = (
        [{"contentType": "text/html", "content": html}] if html is not None else []
    )
    return document


def teams_to_matrix(document: dict[str, Any]) -> list[dict[str, Any]] | None:
    converter = ActivityConverter(app_id=s.APP_ID, clock=FakeClock())
    (event,) = converter.convert(parse_activity(document))
    try:
        return message_parts(event.body, [])
    except PermanentDeliveryError:
        return None  # nothing to send: no text and no media


def matrix_to_teams(content: dict[str, Any]) -> dict[str, Any]:
    event = {
        "type": "m.room.message",
        "room_id": "!ops:example.org",
        "event_id": "$hostile",
        "sender": "@mallory:example.org",
        "origin_server_ts": 1_793_351_742_123,
        "content": content,
    }
    inbound = convert_event(event, namespace=NS, display_name="Mallory")
    assert inbound is not None
    timeline_event = replace(
        EventBuilder(FakeClock()).message(), body=inbound.body, sender=inbound.sender
    )
    return activity(render(timeline_event).content())


@pytest.mark.parametrize("payload", PAYLOADS, ids=[p.name for p in PAYLOADS])
def test_teams_html_reaches_matrix_sanitized(payload: Payload) -> None:
    parts = teams_to_matrix(teams_message(payload.html))
    if parts is None:
        assert not payload.check_text or visible_text(payload.html) == []
        return
    assert_nothing_forbidden(payload, parts)
    content = parts[0]
    text = content["body"]
    assert isinstance(text, str)
    if "formatted_body" in content:
        assert content["format"] == "org.matrix.custom.html"
        reading = assert_allowed(content["formatted_body"], MATRIX_TAGS)
        if payload.check_text:
            assert_text_kept(payload, "".join(reading.text))
    if payload.check_text:
        assert_text_kept(payload, text)


@pytest.mark.parametrize("payload", PAYLOADS, ids=[p.name for p in PAYLOADS])
def test_matrix_html_reaches_teams_sanitized(payload: Payload) -> None:
    sent = matrix_to_teams(
        {
            "msgtype": "m.text",
            "body": "plain fallback",
            "format": "org.matrix.custom.html",
            "formatted_body": payload.html,
        }
    )
    assert_nothing_forbidden(payload, sent)
    assert sent["textFormat"] == "xml"
    reading = assert_allowed(sent["text"], TEAMS_TAGS)
    assert "".join(reading.text).startswith("Mallory (Matrix): ")
    if payload.check_text:
        assert_text_kept(payload, "".join(reading.text))
    assert set(sent) <= {"type", "textFormat", "text"}  # no entities, no attachments


@pytest.mark.parametrize("payload", PAYLOADS, ids=[p.name for p in PAYLOADS])
def test_plain_text_stays_text_both_ways(payload: Payload) -> None:
    sent = matrix_to_teams({"msgtype": "m.text", "body": payload.html})
    reading = assert_allowed(sent["text"], frozenset({"b", "i", "br"}))
    shown = "".join(reading.text).removeprefix("Mallory (Matrix): ")
    assert squash(shown) == squash(payload.html.strip().replace("\r", ""))

    parts = teams_to_matrix(teams_message(None, text=payload.html))
    if parts is not None and "formatted_body" in parts[0]:  # "<at" makes Teams text HTML
        assert_allowed(parts[0]["formatted_body"], MATRIX_TAGS)
        assert_nothing_forbidden(payload, parts)


def test_the_corpus_covers_what_s8_names() -> None:
    assert len(PAYLOADS) >= 500
    names = " ".join(p.name for p in PAYLOADS)
    for handler in EVENT_HANDLERS:
        assert f"handler: {handler} on" in names
    for kind in ("url: javascript", "url: vbscript", "url: data", "element: svg", "huge:",
                 "nested:", "curated: meta refresh", "curated: base href", "curated: mx-reply",
                 "curated: nul", "curated: homoglyph", "curated: cdata", "curated: comment",
                 "curated: quote break", "curated: processing instruction"):  # fmt: skip
        assert kind in names, kind


MATRIX_SPEC_TAGS: Final = frozenset(
    {"font", "del", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "p", "a", "ul", "ol",
     "sup", "sub", "li", "b", "i", "u", "strong", "em", "s", "code", "hr", "br", "div",
     "table", "thead", "tbody", "tr", "th", "td", "caption", "pre", "span", "img",
     "details", "summary"}
)  # fmt: skip
"""The tags the Matrix spec lists for ``formatted_body``."""


def test_the_allow_lists_are_within_what_each_platform_renders() -> None:
    assert ALLOWED_TAGS == MATRIX_TAGS
    assert MATRIX_TAGS <= MATRIX_SPEC_TAGS
