"""The timeline API: bearer guard, filters, cursor paging, errors, shapes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import jsonschema
import pytest

from bridge.incidents.model import Severity, Status
from bridge.web.openapi import openapi_document
from tests.support.fakes import EPOCH
from tests.unit.web.builders import LATE_TEXT, make_incident, seed_incident
from tests.unit.web.conftest import AUTH, TOKEN, ClientFactory, WebEnv

DATA_ROUTES = (
    "/api/v1/incidents",
    "/api/v1/incidents/INC-1",
    "/api/v1/incidents/INC-1/timeline",
)


def conforms(body: Any, schema_name: str) -> None:
    """``body`` matches the OpenAPI document's schema of that name."""
    document = openapi_document()
    schema = {
        "$ref": f"#/components/schemas/{schema_name}",
        "components": document["components"],
    }
    jsonschema.Draft202012Validator(schema).validate(body)


async def _three_incidents(env: WebEnv) -> None:
    for number, (severity, status, minutes) in enumerate(
        [
            (Severity.SEV1, Status.RESOLVED, 0),
            (Severity.SEV2, Status.INVESTIGATING, 60),
            (Severity.SEV2, Status.MONITORING, 120),
        ],
        start=1,
    ):
        await env.incidents.create(
            make_incident(
                f"INC-{number}",
                severity=severity,
                status=status,
                declared_at=EPOCH + timedelta(minutes=minutes),
            )
        )


@pytest.mark.parametrize("path", DATA_ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
    ],
    ids=["missing", "wrong", "basic", "longer", "empty"],
)
async def test_without_the_token_401_and_no_data(
    env: WebEnv, client_for: ClientFactory, path: str, headers: dict[str, str]
) -> None:
    await seed_incident(env.incidents, env.timeline, events=10)
    async with client_for() as client:
        response = await client.get(path, headers=headers)
        body = await response.json()
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert body == {"error": "a valid bearer token is required"}


async def test_token_in_query_is_not_accepted(env: WebEnv, client_for: ClientFactory) -> None:
    await seed_incident(env.incidents, env.timeline, events=10)
    async with client_for() as client:
        response = await client.get(f"/api/v1/incidents?access_token={TOKEN}")
    assert response.status == 401


@pytest.mark.parametrize("path", DATA_ROUTES)
async def test_without_a_configured_token_503(
    env: WebEnv, client_for: ClientFactory, path: str
) -> None:
    await seed_incident(env.incidents, env.timeline, events=10)
    async with client_for(token=None) as client:
        response = await client.get(path, headers=AUTH)
        body = await response.json()
    assert response.status == 503
    assert body == {"error": "the incident API is not configured: set api.token"}


async def test_token_never_logged(
    env: WebEnv, client_for: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    async with client_for() as client:
        await client.get("/api/v1/incidents", headers={"Authorization": "Bearer guess-1"})
        await client.get("/api/v1/incidents", headers=AUTH)
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    assert "guess-1" not in captured.out + captured.err


async def test_list_is_newest_first_and_conforms(env: WebEnv, client_for: ClientFactory) -> None:
    await _three_incidents(env)
    async with client_for() as client:
        response = await client.get("/api/v1/incidents", headers=AUTH)
        body = await response.json()
    assert response.status == 200
    assert [i["id"] for i in body["incidents"]] == ["INC-3", "INC-2", "INC-1"]
    assert body["next_cursor"] is None
    conforms(body, "IncidentList")
    first = body["incidents"][0]
    assert first["declared_at"] == "2026-11-01T14:00:00.000Z"
    assert first["roles"]["commander"]["user_id"] == "@alice:example.org"
    assert first["links"]["page"] == "/incidents/INC-3"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=resolved", ["INC-1"]),
        ("status=MONITORING", ["INC-3"]),
        ("open=true", ["INC-3", "INC-2"]),
        ("open=false", ["INC-1"]),
        ("severity=sev2", ["INC-3", "INC-2"]),
        ("severity=sev2&status=investigating", ["INC-2"]),
        ("declared_after=2026-11-01T13:00:00Z", ["INC-3", "INC-2"]),
        ("declared_before=2026-11-01T13:30:00%2B00:00", ["INC-2", "INC-1"]),
        (
            "declared_after=2026-11-01T12:30:00Z&declared_before=2026-11-01T13:30:00Z",
            ["INC-2"],
        ),
        ("severity=sev4", []),
    ],
)
async def test_filters(
    env: WebEnv, client_for: ClientFactory, query: str, expected: list[str]
) -> None:
    await _three_incidents(env)
    async with client_for() as client:
        response = await client.get(f"/api/v1/incidents?{query}", headers=AUTH)
        body = await response.json()
    assert response.status == 200, body
    assert [i["id"] for i in body["incidents"]] == expected


async def test_cursor_paging_of_incidents(env: WebEnv, client_for: ClientFactory) -> None:
    for n in range(1, 8):
        await env.incidents.create(
            make_incident(f"INC-{n}", declared_at=EPOCH + timedelta(minutes=n))
        )
    seen: list[str] = []
    async with client_for() as client:
        cursor: str | None = None
        for _page in range(10):
            query = f"limit=3&cursor={cursor}" if cursor else "limit=3"
            body = await (await client.get(f"/api/v1/incidents?{query}", headers=AUTH)).json()
            assert len(body["incidents"]) <= 3
            seen.extend(i["id"] for i in body["incidents"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
    assert seen == [f"INC-{n}" for n in range(7, 0, -1)]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit must be a whole number from 1 to 200"),
        ("limit=201", "limit must be a whole number from 1 to 200"),
        ("limit=ten", "limit must be a whole number from 1 to 200"),
        ("limit=-1", "limit must be a whole number from 1 to 200"),
        ("status=closed", "status must be one of: investigating, identified, monitoring, resolved"),
        ("severity=p1", "severity must be one of: sev1, sev2, sev3, sev4"),
        ("open=yes", "open must be true or false"),
        ("open=true&status=resolved", "open=true contradicts status=resolved"),
        (
            "declared_after=2026-11-01T12:00:00",
            "declared_after must be an ISO 8601 time with a time zone, e.g. 2026-11-01T12:00:00Z",
        ),
        (
            "declared_before=yesterday",
            "declared_before must be an ISO 8601 time with a time zone, e.g. 2026-11-01T12:00:00Z",
        ),
        (
            "declared_after=2026-11-02T00:00:00Z&declared_before=2026-11-01T00:00:00Z",
            "declared_after must be earlier than declared_before",
        ),
        ("cursor=not-a-cursor", "invalid incident cursor"),
        (
            "state=open",
            "unknown query parameter 'state'; allowed: cursor, declared_after, "
            "declared_before, limit, open, severity, status",
        ),
        ("status=resolved&status=monitoring", "query parameter 'status' is given more than once"),
    ],
)
async def test_bad_incident_queries_400(
    env: WebEnv, client_for: ClientFactory, query: str, message: str
) -> None:
    await _three_incidents(env)
    async with client_for() as client:
        response = await client.get(f"/api/v1/incidents?{query}", headers=AUTH)
        body = await response.json()
    assert response.status == 400
    assert body == {"error": message}


async def test_one_incident_and_404(env: WebEnv, client_for: ClientFactory) -> None:
    await _three_incidents(env)
    async with client_for() as client:
        found = await client.get("/api/v1/incidents/INC-2", headers=AUTH)
        missing = await client.get("/api/v1/incidents/INC-99", headers=AUTH)
        found_body, missing_body = await found.json(), await missing.json()
    assert found.status == 200
    conforms(found_body, "Incident")
    assert found_body["id"] == "INC-2"
    assert found_body["severity"] == "sev2"
    assert found_body["action_items"][0]["text"] == "Add a provider timeout alert"
    assert missing.status == 404
    assert missing_body == {"error": "no incident INC-99"}


async def test_timeline_pages_in_order_with_all_events(
    env: WebEnv, client_for: ClientFactory
) -> None:
    await seed_incident(env.incidents, env.timeline, events=120)
    events: list[dict[str, Any]] = []
    async with client_for() as client:
        cursor: str | None = None
        for _page in range(20):
            query = f"?limit=50&cursor={cursor}" if cursor else "?limit=50"
            response = await client.get(f"/api/v1/incidents/INC-1/timeline{query}", headers=AUTH)
            body = await response.json()
            assert response.status == 200
            conforms(body, "Timeline")
            events.extend(body["events"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
    assert len(events) == 120
    assert len({e["id"] for e in events}) == 120
    times = [(e["occurred_at"], e["id"]) for e in events]
    assert times == sorted(times)
    assert events[-1]["text"] == LATE_TEXT
    assert {e["platform"] for e in events} == {"teams", "matrix"}
    kinds = {e["kind"] for e in events}
    assert {"message", "edit", "reaction", "incident", "runbook"} <= kinds
    statuses = {m["status"] for e in events for m in e["mirrors"]}
    assert {"sent", "failed", "pending"} <= statuses
    edited = [e for e in events if e["edits"]]
    assert edited
    assert edited[0]["current_text"].endswith("(corrected)")
    reacted = [e for e in events if e["reactions"]]
    assert reacted
    assert reacted[0]["reactions"][0]["key"] == "👍"


async def test_timeline_shows_deletes(env: WebEnv, client_for: ClientFactory) -> None:
    await seed_incident(env.incidents, env.timeline, events=200)
    async with client_for() as client:
        body = await (
            await client.get("/api/v1/incidents/INC-1/timeline?limit=200", headers=AUTH)
        ).json()
    deleted = [e for e in body["events"] if e["deleted"]]
    redactions = [e for e in body["events"] if e["kind"] == "redaction"]
    assert deleted
    assert redactions
    assert deleted[0]["deleted"]["event_id"] == redactions[0]["id"]


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("limit=0", 400, "limit must be a whole number from 1 to 200"),
        ("limit=1000", 400, "limit must be a whole number from 1 to 200"),
        ("cursor=%%%", 400, "invalid timeline cursor"),
        ("since=now", 400, "unknown query parameter 'since'; allowed: cursor, limit"),
    ],
)
async def test_bad_timeline_queries(
    env: WebEnv, client_for: ClientFactory, query: str, status: int, message: str
) -> None:
    await seed_incident(env.incidents, env.timeline, events=10)
    async with client_for() as client:
        response = await client.get(f"/api/v1/incidents/INC-1/timeline?{query}", headers=AUTH)
        body = await response.json()
    assert response.status == status
    assert body == {"error": message}


async def test_timeline_of_unknown_incident_404(env: WebEnv, client_for: ClientFactory) -> None:
    async with client_for() as client:
        response = await client.get("/api/v1/incidents/INC-7/timeline", headers=AUTH)
    assert response.status == 404


async def test_storage_down_503(env: WebEnv, client_for: ClientFactory) -> None:
    await seed_incident(env.incidents, env.timeline, events=10)
    env.timeline.available = False
    async with client_for() as client:
        response = await client.get("/api/v1/incidents/INC-1/timeline", headers=AUTH)
        body = await response.json()
    assert response.status == 503
    assert body == {"error": "incident storage is unavailable; try again"}
