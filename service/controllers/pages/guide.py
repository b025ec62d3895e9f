"""The project's documents (docs/*.md) on the server's own port, so that a page can link to the section that says
what is missing: each heading becomes a section with GitHub's anchor for it (`/guide/step-audio#what-you-provide`),
and the text under it is shown as written (Markdown reads as plain text)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import anyio
from litestar import Controller, get
from litestar.params import FromPath
from litestar.response import Template

from service.controllers.pages.rendering import page_context
from service.errors import NotFound
from service.settings import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"
HEADING = re.compile(r"(#{1,4}) (.+)")
FENCE = "```"


@dataclass
class Section:
    level: int
    title: str
    anchor: str
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines).strip("\n")


def anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def sections(markdown: str) -> list[Section]:
    """The document cut at its headings (not at lines inside code blocks that start with #)."""
    found = [Section(0, "", "")]
    in_code = False
    for line in markdown.splitlines():
        if line.startswith(FENCE):
            in_code = not in_code
        heading = None if in_code else HEADING.fullmatch(line)
        if heading:
            title = heading.group(2).strip()
            found.append(Section(len(heading.group(1)), title, anchor(title)))
        else:
            found[-1].lines.append(line)
    return [section for section in found if section.title or section.text]


class GuidePagesController(Controller):
    path = "/guide"
    include_in_schema = False

    @get("/{name:str}", operation_id="guidePage")
    async def guide(self, name: FromPath[str]) -> Template:
        """One document of docs/, by its name without .md."""
        documents = {path.stem: path for path in DOCS.glob("*.md")}
        if name not in documents:
            raise NotFound(f"no document {name[:80]!r}; documents: {', '.join(sorted(documents))}", code="not_found")
        markdown = await anyio.Path(documents[name]).read_text(encoding="utf-8")
        context = page_context("") | {"name": name, "sections": sections(markdown), "documents": sorted(documents)}
        return Template("guide.html", context=context)
