"""The OpenAPI 3.1 description of the timeline API (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

from bridge.incidents.model import Role, Severity, Status
from bridge.model import Kind, MessageStyle, MirrorStatus, Platform, RelationKind
from bridge.web.api_json import INCIDENTS_LIMIT, MAX_LIMIT, TIMELINE_LIMIT

Json = dict[str, Any]

_STRING: Json = {"type": "string"}
_NULLABLE_STRING: Json = {"type": ["string", "null"]}
_TIME: Json = {"type": "string", "format": "date-time"}
_NULLABLE_TIME: Json = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _enum(values: type[Any]) -> Json:
    return {"type": "string", "enum": [v.value for v in values]}


def _object(properties: Json, *, extra: bool = False) -> Json:
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": extra,
    }


def _schemas() -> Json:
    sender = _object({"platform": _enum(Platform), "user_id": _STRING, "display_name": _STRING})
    room = _object({"platform": _enum(Platform), "room_id": _STRING})
    ref = _object({"platform": _enum(Platform), "room_id": _STRING, "message_id": _STRING})
    incident = _object(
        {
            "id": {"type": "string", "examples": ["INC-42"]},
            "title": _STRING,
            "severity": _enum(Severity),
            "status": _enum(Status),
            "open": {"type": "boolean"},
            "declared_at": _TIME,
            "declared_by": _ref("Sender"),
            "declared_in": _ref("Room"),
            "rooms": {"type": "array", "items": _ref("Room")},
            "roles": {
                "type": "object",
                "propertyNames": _enum(Role),
                "additionalProperties": _ref("Sender"),
            },
            "acknowledged_at": _NULLABLE_TIME,
            "mitigated_at": _NULLABLE_TIME,
            "resolved_at": _NULLABLE_TIME,
            "summary": _STRING,
            "impact": {"type": "object", "additionalProperties": _STRING},
            "action_items": {
                "type": "array",
                "items": _object({"text": _STRING, "by": _ref("Sender"), "at": _TIME}),
            },
            "postmortem": {**_NULLABLE_STRING, "description": "The last postmortem (Markdown)."},
            "version": {"type": "integer", "minimum": 0},
            "links": _object({"self": _STRING, "timeline": _STRING, "page": _STRING}),
        }
    )
    relation = _object(
        {
            "kind": _enum(RelationKind),
            "target": _ref("MessageRef"),
            "event_id": {**_NULLABLE_STRING, "description": "The target's timeline event."},
            "key": {**_NULLABLE_STRING, "description": "A reaction's key (an emoji)."},
        }
    )
    mirror = _object(
        {
            "room": _ref("Room"),
            "status": _enum(MirrorStatus),
            "message_id": _NULLABLE_STRING,
            "attempts": {"type": "integer", "minimum": 0},
            "error": _NULLABLE_STRING,
            "updated_at": _NULLABLE_TIME,
        }
    )
    event = _object(
        {
            "id": _STRING,
            "incident_id": _NULLABLE_STRING,
            "kind": _enum(Kind),
            "platform": _enum(Platform),
            "origin": _ref("MessageRef"),
            "sender": _ref("Sender"),
            "occurred_at": _TIME,
            "received_at": _TIME,
            "text": _STRING,
            "html": {
                **_NULLABLE_STRING,
                "description": "Sanitised HTML (the bridge's allow-listed subset).",
            },
            "style": _enum(MessageStyle),
            "mentions": {"type": "array", "items": _ref("Sender")},
            "attachments": {
                "type": "array",
                "items": _object(
                    {
                        "name": _STRING,
                        "mime_type": _STRING,
                        "size": {"type": ["integer", "null"]},
                        "is_image": {"type": "boolean"},
                    }
                ),
            },
            "relations": {"type": "array", "items": _ref("Relation")},
            "mirrors": {
                "type": "array",
                "items": _ref("Mirror"),
                "description": "The copy in each linked room and its delivery status.",
            },
            "data": {
                "type": "object",
                "description": "Kind-specific data (an incident change, a command, a run).",
            },
            "current_text": {
                "type": "string",
                "description": "The text after the edits found in the same page.",
            },
            "edits": {
                "type": "array",
                "description": "Edits of this message in the same page (also listed as events).",
                "items": _object({"event_id": _STRING, "occurred_at": _TIME, "text": _STRING}),
            },
            "deleted": {
                "oneOf": [
                    {"type": "null"},
                    _object({"event_id": _STRING, "occurred_at": _TIME, "by": _ref("Sender")}),
                ],
                "description": "The delete of this message, when in the same page.",
            },
            "reactions": {
                "type": "array",
                "description": "Reactions in the same page (also listed as events).",
                "items": _object({"key": _STRING, "senders": {"type": "array", "items": _STRING}}),
            },
            "key_event": {"type": "boolean"},
        }
    )
    return {
        "Error": _object({"error": _STRING}),
        "Sender": sender,
        "Room": room,
        "MessageRef": ref,
        "Incident": incident,
        "IncidentList": _object(
            {
                "incidents": {"type": "array", "items": _ref("Incident")},
                "next_cursor": _NULLABLE_STRING,
            }
        ),
        "Relation": relation,
        "Mirror": mirror,
        "TimelineEvent": event,
        "Timeline": _object(
            {
                "incident_id": _STRING,
                "events": {"type": "array", "items": _ref("TimelineEvent")},
                "next_cursor": _NULLABLE_STRING,
            }
        ),
    }


def _query(name: str, description: str, schema: Json) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _error(description: str) -> Json:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }


def _ok(description: str, schema: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


_ERRORS: Json = {
    "401": _error("No bearer token, or not the API's token. The body holds no data."),
    "503": _error("No API token is configured, or the storage is unavailable."),
}
_INCIDENT_ID: Json = {
    "name": "incident_id",
    "in": "path",
    "required": True,
    "schema": _STRING,
    "description": "The incident's id, e.g. INC-42.",
}
_CURSOR = _query("cursor", "The next_cursor of the previous page.", _STRING)


def _limit(default: int) -> Json:
    return _query(
        "limit",
        "The most items in one page.",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": default},
    )


def openapi_document() -> Json:
    """The API's description; every route under ``/api/v1`` is in ``paths``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "incident-bridge timeline API",
            "version": "1",
            "description": (
                "Incidents run from Teams and Matrix, and their merged timeline. "
                "Every data route needs the API's bearer token."
            ),
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/api/v1/incidents": {
                "get": {
                    "operationId": "listIncidents",
                    "summary": "Incidents, most recently declared first",
                    "parameters": [
                        _query("status", "Only incidents with this status.", _enum(Status)),
                        _query(
                            "open",
                            "true: only open incidents; false: only resolved ones.",
                            {"type": "boolean"},
                        ),
                        _query("severity", "Only this severity.", _enum(Severity)),
                        _query("declared_after", "Declared at or after (ISO 8601).", _TIME),
                        _query("declared_before", "Declared before (ISO 8601).", _TIME),
                        _CURSOR,
                        _limit(INCIDENTS_LIMIT),
                    ],
                    "responses": {
                        "200": _ok("One page of incidents.", "IncidentList"),
                        "400": _error("A query parameter has a value that is not accepted."),
                        **_ERRORS,
                    },
                }
            },
            "/api/v1/incidents/{incident_id}": {
                "get": {
                    "operationId": "getIncident",
                    "summary": "One incident's current state",
                    "parameters": [_INCIDENT_ID],
                    "responses": {
                        "200": _ok("The incident.", "Incident"),
                        "404": _error("No such incident."),
                        **_ERRORS,
                    },
                }
            },
            "/api/v1/incidents/{incident_id}/timeline": {
                "get": {
                    "operationId": "getIncidentTimeline",
                    "summary": "The incident's timeline, both platforms merged, in order",
                    "parameters": [_INCIDENT_ID, _CURSOR, _limit(TIMELINE_LIMIT)],
                    "responses": {
                        "200": _ok("One page of the timeline, oldest first.", "Timeline"),
                        "400": _error("A bad cursor or limit."),
                        "404": _error("No such incident."),
                        **_ERRORS,
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This description",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The API token from the settings (api.token or api.token_file).",
                }
            },
            "schemas": _schemas(),
        },
    }
