"""The framed protocol between server and worker: JSON header plus binary payload, sync and async."""

from __future__ import annotations

import io
import json
import socket
import struct

import anyio
import pytest
from anyio.abc import ByteReceiveStream, SocketStream

from service.worker.protocol import (
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    Frame,
    FrameReader,
    ProtocolError,
    read_frame_sync,
    write_frame,
    write_frame_sync,
)

FRAMES = [
    Frame({"type": "hello", "pid": 123}),
    Frame({"type": "audio", "seq": 1}, bytes(range(256)) * 3),
    Frame({"text": "grüß dich ✓", "nested": {"list": [1, 2.5, None, True]}}, b"\x00"),
    Frame({}, b""),
    Frame({"type": "big"}, b"\xab" * 200_003),
]


def encoded(frames: list[Frame]) -> bytes:
    return b"".join(frame.encode() for frame in frames)


def odd_pieces(data: bytes) -> list[bytes]:
    """The bytes cut into pieces of awkward sizes: 1, 2, 3, 5, 7, 11, ... bytes, then the rest in one go."""
    sizes = [1, 2, 3, 5, 7, 11, 13, 17, 4099, 65537]
    pieces = []
    position = 0
    for size in sizes:
        pieces.append(data[position : position + size])
        position += size
    pieces.append(data[position:])
    return [piece for piece in pieces if piece]


class PieceStream(ByteReceiveStream):
    """A byte stream handing over fixed pieces, then signalling end of stream."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = list(pieces)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._pieces:
            raise anyio.EndOfStream
        piece = self._pieces.pop(0)
        if len(piece) > max_bytes:
            self._pieces.insert(0, piece[max_bytes:])
            piece = piece[:max_bytes]
        return piece

    async def aclose(self) -> None:
        self._pieces.clear()


class TrickleIO(io.BytesIO):
    """A file that returns at most a few bytes per read, as a pipe may."""

    def read(self, size: int | None = -1) -> bytes:
        limit = 3 if size is None or size < 0 else min(size, 3)
        return super().read(limit)


# ---- the encoding


def test_frame_layout() -> None:
    frame = Frame({"a": 1}, b"xyz")

    data = frame.encode()

    header = b'{"a":1}'
    assert data == struct.pack(">II", len(header), 3) + header + b"xyz"
    assert json.loads(data[8 : 8 + len(header)]) == {"a": 1}


# ---- synchronous reading


def test_sync_round_trip_of_several_frames() -> None:
    stream = io.BytesIO(encoded(FRAMES))

    received = [read_frame_sync(stream) for _ in FRAMES]

    assert received == FRAMES
    assert read_frame_sync(stream) is None


def test_sync_reads_frames_from_short_reads() -> None:
    stream = TrickleIO(encoded(FRAMES[:3]))

    assert [read_frame_sync(stream) for _ in range(3)] == FRAMES[:3]
    assert read_frame_sync(stream) is None


def test_sync_write_then_read() -> None:
    stream = io.BytesIO()
    for frame in FRAMES:
        write_frame_sync(stream, frame)
    stream.seek(0)

    assert [read_frame_sync(stream) for _ in FRAMES] == FRAMES


def test_sync_empty_stream_is_end_of_stream() -> None:
    assert read_frame_sync(io.BytesIO(b"")) is None


def truncation_points() -> list[int]:
    data = Frame({"type": "audio"}, b"0123456789").encode()
    header_end = 8 + len(b'{"type":"audio"}')
    # inside the length prefix, right after it, inside the header, right after it, inside the payload, one short
    return [1, 7, 8, 10, header_end, header_end + 4, len(data) - 1]


@pytest.mark.parametrize("cut", truncation_points())
def test_sync_truncated_frame_raises(cut: int) -> None:
    complete = Frame({"type": "hello"}).encode()
    data = complete + Frame({"type": "audio"}, b"0123456789").encode()[:cut]
    stream = io.BytesIO(data)

    assert read_frame_sync(stream) == Frame({"type": "hello"})
    with pytest.raises(ProtocolError, match="ended inside a frame"):
        read_frame_sync(stream)


@pytest.mark.parametrize(
    "prefix", [struct.pack(">II", MAX_HEADER_BYTES + 1, 0), struct.pack(">II", 2, MAX_PAYLOAD_BYTES + 1)]
)
def test_sync_oversized_frame_raises(prefix: bytes) -> None:
    with pytest.raises(ProtocolError, match="too large"):
        read_frame_sync(io.BytesIO(prefix + b"{}"))


# ---- asynchronous reading


async def read_all(reader: FrameReader) -> list[Frame]:
    frames = []
    while (frame := await reader.read()) is not None:
        frames.append(frame)
    return frames


@pytest.mark.anyio
async def test_async_round_trip_in_odd_pieces() -> None:
    reader = FrameReader(PieceStream(odd_pieces(encoded(FRAMES))))

    assert await read_all(reader) == FRAMES
    assert await reader.read() is None


@pytest.mark.anyio
async def test_async_round_trip_one_byte_at_a_time() -> None:
    data = encoded(FRAMES[:4])
    reader = FrameReader(PieceStream([data[i : i + 1] for i in range(len(data))]))

    assert await read_all(reader) == FRAMES[:4]


@pytest.mark.anyio
async def test_async_several_frames_in_one_piece() -> None:
    reader = FrameReader(PieceStream([encoded(FRAMES[:4])]))

    assert await read_all(reader) == FRAMES[:4]


@pytest.mark.anyio
async def test_async_empty_stream_is_end_of_stream() -> None:
    assert await FrameReader(PieceStream([])).read() is None


@pytest.mark.anyio
@pytest.mark.parametrize("cut", truncation_points())
async def test_async_truncated_frame_raises(cut: int) -> None:
    data = Frame({"type": "hello"}).encode() + Frame({"type": "audio"}, b"0123456789").encode()[:cut]
    reader = FrameReader(PieceStream(odd_pieces(data)))

    assert await reader.read() == Frame({"type": "hello"})
    with pytest.raises(ProtocolError, match="ended inside a frame"):
        await reader.read()


@pytest.mark.anyio
async def test_async_oversized_frame_raises() -> None:
    reader = FrameReader(PieceStream([struct.pack(">II", MAX_HEADER_BYTES + 1, 0)]))

    with pytest.raises(ProtocolError, match="too large"):
        await reader.read()


@pytest.mark.anyio
async def test_async_round_trip_over_a_socket_pair() -> None:
    left, right = socket.socketpair()
    sender = await SocketStream.from_socket(left)
    receiver = await SocketStream.from_socket(right)
    received: list[Frame] = []

    async def send_all() -> None:
        await write_frame(sender, FRAMES[0])
        for piece in odd_pieces(encoded(FRAMES[1:])):
            await sender.send(piece)
        await sender.send_eof()

    async def receive_all() -> None:
        received.extend(await read_all(FrameReader(receiver)))

    async with sender, receiver:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(send_all)
                task_group.start_soon(receive_all)

    assert received == FRAMES
