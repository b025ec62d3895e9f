"""A deadline for each request's line and headers, which uvicorn does not have: its keep-alive timeout starts only
after a first answer, and any byte stops it, so a connection that trickles a header (slowloris) or sends nothing is
held open, an fd each, for as long as the client likes."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose next request head has not all arrived `header_timeout`
    seconds after the connection opened or the previous answer ended."""

    header_timeout: ClassVar[float]  # set by header_deadline_protocol
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_deadline()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request head arrived: its request is answered in its own time
            self._stop_deadline()

    def on_response_complete(self) -> None:
        self._start_deadline()  # first: a pipelined request the base class starts now stops it again
        super().on_response_complete()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._stop_deadline()
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._deadline = self.loop.call_later(self.header_timeout, self.transport.close)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def header_deadline_protocol(header_timeout: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's `http` option, with this deadline."""

    class WithThisDeadline(HeaderDeadlineProtocol):
        pass

    WithThisDeadline.header_timeout = header_timeout
    return WithThisDeadline
