"""Encoding float32 mono audio: whole files, streaming encoders, resampling and output rates."""

from __future__ import annotations

import io
import itertools
import struct

import numpy as np
import pytest
import soundfile  # type: ignore[import-untyped,unused-ignore]

from service.audio.encode import (
    MEDIA_TYPES,
    OPUS_SAMPLE_RATES,
    SUPPORTED_FORMATS,
    Audio,
    AudioFormat,
    create_encoder,
    encode_whole,
    output_sample_rate,
)

ENGINE_RATE = 22050
OPUS_FRAME_SECONDS = 0.020
# LAME delays its output by 576 + 529 samples and pads the last frame; the decoder gives them back as silence.
MP3_ENCODER_DELAY = 1105


def tone(seconds: float, rate: int, frequency: float = 440.0) -> Audio:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def slack(audio_format: AudioFormat, rate: int) -> int:
    """How many samples a decoded file may differ from the audio given: about a frame or two of the codec."""
    if audio_format is AudioFormat.MP3:
        frame = 1152 if rate >= 32000 else 576
        return MP3_ENCODER_DELAY + frame
    if audio_format is AudioFormat.OPUS:
        return round(2 * OPUS_FRAME_SECONDS * rate)
    return 2


def decode(audio_format: AudioFormat, data: bytes, rate: int) -> tuple[Audio, int]:
    """Samples and sample rate of an encoded response; pcm is raw int16 at the rate the caller knows."""
    if audio_format is AudioFormat.PCM:
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
        return samples, rate
    decoded, decoded_rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert decoded.ndim == 1
    return decoded, int(decoded_rate)


def rms(audio: Audio) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def uneven_chunks(audio: Audio) -> list[Audio]:
    """The audio cut at odd places, an empty chunk included, as an engine might hand it over."""
    cuts = sorted([0, 1000, 1000, 1003, 9001, len(audio) // 2 + 17, len(audio) - 5, len(audio)])
    assert len(audio) > 9001
    return [audio[start:end] for start, end in itertools.pairwise(cuts)]


# ---- output_sample_rate


@pytest.mark.parametrize(
    ("audio_format", "engine_rate", "requested", "expected"),
    [
        (AudioFormat.PCM, 22050, None, 24000),
        (AudioFormat.PCM, 16000, None, 24000),
        (AudioFormat.PCM, 22050, 16000, 16000),
        (AudioFormat.WAV, 22050, None, 22050),
        (AudioFormat.FLAC, 22050, None, 22050),
        (AudioFormat.MP3, 22050, None, 22050),
        (AudioFormat.WAV, 22050, 44100, 44100),
        (AudioFormat.FLAC, 22050, 8000, 8000),
        (AudioFormat.OPUS, 22050, None, 24000),
        (AudioFormat.OPUS, 44100, None, 48000),
        (AudioFormat.OPUS, 11025, None, 12000),
        (AudioFormat.OPUS, 16000, None, 16000),
        (AudioFormat.OPUS, 22050, 16000, 16000),
        (AudioFormat.OPUS, 22050, 20000, 24000),
        (AudioFormat.OPUS, 22050, 47000, 48000),
    ],
)
def test_output_sample_rate(audio_format: AudioFormat, engine_rate: int, requested: int | None, expected: int) -> None:
    assert output_sample_rate(audio_format, engine_rate, requested) == expected


@pytest.mark.parametrize("rate", [7000, 8000, 9000, 22050, 30000, 44100, 48000, 96000])
def test_opus_rate_is_always_one_opus_supports(rate: int) -> None:
    assert output_sample_rate(AudioFormat.OPUS, rate, None) in OPUS_SAMPLE_RATES
    assert output_sample_rate(AudioFormat.OPUS, ENGINE_RATE, rate) in OPUS_SAMPLE_RATES


def test_every_format_has_a_media_type_and_aac_is_not_supported() -> None:
    assert set(MEDIA_TYPES) == set(AudioFormat)
    assert AudioFormat.AAC not in SUPPORTED_FORMATS
    assert set(SUPPORTED_FORMATS) == set(AudioFormat) - {AudioFormat.AAC}


# ---- whole files


@pytest.mark.parametrize("audio_format", SUPPORTED_FORMATS, ids=str)
def test_encode_whole_decodes_with_rate_and_duration(audio_format: AudioFormat) -> None:
    audio = tone(1.0, ENGINE_RATE)
    rate = output_sample_rate(audio_format, ENGINE_RATE, None)

    data = encode_whole(audio_format, audio, ENGINE_RATE, rate)

    decoded, decoded_rate = decode(audio_format, data, rate)
    assert decoded_rate == rate
    assert abs(len(decoded) - rate) <= slack(audio_format, rate)
    assert rms(decoded) == pytest.approx(rms(audio), rel=0.15)


@pytest.mark.parametrize("audio_format", SUPPORTED_FORMATS, ids=str)
def test_encode_whole_at_a_requested_rate(audio_format: AudioFormat) -> None:
    audio = tone(0.5, ENGINE_RATE)
    rate = output_sample_rate(audio_format, ENGINE_RATE, 16000)
    assert rate == 16000

    decoded, decoded_rate = decode(audio_format, encode_whole(audio_format, audio, ENGINE_RATE, rate), rate)

    assert decoded_rate == 16000
    assert abs(len(decoded) - 8000) <= slack(audio_format, rate)
    assert rms(decoded) == pytest.approx(rms(audio), rel=0.15)


def test_pcm_is_raw_little_endian_int16_of_the_samples() -> None:
    audio = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0], dtype=np.float32)

    data = encode_whole(AudioFormat.PCM, audio, 24000, 24000)

    assert len(data) == 2 * len(audio)
    assert struct.unpack("<7h", data) == (0, 16383, -16383, 32767, -32767, 32767, -32767)


def test_whole_wav_header_has_exact_sizes() -> None:
    audio = tone(0.25, ENGINE_RATE)

    data = encode_whole(AudioFormat.WAV, audio, ENGINE_RATE, ENGINE_RATE)

    assert data[:4] == b"RIFF"
    assert data[8:16] == b"WAVEfmt "
    (riff_size,) = struct.unpack("<I", data[4:8])
    (data_size,) = struct.unpack("<I", data[40:44])
    assert data_size == 2 * len(audio)
    assert riff_size == 36 + data_size == len(data) - 8


def test_whole_file_resamples_to_the_output_rate() -> None:
    audio = tone(1.0, ENGINE_RATE)

    data = encode_whole(AudioFormat.WAV, audio, ENGINE_RATE, 24000)

    decoded, decoded_rate = decode(AudioFormat.WAV, data, 24000)
    assert decoded_rate == 24000
    assert abs(len(decoded) - 24000) <= 2


@pytest.mark.parametrize("requested", [16000, 30000, 44000])
def test_mp3_is_written_at_the_rate_it_announces(requested: int) -> None:
    """The rate output_sample_rate picks is what clients are told (X-Sample-Rate): the file must match it."""
    audio = tone(0.5, ENGINE_RATE)
    rate = output_sample_rate(AudioFormat.MP3, ENGINE_RATE, requested)

    _, decoded_rate = decode(AudioFormat.MP3, encode_whole(AudioFormat.MP3, audio, ENGINE_RATE, rate), rate)

    assert decoded_rate == rate


# ---- streaming encoders


@pytest.mark.parametrize("audio_format", SUPPORTED_FORMATS, ids=str)
def test_streaming_encoder_decodes_with_rate_and_duration(audio_format: AudioFormat) -> None:
    audio = tone(3.0, ENGINE_RATE)
    rate = output_sample_rate(audio_format, ENGINE_RATE, None)
    encoder = create_encoder(audio_format, ENGINE_RATE, rate)

    data = b"".join(encoder.encode(chunk) for chunk in uneven_chunks(audio)) + encoder.finish()

    decoded, decoded_rate = decode(audio_format, data, rate)
    assert decoded_rate == rate
    assert len(decoded) == pytest.approx(3 * rate, rel=0.05)
    assert abs(len(decoded) - 3 * rate) <= slack(audio_format, rate) + 16
    assert rms(decoded) == pytest.approx(rms(audio), rel=0.15)


@pytest.mark.parametrize("audio_format", [AudioFormat.MP3, AudioFormat.OPUS, AudioFormat.WAV, AudioFormat.PCM], ids=str)
def test_streaming_encoder_sends_audio_before_the_end(audio_format: AudioFormat) -> None:
    audio = tone(3.0, ENGINE_RATE)
    rate = output_sample_rate(audio_format, ENGINE_RATE, None)
    encoder = create_encoder(audio_format, ENGINE_RATE, rate)

    outputs = [encoder.encode(chunk) for chunk in uneven_chunks(audio)]
    tail = encoder.finish()

    # beyond whatever headers the first call wrote, audio arrived while chunks were still coming
    assert sum(len(output) for output in outputs[1:]) > 0
    assert sum(len(output) for output in outputs) > len(tail)


def test_flac_stream_is_written_at_the_end() -> None:
    audio = tone(1.0, ENGINE_RATE)
    encoder = create_encoder(AudioFormat.FLAC, ENGINE_RATE, ENGINE_RATE)

    outputs = [encoder.encode(chunk) for chunk in uneven_chunks(audio)]
    tail = encoder.finish()

    assert outputs == [b""] * len(outputs)
    assert tail[:4] == b"fLaC"
    decoded, decoded_rate = decode(AudioFormat.FLAC, tail, ENGINE_RATE)
    assert (decoded_rate, len(decoded)) == (ENGINE_RATE, len(audio))


def test_streaming_wav_header_uses_unknown_sizes_and_still_reads() -> None:
    audio = tone(1.0, ENGINE_RATE)
    encoder = create_encoder(AudioFormat.WAV, ENGINE_RATE, ENGINE_RATE)

    chunks = [encoder.encode(chunk) for chunk in uneven_chunks(audio)]
    data = b"".join(chunks) + encoder.finish()

    assert len(chunks[0]) == 44 + 2 * 1000  # the header goes out with the first chunk, once
    assert data[:4] == b"RIFF"
    assert data[4:8] == b"\xff\xff\xff\xff"
    assert data[36:40] == b"data"
    assert data[40:44] == b"\xff\xff\xff\xff"
    assert struct.unpack("<HHIIHH", data[20:36]) == (1, 1, ENGINE_RATE, 2 * ENGINE_RATE, 2, 16)
    assert len(data) == 44 + 2 * len(audio)
    decoded, decoded_rate = decode(AudioFormat.WAV, data, ENGINE_RATE)
    assert decoded_rate == ENGINE_RATE
    assert len(decoded) == len(audio)


def test_wav_encoder_with_a_known_length_writes_exact_sizes() -> None:
    audio = tone(0.5, ENGINE_RATE)
    encoder = create_encoder(AudioFormat.WAV, ENGINE_RATE, ENGINE_RATE, total_samples=len(audio))

    data = b"".join(encoder.encode(chunk) for chunk in uneven_chunks(audio)) + encoder.finish()

    assert struct.unpack("<I", data[40:44]) == (2 * len(audio),)
    assert struct.unpack("<I", data[4:8]) == (len(data) - 8,)


@pytest.mark.parametrize("audio_format", SUPPORTED_FORMATS, ids=str)
def test_streaming_encoder_resamples_22050_to_24000(audio_format: AudioFormat) -> None:
    audio = tone(2.0, 22050)
    encoder = create_encoder(audio_format, 22050, 24000)

    data = b"".join(encoder.encode(chunk) for chunk in uneven_chunks(audio)) + encoder.finish()

    decoded, decoded_rate = decode(audio_format, data, 24000)
    assert decoded_rate == 24000
    assert abs(len(decoded) - 48000) <= slack(audio_format, 24000) + 16
    assert rms(decoded) == pytest.approx(rms(audio), rel=0.15)


def test_resampled_pcm_stream_keeps_the_signal_continuous() -> None:
    """The resampler keeps its state across chunks: the stream matches resampling the whole audio at once."""
    audio = tone(1.0, 22050)
    whole = encode_whole(AudioFormat.PCM, audio, 22050, 24000)
    encoder = create_encoder(AudioFormat.PCM, 22050, 24000)

    streamed = b"".join(encoder.encode(chunk) for chunk in uneven_chunks(audio)) + encoder.finish()

    whole_samples, _ = decode(AudioFormat.PCM, whole, 24000)
    streamed_samples, _ = decode(AudioFormat.PCM, streamed, 24000)
    assert len(streamed_samples) == len(whole_samples) == 24000
    assert float(np.max(np.abs(streamed_samples - whole_samples))) < 0.01


@pytest.mark.parametrize("audio_format", SUPPORTED_FORMATS, ids=str)
def test_finish_without_any_audio_does_not_fail(audio_format: AudioFormat) -> None:
    """An engine may yield no chunk at all; the stream must still end cleanly (encoder at the engine's rate)."""
    rate = output_sample_rate(audio_format, ENGINE_RATE, ENGINE_RATE)
    encoder = create_encoder(audio_format, ENGINE_RATE, rate)

    tail = encoder.finish()

    assert isinstance(tail, bytes)


def test_aac_is_rejected_naming_the_format() -> None:
    with pytest.raises(ValueError, match=r"'aac'") as raised:
        create_encoder(AudioFormat.AAC, ENGINE_RATE, ENGINE_RATE)
    for supported in SUPPORTED_FORMATS:
        assert supported.value in str(raised.value)
    with pytest.raises(ValueError, match=r"'aac'"):
        encode_whole(AudioFormat.AAC, tone(0.1, ENGINE_RATE), ENGINE_RATE, ENGINE_RATE)
