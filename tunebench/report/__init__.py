"""Comparison reports: results folders in; report.md, a self-contained index.html, results.csv and figures out.

A report is always regenerated from result files. Every sentence in "What to use" is computed from the
numbers; nothing in it is fixed text about a method.

Pipeline: load result sets (load) -> per task, keep each method's learning rate with the best validation accuracy
where the suite swept one -> group runs by method (and any other grid axis that varies) -> aggregate over
seeds (groups, stats) -> build a document of blocks (document: advice, tables, plots) -> render it as Markdown
and as HTML (markdown, html), with the runs as CSV (csv_out).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tunebench.errors import UserError
from tunebench.report.blocks import Figure
from tunebench.report.csv_out import results_csv
from tunebench.report.document import build_document
from tunebench.report.html import render_html
from tunebench.report.load import load_sets
from tunebench.report.markdown import render_markdown


def write_report(results: list[str], out: str) -> None:
    """Write OUT/{report.md,index.html,results.csv,*.svg} from the result folders.

    The folder is built beside OUT and swapped in whole, so OUT never holds a half-written report or
    figures left over from an earlier one.
    """
    sets = load_sets(results)
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "report.md").exists():
        raise UserError(f"{out_dir} exists and is not a tunebench report; choose another -o folder")
    command = f"tunebench report {' '.join(results)} -o {out}"
    title, blocks = build_document(sets, command)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        (staging / "report.md").write_text(render_markdown(title, blocks), encoding="utf-8")
        (staging / "index.html").write_text(render_html(title, blocks), encoding="utf-8")
        (staging / "results.csv").write_text(results_csv(sets), encoding="utf-8")
        for figure in (b for b in blocks if isinstance(b, Figure)):
            (staging / figure.file).write_text(figure.svg, encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; a report is for reading
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.replace(old)
            staging.replace(out_dir)
            shutil.rmtree(old)
        else:
            staging.replace(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
