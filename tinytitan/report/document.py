"""The report as one document written twice, so report.md and report.html say the same: sections of
paragraphs, tables (header + rows) and samples (`report/samples.py`), then the plots. The pages are
the Jinja2 templates in report/templates/; text in paragraphs and table cells is inline Markdown
(`code`, **bold**), which the HTML page renders with markdown-it-py. The HTML is self-contained: the
plots are inlined as base64 PNG and the CSS is in the page."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import jinja2
from markdown_it import MarkdownIt
from markupsafe import Markup

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Paragraph:
    text: str  # inline Markdown
    kind: ClassVar[str] = "paragraph"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]  # cells are inline Markdown, like paragraphs
    kind: ClassVar[str] = "table"


@dataclass
class Section:
    heading: str
    blocks: list = field(default_factory=list)  # Paragraph, Table, samples.Samples

    @property
    def anchor(self) -> str:
        """The section's id in the HTML page: its heading, lower case, words joined by "-"."""
        return "-".join(re.findall(r"[0-9a-z]+", self.heading.lower()))


@dataclass
class Plot:
    caption: str
    path: Path

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.path.read_bytes()).decode()


def escape_markdown(text: str) -> str:
    """`text` (a name, a label, a value from the data) as inline Markdown that shows it as it is:
    the characters that would mark it up escaped; an underscore inside a word marks nothing."""
    return re.sub(r"[\\`*\[\]<]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])", lambda m: "\\" + m.group(), text)


def code_span(text: str) -> str:
    """`text` on one line as a Markdown code span, shown as it is whatever it holds (backticks too)."""
    text = " ".join(text.split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def render_pages(title: str, sections: list[Section], plots: list[Plot]) -> tuple[str, str]:
    """(report.md, report.html) of the document."""
    environment = _environment()
    page = {"title": title, "sections": sections, "plots": plots}
    return (environment.get_template("report.md.j2").render(page),
            environment.get_template("report.html.j2").render(page))


_inline = MarkdownIt("commonmark", {"html": False})  # raw HTML in the text is shown, not obeyed


def _environment() -> jinja2.Environment:
    """The templates' environment: HTML autoescaped (report.html.j2), Markdown as written (report.md.j2)."""
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                     autoescape=jinja2.select_autoescape(["html.j2"]),
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                     keep_trailing_newline=True)
    environment.filters["inline"] = lambda text: Markup(_inline.renderInline(text))  # inline Markdown -> HTML
    environment.filters["md_cell"] = lambda text: text.replace("|", "\\|").replace("\n", " ")  # a pipe-table cell
    environment.filters["md_code"] = code_span  # data that is not what it should be: the raw output
    environment.filters["md_text"] = lambda text: escape_markdown(" ".join(text.split()))  # data, on one line
    return environment
