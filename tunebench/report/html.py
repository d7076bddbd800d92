"""The document rendered as one self-contained HTML page (index.html): inline CSS and SVG, no scripts."""

from __future__ import annotations

import html
import re

from tunebench.report.blocks import Bullets, Details, Figure, Heading, Para, Table, slug


def _html_inline(text: str) -> str:
    text = html.escape(text, quote=True)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
  max-width:1060px;margin:2em auto;padding:0 1.2em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{margin-top:1.4em}code{background:#f3f3f5;padding:0 .25em;border-radius:3px;font-size:.92em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em;font-variant-numeric:tabular-nums}
th,td{padding:.35em .7em;border-bottom:1px solid #e4e4e7;text-align:right;vertical-align:top}
th.l,td.l{text-align:left}td:not(:last-child){white-space:nowrap}th{background:#f6f6f8;font-weight:600}
tr:hover td{background:#fafafc}.note{color:#555;font-size:.85em;margin-top:-.2em}
details{margin:.4em 0 1em}summary{cursor:pointer;color:#0b5cad}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:.85em}
ul{padding-left:1.3em}li{margin:.25em 0}nav{font-size:.9em;color:#555}nav a{color:#0b5cad;margin-right:.8em}
"""


def render_html(title: str, blocks: list) -> str:
    """One self-contained page: inline CSS and SVG, no scripts, nothing fetched. Also well-formed XML."""
    anchors = [(slug(b.text), b.text) for b in blocks if isinstance(b, Heading) and b.level == 2]
    nav = "<nav>" + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in anchors) + "</nav>"

    def render(items: list) -> list[str]:
        out = []
        for block in items:
            if isinstance(block, Heading):
                anchor = f' id="{slug(block.text)}"' if block.level == 2 else ""
                out.append(f"<h{block.level}{anchor}>{_html_inline(block.text)}</h{block.level}>")
            elif isinstance(block, Para):
                out.append(f"<p>{_html_inline(block.text)}</p>")
            elif isinstance(block, Bullets):
                out.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in block.items) + "</ul>")
            elif isinstance(block, Table):
                left = [' class="l"' if a == "l" else "" for a in block.alignment()]
                head = "".join(f"<th{a}>{_html_inline(h)}</th>" for a, h in zip(left, block.header, strict=True))
                body = "".join(
                    "<tr>" + "".join(f"<td{a}>{_html_inline(c)}</td>" for a, c in zip(left, row, strict=True)) + "</tr>"
                    for row in block.rows
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
                if block.note:
                    out.append(f'<p class="note">{_html_inline(block.note)}</p>')
            elif isinstance(block, Figure):
                out.append(
                    f"<figure>{inline_svg(block.svg)}<figcaption>{_html_inline(block.caption)}</figcaption></figure>"
                )
            elif isinstance(block, Details):
                out.append(
                    f"<details><summary>{_html_inline(block.summary)}</summary>{''.join(render(block.blocks))}</details>"
                )
        return out

    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8"/>',
            '<meta name="viewport" content="width=device-width, initial-scale=1"/>',
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            nav,
            *render(blocks),
            "</body></html>",
            "",
        ]
    )


def inline_svg(svg: str) -> str:
    """SVG text fit for embedding in HTML: no XML prolog, no DTD, no namespace or metadata URLs.

    HTML parsers put an inline <svg> in the SVG namespace themselves, so the xmlns attributes (the
    only http:// strings matplotlib writes) can go, and the page then holds no URL at all. xlink:href
    becomes SVG 2's plain href, which every current browser reads, so the page stays well-formed XML.
    """
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    return svg.replace("xlink:href=", "href=")
