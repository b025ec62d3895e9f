"""Every error the API returns, in OpenAI's JSON error shape, mapped in one place."""

from __future__ import annotations

import errno
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, InternalServerException, ValidationException
from litestar.plugins.htmx import HTMXRequest
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap
from litestar.utils.scope.state import ScopeState

from service.engines.base import EngineInputError
from service.errors import Conflict, InsufficientStorage, NotFound, ServiceError, StreamAborted, Timeout, TooLarge
from service.lazy_loader import ModelUnavailable, QueueFull, UnknownModel
from service.lifecycle.worker_client import EngineRequestError, GenerationTimeout, WorkerCrashed
from service.models.catalog import NoEditingModel

log = structlog.get_logger("service.controllers.errors")

# msgspec names the field at fault inside its message when the problem is the field's presence, not its value
_NAMED_FIELD = re.compile(r"(?:missing required|unknown) field `([^`]+)`")
# the status of each kind of the service's own errors; any other kind is an invalid request (400)
_SERVICE_ERROR_STATUSES: tuple[tuple[type[ServiceError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (TooLarge, 413),
    (Timeout, 504),
    (InsufficientStorage, 507),
)


class ApiError(Exception):
    """An error with its HTTP status, the request field it concerns and a stable code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    @property
    def error_type(self) -> str:
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


def as_api_error(error: Exception) -> ApiError:
    """The API's answer to any exception raised while serving a request."""
    if isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        return as_api_error(error.exceptions[0])
    if isinstance(error, ApiError):
        return error
    if isinstance(error, ServiceError):
        return _service_error(error)
    if isinstance(error, (UnknownModel, NoEditingModel)):
        return ApiError(404, str(error), param="model", code="model_not_found")
    if isinstance(error, EngineInputError):
        return ApiError(400, str(error), param=error.param, code="invalid_value")
    if isinstance(error, EngineRequestError):
        if error.kind == "input":
            return ApiError(400, str(error), param=error.param, code="invalid_value")
        return ApiError(500, f"the engine failed: {error}", code="engine_error")
    if isinstance(error, GenerationTimeout):
        return ApiError(504, str(error), code="generation_timeout")
    if isinstance(error, QueueFull):
        return ApiError(
            429, str(error), code="queue_full", headers={"Retry-After": str(math.ceil(error.retry_after or 1))}
        )
    if isinstance(error, WorkerCrashed):
        return ApiError(503, str(error), code="worker_crashed", headers={"Retry-After": "1"})
    if isinstance(error, ModelUnavailable):
        retry = {"Retry-After": str(math.ceil(error.retry_after))} if error.retry_after else {}
        return ApiError(503, str(error), code="model_unavailable", headers=retry)
    if isinstance(error, ValidationException):
        return _validation_error(error)
    if isinstance(error, InternalServerException) and _name_too_long(error.__cause__):
        # Litestar's static files: a file name longer than the file system takes names no file
        return ApiError(404, "no such file: its name is too long", code="not_found")
    if isinstance(error, HTTPException):
        return ApiError(error.status_code, error.detail, headers=error.headers)
    if isinstance(error, UnicodeDecodeError):
        # Litestar lets it through from request parsing: invalid UTF-8 in a multipart text field
        return _invalid_encoding(None)
    return ApiError(HTTP_500_INTERNAL_SERVER_ERROR, "internal server error", code="internal_error")


def _service_error(error: ServiceError) -> ApiError:
    status = next((status for kind, status in _SERVICE_ERROR_STATUSES if isinstance(error, kind)), 400)
    headers = {"Retry-After": str(math.ceil(error.retry_after))} if isinstance(error, Timeout) else {}
    return ApiError(status, error.message, param=error.param, code=error.code, headers=headers)


def abort_cause(aborted: StreamAborted) -> str:
    """The label logs and metrics count an aborted stream under: the code its failure maps to, if one ended it."""
    if aborted.failure is None:
        return aborted.cause
    return as_api_error(aborted.failure).code or "engine_error"


def _name_too_long(cause: BaseException | None) -> bool:
    return isinstance(cause, OSError) and cause.errno == errno.ENAMETOOLONG


class NestingSafeRequest(HTMXRequest):
    """The app's request (htmx's, with its attributes): a JSON body nested deeper than the decoder can recurse is a
    400 `invalid_json`, not a RecursionError."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError as error:
            raise ApiError(400, "the request body is JSON nested too deep to decode", code="invalid_json") from error


def _validation_error(error: ValidationException) -> ApiError:
    problems = error.extra if isinstance(error.extra, list) else []
    for problem in problems:
        if isinstance(problem, dict) and problem.get("key"):
            message = str(problem.get("message", "invalid value"))
            named = _NAMED_FIELD.search(message)
            key = named.group(1) if named else str(problem["key"])
            return ApiError(400, f"{key}: {message}", param=key, code="invalid_value")
    detail = error.detail
    if "JSON" in detail or "decode" in detail.lower():
        return ApiError(400, f"the request body is not valid JSON: {detail}", code="invalid_json")
    return ApiError(400, detail, code="invalid_request")


def _invalid_encoding(param: str | None) -> ApiError:
    where = f" in {param}" if param else ""
    return ApiError(400, f"the request has text{where} that is not valid UTF-8", param=param, code="invalid_encoding")


def _undecodable_field(text: str) -> str | None:
    """The path (`metadata.note`, `items[2]`) of the first key or string in a JSON document whose bytes were not
    UTF-8 (read with surrogateescape, so they show as lone surrogates); None when it cannot be told."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return None
    pending: list[tuple[str, object]] = [("", document)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, str) and _has_surrogates(value):
            return path or None
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        children = []
        for key, child in items:
            name = key.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if isinstance(key, str) else key
            child_path = f"{path}[{name}]" if isinstance(key, int) else f"{path}.{name}" if path else str(name)
            if isinstance(key, str) and _has_surrogates(key):
                return child_path
            children.append((child_path, child))
        pending.extend(reversed(children))
    return None


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= character <= "\udcff" for character in text)


def _body_encoding_error(request: Request[Any, Any, Any]) -> ApiError | None:
    """invalid_encoding for a request whose JSON body, as it was read, is not UTF-8: msgspec and Litestar refuse such
    a body before the service sees it, each in words of its own."""
    body = ScopeState.from_scope(request.scope).body
    if not isinstance(body, bytes) or "json" not in request.headers.get("content-type", ""):
        return None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return _invalid_encoding(_undecodable_field(body.decode("utf-8", "surrogateescape")))
    return None


def handle_exception(request: Request[Any, Any, Any], error: Exception) -> Response[dict[str, Any]]:
    api_error = as_api_error(error)
    if 400 <= api_error.status < 500:
        api_error = _body_encoding_error(request) or api_error
    if api_error.status >= 500:
        log.error(
            "request_failed",
            path=request.url.path,
            status=api_error.status,
            error=str(error),
            exc_info=api_error.code == "internal_error",
        )
    return Response(api_error.body(), status_code=api_error.status, headers=api_error.headers)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {Exception: handle_exception}
