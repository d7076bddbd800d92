"""The document rendered as Markdown (report.md)."""

from __future__ import annotations

from tunebench.report.blocks import Bullets, Details, Figure, Heading, Para, Table


def _md_inline(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(title: str, blocks: list) -> str:
    return "\n".join([f"# {title}", "", *_markdown_lines(blocks)]).rstrip() + "\n"


def _markdown_lines(blocks: list) -> list[str]:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            out += [block.text, ""]
        elif isinstance(block, Bullets):
            out += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            out += [
                "| " + " | ".join(_md_inline(h) or " " for h in block.header) + " |",
                "|" + "|".join("---" if a == "l" else "--:" for a in block.alignment()) + "|",
            ]
            out += ["| " + " | ".join(_md_inline(c) for c in row) + " |" for row in block.rows]
            out += [""] + ([f"*{block.note}*", ""] if block.note else [])
        elif isinstance(block, Figure):
            out += [f"![{block.caption}]({block.file})", ""]
        elif isinstance(block, Details):  # Markdown has no fold: the content follows its title
            out += [f"**{block.summary}**", "", *_markdown_lines(block.blocks)]
    return out
