"""Official GLUE metrics, computed by scikit-learn and scipy."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from kdray.glue.tasks import get_task


def compute_metrics(task: str, predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """The task's official metrics: class ids (or scores for STS-B) against gold labels.

    Keys: ``accuracy``, ``f1``, ``matthews_correlation``, ``pearson``, ``spearman``.
    """
    spec = get_task(task)
    preds = np.asarray(predictions, dtype=float)
    gold = np.asarray(labels, dtype=float)
    if preds.shape != gold.shape or preds.ndim != 1:
        raise ValueError(f"{task}: predictions {preds.shape} and labels {gold.shape} must be equal-length vectors")
    out: dict[str, float] = {}
    for name in spec.metrics:
        if name == "pearson":
            out[name] = float(pearsonr(preds, gold)[0])
        elif name == "spearman":
            out[name] = float(spearmanr(preds, gold)[0])
        elif name == "accuracy":
            out[name] = float(accuracy_score(gold.astype(int), preds.astype(int)))
        elif name == "f1":
            out[name] = float(f1_score(gold.astype(int), preds.astype(int)))
        elif name == "matthews_correlation":
            out[name] = float(matthews_corrcoef(gold.astype(int), preds.astype(int)))
    return out


def primary_score(task: str, metrics: dict[str, float]) -> float:
    """The single number GLUE ranks a task by: the mean of its official metrics.

    MRPC/QQP average F1 and accuracy, STS-B Pearson and Spearman; for MNLI the
    matched and mismatched accuracies (keys prefixed by the dev split) are averaged.
    """
    spec = get_task(task)
    values = [v for k, v in metrics.items() if any(k == m or k.endswith("_" + m) for m in spec.metrics)]
    if not values:
        raise ValueError(f"{task}: none of the metrics {list(spec.metrics)} in {sorted(metrics)}")
    return float(np.nanmean(values))
