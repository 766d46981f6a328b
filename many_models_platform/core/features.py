"""Per-key feature engineering and the time-aware holdout split.

One function builds features for both training and scoring, so a forecast's future rows
get exactly the columns the model was fitted on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Period:
    """A series' period: whole calendar months (monthly, quarterly, yearly data) or a fixed
    step (hourly, daily, weekly). Lags and future periods move by periods, not by rows, so a
    missing week never shifts a lag."""

    months: int = 0
    step: dt.timedelta | None = None

    def offset(self, k: int) -> str:
        if self.months:
            return f"{k * self.months}mo"
        us = round(self.step.total_seconds() * 1_000_000) * k
        return f"{us // 86_400_000_000}d" if us % 86_400_000_000 == 0 else f"{us}us"

    def index(self, t: pl.Expr, origin: object) -> pl.Expr:
        """Periods since ``origin``: the trend feature."""
        if self.months:
            months = (t.dt.year() * 12 + t.dt.month()) - (origin.year * 12 + origin.month)
            return (months / self.months).round(0)
        return ((t - pl.lit(origin)).dt.total_microseconds() / (self.step.total_seconds() * 1e6)).round(0)


def infer_period(times: pl.Series) -> Period | None:
    """The most common gap between consecutive periods; 28-31 days is a calendar month."""
    diffs = times.unique().sort().diff().drop_nulls()
    if diffs.is_empty():
        return None
    step: dt.timedelta = diffs.mode().sort()[0]
    days = step.total_seconds() / 86_400
    for months, (lo, hi) in {1: (28, 31), 3: (89, 92), 12: (365, 366)}.items():
        if lo <= days <= hi:
            return Period(months=months)
    return Period(step=step)


def make_features(spec: UseCaseSpec, frame: pl.DataFrame, origin: object | None = None) -> pl.DataFrame:
    """Add lag and calendar features to one key's rows, sorted by time.

    ``origin`` anchors the trend index, so scoring rows continue the training numbering.
    """
    t = spec.time_column
    if t:
        frame = frame.sort(t)
    exprs: list[pl.Expr] = [pl.col(c).cast(pl.Float64, strict=False) for c in spec.features]
    period = infer_period(frame[t]) if t and spec.task == "forecast" else None
    if spec.lags and period is not None:
        for lag in spec.lags:
            shifted = frame.select(
                pl.col(t).dt.offset_by(period.offset(lag)), pl.col(spec.target).cast(pl.Float64).alias(f"lag_{lag}")
            )
            frame = frame.join(shifted, on=t, how="left", maintain_order="left")
    elif spec.lags:
        exprs += [pl.lit(None, dtype=pl.Float64).alias(f"lag_{lag}") for lag in spec.lags]
    if t and spec.calendar_features:
        col = pl.col(t)
        exprs += [col.dt.month().cast(pl.Float64).alias("cal_month"), col.dt.week().cast(pl.Float64).alias("cal_week")]
        if isinstance(frame.schema[t], pl.Datetime):
            exprs += [
                col.dt.weekday().cast(pl.Float64).alias("cal_dayofweek"),
                col.dt.hour().cast(pl.Float64).alias("cal_hour"),
            ]
        if spec.task == "forecast":
            first = frame[t].min() if origin is None else origin
            idx = period.index(col, first) if period is not None else pl.int_range(0, pl.len())
            exprs.append(idx.cast(pl.Float64).alias(T_INDEX))
    return frame.with_columns(exprs)


def build_training_set(spec: UseCaseSpec, bronze: pl.DataFrame) -> pl.DataFrame:
    """Validate one key's rows, add features and mark the holdout. Raises KeyDataError."""
    if spec.target:
        bronze = bronze.filter(pl.col(spec.target).is_not_null())
    if bronze.height < spec.min_rows:
        raise KeyDataError(f"too few rows: {bronze.height} < min_rows {spec.min_rows}")
    if spec.target and spec.task in ("forecast", "regression") and bronze[spec.target].n_unique() < 2:
        raise KeyDataError(f"constant target: every {spec.target!r} value is {bronze[spec.target][0]!r}")
    null_features = [
        c for c in spec.features if bronze[c].cast(pl.Float64, strict=False).fill_nan(None).is_null().all()
    ]
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
        # The last N periods of calendar time, not the last N rows: with a missing week, a lag
        # of at least N periods still never reaches a holdout actual.
        t = spec.time_column
        period = infer_period(frame[t])
        if period is None:
            raise KeyDataError("cannot infer the period length from a single time value")
        last = frame[t].max()
        cutoff = pl.select(pl.lit(last).dt.offset_by(f"-{period.offset(spec.holdout.periods - 1)}")).item()
        if frame.filter(pl.col(t) < cutoff).is_empty():
            raise KeyDataError(f"no training data before the {spec.holdout.periods}-period holdout")
        is_holdout = pl.col(t) >= cutoff
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
    history = history.filter(pl.col(spec.target).is_not_null()).sort(t)
    period = infer_period(history[t])
    if period is None:
        raise KeyDataError("cannot infer the period length from a single time value")
    last = history[t].max()
    future_times = pl.DataFrame(
        {
            t: pl.Series([last] * spec.horizon, dtype=history.schema[t]),
            "o": [period.offset(i + 1) for i in range(spec.horizon)],
        }
    ).select(pl.col(t).dt.offset_by(pl.col("o")))[t]
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
