"""The incident chart: bands, bars, markers and legend, as SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import timedelta

from bridge.incidents.model import Status
from bridge.model import Kind
from bridge.web.chart import MAX_BUCKETS, MarkerKind, chart_data, describe, incident_chart
from tests.support.fakes import EPOCH
from tests.unit.web.builders import BRIDGE, TimelineWriter, make_incident, seed_incident
from tests.unit.web.conftest import WebEnv

SVG = "{http://www.w3.org/2000/svg}"


def test_chart_without_events() -> None:
    incident = make_incident()
    now = EPOCH + timedelta(minutes=2)
    svg = incident_chart(incident, [], now=now)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert root.attrib["role"] == "img"
    assert root.find(f"{SVG}title") is not None
    data = chart_data(incident, [], now=now)
    assert [p.status for p in data.phases] == [Status.INVESTIGATING]
    assert data.end - data.start == timedelta(minutes=5)
    assert data.totals == (0, 0)
    assert data.markers == ()
    assert "no messages yet" in svg
    for label in ("investigating", "resolved", "Teams messages", "Matrix messages", "key event"):
        assert label in svg, label


async def test_chart_with_events(env: WebEnv) -> None:
    incident = await seed_incident(env.incidents, env.timeline, events=300)
    events = (await env.timeline.timeline(incident_id=incident.id, limit=300)).events
    data = chart_data(incident, events, now=EPOCH + timedelta(days=1))
    assert [p.status for p in data.phases] == [
        Status.INVESTIGATING,
        Status.IDENTIFIED,
        Status.MONITORING,
        Status.RESOLVED,
    ]
    assert data.phases[0].start == incident.declared_at
    assert all(a.end == b.start for a, b in zip(data.phases, data.phases[1:], strict=False))
    messages = [e for e in events if e.kind.value == "message"]
    teams = sum(1 for e in messages if e.origin.platform.value == "teams")
    assert data.totals == (teams, len(messages) - teams)
    assert data.bucket_s == 60
    assert len(data.buckets) <= MAX_BUCKETS
    kinds = {m.kind for m in data.markers}
    assert kinds == {MarkerKind.KEY_EVENT, MarkerKind.RUNBOOK}
    svg = incident_chart(incident, events, now=EPOCH + timedelta(days=1))
    root = ET.fromstring(svg)
    rects = root.findall(f".//{SVG}rect")
    assert len(rects) > 20
    desc = root.find(f"{SVG}desc")
    assert desc is not None
    assert desc.text == describe(data)
    assert f"{teams} from Teams" in desc.text


async def test_long_incidents_use_wider_buckets(env: WebEnv) -> None:
    incident = make_incident(resolved_at=EPOCH + timedelta(hours=30), status=Status.RESOLVED)
    data = chart_data(incident, [], now=EPOCH + timedelta(days=3))
    assert data.end >= EPOCH + timedelta(hours=30)
    assert len(data.buckets) <= MAX_BUCKETS
    assert data.bucket_s > 60
    ET.fromstring(incident_chart(incident, [], now=EPOCH + timedelta(days=3)))


async def test_a_run_counts_once_however_many_steps_it_has(env: WebEnv) -> None:
    incident = make_incident()
    writer = TimelineWriter(env.timeline, incident.id)
    for run_id, steps in (("R-1", RUN_STEPS), ("R-2", RUN_STEPS[:2])):
        for step in steps:
            await writer.add(
                Kind.RUNBOOK,
                BRIDGE,
                f"{run_id}: {step}",
                data={"step": step, "run_id": run_id, "runbook": "restart-payments"},
            )
    events = (await env.timeline.timeline(incident_id=incident.id, limit=50)).events
    data = chart_data(incident, events, now=EPOCH + timedelta(hours=1))
    assert len(data.markers) == len(RUN_STEPS) + 2  # a marker per step
    assert describe(data).endswith("0 key events, 2 runbook runs.")


RUN_STEPS = ("requested", "approved", "started", "output", "finished")
