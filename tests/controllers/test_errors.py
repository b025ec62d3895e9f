"""The one error mapping: text that is not UTF-8 is a 400 `invalid_encoding` whichever layer notices it first; JSON
nested too deep and paths no file can have are 400s and 404s, not 500s; logged tracebacks carry no local variables."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
import structlog
from litestar import Litestar
from litestar.testing import TestClient

from service.app import create_app
from service.controllers.errors import as_api_error
from service.errors import InvalidRequest, NotFound, ServiceError, Timeout, TooLarge
from service.library.voices import UnknownVoice, VoiceConflict, VoiceError, VoiceStorageFull
from service.log_setup import configure_logging
from service.settings import Settings
from tests.conftest import tone_model


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Litestar]]:
    """The app in-process: none of these requests gets as far as a model, so no worker starts."""
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data")), (tone_model("tone"),))
    with TestClient(app) as test_client:
        yield test_client


JSON = "application/json"
MULTIPART = "multipart/form-data; boundary=b"


def form_field(name: str, value: bytes) -> bytes:
    return b'--b\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n' + value + b"\r\n--b--\r\n"


@pytest.mark.parametrize(
    ("method", "path", "content_type", "body", "param"),
    [
        # msgspec notices these inside the JSON document; the mapping finds the field in the raw body
        ("POST", "/v1/audio/speech", JSON, b'{"model": "tts-1", "input": "\xff\xfe"}', "input"),
        ("POST", "/v1/audio/speech", JSON, b'{"model": "tts-1", "input": "hi", "voice": "a\xc3"}', "voice"),
        (
            "POST",
            "/v1/audio/speech",
            JSON,
            b'{"model": "tts-1", "input": "hi", "metadata": {"k": "\xe2\x82"}}',
            "metadata.k",
        ),
        ("POST", "/v1/audio/speech", JSON, b'{"model": "tts-1", "in\xffput": "hi"}', "in\ufffdput"),
        (
            "POST",
            "/v1/audio/speech",
            JSON,
            b'{"model": "tts-1", "input": "hi", "step_audio": [1, "\xff"]}',
            "step_audio[1]",
        ),
        ("PATCH", "/api/v1/models/tone", JSON, b'{"idle_timeout": "\xc3"}', "idle_timeout"),
        # outside any string: still the body's encoding, no field to name
        ("POST", "/v1/audio/speech", JSON, b'{"model": "tts-1", "input": "hi"}\xff', None),
        # Litestar notices these while it parses a multipart form, and does not say which field
        ("POST", "/v1/voices", MULTIPART, form_field("name", b"\x89PNG"), None),
        ("POST", "/v1/audio/speech/upload", MULTIPART, form_field("payload", b'{"input": "\xff"}'), None),
    ],
)
def test_text_that_is_not_utf8_is_a_400_invalid_encoding(
    client: TestClient[Litestar], method: str, path: str, content_type: str, body: bytes, param: str | None
) -> None:
    response = client.request(method, path, content=body, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("invalid_encoding", param, "invalid_request_error")
    assert "not valid UTF-8" in error["message"]


def test_the_field_is_found_in_nested_lists(client: TestClient[Litestar]) -> None:
    body = b'{"model": "tts-1", "input": "hi", "metadata": ' + b"[" * 50 + b'1, "\xff"' + b"]" * 50 + b"}"
    response = client.post("/v1/audio/speech", content=body, headers={"content-type": JSON})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "metadata" + "[0]" * 49 + "[1]"


def test_valid_utf8_errors_keep_their_own_code(client: TestClient[Litestar]) -> None:
    truncated = b'{"model": "tts-1", "input": "h\xc3\xa9"'
    response = client.post("/v1/audio/speech", content=truncated, headers={"content-type": JSON})
    assert response.status_code == 400
    assert response.json()["error"]["code"] != "invalid_encoding"


# 1000 levels is past what msgspec's decoder recurses through under the default recursion limit (it stops near 970
# in a request); DEEP is far past it
DEEP = 100_000


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [1000, DEEP])
@pytest.mark.parametrize(
    ("method", "path", "content_type", "body", "param"),
    [
        pytest.param("POST", "/v1/audio/speech", JSON, lambda deep: deep, None, id="speech-body"),
        pytest.param(
            "POST",
            "/v1/audio/speech",
            JSON,
            lambda deep: b'{"model": "tts-1", "input": "hi", "metadata": ' + deep + b"}",
            None,
            id="speech-field",
        ),
        pytest.param(
            "PATCH", "/api/v1/models/tone", JSON, lambda deep: b'{"idle_timeout": ' + deep + b"}", None, id="patch"
        ),
        pytest.param(
            "POST",
            "/v1/audio/speech/upload",
            MULTIPART,
            lambda deep: form_field("payload", b'{"model": "tts-1", "input": "hi", "unknown": ' + deep + b"}"),
            "payload",
            id="upload-payload",
        ),
    ],
)
def test_json_nested_too_deep_is_a_400_invalid_json(
    client: TestClient[Litestar],
    method: str,
    path: str,
    content_type: str,
    body: Callable[[bytes], bytes],
    param: str | None,
    depth: int,
) -> None:
    response = client.request(method, path, content=body(nested(depth)), headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_json", param)
    assert "nested too deep" in error["message"]


@pytest.mark.parametrize("path", ["/static/%00", "/static/site%00.css", "/static/docs/%00", "/models/tone%00/progress"])
def test_a_nul_character_in_the_path_is_a_400(client: TestClient[Litestar], path: str) -> None:
    response = client.get(path)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_path"


def test_a_nul_character_in_a_path_no_route_matches_is_a_404(client: TestClient[Litestar]) -> None:
    assert client.get("/v1/models%00").status_code == 404


def test_a_static_file_name_too_long_for_the_file_system_is_not_found(client: TestClient[Litestar]) -> None:
    response = client.get("/static/" + "a" * 300)
    assert response.status_code == 404, response.text


@pytest.mark.parametrize(
    ("error", "status", "code", "headers"),
    [
        (InvalidRequest("bad", param="input", code="invalid_value"), 400, "invalid_value", {}),
        (TooLarge("big", param="audio", code="audio_too_large"), 413, "audio_too_large", {}),
        (NotFound("gone", param="session", code="session_not_found"), 404, "session_not_found", {}),
        (Timeout("waited", code="timeout", retry_after=4.2), 504, "timeout", {"Retry-After": "5"}),
        (VoiceError("bad name"), 400, "invalid_voice", {}),
        (UnknownVoice("nobody", "voice"), 404, "unknown_voice", {}),
        (VoiceConflict("twice"), 409, "voice_conflict", {}),
        (VoiceStorageFull("full", None), 507, "insufficient_storage", {}),
    ],
)
def test_each_kind_of_service_error_has_its_status(
    error: ServiceError, status: int, code: str, headers: dict[str, str]
) -> None:
    answer = as_api_error(error)
    assert (answer.status, answer.code, answer.param, answer.message) == (status, code, error.param, str(error))
    assert answer.headers == headers


@pytest.fixture
def service_logging() -> Iterator[None]:
    """The service's logging set up for the test, and what was there before put back after it."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, structlog.get_config())
    yield
    root.handlers[:], level, config = saved
    root.setLevel(level)
    structlog.configure(**config)


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_logged_tracebacks_carry_no_local_variables(
    service_logging: None, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    configure_logging(log_format)
    request_body = "a-local-value-that-must-stay-out-of-the-log"
    try:
        raise RuntimeError(f"failed on a body of {len(request_body)} characters")
    except RuntimeError:
        structlog.get_logger("test").error("request_failed", exc_info=True)
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    logged = capsys.readouterr().err
    assert logged.count("RuntimeError") >= 2, logged
    assert request_body not in logged
