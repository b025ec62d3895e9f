"""Decompression bombs at every route that takes audio, sent to `python -m service` as a client would: each is
refused with a 400 naming the field, and the server's peak memory grows by no more than a few times the size of
the longest clip it accepts, however much the upload claims to decode to, whether libsndfile decodes it (FLAC) or
FFmpeg does (AAC, WebM)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile

from tests.conftest import ServerProcess
from tests.support.audio import tone
from tests.support.ffmpeg_audio import silent_adts, silent_webm
from tests.support.processes import memory_kib, reset_peak
from tests.support.step_audio_standin import write_standin

pytestmark = pytest.mark.slow

StartServer = Callable[..., ServerProcess]

MAX_AUDIO_SECONDS = 30  # the server's default
WIDEST_RATE = 48000  # the highest sample rate the test sends
# the longest clip the server accepts, as mono float32 at that rate: 5.5 MiB
ALLOWED_DECODED_BYTES = MAX_AUDIO_SECONDS * WIDEST_RATE * 4
# A bounded decoder holds one block of samples (1 MiB), the clip at the engine rate (half of the above) and its
# concatenation, the upload itself (under 1 MiB, in the multipart buffer, as bytes, as base64): about twice the
# allowed size. Three times it, plus 24 MiB for what requests leave behind (the allocator arenas of the worker
# threads that decode, HTTP buffers), is far below what a decoder that holds the whole clip at once needs: 3 GiB for
# the bomb, and 44 MiB for the widest allowed clip alone when its 8 channels are decoded in one piece.
PEAK_GROWTH_BOUND = 3 * ALLOWED_DECODED_BYTES + (24 << 20)


def silent_flac(seconds: int, channels: int, rate: int = WIDEST_RATE, *, spoken: bool = False) -> bytes:
    """Silence as FLAC, written a second at a time so the test holds little of it; it compresses to almost nothing.
    `spoken`: its first second is a tone on the first channel, enough sound for a voice (the library refuses silent
    clips)."""
    buffer = io.BytesIO()
    second = np.zeros((rate, channels), np.float32)
    with soundfile.SoundFile(buffer, "w", samplerate=rate, channels=channels, format="FLAC") as sound:
        for index in range(seconds):
            if spoken and index == 0:
                sound.write(np.pad(tone(1.0, rate)[:, None], ((0, 0), (0, channels - 1))))
            else:
                sound.write(second)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bombs() -> list[bytes]:
    """The issue's bomb, 30 minutes of 8-channel 48 kHz silence (2.6 GiB as float32), and two that FFmpeg decodes:
    3 hours of AAC at 8 kHz and an hour of Opus in WebM (48 kHz); each under 1 MiB."""
    data = [silent_flac(30 * 60, 8), silent_adts(3), silent_webm(1)]
    assert all(len(bomb) < 1 << 20 for bomb in data)
    return data


def editing_server(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    """The server with a Step-Audio-EditX stand-in as `editx`, which the edit and step_audio routes need."""
    standin = write_standin(tmp_path / "upstream")
    models = tmp_path / "models.toml"
    models.write_text(
        '[[models]]\nid = "editx"\nengine = "step-audio"\n[models.options]\n'
        f"project_dir = {json.dumps(str(standin.checkout))}\nmodels_dir = {json.dumps(str(standin.models))}\n"
        'variant = "bnb"\nrequire_cuda = false\n'
    )
    return start_server("--models-config", str(models), env={"PROBE_ENGINES": "false"})


def audio_requests(audio: bytes) -> list[tuple[str, str, dict[str, Any]]]:
    """(route, the field the error must name, httpx arguments) for every way audio reaches the server."""
    encoded = base64.b64encode(audio).decode("ascii")
    step_audio = {"model": "editx", "input": "Unused for a denoise.", "response_format": "wav"}
    return [
        (
            "/v1/voices",
            "audio",
            {"data": {"name": "bomb", "transcript": "Silence."}, "files": {"audio": ("bomb.flac", audio)}},
        ),
        (
            "/voices",
            "audio",
            {"data": {"name": "bomb", "transcript": "Silence."}, "files": {"audio": ("bomb.flac", audio)}},
        ),
        (
            "/edit",
            "reference",
            {
                "data": {"model": "editx", "source": "upload", "reference_text": "Silence."},
                "files": {"reference": ("bomb.flac", audio)},
            },
        ),
        (
            "/v1/audio/edit",
            "audio",
            {"data": {"mode": "denoise", "model": "editx"}, "files": {"audio": ("bomb.flac", audio)}},
        ),
        (
            "/v1/audio/speech/upload",
            "step_audio.input_audio_file",
            {
                "data": {"payload": json.dumps(step_audio | {"step_audio": {"mode": "denoise"}})},
                "files": {"input_audio_file": ("bomb.flac", audio)},
            },
        ),
        (
            "/v1/audio/speech",
            "step_audio.input_audio_base64",
            {"json": step_audio | {"step_audio": {"mode": "denoise", "input_audio_base64": encoded}}},
        ),
        (
            "/v1/audio/speech",
            "step_audio.prompt_audio_base64",
            {
                "json": step_audio
                | {"step_audio": {"mode": "clone", "prompt_text": "Silence.", "prompt_audio_base64": encoded}}
            },
        ),
    ]


def send_everywhere(server: ServerProcess, audio: bytes, code: str) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        for route, param, arguments in audio_requests(audio):
            response = client.post(route, **arguments)
            assert response.status_code == 400, (route, response.text)
            error = response.json()["error"]
            assert (error["param"], error["code"]) == (param, code), (route, error)


def test_bombs_at_every_audio_route_are_refused_within_a_small_multiple_of_the_allowed_size(
    start_server: StartServer, tmp_path: Path, bombs: list[bytes]
) -> None:
    server = editing_server(start_server, tmp_path)
    pid = server.process.pid
    widest_allowed = silent_flac(MAX_AUDIO_SECONDS, 8, spoken=True)
    # every route's code, and the decoder's, run once on small files before the peak is measured
    send_everywhere(server, silent_flac(MAX_AUDIO_SECONDS + 1, 1), "audio_too_long")
    for short_bomb in (silent_adts, silent_webm):
        send_everywhere(server, short_bomb((MAX_AUDIO_SECONDS + 1) / 3600), "audio_too_long")
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        edit: dict[str, Any] = {
            "data": {"mode": "denoise", "model": "nonsense"},
            "files": {"audio": ("one.flac", silent_flac(1, 8))},
        }
        assert client.post("/v1/audio/edit", **edit).status_code == 404

        reset_peak(pid)
        before = memory_kib(pid)
        for _ in range(2):
            for bomb in bombs:
                send_everywhere(server, bomb, "audio_too_long")
        # the widest clip allowed is decoded whole (to be refused for its model afterwards), and stored as a voice
        edit["files"] = {"audio": ("widest.flac", widest_allowed)}
        assert client.post("/v1/audio/edit", **edit).status_code == 404
        stored = client.post(
            "/v1/voices",
            data={"name": "widest", "transcript": "Silence."},
            files={"audio": ("widest.flac", widest_allowed)},
        )
        assert stored.status_code == 201, stored.text
        assert stored.json()["seconds"] == MAX_AUDIO_SECONDS
    after = memory_kib(pid)
    growth = (after["VmHWM"] - before["VmRSS"]) * 1024
    print(f"server RSS {before['VmRSS']} KiB before, peak {after['VmHWM']} KiB: {growth / 2**20:.1f} MiB growth")
    assert growth < PEAK_GROWTH_BOUND, f"peak RSS grew by {growth / 2**20:.0f} MiB"
