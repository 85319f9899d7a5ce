"""Rendering the report card's sections as Markdown and as one self-contained HTML page.

The HTML page carries its plots as base64 PNG data URLs and its CSS inline, and links nothing outside itself, so it
opens offline and can be mailed as one file. The Markdown links its plots as `report_*.png` files beside it.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.utils import atomic_write

CSS = """
body { font-family: system-ui, sans-serif; max-width: 960px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; white-space: pre-wrap; }
th { background: #f3f3f3; } figure { margin: 1em 0; } img { max-width: 100%; }
"""


@dataclass
class Table:
    """A table of the report: one header row, then rows of cells (shown with `str`)."""

    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Image:
    """A plot, kept as PNG bytes: a data URL in the HTML page, a file beside the Markdown."""

    caption: str
    png: bytes


@dataclass
class Section:
    """One heading of the report and what goes under it."""

    title: str
    blocks: list[Any] = field(default_factory=list)  # str (a paragraph), Table or Image


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def md_cell(value: Any) -> str:
    """A table cell on one Markdown line: pipes escaped, line breaks shown as <br>."""
    return str(value).replace("|", "\\|").replace("\n", "<br>")


def render_markdown(sections: list[Section], run_dir: Path) -> str:
    lines = [f"# lmforge speedrun report: {run_dir.name}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(md_cell(h) for h in block.headers) + " |")
                lines.append("|" + "---|" * len(block.headers))
                lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in block.rows]
            elif isinstance(block, Image):
                name = f"report_{slug(block.caption)}.png"
                with atomic_write(run_dir / name, "wb") as f:
                    f.write(block.png)
                lines.append(f"![{block.caption}]({name})")
            else:
                lines.append(str(block))
            lines.append("")
    return "\n".join(lines)


def render_html(sections: list[Section], title: str) -> str:
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block.headers)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                               for row in block.rows)
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif isinstance(block, Image):
                data = base64.b64encode(block.png).decode("ascii")
                parts.append(f"<figure><img alt=\"{html.escape(block.caption)}\" src=\"data:image/png;base64,{data}\">"
                             f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
            else:
                parts.append("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(block))) + "</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
