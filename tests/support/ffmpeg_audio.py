"""Test audio written by FFmpeg (PyAV): containers libsndfile cannot read, and decode bombs made of them."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt


def muxed(
    muxer: str,
    codec: str,
    samples: npt.NDArray[np.float32],
    rate: int,
    layout: str = "mono",
    sample_format: str = "fltp",
) -> bytes:
    """`samples` ((channels, frames), float32 in [-1, 1]) encoded by FFmpeg and put in `muxer`'s container."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=muxer) as container:
        stream = container.add_stream(codec, rate=rate)
        assert isinstance(stream, av.AudioStream)
        stream.layout = layout
        stream.format = sample_format
        interleaved = samples.T.reshape(1, -1)
        if sample_format == "s16":
            ints = np.ascontiguousarray((np.clip(interleaved, -1, 1) * 32767).astype(np.int16))
            frame = av.AudioFrame.from_ndarray(ints, format=sample_format, layout=layout)
        else:
            floats = np.ascontiguousarray(samples if sample_format.endswith("p") else interleaved)
            frame = av.AudioFrame.from_ndarray(floats, format=sample_format, layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def silent_adts(hours: float, rate: int = 8000) -> bytes:
    """Hours of silence as AAC in ADTS: one silent frame (11 bytes for 1024 samples) over and over."""
    encoded = muxed("adts", "aac", np.zeros((1, rate), np.float32), rate)
    frames = []
    while encoded:
        length = (encoded[3] & 0x03) << 11 | encoded[4] << 3 | encoded[5] >> 5
        frames.append(encoded[:length])
        encoded = encoded[length:]
    return frames[len(frames) // 2] * round(hours * 3600 * rate / 1024)


def silent_webm(hours: float) -> bytes:
    """Hours of silence as Opus in WebM: one 60 ms packet of silence muxed again and again, with its timestamps."""
    rate, frame = 48000, 2880
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=rate, options={"frame_duration": "60"})
        assert isinstance(stream, av.AudioStream)
        stream.layout = "mono"
        stream.format = "flt"
        silence = av.AudioFrame.from_ndarray(np.zeros((1, 10 * frame), np.float32), format="flt", layout="mono")
        silence.sample_rate = rate
        silence.pts = 0
        packet = (stream.encode(silence) + stream.encode(None))[5]
        for index in range(round(hours * 3600 * rate / frame)):
            packet.time_base = Fraction(1, rate)  # muxing rebases the packet to the stream's
            packet.pts = packet.dts = index * frame
            container.mux_one(packet)
    return buffer.getvalue()
