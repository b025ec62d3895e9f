"""With an API key: log in in a real browser, use the UI with the session cookie, and see a page on another port of
the same host (the same site, so the SameSite=Strict cookie goes along) fail to make the browser write."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import ServerProcess

pytestmark = pytest.mark.slow

StartServer = Callable[..., ServerProcess]
KEY = "ui-test-key"


def pinned(server: ServerProcess) -> bool:
    status = httpx.get(f"{server.base_url}/api/v1/models/piper-joe/status", headers={"Authorization": f"Bearer {KEY}"})
    return bool(status.json()["pinned"])


@contextmanager
def page_elsewhere(html: str) -> Iterator[str]:
    """`html` served at another port of 127.0.0.1; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_logged_in_ui_writes_and_a_page_on_another_port_cannot(start_server: StartServer, page: Page) -> None:
    server = start_server(env={"API_KEY": KEY})
    page.goto(server.base_url + "/models")
    expect(page).to_have_url(f"{server.base_url}/login?next=%2Fmodels")
    page.fill("input[name=api_key]", KEY)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.base_url}/models")

    with page.expect_response(lambda response: response.url.endswith("/models/piper-joe/pin")) as pin:
        page.click("#pin-piper-joe")
    assert pin.value.status == 200, pin.value.text()
    expect(page.locator("#pin-piper-joe")).to_have_attribute("aria-pressed", "true")
    assert pinned(server)

    form = f"""<form method="post" action="{server.base_url}/models/piper-joe/unpin"></form>
        <script>document.forms[0].submit()</script>"""
    with (
        page_elsewhere(form) as elsewhere,
        page.expect_response(lambda response: response.url.endswith("/models/piper-joe/unpin")) as unpin,
    ):
        page.goto(elsewhere)
    assert unpin.value.request.header_value("cookie") is not None  # SameSite let it through: the check is what stops it
    assert unpin.value.status == 403
    assert unpin.value.json()["error"]["code"] == "cross_origin_request"
    assert pinned(server)
