"""Carried files in Teams messages: images as activity attachments, other files as links."""

from __future__ import annotations

from dataclasses import replace

from adapters.teams.render import activity, render, split
from bridge.model import Attachment, Body, TimelineEvent
from tests.support.fakes import EventBuilder, FakeClock

SERVED = "https://bridge.example/media/AbC"


def event(body: Body) -> TimelineEvent:
    return replace(EventBuilder(FakeClock()).message(body.text), body=body)


def image(url: str = SERVED) -> Attachment:
    return Attachment(name="graph.png", mime_type="image/png", url=url, is_image=True)


def test_an_image_goes_as_an_attachment_and_its_file_name_is_not_repeated() -> None:
    line = render(event(Body(text="graph.png", attachments=(image(),))))
    assert line.html == "<b>Alice</b> <i>(Matrix)</i>: "
    payload = activity(line.content())
    assert payload["attachments"] == [
        {"contentType": "image/png", "contentUrl": SERVED, "name": "graph.png"}
    ]


def test_a_caption_stays_and_only_fetchable_images_are_attached() -> None:
    local = image("http://127.0.0.1:8080/media/AbC")
    plain_http = image("http://bridge.example/media/AbC")
    matrix = image("mxc://hs/abc")
    line = render(event(Body(text="before and after", attachments=(local, plain_http, matrix))))
    assert [a.content_url for a in line.attachments] == [local.url]
    assert line.body == "before and after<br>[file] graph.png<br>[file] graph.png"


def test_other_files_are_links_and_a_split_message_carries_images_once() -> None:
    report = Attachment(name="report.pdf", mime_type="application/pdf", url=SERVED)
    line = render(event(Body(text="report.pdf", attachments=(report,))))
    assert line.body == f'<a href="{SERVED}">[file] report.pdf</a>'
    assert line.attachments == ()
    long = render(event(Body(text="x " * 60_000, attachments=(image(),))))
    parts = split(long, max_bytes=40_000)
    assert len(parts) > 1
    assert [len(p.attachments) for p in parts] == [1] + [0] * (len(parts) - 1)
