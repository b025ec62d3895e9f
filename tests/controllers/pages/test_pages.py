"""The UI pages, the API docs and their assets share the port and load nothing from elsewhere; what the pages do
on the server (form checks, consents, model settings, the guide) without a browser."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
from jinja2 import Environment, FileSystemLoader

from service.controllers.pages.guide import sections
from service.controllers.pages.rendering import Format
from service.settings import PROJECT_ROOT
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


# ---- honest states without an editing model, and the guide the pages link to


async def test_without_an_editing_model_the_pages_say_what_is_missing_and_link_to_where_it_is_told(
    client: AppClient,
) -> None:
    edit = (await client.get("/edit")).text
    assert "No editing model is configured" in edit
    assert "An NVIDIA GPU with CUDA" in edit
    assert "&lt;STEP_AUDIO_DIR&gt;/models/" in edit
    assert 'href="/guide/step-audio#what-you-provide"' in edit
    assert 'href="/voices"' in edit.split("What works meanwhile")[1]
    voices = (await client.get("/voices")).text
    assert "No model here can speak with these voices" in voices
    assert "library-unused" not in (await client.get("/")).text  # an empty library needs no notice
    upload = {"audio": ("me.wav", speech_wav(), "audio/wav")}
    added = await client.post("/voices", files=upload, data={"name": "me", "transcript": "A tone."})
    assert added.status_code == 200, added.text
    speak = (await client.get("/")).text
    assert 'data-notice="library-unused"' in speak
    assert "1 voice in the" in speak


async def test_every_guide_link_on_the_pages_opens_a_section_that_exists(client: AppClient) -> None:
    links: set[str] = set()
    for path in ("/", "/edit", "/voices", "/models"):
        links |= set(re.findall(r'href="(/guide/[^"]+)"', (await client.get(path)).text))
    assert links
    for link in links:
        document, _, section = link.partition("#")
        page = await client.get(document)
        assert page.status_code == 200, link
        assert not section or f'id="{section}"' in page.text, link
    assert (await client.get("/guide/nope")).status_code == 404


def test_guide_sections_are_cut_at_headings_outside_code_blocks() -> None:
    found = sections(
        "# Title\n\nIntro.\n\n## What you provide\n\n```sh\n# a comment\n```\n### The worker's environment\nx"
    )
    assert [(section.level, section.anchor) for section in found] == [
        (1, "title"),
        (2, "what-you-provide"),
        (3, "the-workers-environment"),
    ]
    assert "# a comment" in found[1].text


# ---- the voice form: every problem at once, silence and files that are not audio


def speech_wav(seconds: float = 2.0, rate: int = 24000, silence: float = 0.0) -> bytes:
    """A wobbling tone (`seconds` of it) after `silence` seconds of nothing."""
    t = np.arange(int(rate * seconds)) / rate
    sound = 0.3 * np.sin(2 * np.pi * (180 + 30 * np.sin(2 * np.pi * 3 * t)) * t)
    samples = np.concatenate([np.zeros(int(rate * silence)), sound]).astype(np.float32)
    output = io.BytesIO()
    soundfile.write(output, samples, rate, format="WAV", subtype="PCM_16")
    return output.getvalue()


async def test_the_voice_form_names_every_problem_at_once(client: AppClient) -> None:
    answer = await client.post("/voices", files={"audio": ("empty.wav", b"", "audio/wav")}, data={"name": "bad name"})
    assert answer.status_code == 400
    body = answer.json()
    assert [problem["param"] for problem in body["errors"]] == ["name", "audio", "transcript"]
    assert body["error"] == body["errors"][0]
    assert "choose an audio file or record one" in body["errors"][1]["message"]


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        (("silence.wav", speech_wav(0.0, silence=3.0), "audio/wav"), "audio is silent"),
        (("a-blip.wav", speech_wav(0.2, silence=3.0), "audio/wav"), "holds only 0.2"),
        (("notes.txt", b"these are my notes, not a recording\n" * 20, "text/plain"), "notes.txt is not an audio file"),
    ],
)
async def test_a_voice_must_be_readable_audio_with_speech_in_it(
    client: AppClient, upload: tuple[str, bytes, str], message: str
) -> None:
    answer = await client.post("/voices", files={"audio": upload}, data={"name": "me", "transcript": "Hi."})
    assert answer.status_code == 400
    (problem,) = answer.json()["errors"]
    assert problem["param"] == "audio"
    assert message in problem["message"]
    assert "Error" not in problem["message"]
    assert "Invalid data" not in problem["message"]
    assert (await client.get("/v1/voices")).json()["data"] == []


async def test_a_consent_is_stored_and_linked_to_the_custom_voice_made_with_it(client: AppClient) -> None:
    nothing = {"recording": ("consent.wav", b"", "audio/wav")}
    refused = await client.post("/voices/consents", files=nothing, data={"name": " ", "language": "not a tag"})
    assert [problem["param"] for problem in refused.json()["errors"]] == ["name", "language", "recording"]
    recording = {"recording": ("consent.wav", speech_wav(), "audio/wav")}
    stored = await client.post("/voices/consents", files=recording, data={"name": "Ana", "language": "en-US"})
    assert stored.status_code == 200, stored.text
    (consent,) = (await client.get("/v1/audio/voice_consents")).json()["data"]
    assert f'<option value="{consent["id"]}">Ana (en-US)</option>' in stored.text  # the voice form's picker
    audio = await client.get(f"/voices/consents/{consent['id']}/audio")
    assert audio.headers["content-type"] == "audio/wav"
    assert soundfile.info(io.BytesIO(audio.content)).duration == pytest.approx(2.0, abs=0.01)

    sample = {"audio": ("ana.wav", speech_wav(), "audio/wav")}
    made = await client.post(
        "/voices", files=sample, data={"name": "Ana, narrator", "transcript": "Hello.", "consent": consent["id"]}
    )
    assert made.status_code == 200, made.text
    (voice,) = (await client.get("/v1/audio/voices")).json()["data"]
    assert voice["name"] == "Ana, narrator"
    assert (await client.get(f"/v1/voices/{voice['id']}")).json()["consent"] == consent["id"]
    assert "Authorises Ana, narrator." in made.text
    assert f'data-consent="{consent["id"]}"' in made.text

    in_use = await client.delete(f"/voices/consents/{consent['id']}")
    assert in_use.status_code == 409
    assert voice["id"] in in_use.json()["error"]["message"]
    assert (await client.delete(f"/voices/{voice['id']}")).status_code == 200
    assert (await client.delete(f"/voices/consents/{consent['id']}")).status_code == 200
    assert (await client.get("/v1/audio/voice_consents")).json()["data"] == []


# ---- the Models page: settings, unload all, what a settings change changed


async def test_model_settings_from_the_page_change_what_patch_changes_and_the_log_says_what(
    client: AppClient,
) -> None:
    form = await client.get("/models/tts-1/settings")
    assert 'hx-post="/models/piper-joe/settings"' in form.text
    assert 'name="idle_timeout" value="300"' in form.text
    refused = await client.post("/models/piper-joe/settings", data={"idle_timeout": "soon", "auto_unload": "on"})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "idle_timeout"
    saved = await client.post("/models/piper-joe/settings", data={"idle_timeout": "2m"})
    assert saved.status_code == 200
    assert "idle timeout 2:00, auto-unload off" in saved.text
    status = (await client.get("/api/v1/models/piper-joe/status")).json()
    assert (status["idle_timeout"], status["auto_unload"], status["pinned"]) == (120, False, False)
    await client.post("/models/piper-joe/pin")
    log = (await client.get("/models", headers={"HX-Request": "true"})).text
    events = re.findall(r'<li class="event[^"]*">(.*?)</li>', log, re.S)
    assert "pinned no → yes" in events[0]
    assert "idle timeout" not in events[0]
    assert "idle timeout 5:00 → 2:00" in events[1]
    assert "auto-unload on → off" in events[1]
    assert "settings changed" in events[0]


async def test_unload_all_unloads_every_loaded_model_and_says_what_was_freed(client: AppClient) -> None:
    assert "No model was loaded" in (await client.post("/models/unload-all")).text
    await client.post("/api/v1/models/piper-joe/load")
    answer = await client.post("/models/unload-all")
    assert "Unloaded piper-joe: 1 worker(s) ended" in answer.text
    assert (await client.get("/api/v1/models/piper-joe/status")).json()["state"] == "unloaded"


def test_a_load_that_runs_past_its_last_one_says_so_instead_of_overshooting() -> None:
    environment = Environment(loader=FileSystemLoader(PROJECT_ROOT / "templates"), autoescape=True)
    status = SimpleNamespace(
        state="loading", engine="tone", device="cpu", pinned=False, last_error=None, loaded=False, rss_bytes=None,
        gpu_bytes=None, pid=None, in_flight=0, queued=1, idle_timeout=300, keep_alive=None, auto_unload=True,
        last_load_seconds=0.8, loads_total=1, last_unload_reason="manual", time_until_unload=None,
    )  # fmt: skip
    progress = {"elapsed": 1.0, "expected": 0.8, "fraction": 0.99}
    row = {"id": "m", "status": status, "aliases": [], "progress": progress}
    context = {"rows": [row], "fmt": Format, "events": [], "unavailable": {}, "default_model": "m", "message": None}
    html = environment.get_template("partials/models_live.html").render(context)
    assert "1.0 s, longer than its last load (0.8 s)" in html
    assert " of ~" not in html
    # the speak and edit pages' progress line, for a worker that reports no stages (the estimate from its last load)
    line = environment.get_template("partials/progress.html").render(
        {"model": "m", "status": status, "progress": {**progress, "stage": None}, "fmt": Format}
    )
    assert "1.0 s, longer than its last load (0.8 s)" in line
    assert "of about" not in line


# ---- the API docs


async def test_every_operation_is_described_and_the_docs_link_back_to_the_ui(client: AppClient) -> None:
    schema = (await client.get("/docs/openapi.json")).json()
    operations = [operation for item in schema["paths"].values() for operation in item.values()]
    assert len(operations) >= 25
    for operation in operations:
        assert " " in operation["summary"], operation["operationId"]
        assert operation.get("description"), operation["operationId"]
    assert "[Speak](/)" in schema["info"]["description"]
    assert "[Models](/models)" in schema["info"]["description"]
