"""Render a report's index.html in headless Chromium and check the screenshot shows the plots.

    python tests/render_check.py reports/quick/index.html --png runs/render-check.png

Exit status 0 when the page rendered with its figures, 1 when it looks blank, 2 when Chromium is missing.
Used by `make report-check` and by tests/test_report.py (which skips when Chromium is absent).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Fresh profile, no network chatter, no GPU, no sandbox (containers run as root).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 4000, timeout: float = 120) -> None:
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="tunebench-chromium-") as profile:
        subprocess.run(
            [
                browser,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={png.resolve()}",
                f"--window-size={width},{height}",
                html.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
    if not png.exists():
        raise RuntimeError(f"chromium exited without writing {png}")


def pixel_stats(png: Path) -> dict[str, float]:
    """Shares of the screenshot that are ink (not near-white) and figure colour.

    Figure colour: saturated pixels outside the blue band of the page's own links (#0b5cad, hue 210
    degrees), so a text-only page, links and all, scores zero and the figures' marks are what count.
    """
    image = Image.open(png).convert("RGB")
    rgb = np.asarray(image, dtype=np.int16)
    hue = np.asarray(image.convert("HSV"), dtype=np.float64)[..., 0] * 360 / 256
    saturated = (rgb.max(axis=2) - rgb.min(axis=2)) > 60
    link_blue = (hue > 195) & (hue < 225)
    return {"ink": float((rgb.min(axis=2) < 235).mean()), "colour": float((saturated & ~link_blue).mean())}


def looks_rendered(stats: dict[str, float]) -> bool:
    # A blank page has no ink; a page whose figures failed has no figure colour. Reports with figures
    # measure about 3-5% ink and 0.5-2% colour on a 1200x4000 screenshot.
    return stats["ink"] > 0.01 and stats["colour"] > 0.001


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--png", type=Path, default=Path("runs/render-check.png"))
    args = parser.parse_args(argv)
    try:
        screenshot(args.html, args.png)
    except FileNotFoundError as exc:
        print(f"render-check: {exc}", file=sys.stderr)
        return 2
    stats = pixel_stats(args.png)
    verdict = "OK" if looks_rendered(stats) else "BLANK"
    print(f"render-check: {verdict}: {args.png} ink {stats['ink']:.1%}, colour {stats['colour']:.2%}")
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
