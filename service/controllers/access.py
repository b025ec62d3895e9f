"""Access control and response hardening, as ASGI middleware in front of every route.

With API keys configured, every route but the health checks, the login page and static assets needs a key:
`Authorization: Bearer <key>` (API clients) or the session cookie the login form sets (the browser UI). The cookie
holds an HMAC of the key, never the key itself. Keys are compared in constant time.

Writes (POST, PUT, PATCH, DELETE) not made with a Bearer key must not come from another site's page: browsers mark
where a request comes from (`Sec-Fetch-Site`, `Origin`, `Referer`) in a way pages cannot forge. Such marks naming
another origin are refused; a write resting on the session cookie must carry a mark naming this server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Collection, Iterable
from urllib.parse import quote, urlsplit

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Receive, Scope, Send

from service.controllers.errors import ApiError

SESSION_COOKIE = "tts_session"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/login"})
PUBLIC_PREFIXES = ("/static/",)
API_PREFIXES = ("/v1/", "/api/", "/metrics", "/docs/openapi")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

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


def _bearer_key(scope: Scope) -> str | None:
    authorization = _header(scope, b"authorization")
    return authorization[7:].strip() if authorization.lower().startswith("bearer ") else None


def _cookie(scope: Scope, name: str) -> str | None:
    """One cookie's value; the others are skipped however malformed they are (perhaps another app's on this host)."""
    for key, value in scope.get("headers", []):
        if key.lower() != b"cookie":
            continue
        for pair in value.decode("latin-1").split(";"):
            cookie_name, separator, cookie_value = pair.strip().partition("=")
            if separator and cookie_name.strip() == name:
                return cookie_value.strip()
    return None


def _unauthorized_reason(bearer_key: str | None, session: str | None) -> str:
    if bearer_key is not None:
        return "the API key is not valid"
    if session is not None:
        return "the session cookie is not valid (its key may have been removed): log in again"
    return "no API key given: send 'Authorization: Bearer <key>'"


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


def _cross_origin_reason(scope: Scope, trusted_origins: Collection[str], by_session: bool) -> str | None:
    """Why a write not made with a Bearer key may come from another site's page (None when it does not): the
    browser's `Sec-Fetch-Site`, else `Origin`, else `Referer`, against this server's `Host`; a write resting on the
    session cookie must carry one of them."""
    origin = _header(scope, b"origin")
    if origin and (origin in trusted_origins or "*" in trusted_origins):
        return None
    fetch_site = _header(scope, b"sec-fetch-site").lower()
    if fetch_site in ("same-origin", "none"):
        return None
    if fetch_site:
        return f"it came from another site's page (Sec-Fetch-Site: {fetch_site})"
    source = origin or _origin_of(_header(scope, b"referer"))
    host = _header(scope, b"host").lower()
    if source:
        return None if host and urlsplit(source).netloc.lower() == host else f"it came from {source}, not this server"
    if by_session:
        return "it rests on the session cookie but has no Origin or Referer header to show it came from this server"
    return None


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


async def _send_error(send: Send, error: ApiError, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error.body()).encode()
    await _send_response(send, error.status, [(b"content-type", b"application/json"), *headers], body)


async def _refuse(scope: Scope, send: Send, reason: str) -> None:
    path = scope["path"]
    wants_page = "text/html" in _header(scope, b"accept") and not path.startswith(API_PREFIXES)
    if wants_page:
        target = path + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
        location = f"/login?next={quote(target, safe='')}".encode()
        await _send_response(send, 303, [(b"location", location)], b"")
        return
    challenge = (b"www-authenticate", b'Bearer realm="speech-server"')
    await _send_error(send, ApiError(401, reason, code="invalid_api_key"), [challenge])


def access_middleware(keys: KeyRing, trusted_origins: Collection[str] = ()) -> Callable[[ASGIApp], ASGIApp]:
    """Middleware factory: refuses requests without a valid key (when keys are configured) and writes from other
    sites' pages (but those of `trusted_origins`, the CORS origins), and adds security headers to every response."""

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
                        # a Referer to this server only: the same-origin check's fallback where no Origin is sent
                        (b"referrer-policy", b"same-origin"),
                    ]
                    content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
                    if content_type.startswith(b"text/html"):
                        headers.append((b"content-security-policy", policy.encode()))
                    message["headers"] = headers
                await send(message)

            if "\x00" in scope["path"]:
                await _send_error(send_hardened, ApiError(400, "the path has a NUL character", code="invalid_path"))
                return
            bearer_key, session = _bearer_key(scope), _cookie(scope, SESSION_COOKIE)
            by_key = keys.enabled and bearer_key is not None and keys.valid_key(bearer_key)
            by_session = keys.enabled and not by_key and session is not None and keys.valid_session(session)
            if keys.enabled and not _is_public(scope["path"]) and not (by_key or by_session):
                await _refuse(scope, send_hardened, _unauthorized_reason(bearer_key, session))
                return
            writes = scope["method"] in UNSAFE_METHODS and not by_key
            if writes and (reason := _cross_origin_reason(scope, trusted_origins, by_session)):
                message = f"a write from another site's page is refused: {reason}; API clients send a Bearer key"
                await _send_error(send_hardened, ApiError(403, message, code="cross_origin_request"))
                return
            await app(scope, receive, send_hardened)

        return guarded

    return middleware
