"""AudioDecoder's bounds: what a header declares is checked before decoding, and decoding reads block by block,
down-mixed as it goes, never past the allowed length; what libsndfile cannot read goes through FFmpeg, under the
same bounds."""

from __future__ import annotations

import gc
import io
import tracemalloc
from collections.abc import Callable
from typing import Any

import anyio
import av
import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from service.audio.decode import MAX_FRAME_SAMPLES, AudioDecoder
from service.audio.encode import AudioFormat, create_encoder, encode_whole, output_sample_rate
from service.controllers.errors import ApiError, as_api_error
from service.errors import ServiceError
from tests.support.audio import RATE, tone
from tests.support.ffmpeg_audio import muxed, silent_adts, silent_webm

# libsndfile's frame count for a file whose length it cannot tell (SF_COUNT_MAX)
UNKNOWN_LENGTH = 2**63 - 1


def decoder(max_seconds: float = 30) -> AudioDecoder:
    return AudioDecoder(RATE, max_seconds=max_seconds, max_bytes=64 << 20, url_prefixes=())


def encoded(samples: npt.NDArray[np.float32], rate: int, audio_format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=audio_format, subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every SoundFile.read the decoder makes: (frames asked for, channels, frames returned)."""
    calls: list[tuple[int, int, int]] = []
    read = soundfile.SoundFile.read

    def recording_read(self: soundfile.SoundFile, frames: int = -1, *args: Any, **kwargs: Any) -> Any:
        result = read(self, frames, *args, **kwargs)
        calls.append((frames, self.channels, len(result)))
        return result

    monkeypatch.setattr(soundfile.SoundFile, "read", recording_read)
    return calls


def refusal(data: bytes, audio_decoder: AudioDecoder | None = None) -> ApiError:
    """The decoder's refusal of `data`, as the API answers it."""
    with pytest.raises(ServiceError) as error:
        (audio_decoder or decoder()).decode(data, "audio")
    return as_api_error(error.value)


def test_a_header_longer_than_the_limit_is_refused_before_anything_is_decoded(
    reads: list[tuple[int, int, int]],
) -> None:
    error = refusal(encoded(np.zeros((48000 * 40, 8), np.float32), 48000, "FLAC"))
    assert (error.status, error.code, error.param) == (400, "audio_too_long", "audio")
    assert error.message == "audio is 40.0 s long; the limit is 30 s"
    assert reads == []


def test_a_file_of_unknown_length_is_read_no_further_than_the_limit(
    reads: list[tuple[int, int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A header that tells nothing (or too little) of the length: decoding itself stops just past the limit."""
    data = encoded(tone(40), RATE)
    monkeypatch.setattr(soundfile.SoundFile, "frames", property(lambda _: UNKNOWN_LENGTH))
    error = refusal(data, decoder(max_seconds=5))
    assert (error.status, error.code, error.param) == (400, "audio_too_long", "audio")
    assert "the limit is 5 s" in error.message
    assert sum(returned for _, _, returned in reads) == 5 * RATE + 1


def test_many_channels_are_read_in_blocks_and_mixed_down_as_they_come(reads: list[tuple[int, int, int]]) -> None:
    """8 channels at 48 kHz for the full allowed length: no read holds more than 1 MiB of samples."""
    rate, seconds = 48000, 30
    levels = np.linspace(-0.4, 0.4, 8, dtype=np.float32)
    data = encoded(np.ones((rate * seconds, 8), np.float32) * levels, rate, "FLAC")
    clip = decoder(max_seconds=seconds).decode(data, "audio")
    assert clip.sample_rate == RATE
    assert clip.samples.shape == (RATE * seconds,)
    assert float(np.abs(clip.samples[RATE:-RATE] - levels.mean()).max()) < 1e-3
    assert reads, "the decoder read nothing through SoundFile.read"
    assert all(asked > 0 and asked * channels <= 1 << 18 for asked, channels, _ in reads), reads[:3]
    assert sum(returned for _, _, returned in reads) == rate * seconds


@pytest.mark.parametrize(
    ("channels", "rate", "code", "says"),
    [
        (64, RATE, "too_many_channels", "audio has 64 channels; at most 32 are accepted"),
        (1, 10_000_000, "unsupported_sample_rate", "audio is sampled at 10000000 Hz; 1000 to 384000 Hz are accepted"),
        (1, 10, "unsupported_sample_rate", "audio is sampled at 10 Hz; 1000 to 384000 Hz are accepted"),
    ],
)
def test_absurd_channel_counts_and_rates_are_refused_from_the_header(
    reads: list[tuple[int, int, int]], channels: int, rate: int, code: str, says: str
) -> None:
    error = refusal(encoded(np.zeros((max(rate, 1000), channels), np.float32), rate))
    assert (error.status, error.code, error.param, error.message) == (400, code, "audio", says)
    assert reads == []


# ---- formats libsndfile cannot read, through FFmpeg


def similarity(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Normalized correlation of two signals at the offset where they line up best (a codec's delay)."""
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    lag = int(np.argmax(np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)[: len(b)]))
    overlap = min(len(a), len(b) - lag)
    x, y = a[:overlap].astype(np.float64), b[lag : lag + overlap].astype(np.float64)
    return float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y)))


def stereo_tone(seconds: float, rate: int) -> npt.NDArray[np.float32]:
    """The test tone in both channels, as (channels, frames)."""
    return np.ascontiguousarray(tone(seconds, rate, channels=2).T)


@pytest.mark.parametrize(
    ("name", "muxer", "codec", "rate", "layout", "sample_format"),
    [
        ("aac (ADTS)", "adts", "aac", 44100, "stereo", "fltp"),
        ("m4a", "ipod", "aac", 48000, "mono", "fltp"),
        ("mp4", "mp4", "aac", 22050, "stereo", "fltp"),
        ("webm", "webm", "libopus", 48000, "stereo", "flt"),
        ("mka", "matroska", "libopus", 24000, "mono", "flt"),
        ("ac3", "ac3", "ac3", 48000, "stereo", "fltp"),
    ],
)
def test_uploads_in_formats_libsndfile_cannot_read_decode_through_ffmpeg(
    reads: list[tuple[int, int, int]], name: str, muxer: str, codec: str, rate: int, layout: str, sample_format: str
) -> None:
    seconds = 2.0
    channels = 2 if layout == "stereo" else 1
    samples = stereo_tone(seconds, rate) if channels == 2 else tone(seconds, rate)[None, :]
    data = muxed(muxer, codec, samples, rate, layout, sample_format)
    with pytest.raises(soundfile.LibsndfileError):
        soundfile.info(io.BytesIO(data))

    clip = decoder().decode(data, "audio")

    assert clip.sample_rate == RATE
    assert abs(len(clip.samples) - seconds * RATE) <= 2048 * RATE / rate  # a codec frame of priming and padding
    assert similarity(tone(seconds), clip.samples) > 0.99
    assert reads == []  # nothing went through libsndfile's reader


def test_a_streamed_flac_response_of_unknown_length_reads_back() -> None:
    """libsndfile opens FLAC whose header leaves the length unknown (as a streamed response's does), then fails to
    read it; FFmpeg reads it."""
    audio = tone(2.0)
    encoder = create_encoder(AudioFormat.FLAC, RATE, RATE)
    data = b"".join(encoder.encode(audio[start : start + 5000]) for start in range(0, len(audio), 5000))
    data += encoder.finish()
    assert soundfile.info(io.BytesIO(data)).frames == UNKNOWN_LENGTH

    clip = decoder().decode(data, "audio")

    assert len(clip.samples) == len(audio)
    assert float(np.max(np.abs(clip.samples - audio))) < 1e-3


@pytest.mark.parametrize("audio_format", [AudioFormat.AAC, AudioFormat.OPUS, AudioFormat.MP3], ids=str)
def test_the_servers_own_responses_read_back(audio_format: AudioFormat) -> None:
    rate = output_sample_rate(audio_format, RATE, None)

    clip = decoder().decode(encode_whole(audio_format, tone(2.0), RATE, rate), "audio")

    assert abs(len(clip.samples) - 2 * RATE) <= 2200
    assert similarity(tone(2.0), clip.samples) > 0.99


@pytest.mark.parametrize(
    ("channels", "rate", "code", "says"),
    [
        (40, RATE, "too_many_channels", "audio has 40 channels; at most 32 are accepted"),
        (1, 500, "unsupported_sample_rate", "audio is sampled at 500 Hz; 1000 to 384000 Hz are accepted"),
    ],
)
def test_absurd_channel_counts_and_rates_are_refused_through_ffmpeg_too(
    channels: int, rate: int, code: str, says: str
) -> None:
    layout = "mono" if channels == 1 else f"{channels} channels"
    data = muxed("matroska", "pcm_s16le", np.zeros((channels, rate), np.float32), rate, layout, "s16")

    error = refusal(data)

    assert (error.status, error.code, error.param, error.message) == (400, code, "audio", says)


def test_a_stream_that_changes_channels_part_way_is_refused() -> None:
    data = muxed("adts", "aac", tone(1.0)[None, :], RATE) + muxed("adts", "aac", stereo_tone(1.0, RATE), RATE, "stereo")

    error = refusal(data)

    assert (error.status, error.code) == (400, "invalid_audio")
    assert error.message.endswith(": its sample format, channels or rate change part way")


def test_a_decoded_frame_larger_than_any_codec_makes_is_refused_before_it_is_allocated() -> None:
    """One Matroska block of raw samples, 1.5 M frames long: FFmpeg stops at MAX_FRAME_SAMPLES."""
    data = muxed("matroska", "pcm_s16le", np.zeros((1, MAX_FRAME_SAMPLES * 3 // 2), np.float32), 48000, "mono", "s16")

    error = refusal(data, decoder(max_seconds=60))

    assert (error.status, error.code) == (400, "invalid_audio")


def test_a_container_without_audio_is_named_as_such() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=1)
        assert isinstance(stream, av.VideoStream)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        container.mux(stream.encode(av.VideoFrame(16, 16, "yuv420p")))
        container.mux(stream.encode(None))

    error = refusal(buffer.getvalue())

    assert (error.status, error.code) == (400, "invalid_audio")
    assert error.message.endswith(": it holds no audio stream")


@pytest.mark.parametrize(
    "data",
    [
        b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nfile:///etc/hostname\n#EXT-X-ENDLIST\n",
        b"ffconcat version 1.0\nfile /etc/hostname\n",
    ],
    ids=["hls playlist", "concat list"],
)
def test_playlists_naming_other_files_are_not_followed(data: bytes) -> None:
    error = refusal(data)
    assert (error.status, error.code) == (400, "invalid_audio")


def test_a_container_ffmpeg_reads_but_the_decoder_does_not_accept_is_refused() -> None:
    """The demuxers are a list (FFMPEG_DEMUXERS): MPEG-TS, a video container, is not on it."""
    data = muxed("mpegts", "aac", tone(1.0)[None, :], RATE)
    with av.open(io.BytesIO(data)) as container:
        assert container.format.name == "mpegts"

    error = refusal(data)

    assert (error.status, error.code) == (400, "invalid_audio")


@pytest.mark.parametrize(("name", "bomb"), [("adts", silent_adts), ("webm", silent_webm)])
def test_a_tiny_file_of_hours_of_audio_is_refused_while_decoding(name: str, bomb: Callable[[float], bytes]) -> None:
    """A decode bomb: decoding stops just past the limit, and what it holds never grows beyond the allowed clip."""
    data = bomb(3 if name == "adts" else 1)
    assert len(data) < 1 << 20

    tracemalloc.start()
    try:
        error = refusal(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (error.status, error.code, error.param) == (400, "audio_too_long", "audio")
    assert error.message == "audio is more than 30 s long; the limit is 30 s"
    allowed_bytes = 30 * RATE * 4
    assert peak < 3 * allowed_bytes, f"{peak / 2**20:.1f} MiB held while decoding"


def test_a_refusal_keeps_none_of_the_audio_decoded_before_it_alive() -> None:
    """Raised in anyio's worker thread, a refusal lives on in a reference cycle until the garbage collector runs
    (here: never); the frames in its traceback must not hold the clip decoded up to the limit, nor FFmpeg's state."""
    bomb = silent_webm(0.1)
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        with pytest.raises(ServiceError) as refused:
            anyio.run(decoder().read, bomb, "audio")
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()

    assert as_api_error(refused.value).code == "audio_too_long"
    assert held < 256 << 10, f"{held / 2**20:.1f} MiB still held"


def test_a_file_that_is_not_audio_is_named_without_python_internals() -> None:
    error = refusal(b"just some text, certainly not a WAV file\n" * 50)
    assert (error.status, error.code, error.param) == (400, "invalid_audio", "audio")
    assert error.message == (
        "audio is not audio this server can read (wav, flac, ogg, opus, mp3, aac, m4a, webm and the other audio "
        "formats FFmpeg reads): Invalid data found when processing input"
    )
