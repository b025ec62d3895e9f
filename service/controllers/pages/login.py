from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import FromQuery, URLEncodedBody
from litestar.response import Redirect, Template

from service.controllers.access import SESSION_COOKIE, KeyRing


def _local(target: str) -> str:
    """Only paths on this server may be redirected to after login (no open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@dataclass
class LoginForm:
    api_key: str
    next: str = "/"


class LoginController(Controller):
    include_in_schema = False

    @get("/login", operation_id="loginPage")
    async def login_page(self, keys: NamedDependency[KeyRing], next: FromQuery[str] = "/") -> Template:
        """The login form (only needed when API keys are configured)."""
        return Template("login.html", context={"next": _local(next), "error": None, "enabled": keys.enabled})

    @post("/login", operation_id="login", status_code=303)
    async def login(
        self, request: Request[Any, Any, Any], keys: NamedDependency[KeyRing], data: URLEncodedBody[LoginForm]
    ) -> Redirect | Template:
        """Check the key; on success set an HttpOnly, SameSite=Strict session cookie and go back."""
        if not keys.enabled or not keys.valid_key(data.api_key):
            context = {"next": _local(data.next), "error": "That key is not valid.", "enabled": keys.enabled}
            return Template("login.html", context=context, status_code=401)
        cookie = Cookie(
            key=SESSION_COOKIE,
            value=keys.session_for(data.api_key),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return Redirect(path=_local(data.next), status_code=303, cookies=[cookie])

    @post("/logout", operation_id="logout", status_code=303)
    async def logout(self) -> Redirect:
        """Forget the session cookie."""
        gone = Cookie(key=SESSION_COOKIE, value="", max_age=0, httponly=True, samesite="strict", path="/")
        return Redirect(path="/login", status_code=303, cookies=[gone])
