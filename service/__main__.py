"""`python -m service`: parse settings, set up logging, serve the app with uvicorn."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import structlog
import uvicorn

from service.app import create_app
from service.log_setup import configure_logging
from service.settings import api_keys, check_exposure, is_loopback, load_settings


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


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
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
