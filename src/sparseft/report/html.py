"""report.html: the report as one self-contained HTML file (PNG plots embedded as base64).

`markdown_to_html(text, base_dir)` converts the small Markdown subset sparseft's reports use -
headings, bullet lists, pipe tables, images, paragraphs, `code` and **bold** - and reads each
image from `base_dir`, so the file can be mailed or attached to a ticket on its own. It is not
a general Markdown renderer.

    write_html(markdown, "runs/demo/report.html")
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from sparseft.utils.io import atomic_write_text

_IMG = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)\s*$")
_STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}h1{border-bottom:2px solid #ddd}"""


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _image(alt: str, src: str, base_dir: Path) -> str:
    path = base_dir / src
    if src.lower().endswith(".png") and path.is_file():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'
    return f"<p>[missing image: {html.escape(src)}]</p>"


def markdown_to_html(text: str, base_dir: str | Path, title: str = "sparseft report") -> str:
    """The report's Markdown as a standalone HTML page (images inlined from `base_dir`)."""
    base = Path(base_dir)
    body: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("<!--"):
            i += 1
        elif m := re.match(r"^(#{1,4})\s+(.*)$", line):
            n = len(m.group(1))
            body.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
            i += 1
        elif m := _IMG.match(line.strip()):
            body.append(_image(m.group("alt"), m.group("src"), base))
            i += 1
        elif line.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            head, rest = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rest)
                        + "</table>")
        elif line.lstrip().startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].lstrip().startswith(("- ", "* ")):
                items.append(f"<li>{_inline(lines[i].lstrip()[2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = [line.strip()]  # always consume the first line (no endless loop on odd input)
            i += 1
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||- |\* |!\[)", lines[i].lstrip()):
                para.append(lines[i].strip())
                i += 1
            body.append(f"<p>{_inline(' '.join(para))}</p>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_html(markdown: str, path: str | Path, title: str = "sparseft report") -> Path:
    """Write `markdown` as a self-contained HTML file (images resolved next to `path`)."""
    path = Path(path)
    atomic_write_text(path, markdown_to_html(markdown, path.parent, title))
    return path
