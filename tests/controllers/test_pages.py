"""The home page, the API docs and their assets share the port and load nothing from elsewhere."""

from __future__ import annotations

import re

import pytest

from tests.conftest import AppClient

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def external_references(html: str) -> list[str]:
    return [url for url in re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) if "://" in url]


async def test_home_page_lists_the_models_on_the_api_port(client: AppClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'data-model="piper-joe"' in response.text
    assert external_references(response.text) == []
    assert (await client.get("/static/site.css")).status_code == 200


async def test_docs_page_and_every_asset_it_uses_are_served_here(client: AppClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert external_references(page.text) == []
    assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", page.text)
    assert len(assets) >= 3
    for asset in assets:
        assert (await client.get(asset)).status_code == 200, asset


async def test_openapi_schema_documents_the_speech_request(client: AppClient) -> None:
    schema = (await client.get("/docs/openapi.json")).json()
    assert {"/v1/audio/speech", "/v1/models", "/api/v1/models/status", "/healthz", "/metrics"} <= set(schema["paths"])
    speech = schema["components"]["schemas"]["SpeechRequest"]["properties"]
    assert {
        "model",
        "input",
        "voice",
        "response_format",
        "speed",
        "instructions",
        "stream_format",
        "keep_alive",
    } <= set(speech)
