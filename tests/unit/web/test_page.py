"""The incident page: access, escaping, structure, paging through long timelines."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from html.parser import HTMLParser

import pytest

from bridge.incidents.model import Action, ActionItem, IncidentChange
from bridge.model import (
    IncidentID,
    Kind,
    MirrorStatus,
    Platform,
    RelationKind,
    RemoteUserID,
    Sender,
)
from bridge.web.auth import page_key
from bridge.web.page import load_events
from bridge.web.page_html import render_page
from tests.unit.web.builders import (
    ALICE,
    BRIDGE,
    LATE_TEXT,
    TimelineWriter,
    make_incident,
    relation_to,
    seed_incident,
)
from tests.unit.web.conftest import AUTH, TOKEN, ClientFactory, WebEnv

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>&amp;"\''
EVIL = Sender(
    platform=Platform.TEAMS,
    user_id=RemoteUserID("aad-evil"),
    display_name='<b onmouseover="steal()">Mallory</b>',
)


def key_for(incident_id: str) -> str:
    return page_key(TOKEN, IncidentID(incident_id))


class _Structure(HTMLParser):
    """Tags, attributes and text of a page, and whether any tag was left open."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> _Structure:
    parser = _Structure()
    parser.feed(html)
    parser.close()
    return parser


async def test_page_with_signed_link(env: WebEnv, client_for: ClientFactory) -> None:
    await seed_incident(env.incidents, env.timeline, events=60)
    async with client_for() as client:
        response = await client.get(f"/incidents/INC-1?key={key_for('INC-1')}")
        html = await response.text()
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert LATE_TEXT in html
    assert "Checkout errors" in html


async def test_page_with_bearer_token(env: WebEnv, client_for: ClientFactory) -> None:
    await seed_incident(env.incidents, env.timeline, events=10)
    async with client_for() as client:
        response = await client.get("/incidents/INC-1", headers=AUTH)
    assert response.status == 200


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("", {}),
        ("?key=", {}),
        ("?key=0123abcd", {}),
        (f"?key={page_key(TOKEN, IncidentID('INC-2'))}", {}),
        (f"?key={page_key('another-token', IncidentID('INC-1'))}", {}),
        ("", {"Authorization": "Bearer nope"}),
        ("?key=wrong", AUTH),
    ],
    ids=[
        "none",
        "empty-key",
        "bad-key",
        "other-incident",
        "other-token",
        "bad-bearer",
        "bad-key+bearer",
    ],
)
async def test_page_refused_without_access(
    env: WebEnv, client_for: ClientFactory, query: str, headers: dict[str, str]
) -> None:
    await seed_incident(env.incidents, env.timeline, events=10)
    async with client_for() as client:
        response = await client.get(f"/incidents/INC-1{query}", headers=headers)
        html = await response.text()
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Checkout" not in html
    assert "message" not in html


async def test_page_503_without_a_token(env: WebEnv, client_for: ClientFactory) -> None:
    await seed_incident(env.incidents, env.timeline, events=10)
    async with client_for(token=None) as client:
        response = await client.get(f"/incidents/INC-1?key={key_for('INC-1')}")
        html = await response.text()
    assert response.status == 503
    assert "api.token" in html
    assert "Checkout" not in html


async def test_unknown_incident_404(client_for: ClientFactory) -> None:
    async with client_for() as client:
        response = await client.get(f"/incidents/INC-9?key={key_for('INC-9')}")
    assert response.status == 404


async def test_hostile_text_is_escaped(env: WebEnv, client_for: ClientFactory) -> None:
    incident = replace(
        make_incident("INC-1", title=HOSTILE),
        summary=HOSTILE,
        impact={HOSTILE: HOSTILE},
        action_items=(ActionItem(text=HOSTILE, by=EVIL, at=make_incident().declared_at),),
        roles={},
    )
    await env.incidents.create(incident)
    writer = TimelineWriter(env.timeline, incident.id)
    message = await writer.add(Kind.MESSAGE, EVIL, HOSTILE)
    await writer.deliver(message, MirrorStatus.FAILED, error=HOSTILE)
    await writer.add(
        Kind.EDIT, EVIL, HOSTILE + " v2", relations=(relation_to(RelationKind.EDIT, message),)
    )
    await writer.add(
        Kind.REACTION,
        ALICE,
        HOSTILE,
        relations=(relation_to(RelationKind.REACTION, message, HOSTILE),),
    )
    await writer.add(
        Kind.RUNBOOK,
        BRIDGE,
        HOSTILE,
        data={"step": "finished", "run_id": HOSTILE, "runbook": HOSTILE, "state": HOSTILE},
    )
    await writer.change(
        EVIL, IncidentChange(action=Action.KEY_EVENT, incident_id=incident.id, text=HOSTILE)
    )
    async with client_for() as client:
        response = await client.get(f"/incidents/INC-1?key={key_for('INC-1')}")
        html = await response.text()
    assert response.status == 200
    structure = parse(html)
    tags = {tag for tag, _attrs in structure.tags}
    assert "script" not in tags
    assert "img" not in tags
    assert "b" not in tags
    assert not any(name.startswith("on") for _tag, attrs in structure.tags for name in attrs), (
        "an event handler attribute came through"
    )
    assert "&lt;script&gt;" in html
    text = "".join(structure.text)
    assert HOSTILE in text  # shown as text, exactly as written
    assert '<b onmouseover="steal()">Mallory</b>' in text


async def test_a_runbook_step_links_to_the_runs_output(
    env: WebEnv, client_for: ClientFactory
) -> None:
    incident = await seed_incident(env.incidents, env.timeline, events=0)
    writer = TimelineWriter(env.timeline, incident.id)
    await writer.add(
        Kind.RUNBOOK,
        BRIDGE,
        "restart-payments succeeded",
        data={"step": "finished", "run_id": "R-7", "runbook": "restart-payments",
              "state": "succeeded"},
    )  # fmt: skip
    async with client_for() as client:
        response = await client.get(f"/incidents/{incident.id}?key={key_for(incident.id)}")
        html = await response.text()
    assert response.status == 200
    assert "State: succeeded" in html
    assert f'href="/api/v1/runs/R-7?key={key_for(incident.id)}"' in html


async def test_page_structure_is_accessible(env: WebEnv) -> None:
    incident = await seed_incident(env.incidents, env.timeline, events=80)
    events, truncated = await load_events(env.timeline, incident.id)
    html = render_page(incident, events, truncated=truncated, now=env.clock.now())
    structure = parse(html)
    tags = [tag for tag, _attrs in structure.tags]
    assert html.startswith("<!DOCTYPE html>")
    assert ("html", {"lang": "en"}) in structure.tags
    assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) in (
        structure.tags
    )
    for landmark in ("header", "main", "footer"):
        assert tags.count(landmark) == 1, landmark
    headings = [int(t[1]) for t in tags if re.fullmatch(r"h[1-6]", t)]
    assert headings[0] == 1
    assert headings.count(1) == 1
    assert all(b - a <= 1 for a, b in itertools.pairwise(headings)), headings
    svg = next(attrs for tag, attrs in structure.tags if tag == "svg")
    assert svg["role"] == "img"
    assert svg["aria-labelledby"] == "chart-title chart-desc"
    assert "th" in tags
    assert any(attrs.get("scope") == "row" for _t, attrs in structure.tags)
    assert not any(
        (attrs.get(name) or "").startswith(("http:", "https:", "//"))
        for _tag, attrs in structure.tags
        for name in ("src", "href")
        if attrs.get(name)
    ), "the page refers to an external resource"
    assert "Key event" in html
    assert "runbook run" in html
    assert "→ Teams: failed" in html
    assert "→ Matrix: sent" in html
    assert "Message deleted by" in html
    assert "edited" in html


async def test_long_timelines_are_read_in_pages_and_capped(env: WebEnv) -> None:
    incident = await seed_incident(env.incidents, env.timeline, events=1200)
    events, truncated = await load_events(env.timeline, incident.id, max_events=1000)
    assert len(events) == 1000
    assert truncated
    everything, more = await load_events(env.timeline, incident.id)
    assert len(everything) == 1200
    assert not more
    assert everything[-1].body.text == LATE_TEXT
    html = render_page(incident, events, truncated=True, now=env.clock.now())
    assert "Showing the first 1,000 events of this incident" in html


async def test_incident_without_events(env: WebEnv, client_for: ClientFactory) -> None:
    await env.incidents.create(make_incident("INC-5"))
    async with client_for() as client:
        response = await client.get(f"/incidents/INC-5?key={key_for('INC-5')}")
        html = await response.text()
    assert response.status == 200
    assert "No events yet." in html
    assert "no messages yet" in html
