"""OpenAI's published schemas for the routes this server mirrors (speech, custom voices, voice consents, models),
for validating responses. `OPENAI_REFERENCE` names the document; `make test` points it at
../shared/reference/openai-speech-openapi.json (MIT-licensed, from openai/openai-openapi)."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

REFERENCE_ENV = "OPENAI_REFERENCE"


@cache
def reference() -> dict[str, Any] | None:
    """The reference document, or None where it is not on this machine."""
    path = os.environ.get(REFERENCE_ENV, "")
    if not path or not Path(path).is_file():
        return None
    document: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return document


def schema_names() -> list[str]:
    document = reference()
    return sorted(document["components"]["schemas"]) if document else []


def enum_of(schema: str, field: str | None = None) -> list[Any]:
    """The values a schema (or one of its properties) allows, from the document's `enum` or `anyOf` of enums."""
    document = reference()
    if document is None:
        return []
    node = document["components"]["schemas"][schema]
    node = node["properties"][field] if field else node
    if "enum" in node:
        return list(node["enum"])
    return [value for option in node.get("anyOf", []) for value in option.get("enum", [])]


def validate(schema: str, instance: Any) -> None:
    """Fails the test with every problem when `instance` does not match the document's `schema`; skips where the
    document is not on this machine."""
    document = reference()
    if document is None:
        pytest.skip(f"no OpenAI reference document ({REFERENCE_ENV})")
    validator = jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{schema}", **document})
    problems = [f"{error.instance_path}: {error.message}" for error in validator.iter_errors(instance)]
    assert not problems, f"{schema}: {problems}"
