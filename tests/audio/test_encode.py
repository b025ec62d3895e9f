"""Encoding float32 mono audio: whole files, streaming encoders, resampling and output rates. Every output is decoded
again with FFmpeg (PyAV) and compared with the signal that went in."""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Iterable

import av
import numpy as np
import pytest
import soxr
from av.audio.codeccontext import AudioCodecContext
from av.audio.stream import AudioStream
from av.container import InputContainer

from service.audio.encode import (
    AAC_SAMPLE_RATES,
    MEDIA_TYPES,
    MP3_SAMPLE_RATES,
    OPUS_SAMPLE_RATES,
    SUPPORTED_FORMATS,
    Audio,
    AudioFormat,
    create_encoder,
    encode_whole,
    output_sample_rate,
)

ENGINE_RATE = 22050
# LAME delays its output by 576 + 529 samples and pads the last frame; the decoder gives them back as silence.
MP3_ENCODER_DELAY = 1105
# FFmpeg's AAC encoder primes with one frame, which ADTS cannot signal, and pads the last frame.
AAC_FRAME = 1024
# Opus always decodes at 48 kHz; the rate it was given is in its header.
OPUS_DECODED_RATE = 48000
ADTS_RATE_INDEX = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
# how closely a decoded sweep follows the one encoded; Opus keeps the spectrum rather than the waveform of the
# upper part of the sweep (0.74 at 3 kHz, at 32 kb/s)
MIN_SIMILARITY = {AudioFormat.MP3: 0.95, AudioFormat.AAC: 0.95, AudioFormat.OPUS: 0.8}


def chirp(seconds: float, rate: int) -> Audio:
    """A sweep from 200 Hz to 3 kHz: unlike a steady tone it lines up with a copy of itself at one offset only."""
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * (200 * t + (3000 - 200) / (2 * seconds) * t**2)
    return (0.3 * np.sin(phase)).astype(np.float32)


def decoded_rate(audio_format: AudioFormat, rate: int) -> int:
    return OPUS_DECODED_RATE if audio_format is AudioFormat.OPUS else rate


def decode(audio_format: AudioFormat, data: bytes, rate: int) -> tuple[Audio, int]:
    """Samples (as float in [-1, 1]) and sample rate of an encoded response, decoded by FFmpeg; pcm is raw int16 at
    the rate the caller knows."""
    if audio_format is AudioFormat.PCM:
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0, rate
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.channels == 1
        frames: Iterable[av.AudioFrame] = container.decode(stream)
        if audio_format is AudioFormat.OPUS:
            frames, rate = libopus_frames(container, stream)
        else:
            rate = stream.codec_context.sample_rate
        to_float = av.AudioResampler(format="flt")
        pieces = [converted.to_ndarray().reshape(-1) for frame in frames for converted in to_float.resample(frame)]
        return (np.concatenate(pieces) if pieces else np.zeros(0, np.float32)), rate


def libopus_frames(container: InputContainer, stream: AudioStream) -> tuple[list[av.AudioFrame], int]:
    """The stream decoded by libopus, the reference decoder that browsers use: FFmpeg's own Opus decoder (5.1 and
    8.1 alike) plays some signals several times too loud, whichever encoder wrote them."""
    decoder = av.CodecContext.create("libopus", "r")
    assert isinstance(decoder, AudioCodecContext)
    decoder.extradata = stream.codec_context.extradata
    frames = [frame for packet in container.demux(stream) for frame in decoder.decode(packet)]
    return frames, decoder.sample_rate


def lag_and_similarity(reference: Audio, reference_rate: int, decoded: Audio, rate: int) -> tuple[int, float]:
    """Where `reference` lies in `decoded` (in samples at `reference_rate`, a codec delay) and the normalized
    correlation of the two there: near 1 when the signal came through, near 0 when it did not."""
    if rate != reference_rate:
        decoded = soxr.resample(decoded, rate, reference_rate, quality="HQ").astype(np.float32)
    size = 1 << int(np.ceil(np.log2(len(reference) + len(decoded))))
    spectrum = np.fft.rfft(decoded, size) * np.conj(np.fft.rfft(reference, size))
    lag = int(np.argmax(np.fft.irfft(spectrum, size)[: len(decoded)]))
    overlap = min(len(reference), len(decoded) - lag)
    a, b = reference[:overlap].astype(np.float64), decoded[lag : lag + overlap].astype(np.float64)
    return lag, float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


def max_delay(audio_format: AudioFormat) -> int:
    """The most samples a codec puts before the audio (at the rate it was given)."""
    return {AudioFormat.MP3: MP3_ENCODER_DELAY, AudioFormat.AAC: AAC_FRAME}.get(audio_format, 2)


def max_extra(audio_format: AudioFormat, rate: int) -> int:
    """How many samples longer than the audio given a decoded file may be: the delay and a padded last frame."""
    if audio_format is AudioFormat.MP3:
        return MP3_ENCODER_DELAY + (1152 if rate >= 32000 else 576)
    if audio_format is AudioFormat.AAC:
        return 2 * AAC_FRAME
    return 2


def assert_carries(audio_format: AudioFormat, data: bytes, audio: Audio, rate: int) -> None:
    """`data` decodes to `audio` (given at `rate`): at the codec's rate, as long, and the same signal."""
    decoded, actual_rate = decode(audio_format, data, rate)
    assert actual_rate == decoded_rate(audio_format, rate)
    length = len(decoded) * rate / actual_rate
    assert -2 <= length - len(audio) <= max_extra(audio_format, rate), (length, len(audio))
    lag, similarity = lag_and_similarity(audio, rate, decoded, actual_rate)
    assert lag <= max_delay(audio_format) + 2, lag
    assert similarity > MIN_SIMILARITY.get(audio_format, 0.9999), similarity


def uneven_chunks(audio: Audio) -> list[Audio]:
    """The audio cut at odd places, an empty chunk included, as an engine might hand it over."""
    cuts = sorted([0, 1000, 1000, 1003, 9001, len(audio) // 2 + 17, len(audio) - 5, len(audio)])
    assert len(audio) > 9001
    return [audio[start:end] for start, end in itertools.pairwise(cuts)]


def streamed(audio_format: AudioFormat, audio: Audio, engine_rate: int, rate: int) -> list[bytes]:
    """What a streaming encoder returns for each of `uneven_chunks(audio)`, then `finish`."""
    encoder = create_encoder(audio_format, engine_rate, rate)
    return [encoder.encode(chunk) for chunk in uneven_chunks(audio)] + [encoder.finish()]


def adts_frames(data: bytes) -> list[bytes]:
    """`data` split into ADTS frames; fails unless it is whole frames only, each starting with the sync word."""
    frames = []
    while data:
        assert len(data) >= 7
        assert (data[0], data[1] & 0xF6) == (0xFF, 0xF0), data[:7].hex()
        length = (data[3] & 0x03) << 11 | data[4] << 3 | data[5] >> 5
        assert 7 <= length <= len(data)
        frames.append(data[:length])
        data = data[length:]
    return frames


def ogg_pages(data: bytes) -> list[tuple[int, int]]:
    """(header type flags, page sequence number) of each page; fails unless `data` is whole Ogg pages only."""
    pages = []
    while data:
        assert data[:4] == b"OggS", data[:8]
        segments = data[26]
        body = sum(data[27 : 27 + segments])
        (sequence,) = struct.unpack("<I", data[18:22])
        pages.append((data[5], sequence))
        data = data[27 + segments + body :]
    return pages


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
        (AudioFormat.AAC, 22050, None, 22050),
        (AudioFormat.AAC, 24000, None, 24000),
        (AudioFormat.AAC, 22050, 20000, 22050),
        (AudioFormat.AAC, 22050, 40000, 44100),
        (AudioFormat.AAC, 22050, 8000, 8000),
        (AudioFormat.MP3, 22050, 30000, 32000),
    ],
)
def test_output_sample_rate(audio_format: AudioFormat, engine_rate: int, requested: int | None, expected: int) -> None:
    assert output_sample_rate(audio_format, engine_rate, requested) == expected


@pytest.mark.parametrize(
    ("audio_format", "allowed"),
    [(AudioFormat.OPUS, OPUS_SAMPLE_RATES), (AudioFormat.AAC, AAC_SAMPLE_RATES), (AudioFormat.MP3, MP3_SAMPLE_RATES)],
    ids=str,
)
@pytest.mark.parametrize("rate", [7000, 8000, 9000, 22050, 30000, 44100, 48000, 96000])
def test_a_fixed_rate_codec_is_given_one_of_its_rates(
    audio_format: AudioFormat, allowed: tuple[int, ...], rate: int
) -> None:
    assert output_sample_rate(audio_format, rate, None) in allowed
    assert output_sample_rate(audio_format, ENGINE_RATE, rate) in allowed


def test_the_codecs_own_rates() -> None:
    assert OPUS_SAMPLE_RATES == (8000, 12000, 16000, 24000, 48000)
    assert set(AAC_SAMPLE_RATES) == set(ADTS_RATE_INDEX)


def test_every_format_is_supported_with_a_media_type() -> None:
    assert set(SUPPORTED_FORMATS) == set(AudioFormat)
    assert MEDIA_TYPES == {
        AudioFormat.MP3: "audio/mpeg",
        AudioFormat.OPUS: "audio/ogg; codecs=opus",
        AudioFormat.AAC: "audio/aac",
        AudioFormat.FLAC: "audio/flac",
        AudioFormat.WAV: "audio/wav",
        AudioFormat.PCM: "audio/pcm",
    }


# ---- whole files


@pytest.mark.parametrize("audio_format", SUPPORTED_FORMATS, ids=str)
def test_encode_whole_carries_the_signal_at_the_output_rate(audio_format: AudioFormat) -> None:
    audio = chirp(1.0, ENGINE_RATE)
    rate = output_sample_rate(audio_format, ENGINE_RATE, None)

    data = encode_whole(audio_format, audio, ENGINE_RATE, rate)

    reference = soxr.resample(audio, ENGINE_RATE, rate, quality="HQ").astype(np.float32)
    assert_carries(audio_format, data, reference, rate)


@pytest.mark.parametrize("audio_format", SUPPORTED_FORMATS, ids=str)
def test_encode_whole_at_a_requested_rate(audio_format: AudioFormat) -> None:
    audio = chirp(0.5, ENGINE_RATE)
    rate = output_sample_rate(audio_format, ENGINE_RATE, 16000)
    assert rate == 16000

    data = encode_whole(audio_format, audio, ENGINE_RATE, rate)

    assert_carries(audio_format, data, soxr.resample(audio, ENGINE_RATE, rate, quality="HQ").astype(np.float32), rate)


def test_pcm_is_raw_little_endian_int16_of_the_samples() -> None:
    audio = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0], dtype=np.float32)

    data = encode_whole(AudioFormat.PCM, audio, 24000, 24000)

    assert len(data) == 2 * len(audio)
    assert struct.unpack("<7h", data) == (0, 16383, -16383, 32767, -32767, 32767, -32767)


def test_whole_wav_header_has_exact_sizes() -> None:
    audio = chirp(0.25, ENGINE_RATE)

    data = encode_whole(AudioFormat.WAV, audio, ENGINE_RATE, ENGINE_RATE)

    assert data[:4] == b"RIFF"
    assert data[8:16] == b"WAVEfmt "
    (riff_size,) = struct.unpack("<I", data[4:8])
    (data_size,) = struct.unpack("<I", data[40:44])
    assert data_size == 2 * len(audio)
    assert riff_size == 36 + data_size == len(data) - 8


def flac_total_samples_and_md5(data: bytes) -> tuple[int, bytes]:
    """STREAMINFO's total sample count (36 bits) and MD5 of the audio, both 0 where the writer did not know them."""
    assert data[:4] == b"fLaC"
    assert data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    info = data[8 : 8 + 34]
    return int.from_bytes(info[13:18], "big") & ((1 << 36) - 1), info[18:34]


def test_whole_flac_header_records_the_length_and_a_checksum() -> None:
    audio = chirp(0.5, ENGINE_RATE)

    data = encode_whole(AudioFormat.FLAC, audio, ENGINE_RATE, ENGINE_RATE)

    total, md5 = flac_total_samples_and_md5(data)
    assert total == len(audio)
    assert md5 != bytes(16)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 44100, 48000])
def test_aac_at_each_rate_is_adts_announcing_it(rate: int) -> None:
    audio = chirp(1.0, rate)

    data = encode_whole(AudioFormat.AAC, audio, rate, rate)

    frames = adts_frames(data)
    assert {ADTS_RATE_INDEX[frame[2] >> 2 & 0x0F] for frame in frames} == {rate}
    assert {(frame[2] & 0x01) << 2 | frame[3] >> 6 for frame in frames} == {1}  # mono
    assert {frame[2] >> 6 for frame in frames} == {1}  # AAC LC
    assert_carries(AudioFormat.AAC, data, audio, rate)


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_opus_header_names_the_rate_it_was_given(rate: int) -> None:
    data = encode_whole(AudioFormat.OPUS, chirp(0.5, rate), rate, rate)

    head = data.index(b"OpusHead")
    version, channels, _pre_skip, input_rate = struct.unpack("<BBHI", data[head + 8 : head + 16])
    assert (version, channels, input_rate) == (1, 1, rate)


@pytest.mark.parametrize("requested", [16000, 30000, 44000])
def test_mp3_is_written_at_the_rate_it_announces(requested: int) -> None:
    """The rate output_sample_rate picks is what clients are told (X-Sample-Rate): the file must match it."""
    audio = chirp(0.5, ENGINE_RATE)
    rate = output_sample_rate(AudioFormat.MP3, ENGINE_RATE, requested)

    _, actual_rate = decode(AudioFormat.MP3, encode_whole(AudioFormat.MP3, audio, ENGINE_RATE, rate), rate)

    assert actual_rate == rate


# ---- streaming encoders


@pytest.mark.parametrize("audio_format", SUPPORTED_FORMATS, ids=str)
def test_a_stream_of_uneven_chunks_is_one_file_carrying_the_signal(audio_format: AudioFormat) -> None:
    audio = chirp(3.0, ENGINE_RATE)
    rate = output_sample_rate(audio_format, ENGINE_RATE, None)

    data = b"".join(streamed(audio_format, audio, ENGINE_RATE, rate))

    reference = soxr.resample(audio, ENGINE_RATE, rate, quality="HQ").astype(np.float32)
    assert_carries(audio_format, data, reference, rate)


@pytest.mark.parametrize("audio_format", SUPPORTED_FORMATS, ids=str)
def test_streaming_encoder_sends_audio_before_the_end(audio_format: AudioFormat) -> None:
    rate = output_sample_rate(audio_format, ENGINE_RATE, None)

    *outputs, tail = streamed(audio_format, chirp(3.0, ENGINE_RATE), ENGINE_RATE, rate)

    # beyond whatever headers the first call wrote, audio arrived while chunks were still coming
    assert sum(len(output) for output in outputs[1:]) > 0
    assert sum(len(output) for output in outputs) > len(tail)


@pytest.mark.parametrize("audio_format", [f for f in SUPPORTED_FORMATS if f is not AudioFormat.PCM], ids=str)
def test_every_prefix_of_a_stream_plays(audio_format: AudioFormat) -> None:
    """What a client has received at any point decodes, to more audio as more arrives."""
    audio = chirp(3.0, ENGINE_RATE)
    rate = output_sample_rate(audio_format, ENGINE_RATE, None)
    outputs = streamed(audio_format, audio, ENGINE_RATE, rate)

    lengths = []
    for count in range(1, len(outputs) + 1):
        prefix = b"".join(outputs[:count])
        if outputs[count - 1] and len(prefix) > 200:  # past the headers
            lengths.append(len(decode(audio_format, prefix, rate)[0]))

    assert len(lengths) >= 3
    assert lengths == sorted(lengths)
    assert lengths[0] > 0


def test_streamed_aac_is_whole_adts_frames_in_every_chunk() -> None:
    outputs = streamed(AudioFormat.AAC, chirp(3.0, ENGINE_RATE), ENGINE_RATE, ENGINE_RATE)

    frames = [adts_frames(output) for output in outputs]

    assert sum(len(chunk) for chunk in frames) >= 3 * ENGINE_RATE // AAC_FRAME
    assert sum(1 for chunk in frames if chunk) >= 4


def test_streamed_opus_is_whole_ogg_pages_in_every_chunk_from_one_stream() -> None:
    outputs = streamed(AudioFormat.OPUS, chirp(3.0, ENGINE_RATE), ENGINE_RATE, 24000)

    pages = [ogg_pages(output) for output in outputs]

    flat = [page for chunk in pages for page in chunk]
    assert [sequence for _, sequence in flat] == list(range(len(flat)))
    assert [flags & 0x02 for flags, _ in flat] == [0x02] + [0] * (len(flat) - 1)  # beginning of stream: once
    assert [flags & 0x04 for flags, _ in flat] == [0] * (len(flat) - 1) + [0x04]  # end of stream: last page
    assert sum(1 for chunk in pages if chunk) >= 4


def test_streamed_flac_leaves_the_length_unknown() -> None:
    """FLAC's header can't be rewritten once sent: the length is 0 (unknown, which FLAC allows) and still plays."""
    audio = chirp(1.0, ENGINE_RATE)

    outputs = streamed(AudioFormat.FLAC, audio, ENGINE_RATE, ENGINE_RATE)

    assert outputs[0][:4] == b"fLaC"
    assert flac_total_samples_and_md5(outputs[0]) == (0, bytes(16))
    assert_carries(AudioFormat.FLAC, b"".join(outputs), audio, ENGINE_RATE)


def test_streaming_wav_header_uses_unknown_sizes_and_still_reads() -> None:
    audio = chirp(1.0, ENGINE_RATE)

    chunks = streamed(AudioFormat.WAV, audio, ENGINE_RATE, ENGINE_RATE)
    data = b"".join(chunks)

    assert len(chunks[0]) == 44 + 2 * 1000  # the header goes out with the first chunk, once
    assert data[:4] == b"RIFF"
    assert data[4:8] == b"\xff\xff\xff\xff"
    assert data[36:40] == b"data"
    assert data[40:44] == b"\xff\xff\xff\xff"
    assert struct.unpack("<HHIIHH", data[20:36]) == (1, 1, ENGINE_RATE, 2 * ENGINE_RATE, 2, 16)
    assert len(data) == 44 + 2 * len(audio)
    assert_carries(AudioFormat.WAV, data, audio, ENGINE_RATE)


def test_wav_encoder_with_a_known_length_writes_exact_sizes() -> None:
    audio = chirp(0.5, ENGINE_RATE)
    encoder = create_encoder(AudioFormat.WAV, ENGINE_RATE, ENGINE_RATE, total_samples=len(audio))

    data = b"".join(encoder.encode(chunk) for chunk in uneven_chunks(audio)) + encoder.finish()

    assert struct.unpack("<I", data[40:44]) == (2 * len(audio),)
    assert struct.unpack("<I", data[4:8]) == (len(data) - 8,)


@pytest.mark.parametrize("audio_format", SUPPORTED_FORMATS, ids=str)
def test_streaming_encoder_resamples_22050_to_24000(audio_format: AudioFormat) -> None:
    audio = chirp(2.0, 22050)

    data = b"".join(streamed(audio_format, audio, 22050, 24000))

    assert_carries(audio_format, data, soxr.resample(audio, 22050, 24000, quality="HQ").astype(np.float32), 24000)


def test_resampled_pcm_stream_keeps_the_signal_continuous() -> None:
    """The resampler keeps its state across chunks: the stream matches resampling the whole audio at once."""
    audio = chirp(1.0, 22050)
    whole = encode_whole(AudioFormat.PCM, audio, 22050, 24000)

    stream = b"".join(streamed(AudioFormat.PCM, audio, 22050, 24000))

    whole_samples, _ = decode(AudioFormat.PCM, whole, 24000)
    streamed_samples, _ = decode(AudioFormat.PCM, stream, 24000)
    assert len(streamed_samples) == len(whole_samples) == 24000
    assert float(np.max(np.abs(streamed_samples - whole_samples))) < 0.01


@pytest.mark.parametrize("audio_format", SUPPORTED_FORMATS, ids=str)
def test_a_stream_given_no_audio_ends_cleanly(audio_format: AudioFormat) -> None:
    """An engine may yield no chunk at all; what was sent is still a file with no audio (or nothing, for the
    formats without a header)."""
    rate = output_sample_rate(audio_format, ENGINE_RATE, ENGINE_RATE)
    encoder = create_encoder(audio_format, ENGINE_RATE, rate)

    data = encoder.encode(np.zeros(0, np.float32)) + encoder.finish()

    if audio_format in (AudioFormat.PCM, AudioFormat.MP3, AudioFormat.AAC):
        assert data == b""
    elif audio_format is AudioFormat.WAV:
        assert len(data) == 44
    elif audio_format is AudioFormat.OPUS:
        assert [sequence for _, sequence in ogg_pages(data)] == [0, 1]  # the two header pages
        assert b"OpusHead" in data
    else:
        assert decode(audio_format, data, rate)[0].size == 0
