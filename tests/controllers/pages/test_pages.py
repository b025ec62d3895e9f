"""The UI pages, the API docs and their assets share the port and load nothing from elsewhere."""

from __future__ import annotations

import re

import pytest

from tests.conftest import AppClient

pytestmark = [pytest.mark.anyio, pytest.mark.in_process]


def external_references(html: str) -> list[str]:
    return [url for url in re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) if "://" in url]


async def test_home_page_and_models_page_are_on_the_api_port(client: AppClient) -> None:
    home = await client.get("/")
    assert home.status_code == 200
    assert home.headers["content-type"].startswith("text/html")
    assert '<option value="piper-joe" selected>' in home.text
    models = await client.get("/models")
    assert models.status_code == 200
    assert 'data-model="piper-joe"' in models.text
    assert (await client.get("/static/site.css")).status_code == 200


@pytest.mark.parametrize("path", ["/", "/edit", "/voices", "/models"])
async def test_every_page_loads_nothing_from_elsewhere_and_every_asset_is_served(client: AppClient, path: str) -> None:
    page = await client.get(path)
    assert page.status_code == 200
    assert external_references(page.text) == []
    assets = re.findall(r"""(?:src|href)=["'](/static/[^"']+)["']""", page.text)
    assert {"/static/site.css", "/static/app.js", "/static/vendor/htmx.min.js"} <= set(assets)
    for asset in assets:
        assert (await client.get(asset)).status_code == 200, asset


async def test_htmx_requests_get_the_partial_the_page_includes(client: AppClient) -> None:
    page = await client.get("/models")
    partial = await client.get("/models", headers={"HX-Request": "true", "HX-Target": "models-live"})
    assert page.headers["vary"] == partial.headers["vary"] == "HX-Request"
    assert "<html" in page.text
    assert "<html" not in partial.text
    assert 'data-model="piper-joe"' in partial.text
    restore = await client.get("/models", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in restore.text
    fields = await client.get("/?model=tts-1", headers={"HX-Request": "true", "HX-Target": "model-fields"})
    assert "<html" not in fields.text
    assert '<option value="joe" selected>joe</option>' in fields.text


async def test_model_progress_partial_says_what_a_request_waits_for(client: AppClient) -> None:
    before = await client.get("/models/piper-joe/progress")
    assert 'data-phase="starting"' in before.text
    await client.post("/api/v1/models/piper-joe/load")
    after = await client.get("/models/piper-joe/progress")
    assert 'data-phase="generating"' in after.text
    assert (await client.get("/models/nope/progress")).status_code == 404


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
