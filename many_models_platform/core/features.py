"""Per-key feature engineering and the time-aware holdout split.

One function builds features for both training and scoring, so a forecast's future rows
get exactly the columns the model was fitted on.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping

import numpy as np
import polars as pl

from .spec import UseCaseSpec

SPLIT = "__split"
TRAIN, HOLDOUT = "train", "holdout"
T_INDEX = "t_index"


class KeyDataError(ValueError):
    """A key's data cannot be modelled; the message is the reason recorded for the key."""


def feature_columns(spec: UseCaseSpec, time_dtype: pl.DataType | None) -> list[str]:
    cols = list(spec.features)
    cols += [f"lag_{lag}" for lag in spec.lags]
    if spec.time_column and spec.calendar_features and time_dtype is not None:
        cols += ["cal_month", "cal_week"]
        if isinstance(time_dtype, pl.Datetime):
            cols += ["cal_dayofweek", "cal_hour"]
        if spec.task == "forecast":
            cols.append(T_INDEX)
    return cols


def make_features(spec: UseCaseSpec, frame: pl.DataFrame, origin: object | None = None) -> pl.DataFrame:
    """Add lag and calendar features to one key's rows, sorted by time.

    ``origin`` anchors the trend index, so scoring rows continue the training numbering.
    """
    if spec.time_column:
        frame = frame.sort(spec.time_column)
    exprs: list[pl.Expr] = [pl.col(c).cast(pl.Float64, strict=False) for c in spec.features]
    exprs += [pl.col(spec.target).cast(pl.Float64).shift(lag).alias(f"lag_{lag}") for lag in spec.lags]
    if spec.time_column and spec.calendar_features:
        t = pl.col(spec.time_column)
        exprs += [t.dt.month().cast(pl.Float64).alias("cal_month"), t.dt.week().cast(pl.Float64).alias("cal_week")]
        if isinstance(frame.schema[spec.time_column], pl.Datetime):
            exprs += [
                t.dt.weekday().cast(pl.Float64).alias("cal_dayofweek"),
                t.dt.hour().cast(pl.Float64).alias("cal_hour"),
            ]
        if spec.task == "forecast":
            first = frame[spec.time_column].min() if origin is None else origin
            step = infer_step(frame[spec.time_column]) if frame.height > 1 else None
            if step:
                idx = ((t - pl.lit(first)).dt.total_seconds() / step.total_seconds()).round(0)
            else:
                idx = pl.int_range(0, pl.len())
            exprs.append(idx.cast(pl.Float64).alias(T_INDEX))
    return frame.with_columns(exprs)


def infer_step(times: pl.Series):
    """The most common gap between consecutive periods (weekly, hourly, ...)."""
    diffs = times.sort().diff().drop_nulls()
    diffs = diffs.filter(diffs.cast(pl.Int64) > 0)
    if diffs.is_empty():
        return None
    return diffs.mode().sort()[0]


def build_training_set(spec: UseCaseSpec, bronze: pl.DataFrame) -> pl.DataFrame:
    """Validate one key's rows, add features and mark the holdout. Raises KeyDataError."""
    if spec.target:
        bronze = bronze.filter(pl.col(spec.target).is_not_null())
    if bronze.height < spec.min_rows:
        raise KeyDataError(f"too few rows: {bronze.height} < min_rows {spec.min_rows}")
    if spec.target and spec.task in ("forecast", "regression") and bronze[spec.target].n_unique() < 2:
        raise KeyDataError(f"constant target: every {spec.target!r} value is {bronze[spec.target][0]!r}")
    null_features = [c for c in spec.features if bronze[c].cast(pl.Float64, strict=False).is_null().all()]
    if null_features:
        raise KeyDataError(f"all-NaN features: {null_features}")
    frame = make_features(spec, bronze)
    if spec.lags:
        frame = frame.filter(pl.col(f"lag_{max(spec.lags)}").is_not_null())
    frame = frame.with_columns(_split_expr(spec, frame))
    n_train = int((frame[SPLIT] == TRAIN).sum())
    n_holdout = frame.height - n_train
    if n_train < spec.min_rows or n_holdout == 0:
        raise KeyDataError(
            f"too few rows after features and split: {n_train} train, {n_holdout} holdout (min_rows {spec.min_rows})"
        )
    if spec.task == "classification" and frame.filter(pl.col(SPLIT) == TRAIN)[spec.target].n_unique() < 2:
        raise KeyDataError("the training split holds a single class")
    keep = [c for c in (spec.time_column, spec.target) if c]
    keep += feature_columns(spec, frame.schema.get(spec.time_column) if spec.time_column else None)
    return frame.select([*dict.fromkeys(keep), SPLIT])


def _split_expr(spec: UseCaseSpec, frame: pl.DataFrame) -> pl.Expr:
    if spec.holdout.periods is not None:
        periods = frame[spec.time_column].unique().sort()
        if periods.len() <= spec.holdout.periods:
            raise KeyDataError(f"only {periods.len()} periods, holdout needs {spec.holdout.periods} plus training data")
        cutoff = periods[-spec.holdout.periods]
        is_holdout = pl.col(spec.time_column) >= cutoff
    elif spec.time_column:
        n_holdout = max(1, round(frame.height * spec.holdout.fraction))
        is_holdout = pl.int_range(0, pl.len()) >= frame.height - n_holdout
    else:
        # No time order: a seeded shuffle, so reruns on the same data split the same way.
        n_holdout = max(1, round(frame.height * spec.holdout.fraction))
        order = np.random.default_rng(frame.height).permutation(frame.height)
        mask = np.zeros(frame.height, dtype=bool)
        mask[order[:n_holdout]] = True
        is_holdout = pl.lit(pl.Series(mask))
    return pl.when(is_holdout).then(pl.lit(HOLDOUT)).otherwise(pl.lit(TRAIN)).alias(SPLIT)


def future_frame(
    spec: UseCaseSpec, history: pl.DataFrame, future_exog: pl.DataFrame | None, origin: object
) -> pl.DataFrame:
    """Feature rows for the next ``horizon`` periods after a key's last observed period.

    Exogenous values come from the scoring source when given; otherwise the last observed
    value is carried forward (documented in docs/use-cases.md).
    """
    t = spec.time_column
    history = history.sort(t)
    step = infer_step(history[t])
    if step is None:
        raise KeyDataError("cannot infer the period length from a single time value")
    last = history[t].max()
    future_times = pl.Series(t, [last + step * (i + 1) for i in range(spec.horizon)], dtype=history.schema[t])
    future = pl.DataFrame(future_times)
    if future_exog is not None and future_exog.height:
        exog_cols = [c for c in spec.features if c in future_exog.columns]
        future = future.join(future_exog.select([t, *exog_cols]).unique(subset=[t], keep="last"), on=t, how="left")
    last_row = history.tail(1)
    fill = [
        (pl.col(c).fill_null(pl.lit(last_row[c][0])) if c in future.columns else pl.lit(last_row[c][0]))
        .cast(history.schema[c])
        .alias(c)
        for c in spec.features
    ]
    future = future.with_columns(fill).with_columns(pl.lit(None, dtype=history.schema[spec.target]).alias(spec.target))
    cols = [t, *spec.features, spec.target]
    combined = pl.concat([history.select(cols), future.select(cols)])
    featured = make_features(spec, combined, origin=origin)
    return featured.filter(pl.col(t) > last)


def fingerprint(frame: pl.DataFrame) -> str:
    """A content hash of a key's data: the 'data version' tag on registered models."""
    buf = io.BytesIO()
    frame.write_ipc(buf, compression="uncompressed")
    return hashlib.sha256(buf.getvalue()).hexdigest()[:16]


def to_matrix(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    return frame.select([pl.col(c).cast(pl.Float64) for c in columns]).to_numpy()


def labels(frame: pl.DataFrame, column: str) -> np.ndarray:
    return frame[column].to_numpy()


def split(frame: pl.DataFrame) -> Mapping[str, pl.DataFrame]:
    return {TRAIN: frame.filter(pl.col(SPLIT) == TRAIN), HOLDOUT: frame.filter(pl.col(SPLIT) == HOLDOUT)}
