"""`python -m service`: parse settings, set up logging, serve the app with uvicorn."""

from __future__ import annotations

import math
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

import structlog
import uvicorn

from service.app import create_app
from service.controllers.connections import header_deadline_protocol
from service.log_setup import configure_logging
from service.settings import api_keys, check_exposure, is_loopback, load_settings

# beyond SHUTDOWN_GRACE: time for the loader to end the workers and for the last answers to go out, before uvicorn
# cancels whatever is still running
SHUTDOWN_ANSWER_SECONDS = 5.0
# uvicorn.run's exit status when the server could not start (e.g. the port is taken)
STARTUP_FAILURE = 3


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app when it begins to stop, before it waits out its graceful timeout."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    log = structlog.get_logger("service")
    try:
        check_exposure(settings)
        keys = api_keys(settings)
    except (ValueError, OSError) as error:
        log.error("configuration_invalid", error=str(error))
        return 2
    if not keys:
        log.warning(
            "no_api_key",
            host=settings.host,
            note="listening on the loopback address only; set API_KEY to serve other machines"
            if is_loopback(settings.host)
            else "--allow-unauthenticated was given: anyone who can reach the port can use it",
        )
    try:
        app = create_app(settings)
    except (ValueError, LookupError) as error:
        log.error("configuration_invalid", error=str(error))
        return 2
    log.info(
        "service_starting",
        host=settings.host,
        port=settings.port,
        models=list(app.state.catalog.specs),
        default_model=settings.default_model,
        idle_timeout=settings.idle_timeout,
    )
    # uvicorn drains and runs the lifespan shutdown on SIGTERM/SIGINT, then re-raises the signal to the handler
    # that was installed before it: make that one a clean exit, so a graceful stop ends with status 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _exit_cleanly)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace + SHUTDOWN_ANSWER_SECONDS),
        http=header_deadline_protocol(settings.header_timeout),
        timeout_keep_alive=settings.keep_alive_timeout,
        limit_concurrency=settings.max_connections or None,
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )
    server = _Server(config, app.state.request_shutdown)
    server.run()
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
