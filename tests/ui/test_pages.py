"""The web UI in a real browser against a real server: speak and play, watch models load and unload live, manage
voices, run a clone-and-edit chain on the Step-Audio stand-in, and do it all from the keyboard and on a phone."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import httpx
import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect

from tests.conftest import ServerProcess
from tests.support.step_audio_standin import StandIn, write_standin
from tests.ui.conftest import (
    DESKTOP,
    PHONE,
    SpeechClip,
    accessibility_problems,
    audio_duration,
    speech_clip,
    spoken_duration,
)

pytestmark = pytest.mark.slow

StartServer = Callable[..., ServerProcess]


def models_toml(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


# ---- Speak


def test_speak_plays_the_embedded_voice_and_says_whether_it_loaded_first(start_server: StartServer, page: Page) -> None:
    server = start_server()
    page.goto(server.base_url + "/")
    expect(page.locator("#model")).to_have_value("piper-joe")
    expect(page.locator("#voice")).to_have_value("joe")
    page.fill("#input", "Hello from a real browser.")
    page.select_option("#response_format", "wav")
    page.click("#speak-button")

    expect(page.locator("[data-fact=cold]")).to_contain_text("cold start: loaded first")
    assert spoken_duration(page) > 0.5
    expect(page.locator("[data-fact=took]")).to_have_text(re.compile(r"^\d+\.\d\d s$"))
    expect(page.locator("[data-fact=served]")).to_have_text("piper-joe · joe")
    download = page.locator("#speak-download")
    expect(download).to_have_attribute("href", re.compile(r"^blob:"))
    expect(download).to_have_attribute("download", re.compile(r"^speech-piper-joe-.*\.wav$"))

    page.select_option("#response_format", "mp3")
    page.click("#speak-button")
    expect(page.locator("[data-fact=cold]")).to_have_text("already loaded (warm)")
    expect(page.locator("[data-fact=audio]")).to_contain_text("mp3")
    assert spoken_duration(page) > 0.5


def test_an_api_error_appears_next_to_the_field_it_names(start_server: StartServer, page: Page) -> None:
    server = start_server()
    page.goto(server.base_url + "/")
    page.fill("#input", "   ")
    page.click("#speak-button")
    error = page.locator("#input-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("input must not be empty")
    expect(page.locator("#input")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#input")).to_be_focused()
    page.fill("#input", "Now it works.")
    page.click("#speak-button")
    expect(page.locator("[data-fact=cold]")).to_contain_text("loaded")
    expect(error).to_be_hidden()


def test_a_slow_load_shows_the_stage_its_worker_reports(start_server: StartServer, page: Page, tmp_path: Path) -> None:
    config = models_toml(
        tmp_path / "models.toml",
        """
        [[models]]
        id = "slow-tone"
        engine = "tests.support.engines:ToneEngine"
        [models.options]
        load_seconds = 2.5
        """,
    )
    server = start_server("--models-config", str(config))
    page.goto(server.base_url + "/")
    page.select_option("#model", "slow-tone")
    expect(page.locator("#voice")).to_have_value("tone")
    page.click("#speak-button")
    detail = page.locator("[data-progress-detail]")
    expect(detail).to_contain_text("Loading slow-tone first: reading its weights (step 3 of 5")
    expect(page.locator("[data-elapsed]")).to_have_text(re.compile(r"^[1-9]\d*\.\d s$"))
    expect(page.locator("[data-fact=cold]")).to_contain_text("cold start")
    expect(page.locator("[data-progress]")).to_be_hidden()

    httpx.post(f"{server.base_url}/api/v1/models/slow-tone/unload").raise_for_status()
    page.click("#speak-button")
    expect(detail).to_contain_text(
        re.compile(r"Loading slow-tone first: reading its weights \(step 3 of 5, \d+\.\d s; \d+\.\d s in all\)")
    )
    expect(page.locator("[data-progress] progress")).to_have_attribute("max", "1")
    expect(page.locator("[data-fact=cold]")).to_contain_text("cold start")


def test_keyboard_only_tab_to_generate_and_press_enter(start_server: StartServer, page: Page) -> None:
    server = start_server()
    page.goto(server.base_url + "/")
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "speak-button":
            break
    else:
        pytest.fail("the generate button is not reachable with Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused button shows no focus ring"
    page.keyboard.press("Enter")
    expect(page.locator("#speak-result [data-filled]")).to_be_visible()
    assert spoken_duration(page) > 0.5
    expect(page.locator("#speak-button")).to_be_focused()


# ---- Models


def test_models_page_follows_loads_and_unloads_live(start_server: StartServer, page: Page) -> None:
    server = start_server()
    page.goto(server.base_url + "/models")
    row = page.locator('tr[data-model="piper-joe"]')
    state = row.locator("[data-field=state]")
    expect(state).to_have_text("unloaded")

    # loaded by an API client: the page shows it without a reload
    httpx.post(f"{server.base_url}/api/v1/models/piper-joe/load", timeout=60).raise_for_status()
    expect(state).to_have_text("loaded")
    expect(row.locator("td[data-label=Memory]")).to_contain_text("MiB")
    expect(row.locator("td[data-label='Idle unload in'] .countdown")).to_have_text(re.compile(r"^\d+:\d\d$"))
    expect(page.locator(".events")).to_contain_text("piper-joe loaded")

    page.click("#toggle-piper-joe")
    expect(state).to_have_text("unloaded")
    expect(page.locator("#models-message")).to_contain_text("piper-joe is unloaded")
    expect(row.locator("td[data-label='Last unload']")).to_have_text("manual")

    page.click("#toggle-piper-joe")
    expect(state).to_have_text("loaded")
    expect(page.locator("#models-message")).to_contain_text("piper-joe is loaded")
    page.click("#pin-piper-joe")
    expect(page.locator("#pin-piper-joe")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#pin-piper-joe")).to_contain_text("Pinned")
    for _ in range(2):  # the refreshes replace the row, and give the focus back to the same button
        with page.expect_response(lambda response: response.url == f"{server.base_url}/models"):
            pass
    expect(page.locator("#pin-piper-joe")).to_be_focused()
    expect(row.locator("td[data-label='Idle unload in']")).to_contain_text("never (pinned)")
    status = httpx.get(f"{server.base_url}/api/v1/models/piper-joe/status").json()
    assert (status["state"], status["pinned"]) == ("loaded", True)


# ---- Voices


def test_upload_listen_to_and_delete_a_voice(start_server: StartServer, page: Page, tmp_path: Path) -> None:
    clip = speech_clip(tmp_path / "me.wav", "en_happy_prompt")
    server = start_server()
    page.goto(server.base_url + "/voices")
    expect(page.locator("#voices-list")).to_contain_text("No voices yet")

    page.fill("#voice-name", "my-voice")
    page.click("#voice-form button[type=submit]")
    expect(page.locator("#voice-audio-error")).to_contain_text("choose an audio file or record one")
    page.set_input_files("#voice-audio", str(clip.path))
    page.click("#voice-form button[type=submit]")
    expect(page.locator("#voice-transcript-error")).to_contain_text("transcript must say what the clip says")
    expect(page.locator("#voice-audio-error")).to_be_hidden()

    page.fill("#voice-transcript", clip.transcript)
    page.click("#voice-form button[type=submit]")
    voice = page.locator('li[data-voice="my-voice"]')
    expect(voice).to_be_visible()
    expect(voice).to_contain_text(clip.transcript)
    expect(page.locator("#voices-message")).to_contain_text("Added voice my-voice")
    expect(page.locator("#voice-name")).to_have_value("")
    assert audio_duration(page, 'li[data-voice="my-voice"] audio') == pytest.approx(clip.seconds, abs=0.05)
    listed = httpx.get(f"{server.base_url}/v1/voices").json()["data"]
    assert [entry["name"] for entry in listed] == ["my-voice"]

    page.fill("#voice-name", "my-voice")
    page.fill("#voice-transcript", "Again.")
    page.set_input_files("#voice-audio", str(clip.path))
    page.click("#voice-form button[type=submit]")
    expect(page.locator("#voice-name-error")).to_contain_text("exists already")

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-my-voice")
    expect(voice).to_have_count(0)
    expect(page.locator("#voices-message")).to_contain_text("Deleted voice my-voice")
    assert httpx.get(f"{server.base_url}/v1/voices").json()["data"] == []


# ---- Clone & edit


def test_the_edit_page_says_when_no_model_edits(start_server: StartServer, page: Page) -> None:
    server = start_server()
    page.goto(server.base_url + "/edit")
    expect(page.locator("h2")).to_have_text("No editing model is configured")
    expect(page.locator("form")).to_have_count(0)


@pytest.fixture
def narrator(tmp_path: Path) -> SpeechClip:
    """The library's preset voice in the editing tests."""
    return speech_clip(tmp_path / "narrator.wav", "zero_shot_en_prompt", fallback_rate=24000)


@pytest.fixture
def step_audio_server(start_server: StartServer, tmp_path: Path, narrator: SpeechClip) -> tuple[ServerProcess, StandIn]:
    standin = write_standin(tmp_path / "upstream")
    config = models_toml(
        tmp_path / "models.toml",
        f"""
        [[models]]
        id = "sa-standin"
        engine = "step-audio"
        [models.options]
        project_dir = "{standin.checkout}"
        models_dir = "{standin.models}"
        variant = "bnb"
        require_cuda = false

        [[voices]]
        name = "narrator"
        audio = "narrator.wav"
        transcript = "{narrator.transcript}"
        """,
    )
    return start_server("--models-config", str(config), "--probe-engines", "false"), standin


def apply_edit(page: Page, mode: str, value: str | None = None, times: int = 1) -> None:
    steps = page.locator(".steps > li").count()
    page.select_option("#mode", mode)
    if value is not None:
        page.select_option(f"#edit-info-{mode}", value)
    page.fill("#n_edit_iter", str(times))
    page.click("#edit-form button[type=submit]")
    expect(page.locator(".steps > li")).to_have_count(steps + 1)


def check_standin_calls(standin: StandIn, reference: SpeechClip, step0: float, step1: float) -> None:
    """What the upstream classes were called with, in order: the clone, then every edit on the step before it."""
    (clone,) = standin.calls_named("clone")
    assert clone["prompt_text"] == reference.transcript
    assert clone["target_text"] == "[Japanese]Good morning, everyone."
    assert clone["prompt"]["seconds"] == pytest.approx(reference.seconds, abs=0.01)
    edits = standin.calls_named("edit")
    assert [(call["edit_type"], call["edit_info"]) for call in edits] == [
        ("emotion", "happy"),
        ("emotion", "happy"),
        ("style", "whisper"),
        ("paralinguistic", None),
        ("denoise", None),
    ]
    assert edits[3]["text"] == "[Japanese]Good morning [Laughter] , everyone."
    assert all(call["audio_text"] == "[Japanese]Good morning, everyone." for call in edits)
    # each edit got the step before it; the denoise after the undo got step 1's audio, like the whisper did
    assert [call["input"]["seconds"] for call in edits] == pytest.approx(
        [step0, step0 + 0.25, step1, step1 + 0.25, step1], abs=0.02
    )


def start_from_an_upload(page: Page, base_url: str, reference: SpeechClip) -> None:
    page.goto(base_url + "/edit")
    expect(page.locator("#edit-model")).to_have_value("sa-standin")
    options = page.locator("#language option").all_inner_texts()
    assert options == ["As written", "Sichuanese", "Cantonese", "Japanese", "Korean"]
    page.set_input_files("#reference", str(reference.path))
    page.fill("#reference_text", reference.transcript)
    page.fill("#target_text", "Good morning, everyone.")
    page.select_option("#language", "[Japanese]")
    page.click("#start-form button[type=submit]")


def test_clone_then_edit_step_by_step_and_step_back(
    step_audio_server: tuple[ServerProcess, StandIn], page: Page, tmp_path: Path
) -> None:
    server, standin = step_audio_server
    reference = speech_clip(tmp_path / "reference.wav", "en_happy_prompt", 1.5, 44100)
    start_from_an_upload(page, server.base_url, reference)
    current = page.locator(".step--current")
    expect(current).to_contain_text("Step 0: Cloned voice")
    expect(page).to_have_url(re.compile(r"/edit/[A-Za-z0-9_-]{16,}$"))
    step0 = audio_duration(page, '[data-step="0"] audio')
    assert step0 == pytest.approx(0.5 + 0.05 * len("[Japanese]Good morning, everyone."), abs=0.02)

    # only what the engine accepts is offered
    modes = page.locator("#mode option").evaluate_all("options => options.map(o => o.value)")
    assert modes == ["emotion", "style", "speed", "paralinguistic", "denoise", "vad"]
    assert "whisper" in page.locator("#edit-info-style option").all_inner_texts()
    assert page.locator("#edit-info-denoise").count() == 0

    apply_edit(page, "emotion", "happy", times=2)
    expect(current).to_contain_text("Step 1: Emotion: happy ×2")
    apply_edit(page, "style", "whisper")
    expect(current).to_contain_text("Step 2: Style: whisper")
    expect(page.locator("#apply-edit")).to_be_focused()  # the swap put the focus back on the button
    assert accessibility_problems(page) == []  # the workspace: a history, the next edit's form

    page.select_option("#mode", "paralinguistic")
    page.locator("#edit-text").evaluate(
        "area => area.setSelectionRange(area.value.indexOf(','), area.value.indexOf(','))"
    )
    page.select_option("#edit-tag", "[Laughter]")
    page.click("[data-insert-tag]")
    expect(page.locator("#edit-text")).to_have_value("[Japanese]Good morning [Laughter] , everyone.")
    page.click("#edit-form button[type=submit]")
    expect(current).to_contain_text("Step 3: Paralinguistic: new text")
    expect(current).to_contain_text("[Laughter]")

    # step back to step 1, listen to it, and branch off with another edit
    page.click("#undo-1")
    expect(page.locator(".steps > li")).to_have_count(2)
    expect(current).to_contain_text("Step 1: Emotion: happy ×2")
    step1 = audio_duration(page, '[data-step="1"] audio')
    assert step1 == pytest.approx(step0 + 0.5, abs=0.02)
    apply_edit(page, "denoise")
    expect(current).to_contain_text("Step 2: Denoise")
    download = page.locator('[data-step="2"] a[download]')
    expect(download).to_have_attribute("download", "edit-step-2.wav")
    href = download.get_attribute("href")
    assert href is not None
    assert httpx.get(server.base_url + href).headers["content-type"] == "audio/wav"

    check_standin_calls(standin, reference, step0, step1)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#start-over")
    expect(page).to_have_url(server.base_url + "/edit")
    expect(page.locator("#start-form")).to_be_visible()


def test_start_from_a_library_voice_and_edit_the_clip_itself(
    step_audio_server: tuple[ServerProcess, StandIn], page: Page, narrator: SpeechClip
) -> None:
    server, standin = step_audio_server
    page.goto(server.base_url + "/edit")
    page.check("input[name=source][value=voice]")
    expect(page.locator("#reference")).to_be_hidden()
    page.select_option("#edit-voice", "narrator")
    page.click("#start-form button[type=submit]")
    expect(page.locator(".step--current")).to_contain_text("Step 0: Reference clip")
    expect(page.locator(".step--current")).to_contain_text(narrator.transcript)
    # Back and Forward restore whole pages (htmx asks for them again), not bare partials
    page.go_back()
    expect(page.locator("#start-form")).to_be_visible()
    expect(page.locator("nav a[aria-current=page]")).to_have_text("Clone & edit")
    page.go_forward()
    expect(page.locator(".step--current")).to_contain_text("Step 0: Reference clip")
    expect(page.locator("nav a[aria-current=page]")).to_have_text("Clone & edit")
    assert audio_duration(page, '[data-step="0"] audio') == pytest.approx(narrator.seconds, abs=0.02)

    apply_edit(page, "speed", "faster")
    assert standin.calls_named("clone") == []
    (edit,) = standin.calls_named("edit")
    assert (edit["edit_type"], edit["edit_info"], edit["audio_text"]) == ("speed", "faster", narrator.transcript)

    # an edit the server refuses shows its error next to the field it names
    page.select_option("#mode", "paralinguistic")
    page.fill("#edit-text", " ")
    page.click("#edit-form button[type=submit]")
    expect(page.locator("#edit-text-error")).to_contain_text("paralinguistic edits need the new transcript")


# ---- every page: no external assets, readable on a phone, dark theme


PAGES = ("/", "/edit", "/voices", "/models")


def check_pages(browser: Browser, base_url: str, scheme: Literal["dark", "light"], viewport: ViewportSize) -> None:
    context = browser.new_context(viewport=viewport, color_scheme=scheme)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    for path in PAGES:
        page.goto(base_url + path)
        expect(page.locator("main h1")).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at {viewport}"
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        channels = [int(value) for value in re.findall(r"\d+", background)[:3]]
        assert (sum(channels) < 120) == (scheme == "dark"), (path, scheme, background)
        assert page.evaluate("typeof htmx") == "object", "htmx was not served"
    assert all(url.startswith(base_url) for url in requested), requested
    context.close()


def test_every_page_fits_a_phone_and_follows_the_dark_theme(start_server: StartServer, browser: Browser) -> None:
    server = start_server()
    check_pages(browser, server.base_url, "dark", PHONE)
    check_pages(browser, server.base_url, "light", DESKTOP)
