"""Numbers as the report writes them: rates, learning rates, percentages, accuracies, ratios and shares."""

from __future__ import annotations

from tunebench.report.groups import Group


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x / 1000:.3g}k" if x >= 10_000 else f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def fmt_lr(x: float | None) -> str:
    return "—" if x is None else f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def fmt_percent(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}%"


def fmt_accuracy(g: Group) -> str:
    return f"{g.accuracy:.1f} ± {g.accuracy_ci:.1f}" if g.accuracy_ci is not None else f"{g.accuracy:.1f} (1 seed)"


def fmt_accuracy_text(g: Group) -> str:
    """For sentences: '54.7 ± 3.1% test accuracy' or '54.7% test accuracy (1 seed)'."""
    if g.accuracy_ci is None:
        return f"{g.accuracy:.1f}% test accuracy (1 seed)"
    return f"{g.accuracy:.1f} ± {g.accuracy_ci:.1f}% test accuracy ({g.n} seeds)"


def fmt_ratio(x: float) -> str:
    """0.025×, 0.82×, 1.0×, 1.6×, 12×: two significant digits below 1, one decimal below 10."""
    return f"{x:.2g}×" if x < 0.995 else f"{x:.1f}×" if x < 9.95 else f"{x:.0f}×"


def fmt_share(x: float) -> str:
    """A fraction as a percentage, with enough digits that 0.3% does not read as 0%."""
    return f"{100 * x:.2g}%" if x < 0.1 else f"{100 * x:.0f}%"
