"""Responses that cannot be finished end unfinished: once a status line is out, a stream the server cannot
complete (its worker died, or its client stopped reading) closes the connection without the body's end, so the
client's HTTP library sees an incomplete body and raises instead of saving a truncated file as if it were whole."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send

from service.controllers.errors import abort_cause
from service.errors import StreamAborted

log = structlog.get_logger("service.controllers.stream_guard")


def _header(message: HTTPResponseStartEvent, name: bytes) -> str:
    for key, value in message.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _stream_aborted(error: BaseException | None) -> StreamAborted | None:
    """The StreamAborted behind an error: Litestar re-raises what a started response raised, chained, and a
    streaming body's task group wraps it in a group."""
    if error is None or isinstance(error, StreamAborted):
        return error
    if isinstance(error, BaseExceptionGroup):
        found = [_stream_aborted(inner) for inner in error.exceptions]
        return next((aborted for aborted in found if aborted is not None), None)
    return _stream_aborted(error.__cause__)


def stream_guard(send_timeout: float, on_abort: Callable[[str, str], None]) -> Callable[[ASGIApp], ASGIApp]:
    """Middleware: a body chunk the client does not take within `send_timeout` seconds aborts the response, and
    any StreamAborted ends it unfinished; `on_abort(model, cause)` counts each."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            model = ""

            async def send_within_timeout(message: Message) -> None:
                nonlocal model
                if message["type"] == "http.response.start":
                    model = _header(message, b"x-model")
                    await send(message)
                    return
                with anyio.move_on_after(send_timeout) as scope_:
                    await send(message)
                if scope_.cancelled_caught:
                    raise StreamAborted(
                        f"the client took no data for {send_timeout:g} s", cause="client_stalled", model=model
                    )

            try:
                await app(scope, receive, send_within_timeout)
            except Exception as error:
                aborted = _stream_aborted(error)
                if aborted is None:
                    raise
                model_id = aborted.model or model
                cause = abort_cause(aborted)
                log.warning(
                    "stream_aborted",
                    cause=cause,
                    model=model_id,
                    error=str(aborted),
                    audio_seconds=aborted.audio_seconds,
                    path=scope["path"],
                )
                on_abort(model_id, cause)

        return guarded

    return middleware
