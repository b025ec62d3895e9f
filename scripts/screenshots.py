"""Screenshots of the web UI for the README and docs/ui.md, written to docs/screenshots/*.png.

Run once from the repository root after `make test` installed Chromium and htmx:

    .venv/bin/python scripts/screenshots.py

It starts `python -m service` on a free port with a Step-Audio-EditX stand-in (tests/support/step_audio_standin.py:
a fake checkout that answers with tones, so the Clone & edit page has a real history without a GPU), makes some
speech, a voice library with a voice consent and an edit history through the pages themselves, and photographs each
page in headless Chromium; the Clone & edit page is also photographed on the first server, which has no editing model
(edit-cpu-only.png). The voices are the embedded Piper voice's own speech.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import free_port  # noqa: E402
from tests.support.step_audio_standin import write_standin  # noqa: E402
from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, DESKTOP, PHONE  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
NARRATOR_TEXT = "The quick brown fox jumps over the lazy dog, and the narrator tells the story."
GUIDE_TEXT = "Welcome! I will guide you through the speech server."


def start(args: list[str], data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(data_dir), "LOG_FORMAT": "json"}
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port), *args],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the server did not start; see {log}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def speech(base: str, text: str) -> bytes:
    response = httpx.post(
        f"{base}/v1/audio/speech",
        json={"model": "piper-joe", "input": text, "response_format": "wav"},
        timeout=120,
    )
    response.raise_for_status()
    return response.content


def shoot(page: Page, name: str, *, full_page: bool = True) -> None:
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.mouse.move(0, 0)
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, animations="disabled", caret="hide")
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KiB")


def write_config(work: Path) -> Path:
    """The server as photographed: the stand-in editing model and one preset voice."""
    standin = write_standin(work / "upstream")
    config = work / "models.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [[models]]
            id = "step-audio-editx"
            engine = "step-audio"
            [models.options]
            project_dir = "{standin.checkout}"
            models_dir = "{standin.models}"
            variant = "bnb"
            require_cuda = false

            [[voices]]
            name = "narrator"
            audio = "narrator.wav"
            transcript = "{NARRATOR_TEXT}"
            locale = "en-US"
            description = "Calm storyteller (made with the embedded Piper voice)"
            """
        )
    )
    return config


def voices_page(page: Page, base: str, clip: Path) -> None:
    """The library with an uploaded voice and a voice consent (its recording uploaded through the consent form)."""
    page.goto(f"{base}/voices")
    page.fill("#consent-name", "Guide, the speaker")
    page.set_input_files("#consent-recording", str(clip))
    page.click("#consent-form button[type=submit]")
    expect(page.locator("[data-consent-id]")).to_be_visible()
    page.fill("#voice-name", "guide")
    page.set_input_files("#voice-audio", str(clip))
    page.fill("#voice-transcript", GUIDE_TEXT)
    page.click("#voice-form button[type=submit]")
    expect(page.locator('li[data-voice="guide"]')).to_be_visible()
    shoot(page, "voices")


def speak_page(page: Page, base: str, text: str, name: str) -> None:
    page.goto(f"{base}/")
    page.fill("#input", text)
    page.click("#speak-button")
    expect(page.locator("#speak-result [data-filled]")).to_be_visible()
    shoot(page, name)


def edit_page(page: Page, base: str) -> None:
    """A history of a few steps, the form set to the paralinguistic mode (its tag picker)."""
    page.goto(f"{base}/edit")
    page.check("input[name=source][value=voice]")
    page.select_option("#edit-voice", "narrator")
    page.fill("#target_text", "What a lovely morning for a walk in the park.")
    page.click("#start-form button[type=submit]")
    expect(page.locator(".step--current")).to_contain_text("Step 0")
    for mode, value in (("emotion", "happy"), ("style", "whisper"), ("speed", "slower")):
        page.select_option("#mode", mode)
        page.select_option(f"#edit-info-{mode}", value)
        page.click("#edit-form button[type=submit]")
        expect(page.locator(".step--current")).to_contain_text(value)
    page.select_option("#mode", "paralinguistic")
    shoot(page, "edit")


def models_page(page: Page, base: str, name: str, settings: bool = False) -> None:
    page.goto(f"{base}/models")
    expect(page.locator('tr[data-model="piper-joe"] [data-field=state]')).to_have_text("loaded")
    if settings:
        page.click("#settings-piper-joe")
        expect(page.locator("#settings-form")).to_be_visible()
    shoot(page, name)


def cpu_only_edit_page(base: str) -> None:
    """Clone & edit on a server without an editing model: what is missing and what works meanwhile."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=DESKTOP, color_scheme="light")
        page.goto(f"{base}/edit")
        expect(page.locator("[data-notice=no-cloning]")).to_be_visible()
        shoot(page, "edit-cpu-only")
        browser.close()


def photograph(base: str, work: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        light = browser.new_context(viewport=DESKTOP, color_scheme="light")
        light.set_default_timeout(60_000)
        page = light.new_page()
        voices_page(page, base, work / "guide.wav")
        speak_page(page, base, "Hello! This is the speech server, speaking to you from one port.", "speak")
        edit_page(page, base)
        models_page(page, base, "models", settings=True)
        light.close()
        dark = browser.new_context(viewport=DESKTOP, color_scheme="dark")
        models_page(dark.new_page(), base, "models-dark")
        dark.close()
        phone = browser.new_context(viewport=PHONE, color_scheme="light", device_scale_factor=2)
        speak_page(phone.new_page(), base, "Readable on a phone, too.", "speak-phone")
        phone.close()
        browser.close()


def main() -> None:
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: run scripts/install_system_packages.sh")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as folder:
        work = Path(folder)
        log = work / "server.log"
        # the embedded voice makes the reference clips
        process, base = start([], work / "seed-data", log)
        (work / "narrator.wav").write_bytes(speech(base, NARRATOR_TEXT))
        (work / "guide.wav").write_bytes(speech(base, GUIDE_TEXT))
        cpu_only_edit_page(base)
        stop(process)
        process, base = start(["--models-config", str(write_config(work))], work / "data", log)
        try:
            photograph(base, work)
        finally:
            stop(process)


if __name__ == "__main__":
    main()
