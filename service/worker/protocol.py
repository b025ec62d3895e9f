"""The framed protocol between the server and a worker: a JSON header plus an optional binary payload.

Frame layout: two big-endian uint32 (header length, payload length), the UTF-8 JSON header, the payload.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, BinaryIO

from anyio.abc import ByteReceiveStream, ByteSendStream

_PREFIX = struct.Struct(">II")
# the server's pid, given to a worker in its environment: a worker whose parent is another process exits
PARENT_PID_ENV = "SERVICE_PARENT_PID"
MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 1 << 30


class Stage(StrEnum):
    """Where a worker's load stands. The server marks `starting` when it starts the process; the worker sends the
    others as `stage` frames (`{"type": "stage", "stage": ..., "at": wall-clock seconds}`) when it enters them, and
    `ready` is its `ready` frame. A spare goes through `starting` and `importing` before any load; a load that takes
    it begins at `reading_weights`."""

    STARTING = "starting"
    IMPORTING = "importing"
    READING_WEIGHTS = "reading_weights"
    WARMING_UP = "warming_up"
    READY = "ready"


class ProtocolError(RuntimeError):
    """The other side sent something that is not a frame."""


@dataclass
class Frame:
    header: dict[str, Any]
    payload: bytes = field(default=b"")

    def encode(self) -> bytes:
        header = json.dumps(self.header, separators=(",", ":")).encode()
        return _PREFIX.pack(len(header), len(self.payload)) + header + self.payload


def _lengths(prefix: bytes) -> tuple[int, int]:
    header_length, payload_length = _PREFIX.unpack(prefix)
    if header_length > MAX_HEADER_BYTES or payload_length > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"frame too large: header {header_length} B, payload {payload_length} B")
    return header_length, payload_length


def read_frame_sync(stream: BinaryIO) -> Frame | None:
    """The next frame, or None at end of stream."""

    def read_exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = stream.read(size - len(data))
            if not chunk:
                break
            data += chunk
        return data

    prefix = read_exactly(_PREFIX.size)
    if not prefix:
        return None
    if len(prefix) < _PREFIX.size:
        raise ProtocolError("stream ended inside a frame")
    header_length, payload_length = _lengths(prefix)
    header = read_exactly(header_length)
    payload = read_exactly(payload_length)
    if len(header) < header_length or len(payload) < payload_length:
        raise ProtocolError("stream ended inside a frame")
    return Frame(json.loads(header), payload)


def write_frame_sync(stream: BinaryIO, frame: Frame) -> None:
    stream.write(frame.encode())
    stream.flush()


class FrameReader:
    """Reads frames from an anyio byte stream."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._eof = False

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size and not self._eof:
            try:
                self._buffer += await self._stream.receive(65536)
            except Exception:  # anyio raises EndOfStream or a broken-resource error at the end
                self._eof = True
        return len(self._buffer) >= size

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def read(self) -> Frame | None:
        """The next frame, or None at end of stream."""
        if not await self._fill(_PREFIX.size):
            if self._buffer:
                raise ProtocolError("stream ended inside a frame")
            return None
        header_length, payload_length = _lengths(bytes(self._buffer[: _PREFIX.size]))
        if not await self._fill(_PREFIX.size + header_length + payload_length):
            raise ProtocolError("stream ended inside a frame")
        self._take(_PREFIX.size)
        header = json.loads(self._take(header_length))
        return Frame(header, self._take(payload_length))


async def write_frame(stream: ByteSendStream, frame: Frame) -> None:
    await stream.send(frame.encode())
