"""Naive baselines on the holdout, and which holdout rows a champion may be compared on.

A per-key model is only worth serving if it beats what needs no model: the last value, the
same period last season, the training mean, the majority class, chance. Every key's holdout
is scored with its task's baselines, the best of them by the use case's metric is *the*
baseline, and ``skill`` says how much better the candidate is (docs/evaluation.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from .features import Period, key_classes, labels, parse_time_text, season_length
from .metrics import is_better, label_metrics, positive_class, task_metrics


def forecast_baselines(
    spec, train: pl.DataFrame, holdout: pl.DataFrame, period: Period | None, scale: float | None
) -> dict[str, dict[str, float]]:
    """``naive``: the last training value for every holdout period; ``seasonal_naive``: the value
    of the same period in the last training season (season from the frequency: weekly 52,
    monthly 12, ...; left out when the season is 1 or the training part is shorter than it).
    A period missing from the training part takes the latest value before it."""
    t, y = spec.time_column, spec.target
    ordered = train.select(t, pl.col(y).cast(pl.Float64)).sort(t)
    actual = holdout[y].cast(pl.Float64).to_numpy()
    last = ordered[y][-1]
    out = {"naive": task_metrics("forecast", actual, np.full(holdout.height, last), scale)}
    m = season_length(period.frequency) if period else 1
    end = ordered[t][-1]
    if period is None or m <= 1:
        return out
    positions = ordered.select(period.index(pl.col(t), end).cast(pl.Int64).alias("pos"), pl.col(y))
    if positions["pos"].min() > -(m - 1):
        return out  # less than one season of training data
    ahead = holdout.select(period.index(pl.col(t), end).cast(pl.Int64).alias("h"))["h"].to_numpy()
    source = ahead - m * np.ceil(ahead / m).astype(np.int64)  # the same period of the last season, <= 0
    lookup = pl.DataFrame({"pos": source, "row": np.arange(len(source))}).sort("pos")
    found = lookup.join_asof(positions.sort("pos"), on="pos", strategy="backward").sort("row")
    predicted = found[y].fill_null(ordered[y][0]).to_numpy()
    out["seasonal_naive"] = task_metrics("forecast", actual, predicted, scale)
    return out


def chance_metrics(actual: np.ndarray, rates: dict[Any, float]) -> dict[str, float]:
    """Expected metrics of guessing each class at random with probability ``rates[c]``: accuracy
    sum p_c q_c, precision p_c, recall q_c, F1 2 p_c q_c / (p_c + q_c) for each scored class
    (p_c its share of the holdout), undefined as in ``label_metrics``."""
    a = np.asarray(actual)
    guesses = np.array(sorted(rates, key=str))
    positive = positive_class(a, guesses)
    classes = sorted(set(np.unique(a).tolist()) | set(rates), key=str)
    share = {c: float(np.mean(a == c)) if len(a) else 0.0 for c in classes}
    accuracy = sum(share[c] * rates.get(c, 0.0) for c in classes) if len(a) else math.nan
    targets = [positive] if len(classes) <= 2 else classes
    precision, recall, f1 = [], [], []
    for c in targets:
        p, q = share.get(c, 0.0), rates.get(c, 0.0)
        precision.append(p if q > 0 else math.nan)
        recall.append(q if p > 0 else math.nan)
        f1.append(2 * p * q / (p + q) if p > 0 else math.nan)

    def mean(values):
        defined = [v for v in values if not math.isnan(v)]
        return float(np.mean(defined)) if defined else math.nan

    return {"accuracy": accuracy, "precision": mean(precision), "recall": mean(recall), "f1": mean(f1)}


def baselines(
    spec,
    train: pl.DataFrame,
    holdout: pl.DataFrame,
    period: Period | None,
    scale: float | None,
    flag_rate: float | None = None,
) -> dict[str, dict[str, float]]:
    """Every baseline of the task on the holdout, by name. Forecast: ``naive``,
    ``seasonal_naive``; regression: ``mean`` (the training mean); classification: ``majority``
    (the training's most common class) and ``chance`` (random guesses at the training's class
    shares, as expected values); labelled anomaly detection: ``flag_nothing`` and
    ``chance_at_rate`` (random flags at ``flag_rate``, the detector's configured rate, else the
    training's anomaly share). An anomaly use case without labels has none."""
    if not spec.labelled or holdout.is_empty():
        return {}
    if spec.task == "forecast":
        return forecast_baselines(spec, train, holdout, period, scale)
    if spec.task == "anomaly":  # scored on the labelled rows, as the detector is (modeling.evaluate)
        train, holdout = (
            train.filter(pl.col(spec.target).is_not_null()),
            holdout.filter(pl.col(spec.target).is_not_null()),
        )
    actual = labels(holdout, spec.target)
    classes = key_classes(spec, pl.concat([train.select(spec.target), holdout.select(spec.target)]))
    if spec.task == "regression":
        mean = float(train[spec.target].cast(pl.Float64).mean())
        return {"mean": task_metrics("regression", actual, np.full(len(actual), mean), scale)}
    counts = train[spec.target].value_counts(sort=True)
    shares = {row[0]: row[1] / train.height for row in counts.iter_rows()}
    if spec.task == "classification":
        top = max(shares.values())
        majority = sorted((c for c, s in shares.items() if s == top), key=str)[0]
        return {
            "majority": label_metrics(
                actual, np.full(len(actual), majority, dtype=np.asarray(actual).dtype), classes=classes
            ),
            "chance": chance_metrics(actual, shares),
        }
    rate = flag_rate if flag_rate is not None else shares.get(1, 0.0)
    return {
        "flag_nothing": label_metrics(actual, np.zeros(len(actual), dtype=np.asarray(actual).dtype)),
        "chance_at_rate": chance_metrics(actual, {1: rate, 0: 1.0 - rate}),
    }


def best_baseline(metric: str, scored: dict[str, dict[str, float]]) -> tuple[str | None, dict[str, float]]:
    """The baseline to beat: the best on ``metric`` (the first on a tie or when none is defined)."""
    best: str | None = None
    for name, metrics in scored.items():
        if best is None or is_better(metrics.get(metric, math.nan), scored[best].get(metric, math.nan), metric):
            best = name
    return best, (scored[best] if best else {})


def comparable_rows(
    spec, holdout: pl.DataFrame, champion: dict[str, Any], split: str
) -> tuple[pl.DataFrame | None, str]:
    """The holdout rows the champion's compared model was never fitted on, with a sentence saying
    which; ``(None, "not comparable: ...")`` when there are none or they cannot be told.

    Time-ordered data: the rows after the champion's cutoff (``cutoff``: the last time its
    compared model was fitted on). Hash splits: every holdout row when the champion's holdout
    was drawn the same way (``split``), since a stable split never moves a row from training
    to the holdout; otherwise the rows cannot be told apart.
    """
    version = champion.get("version")
    t = spec.time_column
    if not t:
        if champion.get("split") != split:
            drawn = champion.get("split") or "before splits were recorded"
            return None, (
                f"not comparable: champion v{version}'s holdout was drawn differently ({drawn}; today {split}), "
                "so its training rows cannot be told from today's holdout"
            )
        return holdout, f"compared on all {holdout.height} holdout rows (the same stable split as champion v{version})"
    cutoff = champion.get("cutoff")
    if not cutoff:
        return None, (
            f"not comparable: champion v{version} records no training cutoff (registered before evaluation "
            "recorded what each model was fitted on)"
        )
    rows = holdout.filter(pl.col(t) > parse_time_text(cutoff, holdout.schema[t]))
    if rows.is_empty():
        return None, (
            f"not comparable: champion v{version} was fitted through {cutoff}, which covers every holdout row "
            f"(the last is {holdout[t].max()})"
        )
    return rows, f"compared on {rows.height} of {holdout.height} holdout rows after {cutoff} (champion v{version})"
