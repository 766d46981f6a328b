"""Per-key model fitting, candidate selection, prediction and evaluation.

Every candidate is wrapped in a median imputer and a scaler, so sparse features never crash
a key and the fitted object stays a plain scikit-learn Pipeline that any MLflow tool can load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from .features import HOLDOUT, TRAIN, KeyDataError, labels, split, to_matrix
from .metrics import is_better, task_metrics
from .spec import UseCaseSpec


@dataclass
class FittedKey:
    """What training one key produced: the winner and every candidate's holdout metric."""

    model: Any
    candidate: str
    feature_columns: list[str]
    metrics: dict[str, float]
    candidate_scores: dict[str, float] = field(default_factory=dict)
    rows_train: int = 0
    rows_holdout: int = 0


def build_pipeline(spec: UseCaseSpec, candidate_name: str) -> Pipeline:
    cand = next(c for c in spec.candidates if c.name == candidate_name)
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),  # conditions linear and kernel models; trees ignore it
            ("model", cand.build()),
        ]
    )


def predict(task: str, model: Any, x: np.ndarray) -> np.ndarray:
    """Point predictions; for anomaly detectors, 1 = anomaly (scikit-learn says -1)."""
    raw = model.predict(x)
    if task == "anomaly":
        return (np.asarray(raw) == -1).astype(np.int8)
    return np.asarray(raw)


def anomaly_score(model: Any, x: np.ndarray) -> np.ndarray:
    """Higher = more anomalous, whichever scoring method the detector offers."""
    for method in ("score_samples", "decision_function"):
        if hasattr(model, method):
            return -np.asarray(getattr(model, method)(x), dtype=float)
    return predict("anomaly", model, x).astype(float)


def evaluate(spec: UseCaseSpec, model: Any, feature_columns: list[str], holdout: pl.DataFrame) -> dict[str, float]:
    x = to_matrix(holdout, feature_columns)
    return task_metrics(spec.task, labels(holdout, spec.target), predict(spec.task, model, x))


def fit_key(spec: UseCaseSpec, training_set: pl.DataFrame, feature_columns: list[str]) -> FittedKey:
    """Fit every candidate on the train split; keep the best on the holdout."""
    parts = split(training_set)
    train, holdout = parts[TRAIN], parts[HOLDOUT]
    x_train = to_matrix(train, feature_columns)
    y_train = labels(train, spec.target) if spec.target and spec.task != "anomaly" else None
    best: FittedKey | None = None
    scores: dict[str, float] = {}
    errors: dict[str, str] = {}
    for cand in spec.candidates:
        try:
            model = build_pipeline(spec, cand.name)
            model.fit(x_train) if y_train is None else model.fit(x_train, y_train)
            metrics = evaluate(spec, model, feature_columns, holdout)
        except Exception as exc:  # one bad candidate must not sink the key
            errors[cand.name] = f"{type(exc).__name__}: {exc}"
            continue
        score = metrics[spec.metric]
        scores[cand.name] = score
        if best is None or is_better(score, best.metrics[spec.metric], spec.metric):
            best = FittedKey(model, cand.name, feature_columns, metrics)
    if best is None:
        raise KeyDataError("every candidate failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    if math.isnan(best.metrics[spec.metric]):
        raise KeyDataError(f"metric {spec.metric} is undefined on this key's holdout")
    best.candidate_scores = scores
    best.rows_train, best.rows_holdout = train.height, holdout.height
    return best
