"""Access control and response hardening, as ASGI middleware in front of every route.

With API keys configured, every route but the health checks, the login page and static assets needs a key:
`Authorization: Bearer <key>` (API clients) or the session cookie the login form sets (the browser UI). The cookie
holds an HMAC of the key, never the key itself. Keys are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import quote

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Receive, Scope, Send

SESSION_COOKIE = "tts_session"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/login"})
PUBLIC_PREFIXES = ("/static/",)
API_PREFIXES = ("/v1/", "/api/", "/metrics", "/docs/openapi")

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "media-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
# the docs page is rendered by Litestar with an inline bootstrap script
DOCS_POLICY = PAGE_POLICY.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'")


class KeyRing:
    """The configured API keys and the session tokens derived from them."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [key.encode() for key in keys]
        self._tokens = [self._token(key) for key in self._keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @staticmethod
    def _token(key: bytes) -> bytes:
        return hmac.new(key, b"speech-server ui session", hashlib.sha256).hexdigest().encode()

    @staticmethod
    def _matches(candidate: bytes, secrets: list[bytes]) -> bool:
        # compare against every secret, so the time taken does not depend on which one (if any) matched
        return any([hmac.compare_digest(candidate, secret) for secret in secrets])  # noqa: C419

    def valid_key(self, key: str) -> bool:
        return self._matches(key.encode(), self._keys)

    def valid_session(self, token: str) -> bool:
        return self._matches(token.encode(), self._tokens)

    def session_for(self, key: str) -> str:
        return self._token(key.encode()).decode()


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def _authorized(scope: Scope, keys: KeyRing) -> bool:
    authorization = _header(scope, b"authorization")
    if authorization.lower().startswith("bearer ") and keys.valid_key(authorization[7:].strip()):
        return True
    cookie = SimpleCookie()
    try:
        cookie.load(_header(scope, b"cookie"))
    except CookieError:  # a malformed cookie (perhaps another app's on this host) is no session, not an error
        return False
    session = cookie.get(SESSION_COOKIE)
    return session is not None and keys.valid_session(session.value)


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


async def _send_response(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)


async def _refuse(scope: Scope, send: Send) -> None:
    path = scope["path"]
    wants_page = "text/html" in _header(scope, b"accept") and not path.startswith(API_PREFIXES)
    if wants_page:
        target = path + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
        location = f"/login?next={quote(target, safe='')}".encode()
        await _send_response(send, 303, [(b"location", location)], b"")
        return
    body = json.dumps(
        {
            "error": {
                "message": "an API key is required: send 'Authorization: Bearer <key>'",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="speech-server"')]
    await _send_response(send, 401, headers, body)


def access_middleware(keys: KeyRing) -> Callable[[ASGIApp], ASGIApp]:
    """Middleware factory: refuses requests without a valid key (when keys are configured) and adds security
    headers to every response."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            policy = DOCS_POLICY if scope["path"] in ("/docs", "/docs/") else PAGE_POLICY

            async def send_hardened(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers", []))
                    headers += [
                        (b"x-content-type-options", b"nosniff"),
                        (b"x-frame-options", b"DENY"),
                        (b"referrer-policy", b"no-referrer"),
                    ]
                    content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
                    if content_type.startswith(b"text/html"):
                        headers.append((b"content-security-policy", policy.encode()))
                    message["headers"] = headers
                await send(message)

            if keys.enabled and not _is_public(scope["path"]) and not _authorized(scope, keys):
                await _refuse(scope, send_hardened)
                return
            await app(scope, receive, send_hardened)

        return guarded

    return middleware
