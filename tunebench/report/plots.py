"""The report's figures, drawn with matplotlib (Agg) and returned as SVG text.

Each function takes rows already aggregated by the report's document and knows nothing of result files.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display: the report is written on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from tunebench.measure import CATEGORIES  # noqa: E402
from tunebench.units import MiB  # noqa: E402

STYLE = {
    "svg.fonttype": "none",  # text stays text: smaller files, and the browser's font renders it
    "svg.hashsalt": "tunebench",  # stable element ids: the same results give byte-identical figures
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
PART_COLORS = ("#4c72b0", "#8172b3", "#dd8452", "#c44e52", "#55a868", "#b0b0b0")


def to_svg(fig: plt.Figure) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return buffer.getvalue()


def pareto_figure(points: Sequence[dict], colors: dict[str, str]) -> str:
    """Accuracy against peak memory and against throughput; the non-dominated points are filled and joined.

    points: {label, accuracy, ci (half-width or None), memory_bytes, tokens_per_second,
    front_memory, front_throughput} with accuracy in percent.
    """
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6), layout="constrained")
        panels = (
            (axes[0], "memory_bytes", "front_memory", "Peak memory (MiB)", MiB, "less memory →"),
            (axes[1], "tokens_per_second", "front_throughput", "Tokens/s", 1, "faster →"),
        )
        placed = []
        for ax, key, front_key, xlabel, scale, hint in panels:
            shown = [p for p in points if p[key]]
            for p in shown:
                color, on_front = colors[p["label"]], p[front_key]
                ax.errorbar(
                    p[key] / scale,
                    p["accuracy"],
                    yerr=p["ci"] if p["ci"] else None,
                    fmt="o",
                    ms=8,
                    capsize=3,
                    color=color,
                    mfc=color if on_front else "white",
                    mew=1.6,
                    zorder=3,
                )
            front = sorted((p[key] / scale, p["accuracy"]) for p in shown if p[front_key])
            if len(front) > 1:
                ax.plot(*zip(*front, strict=True), "--", color="#555555", lw=1, zorder=2)
            values = [p[key] / scale for p in shown]
            if values and max(values) > 8 * min(values):  # log only when the methods span an order of magnitude
                ax.set_xscale("log")
                xlabel += " (log scale)"
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.4g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlabel(xlabel)
            ax.set_ylabel("Test accuracy (%)")
            ax.margins(x=0.25, y=0.2)
            ax.set_ylim(*_accuracy_limits(shown))
            ax.set_title(hint, loc="right", fontsize=8, color="#555555")
            placed.append((ax, [(p["label"], p[key] / scale, p["accuracy"]) for p in shown]))
        axes[0].invert_xaxis()  # both panels then read "better" towards the top right
        fig.text(
            0.01,
            -0.04,
            "Filled: on the Pareto front (no other method is both more accurate and cheaper). "
            "Bars: 95% CI over seeds, cut at 0 and 100%.",
            fontsize=8,
            color="#444444",
        )
        fig.canvas.draw()  # the layout is final now, so label positions can be checked in pixels
        for ax, labelled in placed:
            _label_points(fig, ax, labelled)
        return to_svg(fig)


def _accuracy_limits(points: Sequence[dict]) -> tuple[float, float]:
    """Y range around the points and their intervals, but never beyond 0-100%: a 2-seed interval can be
    wider than the scale, and would flatten the points into a line."""
    if not points:
        return 0.0, 100.0
    low = max(0.0, min(p["accuracy"] - (p["ci"] or 0) for p in points))
    high = min(100.0, max(p["accuracy"] + (p["ci"] or 0) for p in points))
    pad = max(high - low, 2.0) * 0.15
    return max(0.0, low - pad), min(100.0, high + pad) + 0.5


def _label_points(fig: plt.Figure, ax: plt.Axes, labelled: Sequence[tuple[str, float, float]]) -> None:
    """Name each point beside it, trying a few offsets so names neither overlap each other nor the markers."""
    to_pixels = fig.dpi / 72
    markers = [ax.transData.transform((x, y)) for _, x, y in labelled]
    boxes: list[tuple[float, float, float, float]] = []
    offsets = ((7, 4), (7, -12), (-7, 4), (-7, -12), (7, 14), (7, -22), (-7, 14), (-7, -22))
    for (label, x, y), (px, py) in zip(labelled, markers, strict=True):
        width, height = 5.2 * len(label) * to_pixels, 10 * to_pixels
        for dx, dy in offsets:
            left = px + dx * to_pixels - (width if dx < 0 else 0)
            bottom = py + dy * to_pixels
            box = (left, bottom, left + width, bottom + height)
            clear = all(_apart(box, other) for other in boxes) and all(
                _apart(box, (mx - 6, my - 6, mx + 6, my + 6)) for mx, my in markers
            )
            if clear:
                break
        else:
            dx, dy, box = 7, 4, (px, py, px + width, py + height)  # crowded: the first choice, overlap and all
        boxes.append(box)
        ax.annotate(
            label,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=8.5,
            ha="right" if dx < 0 else "left",
            va="bottom",
        )


def _apart(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def memory_figure(rows: Sequence[dict]) -> str:
    """Stacked bars of the tensor memory at the peak, per method. rows: {label, at_peak: {part: bytes}}."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(9.5, 0.5 + 0.45 * max(len(rows), 2)), layout="constrained")
        labels = [r["label"] for r in rows]
        left = [0.0] * len(rows)
        for part, color in zip(CATEGORIES, PART_COLORS, strict=True):
            widths = [(r["at_peak"] or {}).get(part, 0) / MiB for r in rows]
            ax.barh(labels, widths, left=left, color=color, label=part.replace("_", " "), height=0.6)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        ax.invert_yaxis()  # first method on top, as in the tables
        ax.set_xlabel("Tensor memory at the peak (MiB)")
        ax.grid(axis="y", visible=False)
        ax.legend(ncols=len(CATEGORIES), loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8)
        return to_svg(fig)


def curves_figure(runs: Sequence[dict], colors: dict[str, str]) -> str:
    """Training loss and validation accuracy against step, one line per run. runs: {label, curves}."""
    with plt.rc_context(STYLE):
        # Shared steps: a validation run only at the end of an epoch then sits where training ended.
        fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(9.5, 3.4), layout="constrained", sharex=True)
        for run in runs:
            color = colors[run["label"]]
            loss = run["curves"].get("train_loss") or []
            loss_ax.plot([p["step"] for p in loss], [p["loss"] for p in loss], color=color, lw=1.2, alpha=0.8)
            validation = run["curves"].get("validation") or []
            val_ax.plot(
                [p["step"] for p in validation],
                [100 * p["accuracy"] for p in validation],
                "o-",
                color=color,
                ms=4,
                lw=1.2,
                alpha=0.8,
            )
        for ax in (loss_ax, val_ax):
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        loss_ax.set(xlabel="Optimizer step", ylabel="Training loss", title="Training loss")
        val_ax.set(xlabel="Optimizer step", ylabel="Validation accuracy (%)", title="Validation accuracy")
        labels = list(dict.fromkeys(run["label"] for run in runs))
        handles = [Line2D([], [], color=colors[label], marker="o", ms=4, lw=1.2) for label in labels]
        val_ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
        return to_svg(fig)
