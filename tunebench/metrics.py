"""Classification metrics: accuracy and macro-F1 by scikit-learn (offline), plus any `evaluate` metric.

scikit-learn gives the same figures as evaluate's hub metrics "accuracy" and "f1" (average="macro").
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from tunebench.errors import UserError


def load_extra(names: list[str]) -> list:
    """evaluate metrics by local script path (works offline) or hub name (needs internet)."""
    import evaluate

    loaded = []
    for name in names:
        try:
            loaded.append(evaluate.load(name))
        except Exception as exc:  # evaluate raises FileNotFoundError, ConnectionError, ValueError...
            raise UserError(
                f"cannot load evaluate metric {name!r} (hub names need internet; a local "
                f"script path works offline): {str(exc).splitlines()[0]}"
            ) from None
    return loaded


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, extra: list = ()) -> dict:
    out = {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1_macro": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }
    for metric in extra:
        scores = metric.compute(predictions=predictions.tolist(), references=labels.tolist())
        out.update({f"{metric.name}.{k}" if k in out else k: float(v) for k, v in scores.items()})
    return out
