"""The OpenAPI schema documents the body of every JSON answer: each 2xx JSON response names its fields, so clients
and the fuzz test (tests/test_fuzz.py) can check answers against it. Audio, metrics and pages are not JSON."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from service.app import create_app
from service.settings import Settings

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def untyped(schema: dict[str, Any]) -> bool:
    """Whether a schema says no more than "any value" or "an object of anything" (what Litestar documents for a
    handler returning `Any` or `dict[str, Any]`)."""
    if "$ref" in schema or "properties" in schema:
        return False
    if schema.get("type") == "object":
        values = schema.get("additionalProperties", True)
        return values is True or untyped(values)
    if schema.get("type") == "array":
        return untyped(schema.get("items", {}))
    return not schema


def json_success_schemas(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each operation's label and the schema of each of its 2xx JSON responses."""
    for path, path_item in document["paths"].items():
        for method, operation in path_item.items():
            if method not in HTTP_METHODS:
                continue
            for status, response in operation["responses"].items():
                for media_type, content in response.get("content", {}).items():
                    if status.startswith("2") and media_type.split(";")[0].strip() == "application/json":
                        yield f"{method.upper()} {path}", content.get("schema", {})


def test_every_json_answer_has_a_documented_body(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))) as client:
        response = client.get("/docs/openapi.json")
    assert response.status_code == 200, response.text
    schemas = list(json_success_schemas(response.json()))
    checked = {label for label, _ in schemas}
    assert {"GET /healthz", "GET /api/v1/models/status", "POST /api/v1/models/{model_id}/unload"} <= checked
    assert {"GET /metrics", "GET /v1/voices/{name}/audio", "POST /v1/audio/speech"}.isdisjoint(checked)
    assert [label for label, schema in schemas if untyped(schema)] == []
