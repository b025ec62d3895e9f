"""Access rules: API keys on every route but health, the UI login cookie, security headers, CORS, exposure."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.controllers.access import SESSION_COOKIE, KeyRing
from service.settings import PROJECT_ROOT, SettingError, Settings, api_keys, check_exposure
from tests.conftest import AppClient, ClientFactory

pytestmark = [pytest.mark.anyio]

KEY = "s3cret-key"
BEARER = {"Authorization": f"Bearer {KEY}"}
PROTECTED_API = ["/v1/models", "/api/v1/models/status", "/metrics", "/v1/voices", "/docs/openapi.json"]
PROTECTED_PAGES = ["/", "/docs"]


@pytest.fixture
async def guarded(make_client: ClientFactory, tmp_path: Path) -> object:
    async with make_client(Settings(api_keys=(KEY,), data_dir=tmp_path / "data")) as client:
        client.follow_redirects = False
        yield client


@pytest.mark.slow
@pytest.mark.parametrize("path", PROTECTED_API)
async def test_api_routes_need_a_bearer_key(guarded: AppClient, path: str) -> None:
    missing = await guarded.get(path)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert (await guarded.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
    assert (await guarded.get(path, headers=BEARER)).status_code == 200


@pytest.mark.slow
async def test_speech_and_model_control_need_the_key(guarded: AppClient) -> None:
    speech = {"model": "tts-1", "input": "Hi.", "response_format": "pcm"}
    assert (await guarded.post("/v1/audio/speech", json=speech)).status_code == 401
    assert (await guarded.post("/api/v1/models/piper-joe/load")).status_code == 401
    assert guarded.loader.snapshots_now()[0].loads_total == 0
    assert (await guarded.post("/v1/audio/speech", json=speech, headers=BEARER)).status_code == 200


@pytest.mark.slow
async def test_health_stays_public_and_reports_model_states(guarded: AppClient) -> None:
    for path in ("/healthz", "/readyz"):
        response = await guarded.get(path)
        assert response.status_code == 200
        assert response.json()["models"]["unloaded"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("path", PROTECTED_PAGES)
async def test_pages_redirect_to_the_login_form(guarded: AppClient, path: str) -> None:
    response = await guarded.get(path, headers={"Accept": "text/html"})
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next={path.replace('/', '%2F')}"
    assert (await guarded.get("/login")).status_code == 200
    assert (await guarded.get("/static/site.css")).status_code == 200


@pytest.mark.slow
async def test_the_login_form_sets_a_strict_http_only_cookie_that_opens_ui_and_api(guarded: AppClient) -> None:
    wrong = await guarded.post("/login", data={"api_key": "nope", "next": "/"})
    assert wrong.status_code == 401
    assert "not valid" in wrong.text
    assert "set-cookie" not in wrong.headers

    right = await guarded.post("/login", data={"api_key": KEY, "next": "/docs"})
    assert right.status_code == 303
    assert right.headers["location"] == "/docs"
    cookie = right.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert KEY.lower() not in cookie
    assert (await guarded.get("/", headers={"Accept": "text/html"})).status_code == 200
    assert (await guarded.get("/v1/voices")).status_code == 200

    out = await guarded.post("/logout", headers={"Origin": own_origin(guarded)})
    assert out.status_code == 303
    assert (await guarded.get("/v1/voices")).status_code == 401


@pytest.mark.slow
@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "\\\\evil"])
async def test_login_never_redirects_off_the_server(guarded: AppClient, target: str) -> None:
    response = await guarded.post("/login", data={"api_key": KEY, "next": target})
    assert response.headers["location"] == "/"


@pytest.mark.slow
async def test_pages_carry_security_headers_and_cors_is_off(client: AppClient) -> None:
    page = await client.get("/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    preflight = await client.options(
        "/v1/models", headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.slow
async def test_cors_allows_only_the_configured_origins(make_client: ClientFactory, tmp_path: Path) -> None:
    settings = Settings(cors_origins=("https://app.example",), data_dir=tmp_path)
    async with make_client(settings) as client:
        allowed = await client.get("/v1/models", headers={"Origin": "https://app.example"})
        other = await client.get("/v1/models", headers={"Origin": "https://other.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


def test_keys_come_from_the_variable_and_the_keys_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nalpha\n\n  beta  \n")
    keys = api_keys(Settings(api_keys=("gamma",), api_keys_file=keys_file))
    assert keys == ("gamma", "alpha", "beta")
    ring = KeyRing(keys)
    assert ring.valid_key("beta")
    assert not ring.valid_key("delta")
    assert ring.valid_session(ring.session_for("alpha"))
    assert not ring.valid_session("alpha")


def test_serving_beyond_loopback_without_a_key_needs_an_explicit_flag() -> None:
    check_exposure(Settings(host="127.0.0.1"))
    check_exposure(Settings(host="0.0.0.0", api_keys=(KEY,)))
    check_exposure(Settings(host="0.0.0.0", allow_unauthenticated=True))
    with pytest.raises(SettingError, match="no API key"):
        check_exposure(Settings(host="0.0.0.0"))


@pytest.mark.slow
def test_the_command_refuses_to_expose_itself_without_a_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--host", "0.0.0.0", "--port", "7999"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "API_KEY" in result.stderr


@pytest.mark.slow
def test_without_a_key_the_server_says_it_listens_on_loopback_only(start_server: object) -> None:
    from tests.conftest import ServerProcess

    assert callable(start_server)
    server = start_server()
    assert isinstance(server, ServerProcess)
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 200
    assert "loopback" in server.log()


@pytest.mark.slow
async def test_a_malformed_cookie_is_no_session_not_an_error(guarded: AppClient) -> None:
    response = await guarded.get("/v1/models", headers={"Cookie": "a<b=c; tts_session=forged"})
    assert response.status_code == 401
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.slow
async def test_a_missing_key_and_a_wrong_key_are_told_apart(guarded: AppClient) -> None:
    missing = (await guarded.get("/v1/models")).json()["error"]
    wrong = (await guarded.get("/v1/models", headers={"Authorization": "Bearer wrong"})).json()["error"]
    stale = (await guarded.get("/v1/models", headers={"Cookie": f"{SESSION_COOKIE}=stale"})).json()["error"]
    assert "no API key" in missing["message"]
    assert "not valid" in wrong["message"]
    assert "log in again" in stale["message"]
    assert missing["code"] == wrong["code"] == stale["code"] == "invalid_api_key"


SESSION = {"Cookie": f"{SESSION_COOKIE}={KeyRing((KEY,)).session_for(KEY)}"}


def own_origin(client: httpx.AsyncClient) -> str:
    return f"http://{client.base_url.netloc.decode()}"


async def pinned(client: AppClient, model: str = "piper-joe") -> bool:
    status = (await client.get(f"/api/v1/models/{model}/status", headers=BEARER)).json()
    return bool(status["pinned"])


# what a page on another site can make a browser send: a form post, or a "simple" fetch without a preflight
CROSS_SITE_WRITES = [
    pytest.param(
        "POST", "/models/piper-joe/pin", {"content-type": "application/x-www-form-urlencoded"}, b"", id="form"
    ),
    pytest.param("PATCH", "/api/v1/models/piper-joe", {"content-type": "text/plain"}, b'{"pinned": true}', id="patch"),
]
CROSS_SITE_MARKS = [
    pytest.param({"Origin": "https://evil.example"}, "https://evil.example", id="origin"),
    pytest.param({"Origin": "null"}, "null", id="opaque-origin"),
    pytest.param({"Referer": "https://evil.example/page?x=1"}, "https://evil.example", id="referer"),
    pytest.param({"Sec-Fetch-Site": "cross-site"}, "cross-site", id="fetch-site-cross-site"),
    pytest.param({"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"}, "same-site", id="another-port"),
    pytest.param({}, "no Origin or Referer", id="no-mark"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "headers", "body"), CROSS_SITE_WRITES)
@pytest.mark.parametrize(("marks", "named"), CROSS_SITE_MARKS)
async def test_cookie_writes_from_another_origin_are_refused(
    guarded: AppClient, method: str, path: str, headers: dict[str, str], body: bytes, marks: dict[str, str], named: str
) -> None:
    response = await guarded.request(method, path, content=body, headers={**SESSION, **headers, **marks})
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "cross_origin_request"
    assert named in error["message"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert not await pinned(guarded)


@pytest.mark.slow
async def test_speech_from_another_origin_with_the_cookie_is_refused(guarded: AppClient) -> None:
    body = b'{"model": "tts-1", "input": "Hi.", "response_format": "pcm"}'
    headers = {**SESSION, "content-type": "text/plain", "Origin": "https://evil.example"}
    assert (await guarded.post("/v1/audio/speech", content=body, headers=headers)).status_code == 403
    assert guarded.loader.snapshots_now()[0].loads_total == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "marks",
    [
        pytest.param(lambda origin: {"Origin": origin}, id="origin"),
        pytest.param(lambda origin: {"Referer": f"{origin}/models"}, id="referer-without-origin"),
        # Chromium on a page whose referrer policy hides the origin: `Origin: null`, but the fetch metadata says
        pytest.param(lambda origin: {"Origin": "null", "Sec-Fetch-Site": "same-origin"}, id="fetch-site"),
    ],
)
async def test_cookie_writes_from_this_servers_pages_are_accepted(
    guarded: AppClient, marks: Callable[[str], dict[str, str]]
) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = await guarded.post("/models/piper-joe/pin", headers={**SESSION, **form, **marks(own_origin(guarded))})
    assert response.status_code == 200, response.text
    assert await pinned(guarded)


@pytest.mark.slow
async def test_a_bearer_key_is_accepted_from_any_origin(guarded: AppClient) -> None:
    headers = {**BEARER, "Origin": "https://elsewhere.example", "Sec-Fetch-Site": "cross-site"}
    response = await guarded.patch("/api/v1/models/piper-joe", json={"pinned": True}, headers=headers)
    assert response.status_code == 200, response.text
    assert await pinned(guarded)


@pytest.mark.slow
async def test_without_keys_browsers_on_other_sites_are_refused_and_api_clients_are_not(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    settings = Settings(cors_origins=("https://app.example",), data_dir=tmp_path / "data")
    async with make_client(settings) as client:
        evil = await client.patch(
            "/api/v1/models/piper-joe", json={"pinned": True}, headers={"Origin": "https://evil.example"}
        )
        assert evil.status_code == 403
        assert not await pinned(client)
        trusted = await client.patch(
            "/api/v1/models/piper-joe", json={"pinned": True}, headers={"Origin": "https://app.example"}
        )
        assert trusted.status_code == 200
        api_client = await client.patch("/api/v1/models/piper-joe", json={"pinned": False})
        assert api_client.status_code == 200
        assert not await pinned(client)


@pytest.mark.slow
@pytest.mark.parametrize("other", ["a<b=c", 'quoted="unterminated', "list=[1,2]", "=empty-name", "flag"])
async def test_a_malformed_cookie_before_the_session_cookie_keeps_the_session(guarded: AppClient, other: str) -> None:
    response = await guarded.get("/v1/voices", headers={"Cookie": f"{other}; {SESSION['Cookie']}"})
    assert response.status_code == 200, response.text
