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

from .features import (
    HOLDOUT,
    TRAIN,
    KeyDataError,
    Period,
    frame_input,
    key_classes,
    key_period,
    labels,
    season_length,
    split,
    to_matrix,
    validation_folds,
)
from .metrics import explain_undefined, flag_rate, mase_scale, score_stability, task_metrics
from .spec import UNLABELLED_METRICS, UseCaseSpec
from .statistical import StatisticalForecaster


@dataclass
class FittedKey:
    """What training one key produced.

    ``model`` is the winner fitted on the training part: the holdout ``metrics`` describe it.
    ``production_model`` is the winner refitted on every row (``spec.refits``), else None and
    production gets ``model``. ``candidate_scores`` are the validation scores that chose the
    winner (the holdout took no part in the choice).
    """

    model: Any
    candidate: str
    feature_columns: list[str]
    metrics: dict[str, float]
    candidate_scores: dict[str, float] = field(default_factory=dict)
    rows_train: int = 0
    rows_holdout: int = 0
    production_model: Any = None
    rows_validation: int = 0
    validation_windows: int = 0
    selection: str = ""
    train_end: Any = None
    fitted_through: Any = None
    undefined: dict[str, str] = field(default_factory=dict)
    candidate_errors: dict[str, str] = field(default_factory=dict)


def is_lightgbm(estimator: Any) -> bool:
    return type(estimator).__module__.split(".")[0] == "lightgbm"


def _numeric_steps() -> list[tuple[str, Any]]:
    return [
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),  # conditions linear and kernel models; trees ignore it
    ]


def build_pipeline(
    spec: UseCaseSpec,
    candidate_name: str,
    columns: Sequence[str] = (),
    categorical: Sequence[str] = (),
    period: Period | None = None,
) -> Any:
    """A fresh, unfitted model for one candidate over ``columns``, of which ``categorical`` are text.
    A statistical candidate is an adapter over the key's series, for the key's ``period``."""
    cand = next(c for c in spec.candidates if c.name == candidate_name)
    if cand.statistical:
        from . import statistical

        if period is None:
            raise KeyDataError(f"statistical candidate {cand.name!r} needs the key's period")
        longest = max(spec.horizon, spec.holdout.periods or 0, spec.validation_periods or 0)
        return statistical.build(
            cand.estimator, cand.params, spec.time_column, period, season_length(period.frequency), 2 * longest
        )
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


def _fit_params(model: Any, categorical: Sequence[str]) -> dict[str, Any]:
    """LightGBM is told which input positions are categorical (they come after the numeric ones)."""
    if not categorical or not isinstance(model, Pipeline) or not is_lightgbm(model.steps[-1][1]):
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
    if isinstance(model, StatisticalForecaster):  # a series model places rows by their time
        return model.time_codes(frame)
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


def evaluate(
    spec: UseCaseSpec,
    model: Any,
    feature_columns: list[str],
    holdout: pl.DataFrame,
    scale: float | None = None,
    notes: dict[str, str] | None = None,
    classes: np.ndarray | None = None,
) -> dict[str, float]:
    """Holdout metrics. Anomaly tasks always report ``flag_rate`` and a ``score_stability``
    placeholder (NaN: it needs a champion, see ``stability``); the label metrics need labels.
    ``scale`` is the MASE denominator of the training part (``training_scale``); ``notes``, when
    given, receives why each undefined metric is undefined; ``classes``: a classification key's
    labels (``key_classes``), which every model and baseline of the key is scored over."""
    x = model_input(model, holdout, feature_columns)
    predicted = predict(spec.task, model, x)
    metrics: dict[str, float] = {}
    if spec.labelled:
        actual, shown = labels(holdout, spec.target), clip_predictions(spec, predicted)
        if spec.task == "anomaly":  # rows without a label trained the detector; the labelled ones score it
            labelled = holdout[spec.target].is_not_null().to_numpy()
            actual, shown = actual[labelled], shown[labelled]
        metrics = task_metrics(spec.task, actual, shown, scale, classes)
        if notes is not None:
            notes.update(explain_undefined(spec.task, actual, shown, metrics, scale, classes))
            if not len(actual) and holdout.height:
                notes.update(dict.fromkeys(notes, f"none of the {holdout.height} holdout rows has a label"))
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


def training_scale(spec: UseCaseSpec, train: pl.DataFrame, frequency: str | None) -> float | None:
    """The MASE denominator of a training part: the in-sample mean absolute error of the seasonal
    naive forecast (season from the frequency, 1 when unknown or longer than the series); without
    a time column, of the training mean (rows have no order to be naive in). None for labels."""
    if spec.task not in ("forecast", "regression"):
        return None
    y = train[spec.target].cast(pl.Float64)
    if not spec.time_column:
        values = y.to_numpy()
        return float(np.mean(np.abs(values - values.mean()))) if len(values) else math.nan
    ordered = train.select(spec.time_column, y).sort(spec.time_column)[spec.target].to_numpy()
    season = season_length(frequency)
    return mase_scale(ordered, season if len(ordered) > season else 1)


def _fit(spec: UseCaseSpec, name: str, rows: pl.DataFrame, columns: list[str], categorical, period) -> Any:
    model = build_pipeline(spec, name, columns, categorical, period)
    x = model_input(model, rows, columns)
    params = _fit_params(model, categorical)
    if spec.task == "anomaly" or not spec.target:
        return model.fit(x, **params)
    return model.fit(x, labels(rows, spec.target), **params)


def _rank(spec: UseCaseSpec, model: Any, metrics: dict[str, float]) -> tuple[int, float]:
    """Smaller is better. Unlabelled detectors: distance of the flag rate from the configured one
    (detectors that declare none come after); otherwise the metric, oriented."""
    if spec.metric in UNLABELLED_METRICS:
        estimator = model.steps[-1][1] if isinstance(model, Pipeline) else model
        expected = expected_flag_rate(estimator)
        return (0, abs(metrics["flag_rate"] - expected)) if expected is not None else (1, 0.0)
    value = metrics[spec.metric]
    if math.isnan(value):
        return (2, 0.0)
    return (0, value if spec.lower_is_better else -value)


def fit_key(spec: UseCaseSpec, training_set: pl.DataFrame, feature_columns: list[str]) -> FittedKey:
    """Pick the winner on validation windows carved from the training part, refit it on the whole
    training part and score it once on the holdout: that score is the reported metric. With
    ``spec.refits``, the winner is then refitted on every row for production.

    Candidates are ranked by their mean validation metric over the windows (any undefined
    window makes it undefined); a strictly better one wins, so on a tie the earlier stays.
    Without labels (metric ``flag_rate`` or ``score_stability``) there is no "best": the winner
    is the candidate whose validation flag rate is closest to the rate it was configured for
    (``expected_flag_rate``); candidates that declare no rate come after those that do.
    ``candidate_scores`` holds each candidate's validation score (its flag rate when unranked).
    A single candidate needs no validation and is fitted on the training part directly.
    """
    parts = split(training_set)
    train, holdout = parts[TRAIN], parts[HOLDOUT]
    t = spec.time_column
    period = key_period(spec, training_set[t]) if t else None
    frequency = period.frequency if period else None
    categorical = [c for c in feature_columns if c in set(spec.categorical_features)]
    unranked = spec.metric in UNLABELLED_METRICS
    classes = key_classes(spec, training_set)
    scores: dict[str, float] = {}
    errors: dict[str, str] = {}
    folds = []
    if len(spec.candidates) == 1:
        winner, selection = spec.candidates[0].name, "the only candidate: no selection"
    else:
        folds = validation_folds(spec, train, period)
        if not folds:
            raise KeyDataError(
                f"cannot carve a validation window from {train.height} training rows to choose between "
                f"{len(spec.candidates)} candidates; add rows, shorten 'validation' or keep one candidate"
            )
        best: tuple[str, tuple[int, float]] | None = None
        for cand in spec.candidates:
            try:
                per_window = []
                for fold in folds:
                    model = _fit(spec, cand.name, fold.fit, feature_columns, categorical, period)
                    scale = training_scale(spec, fold.fit, frequency)
                    per_window.append(evaluate(spec, model, feature_columns, fold.validate, scale, classes=classes))
            except Exception as exc:  # one bad candidate must not sink the key
                errors[cand.name] = f"{type(exc).__name__}: {exc}"
                continue
            key_metric = "flag_rate" if unranked else spec.metric
            values = [m[key_metric] for m in per_window]
            mean = math.nan if any(math.isnan(v) for v in values) else float(np.mean(values))
            scores[cand.name] = mean
            rank = _rank(spec, model, {**per_window[-1], key_metric: mean})
            if best is None or rank < best[1]:
                best = (cand.name, rank)
        if best is None:
            raise KeyDataError("every candidate failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        winner = best[0]
        windows = f"{len(folds)} validation window(s) of {sum(f.validate.height for f in folds)} rows"
        if not unranked and all(math.isnan(v) for v in scores.values()):
            selection = f"{spec.metric} is undefined on every candidate's validation; the first that fitted was kept"
        else:
            selection = f"best {'flag rate' if unranked else spec.metric} on {windows}"
    try:
        model = _fit(spec, winner, train, feature_columns, categorical, period)
        production = _fit(spec, winner, training_set, feature_columns, categorical, period) if spec.refits else None
    except Exception as exc:
        errors[winner] = f"{type(exc).__name__}: {exc}"
        raise KeyDataError("every candidate failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items())) from None
    undefined: dict[str, str] = {}
    scale = training_scale(spec, train, frequency)
    metrics = evaluate(spec, model, feature_columns, holdout, scale, undefined, classes)
    return FittedKey(
        model=model,
        candidate=winner,
        feature_columns=feature_columns,
        metrics=metrics,
        candidate_scores=scores,
        rows_train=train.height,
        rows_holdout=holdout.height,
        production_model=production,
        rows_validation=sum(f.validate.height for f in folds),
        validation_windows=len(folds),
        selection=selection,
        train_end=train[t].max() if t else None,
        fitted_through=(training_set[t].max() if production is not None else train[t].max()) if t else None,
        undefined=undefined,
        candidate_errors=errors,
    )
