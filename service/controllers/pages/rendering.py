"""What the web UI's page controllers share: the full-page-or-partial rule, and small formatting helpers the
templates call. Pages and partials live in templates/; CSS and JS in static/ (htmx in static/vendor/)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from litestar.plugins.htmx import HTMXRequest, HTMXTemplate, PushUrlType
from litestar.response import Template

from service.controllers.errors import ApiError
from service.models.catalog import Catalog, ModelSpec
from service.settings import PROJECT_ROOT

HTMX_PATH = PROJECT_ROOT / "static" / "vendor" / "htmx.min.js"
VARY = {"Vary": "HX-Request"}
NAVIGATION = (
    ("speak", "/", "Speak"),
    ("edit", "/edit", "Clone & edit"),
    ("voices", "/voices", "Voices"),
    ("models", "/models", "Models"),
    ("docs", "/docs", "API docs"),
)


class Format:
    """Numbers as people read them; templates get one as `fmt`."""

    @staticmethod
    def bytes(value: int | None) -> str:
        if value is None:
            return "—"
        size = float(value)
        for unit in ("B", "KiB", "MiB", "GiB"):
            if size < 1024 or unit == "GiB":
                return f"{size:.0f} {unit}" if unit in ("B", "KiB") else f"{size:.1f} {unit}"
            size /= 1024
        raise AssertionError("unreachable")

    @staticmethod
    def seconds(value: float | None, digits: int = 1) -> str:
        if value is None:
            return "—"
        return f"{value:.{digits}f} s"

    @staticmethod
    def clock(value: float | None) -> str:
        """A countdown as m:ss (h:mm:ss past an hour)."""
        if value is None:
            return "—"
        whole = max(0, round(value))
        hours, rest = divmod(whole, 3600)
        minutes, seconds = divmod(rest, 60)
        return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"

    @staticmethod
    def ago(timestamp: float) -> str:
        seconds = max(0.0, time.time() - timestamp)
        if seconds < 60:
            return f"{seconds:.0f} s ago"
        if seconds < 3600:
            return f"{seconds / 60:.0f} min ago"
        return f"{seconds / 3600:.1f} h ago"


class FormErrors(ApiError):
    """Every problem of a submitted form at once: the API's error body (the first problem) plus `errors`, all of
    them, so that the page marks each field in one go."""

    def __init__(self, problems: list[ApiError]) -> None:
        first = problems[0]
        super().__init__(first.status, first.message, param=first.param, code=first.code)
        self.problems = problems

    def body(self) -> dict[str, Any]:
        return super().body() | {"errors": [problem.body()["error"] for problem in self.problems]}


def page_context(active: str) -> dict[str, Any]:
    """What the layout needs: the navigation, the active entry, and whether htmx was installed."""
    return {"navigation": NAVIGATION, "active": active, "htmx_installed": HTMX_PATH.is_file(), "fmt": Format}


def render(
    request: HTMXRequest,
    page: str,
    partial: str,
    context: Mapping[str, Any],
    *,
    active: str,
    partial_for: tuple[str, ...] = (),
    push_url: PushUrlType | None = None,
    status_code: int = 200,
) -> Template:
    """The full page, or for an htmx request (whose target is one of `partial_for`, if given) the partial the page
    includes; htmx restoring its history after Back gets the full page. Both vary by HX-Request."""
    values = page_context(active) | dict(context)
    htmx = request.htmx
    wants_partial = bool(htmx) and not htmx.boosted and not htmx.history_restore_request
    if wants_partial and (not partial_for or htmx.target in partial_for):
        return HTMXTemplate(
            template_name=partial, context=values, headers=VARY, push_url=push_url, status_code=status_code
        )
    return Template(page, context=values, headers=VARY, status_code=status_code)


def fragment(template: str, context: Mapping[str, Any], **headers: str) -> Template:
    """A piece of HTML that only htmx asks for (no page of its own)."""
    return Template(template, context=page_context("") | dict(context), headers=VARY | headers)


def model_choices(catalog: Catalog) -> list[ModelSpec]:
    """The catalog's models, the default one first."""
    specs = catalog.servable()
    return sorted(specs, key=lambda spec: (spec.id != catalog.default_model, spec.id))


def aliases_of(catalog: Catalog, model_id: str) -> list[str]:
    return [alias for alias, target in catalog.aliases.items() if target == model_id]
