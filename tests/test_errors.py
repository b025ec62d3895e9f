"""The one error mapping: text that is not UTF-8 is a 400 `invalid_encoding` whichever layer notices it first."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from service.app import create_app
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
