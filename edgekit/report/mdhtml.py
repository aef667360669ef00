"""report.md's text as HTML, so report.html carries every section report.md has: the subset of Markdown
render_markdown writes (headings, pipe tables, "- " lists, paragraphs, `code`, **bold**, \\| and \\* escapes)."""

from __future__ import annotations

import re
from html import escape

_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def inline(text: str) -> str:
    """One line's inline markup as HTML (everything else escaped)."""
    out = escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return out.replace("\\|", "|").replace("\\*", "*")


def _cells(line: str) -> list[str]:
    parts = _CELL_SPLIT.split(line.strip())
    return [p.strip() for p in parts[1:-1]] if len(parts) > 2 else [line.strip()]


def _item_class(text: str) -> str:
    """Gate verdict lines get a class, so the page colours them."""
    for prefix, cls in (("gate FAIL", "fail"), ("gate pass", "pass"), ("gate not checked", "unchecked")):
        if text.startswith(prefix):
            return f' class="{cls}"'
    return ""


def markdown_to_html(text: str) -> str:
    """``text`` (report.md) as HTML block elements, one per line of output."""
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if para:
            out.append("<p>" + "<br>\n".join(inline(x) for x in para) + "</p>")
            para.clear()
        if items:
            out.append("<ul>" + "".join(f"<li{_item_class(x)}>{inline(x)}</li>" for x in items) + "</ul>")
            items.clear()
        if table:
            head, *body = table
            out.append('<div class="table"><table><thead><tr>' + "".join(f"<th>{inline(c)}</th>" for c in head)
                       + "</tr></thead><tbody>")
            out.extend("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in body)
            out.append("</tbody></table></div>")
            table.clear()

    for line in text.splitlines():
        heading = re.match(r"(#{1,6}) (.*)", line)
        if heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif line.startswith("|"):
            if para or items:
                flush()
            if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):  # the header's separator row
                table.append(_cells(line))
        elif line.startswith("- "):
            if para or table:
                flush()
            items.append(line[2:])
        elif not line.strip():
            flush()
        else:
            if items or table:
                flush()
            para.append(line)
    flush()
    return "\n".join(out)
