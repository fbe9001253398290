"""Turn the report's sections into Markdown and a self-contained HTML page.

A report is a list of :class:`Section`; a section holds paragraphs (``str``, with ``**bold**``),
:class:`Table` and :class:`Image` blocks. Markdown links the PNG files next to it; the HTML inlines them
as base64 data URIs and carries its own CSS, so it opens offline and references nothing outside itself.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path
    caption: str
    half: bool = False  # HTML: half the page width, so two figures sit side by side


Block = str | Table | Image


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)


VERDICT_CLASS = {"confirmed": "ok", "not confirmed": "no", "not measured": "na"}

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1150px; margin: 2em auto; padding: 0 1.2em; }
h1 { border-bottom: 2px solid #1f77b4; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
nav { background: #f6f8fa; padding: .6em 1em; border-radius: 6px; }
nav a { margin-right: 1em; color: #1f77b4; text-decoration: none; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13.5px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfbfb; }
figure { margin: 1em 0; }
figure.half { display: inline-block; width: 49%; margin: .5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
td.ok { color: #1a7f37; font-weight: bold; } td.no { color: #cf222e; font-weight: bold; }
td.na { color: #6e7781; font-weight: bold; }
code { background: #f6f8fa; padding: 0 .25em; border-radius: 3px; font-size: 90%; }
"""


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for b in sec.blocks:
            if isinstance(b, Table):
                out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
                out.append("|" + "---|" * len(b.headers))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            elif isinstance(b, Image):
                out.append(f"![{b.caption}]({b.path.name})")
                out.append(f"*{b.caption}*")
            else:
                out.append(b)
            out.append("")
    return "\n".join(out)


def _inline(text: str) -> str:
    """The inline markdown the report's texts carry, as HTML: `code`, **bold**, *italic*, [text](url) links;
    everything else escaped. Code spans are cut out first, so nothing inside them is read as markdown."""
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: literal
        parts = [str(text)]
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(part))
        t = re.sub(r"(?<![\w*])\*(?!\s)([^*]+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", t)
        out.append(re.sub(r"\[([^\]]+)\]\(((?:https?://|#)[^)\s]+)\)", r'<a href="\2">\1</a>', t))
    return "".join(out)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_inline(h)}</th>" for h in t.headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(t.headers) else ""
    rows = []
    for row in t.rows:
        cells = []
        for c in row:
            cls = VERDICT_CLASS.get(str(c).strip("* "))
            cells.append(f'<td class="{cls}">{_inline(c)}</td>' if cls else f"<td>{_inline(c)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{thead}<tbody>{''.join(rows)}</tbody></table>"


def _html_image(img: Image) -> str:
    data = base64.b64encode(img.path.read_bytes()).decode("ascii")
    alt = html.escape(img.caption, quote=True)
    cls = ' class="half"' if img.half else ""
    return (
        f'<figure{cls}><img alt="{alt}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_inline(img.caption)}</figcaption></figure>"
    )


def to_html(title: str, sections: list[Section]) -> str:
    nav = " ".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = []
    for sec in sections:
        body.append(f'<section id="{sec.id}"><h2>{html.escape(sec.title)}</h2>')
        for b in sec.blocks:
            if isinstance(b, Table):
                body.append(_html_table(b))
            elif isinstance(b, Image):
                body.append(_html_image(b))
            else:
                body.append(f"<p>{_inline(b)}</p>")
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><nav>{nav}</nav>{''.join(body)}</body></html>\n"
    )
