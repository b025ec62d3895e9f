"""Browser tests: Debian's Chromium (scripts/install_system_packages.sh) driven by Playwright's sync API, against a real
`python -m service` started by the `start_server` fixture. Playwright's own browser download is never used."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, ViewportSize, expect, sync_playwright

from tests.support.checkouts import example_voices

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    # the Speak page starts playing as the audio streams in; a person's click allows that, a test has none
    "--autoplay-policy=no-user-gesture-required",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
# as long as an action may take: the suite runs on every core at once, and a first request may load a model
TIMEOUT_MS = 20_000
expect.set_options(timeout=TIMEOUT_MS)
PHONE: ViewportSize = {"width": 390, "height": 844}


def launch(playwright: Playwright, args: list[str] = CHROMIUM_ARGS) -> Browser:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install_system_packages.sh (as root) or `make test`")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context; a script error or a failed asset load on any page fails the test."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))

    def console(message: ConsoleMessage) -> None:
        # error answers are expected in some tests: the browser logs them (htmx must not: a 4xx is an answer)
        expected = "the server responded with a status of"
        if message.type == "error" and expected not in message.text:
            problems.append(f"console error: {message.text}")

    page.on("console", console)
    yield page
    context.close()
    assert problems == []


def speech_wav(seconds: float = 2.0, rate: int = 22050) -> bytes:
    """A clip with some texture (a tone with a wobble), long enough to be accepted as a reference voice."""
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.3 * np.sin(2 * np.pi * (180 + 30 * np.sin(2 * np.pi * 3 * t)) * t)).astype(np.float32)
    output = io.BytesIO()
    soundfile.write(output, samples, rate, format="WAV")
    return output.getvalue()


@dataclass(frozen=True)
class SpeechClip:
    """A reference clip written to disk, with what it says."""

    path: Path
    transcript: str
    seconds: float


def speech_clip(path: Path, example: str, fallback_seconds: float = 2.0, fallback_rate: int = 22050) -> SpeechClip:
    """Upstream's real recording `example` (examples/<example>.wav) when a Step-Audio-EditX checkout is there
    (STEP_AUDIO_CHECKOUTS), else a textured tone of `fallback_seconds`."""
    voice = next((voice for voice in example_voices() if voice.name == example), None)
    if voice is None:
        path.write_bytes(speech_wav(fallback_seconds, fallback_rate))
        return SpeechClip(path, "What the reference says.", fallback_seconds)
    path.write_bytes(voice.read())
    return SpeechClip(path, voice.transcript, voice.seconds)


AXE = "/static/vendor/axe.min.js"
# what fails the accessibility check: axe-core's two highest impacts
FAILING_IMPACTS = ("serious", "critical")


def accessibility_problems(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now (axe is injected from
    static/vendor/, which scripts/install_frontend_assets.sh fills), one line each: rule, impact, where."""
    if not (Path(__file__).parents[2] / "static" / AXE.removeprefix("/static/")).is_file():
        pytest.fail(f"{AXE} is missing: run scripts/install_frontend_assets.sh")
    if not page.evaluate("typeof axe === 'object'"):
        page.add_script_tag(url=AXE)
    violations = page.evaluate("axe.run(document, { resultTypes: ['violations'] }).then((r) => r.violations)")
    return [
        f"{violation['id']} ({violation['impact']}): {[node['target'] for node in violation['nodes']][:5]}"
        for violation in violations
        if violation["impact"] in FAILING_IMPACTS
    ]


AUDIO_DURATION = """
(selector) => new Promise((resolve, reject) => {
  const audio = document.querySelector(selector);
  const done = () => resolve(audio.duration);
  if (audio.readyState >= 1) { done(); return; }
  audio.addEventListener("loadedmetadata", done, { once: true });
  const failed = () => reject(new Error("audio error " + (audio.error && audio.error.code)));
  audio.addEventListener("error", failed, { once: true });
  audio.preload = "metadata";
  audio.load();
})
"""


def audio_duration(page: Page, selector: str) -> float:
    """The <audio> element's duration once its metadata has loaded (it must have received playable audio)."""
    duration = page.evaluate(AUDIO_DURATION, selector)
    assert isinstance(duration, float | int)
    return float(duration)


def spoken_duration(page: Page) -> float:
    """The Speak page's clip length once the whole clip has arrived (the download link is set then): an MP3 plays
    while it streams, and reloading the player before the stream's end would detach its MediaSource."""
    expect(page.locator("#speak-download")).to_have_attribute("href", re.compile(r"^blob:"))
    return audio_duration(page, "#speak-audio")
