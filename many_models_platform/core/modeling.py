"""Per-key model fitting, candidate selection, prediction and evaluation.

Every candidate is wrapped in a median imputer and a scaler, so sparse features never crash
a key and the fitted object stays one scikit-learn Pipeline that any MLflow tool can load.
With categorical features the pipeline starts with a ColumnTransformer that takes a pandas
DataFrame (columns by name): numeric columns are imputed and scaled, text columns one-hot
encoded, or ordinal-encoded as LightGBM's native categoricals. Without them the model takes
a plain float matrix, as before, so the common path pays nothing for categoricals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from .features import HOLDOUT, TRAIN, KeyDataError, frame_input, labels, split, to_matrix
from .metrics import flag_rate, is_better, score_stability, task_metrics
from .spec import UNLABELLED_METRICS, UseCaseSpec


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


def is_lightgbm(estimator: Any) -> bool:
    return type(estimator).__module__.split(".")[0] == "lightgbm"


def _numeric_steps() -> list[tuple[str, Any]]:
    return [
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),  # conditions linear and kernel models; trees ignore it
    ]


def build_pipeline(
    spec: UseCaseSpec, candidate_name: str, columns: Sequence[str] = (), categorical: Sequence[str] = ()
) -> Pipeline:
    """A fresh, unfitted model for one candidate over ``columns``, of which ``categorical`` are text."""
    cand = next(c for c in spec.candidates if c.name == candidate_name)
    estimator = cand.build()
    if not categorical:
        return Pipeline([*_numeric_steps(), ("model", estimator)])
    cats = set(categorical)
    numeric = [c for c in columns if c not in cats]
    if is_lightgbm(estimator):
        # native categoricals: codes 0..n-1; an unseen category (-1) and a missing one (NaN)
        # both go where LightGBM sends missing values
        encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, dtype=np.float64)
    else:
        encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False)  # unseen: all zeros
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        parts.append(("numeric", Pipeline(_numeric_steps()), numeric))
    parts.append(("categorical", encoder, [c for c in columns if c in cats]))
    return Pipeline([("prepare", ColumnTransformer(parts, sparse_threshold=0.0)), ("model", estimator)])


def categorical_inputs(model: Any) -> list[str] | None:
    """The text columns of a model that takes a DataFrame; None for a float-matrix model
    (every model without categorical features, including those fitted before they existed)."""
    if isinstance(model, Pipeline) and isinstance(model.steps[0][1], ColumnTransformer):
        return next((list(cols) for name, _, cols in model.steps[0][1].transformers if name == "categorical"), [])
    return None


def _fit_params(model: Pipeline, categorical: Sequence[str]) -> dict[str, Any]:
    """LightGBM is told which input positions are categorical (they come after the numeric ones)."""
    if not categorical or not is_lightgbm(model.steps[-1][1]):
        return {}
    prepare: ColumnTransformer = model.steps[0][1]
    n_numeric = sum(len(cols) for name, _, cols in prepare.transformers if name == "numeric")
    return {"model__categorical_feature": list(range(n_numeric, n_numeric + len(categorical)))}


def model_input(model: Any, frame: pl.DataFrame, columns: Sequence[str]):
    """The rows of ``frame`` in the form ``model`` was fitted on: a float matrix, or a DataFrame
    with named columns for a model with categorical features."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyDataError(f"the rows to score lack the model's feature column(s) {missing}")
    categorical = categorical_inputs(model)
    if categorical is None:
        return to_matrix(frame, list(columns))
    return frame_input(frame, columns, categorical)


def predict(task: str, model: Any, x: Any) -> np.ndarray:
    """Point predictions; for anomaly detectors, 1 = anomaly (scikit-learn says -1)."""
    raw = model.predict(x)
    if task == "anomaly":
        return (np.asarray(raw) == -1).astype(np.int8)
    return np.asarray(raw)


def clip_predictions(spec: UseCaseSpec, predicted: np.ndarray) -> np.ndarray:
    """Counts and demand never go below zero when the use case says so."""
    return np.maximum(predicted, 0.0) if spec.non_negative_target else predicted


def anomaly_score(model: Any, x: Any) -> np.ndarray:
    """Higher = more anomalous, whichever scoring method the detector offers."""
    for method in ("score_samples", "decision_function"):
        if hasattr(model, method):
            return -np.asarray(getattr(model, method)(x), dtype=float)
    return predict("anomaly", model, x).astype(float)


def evaluate(spec: UseCaseSpec, model: Any, feature_columns: list[str], holdout: pl.DataFrame) -> dict[str, float]:
    """Holdout metrics. Anomaly tasks always report ``flag_rate`` and a ``score_stability``
    placeholder (NaN: it needs a champion, see ``stability``); the label metrics need labels."""
    x = model_input(model, holdout, feature_columns)
    predicted = predict(spec.task, model, x)
    metrics: dict[str, float] = {}
    if spec.labelled:
        metrics = task_metrics(spec.task, labels(holdout, spec.target), clip_predictions(spec, predicted))
    if spec.task == "anomaly":
        metrics |= {"flag_rate": flag_rate(predicted), "score_stability": math.nan}
    return metrics


def stability(
    candidate: Any,
    candidate_columns: list[str],
    champion: Any,
    champion_columns: list[str],
    holdout: pl.DataFrame,
    champion_rows: pl.DataFrame | None = None,
) -> float:
    """Spearman rank correlation of the candidate's and the champion's anomaly scores on the
    same holdout rows: does the new detector rank the rows as the old one did?"""
    rows = holdout if champion_rows is None else champion_rows
    a = anomaly_score(candidate, model_input(candidate, holdout, candidate_columns))
    b = anomaly_score(champion, model_input(champion, rows, champion_columns))
    return score_stability(a, b)


def expected_flag_rate(estimator: Any) -> float | None:
    """The share of rows a detector is configured to flag: ``contamination`` (IsolationForest,
    LocalOutlierFactor, EllipticEnvelope) or ``nu`` (OneClassSVM); None when it does not say
    (e.g. ``contamination='auto'``)."""
    params = estimator.get_params(deep=False) if hasattr(estimator, "get_params") else {}
    for name in ("contamination", "nu"):
        value = params.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def fit_key(spec: UseCaseSpec, training_set: pl.DataFrame, feature_columns: list[str]) -> FittedKey:
    """Fit every candidate on the train split; keep the best on the holdout.

    Without labels (metric ``flag_rate`` or ``score_stability``) there is no "best": the winner
    is the candidate whose holdout flag rate is closest to the rate it was configured for
    (``expected_flag_rate``); candidates that declare no rate come after those that do, and
    on a tie the earlier candidate stays. ``candidate_scores`` then holds each flag rate.
    """
    parts = split(training_set)
    train, holdout = parts[TRAIN], parts[HOLDOUT]
    categorical = [c for c in feature_columns if c in set(spec.categorical_features)]
    x_train = frame_input(train, feature_columns, categorical) if categorical else to_matrix(train, feature_columns)
    y_train = labels(train, spec.target) if spec.target and spec.task != "anomaly" else None
    unranked = spec.metric in UNLABELLED_METRICS
    best: FittedKey | None = None
    best_rank: tuple[int, float] | None = None
    scores: dict[str, float] = {}
    errors: dict[str, str] = {}
    for cand in spec.candidates:
        try:
            model = build_pipeline(spec, cand.name, feature_columns, categorical)
            params = _fit_params(model, categorical)
            model.fit(x_train, **params) if y_train is None else model.fit(x_train, y_train, **params)
            metrics = evaluate(spec, model, feature_columns, holdout)
        except Exception as exc:  # one bad candidate must not sink the key
            errors[cand.name] = f"{type(exc).__name__}: {exc}"
            continue
        if unranked:
            expected = expected_flag_rate(model.steps[-1][1])
            rank = (0, abs(metrics["flag_rate"] - expected)) if expected is not None else (1, 0.0)
            scores[cand.name] = metrics["flag_rate"]
            if best_rank is None or rank < best_rank:
                best, best_rank = FittedKey(model, cand.name, feature_columns, metrics), rank
            continue
        score = metrics[spec.metric]
        scores[cand.name] = score
        if best is None or is_better(score, best.metrics[spec.metric], spec.metric):
            best = FittedKey(model, cand.name, feature_columns, metrics)
    if best is None:
        raise KeyDataError("every candidate failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    if not unranked and math.isnan(best.metrics[spec.metric]):
        raise KeyDataError(f"metric {spec.metric} is undefined on this key's holdout")
    best.candidate_scores = scores
    best.rows_train, best.rows_holdout = train.height, holdout.height
    return best
