from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.response import Template

from service.model_admin import ModelAdmin


class PagesController(Controller):
    include_in_schema = False

    @get("/", operation_id="home")
    async def home(self, admin: NamedDependency[ModelAdmin]) -> Template:
        """The home page: models and their state, served on the same port as the API."""
        return Template(
            "index.html", context={"models": await admin.all_status(), "default_model": admin.catalog.default_model}
        )
