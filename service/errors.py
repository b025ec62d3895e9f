"""The service's own errors, in domain terms: what went wrong, the request field it concerns and a stable code. The
HTTP layer gives each kind its status and headers (`as_api_error` in service/controllers/errors.py)."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses; a refusal of no more specific kind is an invalid request."""

    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(ServiceError):
    """The request asks for something the service cannot do, or sends something it cannot use."""


class NotFound(ServiceError):
    """The request names something that does not exist (any more)."""


class Conflict(ServiceError):
    """The request clashes with what exists already."""


class TooLarge(ServiceError):
    """The request sends more data than the service takes."""


class InsufficientStorage(ServiceError):
    """The service has no room left to store what the request sends."""


class Timeout(ServiceError):
    """The request waited longer than the service allows; it may succeed if tried again after `retry_after`."""

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class StreamAborted(Exception):
    """A started response that must end unfinished. `failure` is the error that ended it, when one did (the HTTP
    layer names the cause from it, and a stream can still tell its client of it); otherwise `cause` is a short
    stable label for logs and metrics."""

    def __init__(
        self,
        message: str,
        *,
        cause: str = "",
        failure: Exception | None = None,
        model: str = "",
        audio_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.failure = failure
        self.model = model
        self.audio_seconds = audio_seconds
