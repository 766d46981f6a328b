"""Holdout metrics. Plain numpy so workers need nothing heavier than the estimator.

A metric that cannot be computed honestly is NaN ("undefined"), never a partial or a made-up
value: MAPE over a zero actual, F1 on a holdout with no positive. ``explain_undefined`` says
why, in words a user reads in the evaluation report and the promotion reason.
"""

from __future__ import annotations

import math

import numpy as np

from .spec import LOWER_IS_BETTER

REGRESSION_METRICS = ("mape", "rmse", "mae", "r2", "wape", "smape", "mase")
LABEL_METRICS = ("accuracy", "f1", "precision", "recall")


def regression_metrics(actual: np.ndarray, predicted: np.ndarray, scale: float | None = None) -> dict[str, float]:
    """Errors of point predictions. ``scale`` is the MASE denominator (the in-sample
    seasonal-naive MAE of the training part, see ``mase_scale``); MASE is NaN without it.

    - mape: mean |e| / |a|; undefined (NaN) when any actual is 0, not an average of the rest;
    - wape: sum |e| / sum |a| (zero actuals are fine; NaN only when every actual is 0);
    - smape: mean 2|e| / (|a| + |p|), in [0, 2]; a row where both are 0 counts as no error;
    - mase: mae / scale.
    """
    a = np.asarray(actual, dtype=float)
    p = np.asarray(predicted, dtype=float)
    if not len(a):
        return dict.fromkeys(REGRESSION_METRICS, math.nan)
    err = p - a
    abs_err = np.abs(err)
    mape = float(np.mean(abs_err / np.abs(a))) if np.all(a != 0) else math.nan
    ss_tot = float(np.sum((a - a.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else math.nan
    total = float(np.sum(np.abs(a)))
    denom = np.abs(a) + np.abs(p)
    smape_terms = np.divide(2 * abs_err, denom, out=np.zeros_like(abs_err), where=denom > 0)
    mae = float(np.mean(abs_err))
    return {
        "mape": mape,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": mae,
        "r2": r2,
        "wape": float(np.sum(abs_err)) / total if total > 0 else math.nan,
        "smape": float(np.mean(smape_terms)),
        "mase": mae / scale if scale is not None and scale > 0 and math.isfinite(scale) else math.nan,
    }


def mase_scale(history: np.ndarray, season: int) -> float:
    """The MASE denominator: mean |y_t - y_{t-season}| over a time-ordered training series
    (Hyndman and Koehler); NaN when the series is shorter than one season plus one."""
    y = np.asarray(history, dtype=float)
    if season < 1 or len(y) <= season:
        return math.nan
    return float(np.mean(np.abs(y[season:] - y[:-season])))


def class_set(actual: np.ndarray, predicted: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    """The classes a metric is taken over: the key's (``classes``: every label of its training
    set) and the actuals', so a model, a baseline and a champion scored on the same rows are
    averaged over the same classes whatever each predicts; without ``classes``, the actuals'
    and the predictions'."""
    return np.unique(np.concatenate([np.asarray(actual), np.asarray(predicted if classes is None else classes)]))


def positive_class(
    actual: np.ndarray, predicted: np.ndarray, positive: object = 1, classes: np.ndarray | None = None
) -> object:
    """The class precision/recall/F1 score: ``positive`` when present, else the larger of two labels."""
    found = class_set(actual, predicted, classes)
    if len(found) == 2 and positive not in found:
        return found[-1]  # e.g. "yes" of {"no", "yes"}, 2 of {0, 2}
    return positive


def label_metrics(
    actual: np.ndarray, predicted: np.ndarray, positive: object = 1, classes: np.ndarray | None = None
) -> dict[str, float]:
    """Accuracy plus precision/recall/F1 of the positive class (``positive``, else the larger of
    two labels); macro-averaged over classes when there are more than two (``classes``: see
    ``class_set``).

    Undefined is NaN, not 0 (scikit-learn's ``zero_division=nan``): precision when nothing is
    predicted positive, recall and F1 when the actuals hold no positive. A macro average leaves
    out the classes where a metric is undefined, and is NaN when it is undefined for all.
    """
    a = np.asarray(actual)
    p = np.asarray(predicted)
    classes = class_set(a, p, classes)
    positive = positive_class(a, p, positive, classes)
    accuracy = float(np.mean(a == p)) if len(a) else math.nan
    targets = [positive] if len(classes) <= 2 else list(classes)
    precisions, recalls, f1s = [], [], []
    for c in targets:
        tp = float(np.sum((p == c) & (a == c)))
        fp = float(np.sum((p == c) & (a != c)))
        fn = float(np.sum((p != c) & (a == c)))
        precisions.append(tp / (tp + fp) if tp + fp else math.nan)
        recalls.append(tp / (tp + fn) if tp + fn else math.nan)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fn else math.nan)
    return {
        "accuracy": accuracy,
        "precision": _nanmean(precisions),
        "recall": _nanmean(recalls),
        "f1": _nanmean(f1s),
    }


def _nanmean(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def explain_undefined(
    task: str,
    actual: np.ndarray,
    predicted: np.ndarray,
    metrics: dict[str, float],
    scale: float | None = None,
    classes: np.ndarray | None = None,
) -> dict[str, str]:
    """Why each NaN metric is undefined, for the report and the promotion reason."""
    a, p = np.asarray(actual), np.asarray(predicted)
    out: dict[str, str] = {}
    undefined = [m for m, v in metrics.items() if v is None or (isinstance(v, float) and math.isnan(v))]
    if not undefined:
        return out
    if not len(a):
        return dict.fromkeys(undefined, "the holdout is empty")
    if task in ("forecast", "regression"):
        af = a.astype(float)
        reasons = {
            "mape": f"{int(np.sum(af == 0))} of {len(af)} holdout actuals are 0 and MAPE divides by each actual; "
            "use wape, smape or mase",
            "wape": "every holdout actual is 0",
            "r2": "the holdout actuals are constant",
            "mase": "the training part has no seasonal-naive error to scale by "
            + ("(its series is constant at that season)" if scale == 0 else "(too short for one season)"),
        }
    elif classes is not None and len(found := class_set(a, p, classes)) == 1:
        only = f"the key's labels are all {_plain(found[0])!r}: there is no other class to tell it from"
        reasons = dict.fromkeys(("precision", "recall", "f1"), only)
    else:
        c = _plain(positive_class(a, p, classes=classes))
        reasons = {
            "precision": f"nothing in the holdout was predicted positive (class {c!r})",
            "recall": f"the holdout holds no positive (class {c!r})",
            "f1": f"the holdout holds no positive (class {c!r})",
        }
    for m in undefined:
        if m in reasons:
            out[m] = reasons[m]
    return out


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds, so a message shows 'yes', not np.str_('yes')."""
    return value.item() if isinstance(value, np.generic) else value


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


def task_metrics(
    task: str, actual: np.ndarray, predicted: np.ndarray, scale: float | None = None, classes: np.ndarray | None = None
) -> dict[str, float]:
    if task in ("forecast", "regression"):
        return regression_metrics(actual, predicted, scale)
    return label_metrics(actual, predicted, classes=classes)


def is_better(candidate: float, reference: float, metric: str) -> bool:
    """Strictly better; NaN is never better than a number."""
    if math.isnan(candidate):
        return False
    if math.isnan(reference):
        return True
    return candidate < reference if metric in LOWER_IS_BETTER else candidate > reference


def skill(value: float | None, baseline: float | None, metric: str) -> float | None:
    """How much better than the baseline: ``1 - value / baseline`` for errors (0 = as good as the
    baseline, 1 = perfect, negative = worse), ``value - baseline`` for scores. None when either
    is undefined, or an error baseline is 0 (a perfect baseline leaves no ratio)."""
    if value is None or baseline is None or math.isnan(value) or math.isnan(baseline):
        return None
    if metric in LOWER_IS_BETTER:
        return 1.0 - value / baseline if baseline > 0 else None
    return value - baseline
