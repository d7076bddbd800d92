"""Byte and time units, and how tunebench writes them for people (reports, plans, suite progress)."""

from __future__ import annotations

KiB, MiB, GiB = 2**10, 2**20, 2**30


def format_bytes(n: float | None) -> str:
    """The largest binary unit that keeps the number >= 1, three significant digits: 713 MiB, 2.63 MiB, 1.5 GiB."""
    if n is None:
        return "—"
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


def format_gib(n: float) -> str:
    """Always GiB with one decimal, for the planner's budgets and needs, which compare against each other."""
    return f"{n / GiB:.1f} GiB"


def format_seconds(s: float | None) -> str:
    """12.3 s, 9 min 50 s, 2 h 05 min."""
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.3g} s"
    minutes, seconds = divmod(round(s), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
