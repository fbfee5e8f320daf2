"""Rendering for Teams: attribution, real mentions, size limits."""

from __future__ import annotations

import html
import json
import re
from dataclasses import replace

from adapters.teams.render import (
    Content,
    Line,
    activity,
    activity_size,
    combine,
    encoded_size,
    render,
    serialize,
    split,
    truncate,
)
from bridge.formatting import html_to_text, sanitize_html
from bridge.model import (
    Attachment,
    Body,
    MessageStyle,
    Platform,
    RemoteUserID,
    Sender,
    TimelineEvent,
)
from tests.support.fakes import EventBuilder, FakeClock

BOB = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-bob"), display_name="Bob Jones")
CAROL = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@carol:example.org"), display_name="Carol"
)


def event(body: Body, *, sender: Sender | None = None) -> TimelineEvent:
    built = EventBuilder(FakeClock()).message()
    return replace(built, body=body, sender=sender or built.sender)


def test_a_line_names_its_author_and_platform() -> None:
    line = render(event(Body(text="disk <full> & rising")))
    assert line.html == "<b>Alice</b> <i>(Matrix)</i>: disk &lt;full&gt; &amp; rising"
    payload = activity(line.content())
    assert payload["type"] == "message"
    assert payload["textFormat"] == "xml"
    assert "entities" not in payload


def test_names_are_escaped_and_html_is_sanitised() -> None:
    mallory = Sender(
        platform=Platform.MATRIX,
        user_id=RemoteUserID("@m:x"),
        display_name="<script>x</script>Mallory",
    )
    line = render(
        event(Body(text="", html='<b>hi</b><img src=x onerror="alert(1)">'), sender=mallory)
    )
    assert "<script>" not in line.html
    assert line.author == "&lt;script&gt;x&lt;/script&gt;Mallory"
    assert line.body == "<b>hi</b>"


def test_emotes_read_as_actions() -> None:
    line = render(event(Body(text="waves", style=MessageStyle.EMOTE)))
    assert line.html == "* <b>Alice</b> <i>(Matrix)</i> waves"


def test_a_teams_user_mentioned_by_a_pill_becomes_a_real_mention() -> None:
    body = Body(
        text="Bob Jones: look",
        html='<a href="https://matrix.to/#/@teams_bob:example.org">Bob Jones</a>: look',
        mentions=(BOB, CAROL),
    )
    line = render(event(body))
    assert line.body == "<at>Bob Jones</at>: look"
    entities = activity(line.content())["entities"]
    assert entities == [
        {
            "type": "mention",
            "text": "<at>Bob Jones</at>",
            "mentioned": {"id": "aad-bob", "name": "Bob Jones"},
        }
    ]


def test_a_mention_by_name_in_plain_text_and_one_missing_from_the_text() -> None:
    in_text = render(event(Body(text="ping @Bob Jones please", mentions=(BOB,))))
    assert in_text.body == "ping <at>Bob Jones</at> please"
    absent = render(event(Body(text="ping the on-call", mentions=(BOB,))))
    assert absent.body == "ping the on-call <at>Bob Jones</at>"
    in_code = render(event(Body(text="", html="<code>Bob Jones</code>", mentions=(BOB,))))
    assert in_code.body == "<code>Bob Jones</code> <at>Bob Jones</at>"


def test_attachments_are_listed() -> None:
    files = (
        Attachment(name="log.txt", mime_type="text/plain", url="https://files.example/log.txt"),
        Attachment(name="dump.bin", mime_type="application/octet-stream", url="mxc://x/y"),
    )
    line = render(event(Body(text="see", attachments=files)))
    assert line.body == (
        'see<br><a href="https://files.example/log.txt">[file] log.txt</a><br>[file] dump.bin'
    )


def test_combined_lines_keep_order_attribution_and_every_mention() -> None:
    first = render(event(Body(text="one", mentions=(BOB,))))
    second = render(event(Body(text="two"), sender=CAROL))
    content = combine([first, second])
    assert content.html == (
        "<b>Alice</b> <i>(Matrix)</i>: one <at>Bob Jones</at><br><b>Carol</b> <i>(Matrix)</i>: two"
    )
    assert [m.user_id for m in content.mentions] == ["aad-bob"]


def test_the_size_is_the_size_of_the_bytes_sent() -> None:
    content = Content(html='é "quoted" \\ ' + "€" * 10)
    # "é" is 2 bytes, "€" 3, each quote and the backslash gain an escaping backslash.
    assert encoded_size(content.html) == 2 + 1 + 10 + 1 + 2 + 1 + 3 * 10
    payload = serialize(activity(content))
    assert json.loads(payload)["text"] == content.html
    assert activity_size(content) > len(payload)  # room kept for a replyToId


def _paragraphs(count: int, size: int) -> str:
    return "".join(f"<p>paragraph {n} " + "x" * size + "</p>" for n in range(count))


def test_a_long_message_is_split_in_order_at_element_boundaries() -> None:
    body = Body(
        text="", html=_paragraphs(40, 5000) + "<pre>" + "line &amp; more\n" * 9000 + "</pre>"
    )
    line = render(event(body))
    parts = split(line, max_bytes=80_000)
    assert len(parts) > 3
    for number, part in enumerate(parts, start=1):
        assert activity_size(part) <= 80_000
        assert part.html.startswith(
            f"<b>Alice</b> <i>(Matrix, part {number} of {len(parts)})</i>: "
        )
        assert sanitize_html(part.html) == part.html  # balanced, nothing cut inside a tag
    bodies = [
        re.sub(r"^<b>Alice</b> <i>\(Matrix, part \d+ of \d+\)</i>: ", "", p.html) for p in parts
    ]
    fences = re.compile(r"^```\n", re.MULTILINE)  # a code block split in parts: fenced per part
    assert fences.sub("", html_to_text("".join(bodies))) == fences.sub("", html_to_text(line.body))


def test_a_single_huge_word_is_cut_without_breaking_entities() -> None:
    line = render(event(Body(text="&" * 70_000)))
    parts = split(line, max_bytes=80_000)
    assert len(parts) == 5  # 350 KB of "&amp;"
    assert all(activity_size(p) <= 80_000 for p in parts)
    texts = [p.html.split(": ", 1)[1] for p in parts]
    assert all(not t.endswith("&amp") and not t.startswith("amp;") for t in texts)
    assert html.unescape("".join(texts)) == "&" * 70_000


def test_mentions_go_with_the_part_that_names_them() -> None:
    line = render(event(Body(text="x " * 50_000 + "Bob Jones", mentions=(BOB,))))
    parts = split(line, max_bytes=80_000)
    assert [bool(p.mentions) for p in parts] == [False, True]


def test_a_message_that_fits_is_one_part() -> None:
    line = Line(author="A", platform="Matrix", body="hi")
    assert split(line, max_bytes=80_000) == [line.content()]


def test_truncation_keeps_the_part_count_and_says_so() -> None:
    line = render(event(Body(text="", html=_paragraphs(40, 5000))))
    kept = truncate(line, max_bytes=80_000, parts=1)
    assert len(kept) == 1
    assert kept[0].html.endswith("<i>(truncated: the edit is too long)</i>")
    assert activity_size(kept[0]) <= 80_000


def test_a_name_inside_a_longer_word_is_not_a_mention() -> None:
    line = render(event(Body(text="XBob Jones and Bob Jonesy", mentions=(BOB,))))
    assert line.body == "XBob Jones and Bob Jonesy <at>Bob Jones</at>"
