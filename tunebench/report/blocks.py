"""The document the report is built as: a list of blocks, rendered afterwards as Markdown and as HTML.

Text may hold **bold** and `code`; both renderers understand them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    align: str = ""  # one of l/r per column; default: the first column left, the (numeric) rest right

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.header) - 1)


@dataclass
class Figure:
    file: str
    svg: str
    caption: str


@dataclass
class Details:
    summary: str
    blocks: list


def slug(*parts: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
