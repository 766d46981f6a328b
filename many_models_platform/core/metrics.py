"""Holdout metrics. Plain numpy so workers need nothing heavier than the estimator."""

from __future__ import annotations

import math

import numpy as np

from .spec import LOWER_IS_BETTER

REGRESSION_METRICS = ("mape", "rmse", "mae", "r2")
LABEL_METRICS = ("accuracy", "f1", "precision", "recall")


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    a = np.asarray(actual, dtype=float)
    p = np.asarray(predicted, dtype=float)
    err = p - a
    nonzero = a != 0
    mape = float(np.mean(np.abs(err[nonzero] / a[nonzero]))) if nonzero.any() else math.nan
    ss_tot = float(np.sum((a - a.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else math.nan
    return {
        "mape": mape,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": r2,
    }


def label_metrics(actual: np.ndarray, predicted: np.ndarray, positive: object = 1) -> dict[str, float]:
    """Accuracy plus precision/recall/F1 of the positive class (``positive``, else the larger of
    two labels); macro-averaged over classes when there are more than two."""
    a = np.asarray(actual)
    p = np.asarray(predicted)
    classes = np.unique(np.concatenate([a, p]))
    if len(classes) == 2 and positive not in classes:
        positive = classes[-1]  # e.g. "yes" of {"no", "yes"}, 2 of {0, 2}
    accuracy = float(np.mean(a == p)) if len(a) else math.nan
    targets = [positive] if len(classes) <= 2 else list(classes)
    precisions, recalls, f1s = [], [], []
    for c in targets:
        tp = float(np.sum((p == c) & (a == c)))
        fp = float(np.sum((p == c) & (a != c)))
        fn = float(np.sum((p != c) & (a == c)))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        precisions.append(prec)
        recalls.append(rec)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return {
        "accuracy": accuracy,
        "precision": float(np.mean(precisions)),
        "recall": float(np.mean(recalls)),
        "f1": float(np.mean(f1s)),
    }


def flag_rate(flags: np.ndarray) -> float:
    """Share of rows a detector flags (1 = anomaly)."""
    f = np.asarray(flags, dtype=float)
    return float(f.mean()) if len(f) else math.nan


def score_stability(scores: np.ndarray, reference: np.ndarray) -> float:
    """Spearman rank correlation of two detectors' anomaly scores on the same rows (ties get
    their average rank); NaN when either ranks nothing (fewer than two rows, constant scores)."""
    from scipy.stats import rankdata

    a, b = np.asarray(scores, dtype=float), np.asarray(reference, dtype=float)
    if len(a) < 2 or len(a) != len(b):
        return math.nan
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def higher_is_worse(metric: str) -> bool:
    """Direction of a threshold and of "worst": errors and the flag rate are maximums; scores,
    r2 and score stability are minimums."""
    return metric in LOWER_IS_BETTER or metric == "flag_rate"


def task_metrics(task: str, actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    if task in ("forecast", "regression"):
        return regression_metrics(actual, predicted)
    return label_metrics(actual, predicted)


def is_better(candidate: float, reference: float, metric: str) -> bool:
    """Strictly better; NaN is never better than a number."""
    if math.isnan(candidate):
        return False
    if math.isnan(reference):
        return True
    return candidate < reference if metric in LOWER_IS_BETTER else candidate > reference
