"""Browser tests: Debian's Chromium (scripts/install_system_packages.sh) driven by Playwright's sync API, against a real
`python -m service` started by the `start_server` fixture. Playwright's own browser download is never used."""

from __future__ import annotations

import io
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
]
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
# as long as an action may take: the suite runs on every core at once, and a first request may load a model
TIMEOUT_MS = 20_000
expect.set_options(timeout=TIMEOUT_MS)
PHONE: ViewportSize = {"width": 390, "height": 844}


def launch(playwright: Playwright) -> Browser:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install_system_packages.sh (as root) or `make test`")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


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
        # error answers are expected in some tests: the browser and htmx log them; anything else is a problem
        expected = ("the server responded with a status of", "Response Status Error Code")
        if message.type == "error" and not any(text in message.text for text in expected):
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
