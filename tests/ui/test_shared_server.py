"""The web UI in a real browser against one real server for the whole module (the tests touch different models and
voices): speech that plays while it streams, pages that say what is missing without an editing model, the Models
page's settings, pin and "unload all", the voice form's checks, voice consents recorded in the browser (Chromium's
fake microphone playing a file) and linked to a voice, and axe-core's accessibility check on every page."""

from __future__ import annotations

import io
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import httpx
import pytest
import soundfile
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import ServerProcess, server_starter
from tests.ui.conftest import CHROMIUM_ARGS, DESKTOP, accessibility_problems, audio_duration, launch, speech_wav

pytestmark = pytest.mark.slow

# the streaming model: 16 chunks of a quarter second of audio, one every 0.15 s, so the stream lasts about 2.4 s
STREAM_CHUNKS = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui")


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[ServerProcess]:
    config = folder / "models.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [[models]]
            id = "stream-tone"
            engine = "tests.support.engines:ToneEngine"
            [models.options]
            chunks = {STREAM_CHUNKS}
            chunk_seconds = 0.15
            """
        )
    )
    with server_starter(folder) as start:
        yield start("--models-config", str(config))


@pytest.fixture(scope="module")
def browser(folder: Path) -> Iterator[Browser]:
    """Chromium whose microphone plays a recording of a textured tone (so a recording holds sound throughout)."""
    microphone = folder / "microphone.wav"
    microphone.write_bytes(speech_wav(3.0, 48000))
    fake_microphone = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
    ]
    with sync_playwright() as playwright:
        browser = launch(playwright, [*CHROMIUM_ARGS, *fake_microphone])
        yield browser
        browser.close()


def dataset_ms(page: Page, name: str) -> int:
    value = page.locator("#speak-result").get_attribute(f"data-{name}-ms")
    assert value is not None, name
    return int(value)


def test_speak_plays_an_mp3_while_it_is_still_streaming(server: ServerProcess, page: Page) -> None:
    page.goto(server.base_url + "/")
    page.select_option("#model", "stream-tone")
    expect(page.locator("#voice")).to_have_value("tone")
    expect(page.locator("#response_format")).to_have_value("mp3")
    with page.expect_request("**/v1/audio/speech") as request:
        page.click("#speak-button")
    assert (request.value.post_data_json or {}).get("stream_format") == "audio"
    expect(page.locator("[data-fact=took]")).to_have_text(re.compile(r"^\d+\.\d\d s$"))
    expect(page.locator("#speak-result")).to_have_attribute("data-first-sound-ms", re.compile(r"^\d+$"))
    first_byte, first_sound, complete = (dataset_ms(page, name) for name in ("first-byte", "first-sound", "complete"))
    assert first_byte <= first_sound < complete, (first_byte, first_sound, complete)
    expect(page.locator("[data-fact=sound]")).to_contain_text("after the first byte")
    expect(page.locator("[data-fact=audio]")).to_contain_text("mp3, streamed")
    seconds = page.evaluate("document.getElementById('speak-audio').duration")
    assert seconds == pytest.approx(STREAM_CHUNKS * 0.25, abs=0.15)
    download = page.locator("#speak-download")
    expect(download).to_have_attribute("href", re.compile(r"^blob:"))
    expect(page.locator("[data-fact=audio]")).to_have_text(re.compile(r"^4\.\d\d s, [1-9]\d* KiB mp3, streamed$"))


def test_without_an_editing_model_the_pages_say_what_is_missing_and_where_to_read_more(
    server: ServerProcess, page: Page
) -> None:
    page.goto(server.base_url + "/edit")
    notice = page.locator("[data-notice=no-cloning]")
    expect(notice).to_contain_text("An NVIDIA GPU with CUDA")
    expect(notice).to_contain_text("<STEP_AUDIO_DIR>/models/")
    page.click("text=Step-Audio-EditX: what you provide")
    expect(page).to_have_url(server.base_url + "/guide/step-audio#what-you-provide")
    expect(page.locator("#what-you-provide")).to_contain_text("STEP_AUDIO_MODELS_DIR")
    page.goto(server.base_url + "/voices")
    expect(page.locator("[data-notice=no-cloning] h2")).to_have_text("No model here can speak with these voices")


def test_the_voice_form_marks_every_problem_and_a_recorded_consent_authorises_a_voice(
    server: ServerProcess, page: Page, folder: Path
) -> None:
    page.goto(server.base_url + "/voices")
    page.click("#voice-form button[type=submit]")
    for field in ("voice-name", "voice-audio", "voice-transcript"):
        expect(page.locator(f"#{field}-error")).to_be_visible()
        expect(page.locator(f"#{field}")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#voice-name")).to_be_focused()

    silent, notes, sample = folder / "silent.wav", folder / "notes.txt", folder / "ana.wav"
    silent.write_bytes(speech_wav(3.0, 24000)[:44] + bytes(2 * 24000 * 3))  # a WAV header, then 3 s of zeros
    notes.write_text("not a recording\n" * 50)
    sample.write_bytes(speech_wav(2.0))
    page.fill("#voice-name", "quiet")
    page.fill("#voice-transcript", "Nothing.")
    page.set_input_files("#voice-audio", str(silent))
    page.click("#voice-form button[type=submit]")
    expect(page.locator("#voice-audio-error")).to_contain_text("is silent")
    expect(page.locator("#voice-name-error")).to_be_hidden()
    page.set_input_files("#voice-audio", str(notes))
    page.click("#voice-form button[type=submit]")
    expect(page.locator("#voice-audio-error")).to_have_text(
        "notes.txt is not an audio file this server can read: choose a WAV, FLAC, Ogg or MP3 recording"
    )

    consent_form = page.locator("#consent-form")
    page.fill("#consent-name", "Ana")
    record = consent_form.locator("[data-record]")
    record.click()
    expect(consent_form.locator("[data-record-status]")).to_contain_text(re.compile(r"Recording… 1\.\d s"))
    expect(record).to_have_attribute("aria-pressed", "true")
    record.click()
    expect(consent_form.locator("[data-record-status]")).to_contain_text("it is sent as recording.wav")
    expect(record).to_have_attribute("aria-pressed", "false")
    assert page.locator("#consent-recording").evaluate("input => input.files[0].name") == "recording.wav"
    assert audio_duration(page, "#consent-form [data-record-preview]") > 0.9
    consent_form.locator("button[type=submit]").click()
    consent = page.locator("[data-consent-id]")
    expect(consent).to_contain_text("No voice uses it yet")
    expect(page.locator("#voices-message")).to_contain_text("Added the voice consent Ana")
    consent_id = consent.get_attribute("data-consent-id")
    assert consent_id is not None
    stored = httpx.get(f"{server.base_url}/voices/consents/{consent_id}/audio")
    assert 0.9 < soundfile.info(io.BytesIO(stored.content)).duration < 5

    page.fill("#voice-name", "Ana, narrator")
    page.fill("#voice-transcript", "Hello there.")
    page.set_input_files("#voice-audio", str(sample))
    page.select_option("#voice-consent", consent_id)  # the picker was swapped in again with the new consent
    page.click("#voice-form button[type=submit]")
    expect(page.locator(f"[data-consent='{consent_id}']")).to_contain_text("Authorised by the voice consent Ana")
    expect(consent).to_contain_text("Authorises Ana, narrator.")
    (voice,) = httpx.get(f"{server.base_url}/v1/audio/voices").json()["data"]
    assert voice["name"] == "Ana, narrator"

    page.goto(server.base_url + "/")
    expect(page.locator("[data-notice=library-unused]")).to_contain_text("no model here can speak with it")


def background(page: Page, selector: str) -> str:
    """The element's background colour, read in one page task: the page's live refresh swaps rows in between two
    protocol calls, and a swapped-out element has no computed style."""
    script = "selector => getComputedStyle(document.querySelector(selector)).backgroundColor"
    return str(page.evaluate(script, selector))


def test_models_page_settings_pin_and_unload_all(server: ServerProcess, page: Page) -> None:
    page.goto(server.base_url + "/models")
    page.click("#settings-piper-joe")
    expect(page.locator("#settings-title")).to_be_focused()
    page.fill("#idle_timeout", "soon")
    page.click("#settings-save")
    expect(page.locator("#idle_timeout-error")).to_contain_text("is not a duration")
    page.fill("#idle_timeout", "2m")
    page.uncheck("#auto_unload")
    page.click("#settings-save")
    expect(page.locator("#model-settings .status-line")).to_have_text("piper-joe: idle timeout 2:00, auto-unload off.")
    status = httpx.get(f"{server.base_url}/api/v1/models/piper-joe/status").json()
    assert (status["idle_timeout"], status["auto_unload"]) == (120, False)
    expect(page.locator(".events")).to_contain_text("idle timeout 5:00 → 2:00")

    pin = page.locator("#pin-piper-joe")
    unpressed = background(page, "#pin-piper-joe")
    pin.click()
    expect(pin).to_have_attribute("aria-pressed", "true")
    expect(pin).to_contain_text("Pinned")
    pressed = background(page, "#toggle-piper-joe.button--primary")
    assert pressed != unpressed
    expect(pin).to_have_css("background-color", pressed)
    expect(page.locator(".events").first).to_contain_text("pinned no → yes")

    httpx.post(f"{server.base_url}/api/v1/models/piper-joe/load", timeout=60).raise_for_status()
    expect(page.locator('tr[data-model="piper-joe"] [data-field=state]')).to_have_text("loaded")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#unload-all")
    message = page.locator("#models-message")
    expect(message).to_contain_text(re.compile(r"Unloaded (.+, )?piper-joe\b.*worker\(s\) ended"))
    expect(page.locator('tr[data-model="piper-joe"] [data-field=state]')).to_have_text("unloaded")
    expect(message).to_have_text("", timeout=10_000)  # a status line clears itself after a few seconds


PAGES = ("/", "/edit", "/voices", "/models", "/guide/step-audio")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_page_has_serious_accessibility_problems(
    server: ServerProcess, browser: Browser, scheme: Literal["light", "dark"]
) -> None:
    # the models page with a model loaded: its green state pill had too little contrast on its tint (4.4:1)
    httpx.post(f"{server.base_url}/api/v1/models/piper-joe/load", timeout=60).raise_for_status()
    context = browser.new_context(viewport=DESKTOP, color_scheme=scheme)
    page = context.new_page()
    problems: dict[str, list[str]] = {}
    opened: dict[str, Callable[[Page], None]] = {
        "/models": lambda page: page.click("#settings-piper-joe"),
        "/voices": lambda page: page.click("#voice-form button[type=submit]"),
    }
    for path in PAGES:
        page.goto(server.base_url + path)
        expect(page.locator("main h1")).to_be_visible()
        if path in opened:  # the page with its panel open or its errors shown
            opened[path](page)
            expect(page.locator("#settings-form, #voice-name-error:visible").first).to_be_visible()
        problems[path] = accessibility_problems(page)
    context.close()
    assert problems == {path: [] for path in PAGES}
