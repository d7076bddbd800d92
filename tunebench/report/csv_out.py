"""results.csv: one row per run, every result field flattened to a dotted column."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from tunebench.config import flatten
from tunebench.report.load import ResultSet


def results_csv(sets: Sequence[ResultSet]) -> str:
    """One row per run: the result flattened to dotted columns, curves left out (they are lists)."""
    lead = ["set", "run_id", "task", "method", "seed", "status", "error", "test_accuracy", "test_f1"]
    rows = []
    for s in sets:
        for r in s.runs:
            flat = {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(r.result).items()}
            flat = {k: v for k, v in flat.items() if not k.startswith("curves.")}
            rows.append(
                {
                    "set": s.label,
                    "run_id": r.run_id,
                    "task": r.grid["task"],
                    "method": r.grid["method"],
                    "seed": r.grid["seed"],
                }
                | flat
            )
    columns = lead + sorted({k for row in rows for k in row} - set(lead))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
