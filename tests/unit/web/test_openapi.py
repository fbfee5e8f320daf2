"""The OpenAPI document: valid JSON, OpenAPI 3.1, every API route described."""

from __future__ import annotations

import json
import re

import jsonschema

from bridge.web.openapi import openapi_document
from tests.unit.web.conftest import AUTH, ClientFactory, WebEnv, build_app


def test_document_lists_every_api_route(env: WebEnv) -> None:
    app = build_app(env, "token")
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/")
        and route.method != "HEAD"
    }
    document = openapi_document()
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    assert routes == described
    for path, item in document["paths"].items():
        for name in re.findall(r"{(\w+)}", path):
            params = item["get"]["parameters"]
            assert any(p["name"] == name and p["in"] == "path" for p in params), (path, name)


def test_document_is_openapi_31_with_bearer_security() -> None:
    document = json.loads(json.dumps(openapi_document()))
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The API token from the settings (api.token or api.token_file).",
    }
    assert document["security"] == [{"bearerAuth": []}]
    for path, item in document["paths"].items():
        operation = item["get"]
        if path != "/api/v1/openapi.json":
            assert "401" in operation["responses"]
            assert "503" in operation["responses"]
        assert operation["operationId"]


def test_component_schemas_are_valid_json_schema_and_refs_resolve() -> None:
    document = openapi_document()
    text = json.dumps(document)
    for name in re.findall(r'"#/components/schemas/(\w+)"', text):
        assert name in document["components"]["schemas"], name
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


async def test_served_without_a_token(client_for: ClientFactory) -> None:
    async with client_for() as client:
        anonymous = await client.get("/api/v1/openapi.json")
        with_token = await client.get("/api/v1/openapi.json", headers=AUTH)
        body = await anonymous.json()
    assert anonymous.status == 200
    assert with_token.status == 200
    assert anonymous.headers["Content-Type"].startswith("application/json")
    assert body == json.loads(json.dumps(openapi_document()))
