"""Per-key feature engineering and the time-aware holdout split.

One function builds features for both training and scoring, so a forecast's future rows
get exactly the columns the model was fitted on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from .ingest import all_whole, is_written, to_number
from .spec import UseCaseSpec

SPLIT = "__split"
TRAIN, HOLDOUT = "train", "holdout"
# A stable 64-bit hash of each row's values, kept in training sets without a time column: it
# assigns the holdout (high bits) and the validation rows (low bits), never the row count.
ROW_HASH = "__row_hash"
SPLIT_COLUMNS = (SPLIT, ROW_HASH)
T_INDEX = "t_index"
_LAG_KEY = "__lag_key"

# Calendar features by name -> column ``cal_<name>``. ``week`` (ISO week) is no longer derived
# for new models; it stays here so a champion fitted before it was dropped can still score.
CALENDAR_EXPRS = {
    "hour": lambda t: t.dt.hour(),
    "dayofweek": lambda t: t.dt.weekday(),  # 1 = Monday ... 7 = Sunday
    "dayofyear": lambda t: t.dt.ordinal_day(),
    "month": lambda t: t.dt.month(),
    "quarter": lambda t: t.dt.quarter(),
    "week": lambda t: t.dt.week(),
}


class KeyDataError(ValueError):
    """A key's data cannot be modelled; the message is the reason recorded for the key."""


# --- periods ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    """A series' period: whole calendar months (monthly, quarterly, yearly data), a fixed step
    (hourly, daily, weekly), business days, or an integer step of an integer time column (frequency 'period').
    Lags and future periods move by periods, not by rows, so a missing week never shifts a lag."""

    months: int = 0
    step: dt.timedelta | None = None
    int_step: int = 0
    business: bool = False  # one business day: Monday to Friday, a weekend is no period

    @property
    def frequency(self) -> str | None:
        """The frequency name of this period, None for a step that has no name (e.g. 14 days)."""
        if self.int_step:
            return "period"
        return next((name for name, p in FREQUENCY_PERIODS.items() if p == self), None)

    @property
    def calendar_frequency(self) -> str | None:
        """The frequency whose calendar features this period gets: its own name, else the
        nearest named frequency at or below its step (3 hours -> hourly, 2 days -> daily,
        10 days -> weekly, 2 months -> monthly, 6 months -> quarterly)."""
        if self.frequency or self.int_step:
            return self.frequency
        if self.months:
            return "quarterly" if self.months >= 3 else "monthly"
        for name in ("weekly", "daily", "hourly"):
            if self.step >= FREQUENCY_PERIODS[name].step:
                return name
        return "hourly"  # below an hour: hour of day and day of week still describe the rows

    @property
    def name(self) -> str:
        """What reports show: the frequency's name, or the step itself (e.g. '3 hours')."""
        return self.frequency or f"every {self.describe()}"

    def _offset(self, k: int) -> str:
        if self.months:
            return f"{k * self.months}mo"
        us = round(self.step.total_seconds() * 1_000_000) * k
        return f"{us // 86_400_000_000}d" if us % 86_400_000_000 == 0 else f"{us}us"

    def shift(self, t: pl.Expr, k: int) -> pl.Expr:
        """``t`` moved by ``k`` periods (negative: back); by business days, Friday + 1 is Monday."""
        if self.int_step:
            return t + k * self.int_step
        if self.business:  # a stray weekend value counts from the Friday before it
            return t.dt.add_business_days(k, roll="backward")
        return t.dt.offset_by(self._offset(k))

    def lag_key(self, t: pl.Expr) -> pl.Expr:
        """What a lag joins on: the month number for calendar months (so month-end dates and
        a varying day of month still line up), else the time value itself."""
        if self.months:
            return t.dt.year().cast(pl.Int64) * 12 + t.dt.month().cast(pl.Int64)
        return t

    def shift_lag_key(self, key: pl.Expr, k: int) -> pl.Expr:
        return key + k * self.months if self.months else self.shift(key, k)

    def index(self, t: pl.Expr, origin: Any) -> pl.Expr:
        """Periods since ``origin``: the trend feature."""
        if self.int_step:
            return ((t - origin) / self.int_step).round(0)
        if self.business:
            return pl.business_day_count(pl.lit(origin).cast(pl.Date), t.cast(pl.Date)).cast(pl.Float64)
        if self.months:
            months = (t.dt.year() * 12 + t.dt.month()) - (origin.year * 12 + origin.month)
            return (months / self.months).round(0)
        return ((t - pl.lit(origin)).dt.total_microseconds() / (self.step.total_seconds() * 1e6)).round(0)

    def in_last(self, t: pl.Expr, last: Any, n: int) -> pl.Expr:
        """True for the last ``n`` periods up to and including ``last``: at or after ``last`` minus
        ``n - 1`` periods (by month number for calendar months)."""
        if self.months:
            return self.lag_key(t) >= self.lag_key(pl.lit(last)) - (n - 1) * self.months
        return t >= self.shift(pl.lit(last), -(n - 1))

    def irregular_gaps(self, times: pl.Series) -> int:
        """Gaps between consecutive distinct time values that are not a whole number of periods."""
        if self.months:  # by month number; two distinct dates in one month are a gap of 0
            distinct = times.drop_nulls().unique().sort()
            gaps = np.diff(pl.select(self.lag_key(pl.lit(distinct))).to_series().to_numpy())
            return int(np.count_nonzero(gaps % self.months) + np.count_nonzero(gaps == 0))
        if self.business:  # every gap between weekdays is whole business days; a weekend value is not
            return int((times.drop_nulls().unique().dt.weekday() > 5).sum())
        gaps = _gaps(times)
        step = self.int_step or round(self.step.total_seconds() * 1_000_000)
        return int(np.count_nonzero(gaps % step))

    def off_grid(self, times: pl.Series) -> pl.Series:
        """Times off the key's grid: a fixed step's times that sit a fraction of a step from
        the most common phase (a Saturday among Sunday weeks, 08:26 among midnights), a
        weekend among business days. Calendar months are matched by month number: none."""
        if self.months or times.is_empty():
            return pl.Series(times.name, [False] * times.len())
        if self.business:
            return (times.dt.weekday() > 5).fill_null(False)
        values = times if times.dtype.is_integer() else times.dt.epoch("us")
        step = self.int_step or round(self.step.total_seconds() * 1_000_000)
        phase = values % step
        mode = phase.drop_nulls().mode().sort()
        if not mode.len():
            return pl.Series(times.name, [False] * times.len())
        away = (phase - mode[0]).abs()
        away = pl.select(pl.min_horizontal(pl.lit(away), step - pl.lit(away))).to_series()  # around the clock
        # days and longer stored as UTC instants of local midnights (Spark, pandas) move an hour
        # with daylight saving time: 23:00 in winter, 22:00 in summer are one grid
        slack = _HOUR_US if not self.int_step and step >= _DAY_US else 0
        return (away > slack).fill_null(False)

    def describe(self) -> str:
        if self.int_step:
            return f"{self.int_step}"
        if self.business:
            return "1 business day"
        if self.months:
            return f"{self.months} month(s)"
        return _duration_text(self.step)


_HOUR_US, _DAY_US = 3_600_000_000, 86_400_000_000

FREQUENCY_PERIODS: dict[str, Period] = {
    "hourly": Period(step=dt.timedelta(hours=1)),
    "daily": Period(step=dt.timedelta(days=1)),
    "business_daily": Period(step=dt.timedelta(days=1), business=True),
    "weekly": Period(step=dt.timedelta(weeks=1)),
    "monthly": Period(months=1),
    "quarterly": Period(months=3),
    "yearly": Period(months=12),
}


def _duration_text(step: dt.timedelta) -> str:
    seconds = step.total_seconds()
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds:g} seconds"


def _gaps(times: pl.Series) -> np.ndarray:
    """Gaps between consecutive distinct time values, as integers: in an integer column's own
    unit, else in microseconds (numpy: a few polars calls per key cost more than the work)."""
    values = times.drop_nulls()
    if not values.dtype.is_integer():
        values = values.dt.epoch("us")
    gaps = np.diff(np.sort(values.to_numpy()))
    return gaps[gaps != 0]


def infer_period(times: pl.Series) -> Period | None:
    """The most common gap between consecutive distinct time values (the smallest on a tie);
    28-31 days is a calendar month, 89-92 a quarter, 365-366 a year. None for a single value."""
    gaps = _gaps(times)
    if not len(gaps):
        return None
    values, counts = np.unique(gaps, return_counts=True)
    step = int(values[counts.argmax()])  # argmax: the first, so the smallest of the most common
    if times.dtype.is_integer():
        return Period(int_step=step)
    if step == 86_400_000_000 and _weekdays_only(times):
        return FREQUENCY_PERIODS["business_daily"]
    days = step / 86_400_000_000
    for months, (lo, hi) in {1: (28, 31), 3: (89, 92), 12: (365, 366)}.items():
        if lo <= days <= hi:
            return Period(months=months)
    return Period(step=dt.timedelta(microseconds=step))


def _weekdays_only(times: pl.Series) -> bool:
    """Daily values over two weeks or more, none on a Saturday or Sunday: business days (trading
    days, a B2B order book), whose Monday follows the Friday before it."""
    days = times.drop_nulls().unique()
    if days.len() < 10 or (days.max() - days.min()) < dt.timedelta(days=14):
        return False
    return bool((days.dt.weekday() <= 5).all())


def _mostly_irregular(period: Period, times: pl.Series) -> bool:
    """True when more than half of the gaps are not a whole number of the modal step."""
    gaps = len(_gaps(times))
    return gaps > 0 and period.irregular_gaps(times) * 2 > gaps


def _is_temporal(dtype: pl.DataType | None) -> bool:
    return dtype is not None and dtype.is_temporal()


def key_period(spec: UseCaseSpec, times: pl.Series) -> Period | None:
    """The key's period: from the declared ``frequency``, else inferred from its time values.

    Raises KeyDataError when lags, horizons or a period holdout need an exact period and the
    spacing is inconsistent (reported, never guessed). A regular step without a name (3 hours)
    is a period of its own; its calendar features are those of the nearest named frequency.
    """
    if not spec.time_column:
        return None
    t, dtype = spec.time_column, times.dtype
    integer = dtype.is_integer()
    if not integer and not _is_temporal(dtype):
        raise KeyDataError(f"time column {t!r} holds {dtype}, not dates, datetimes or integer periods")
    declared = spec.frequency
    if declared == "period":
        if not integer:
            raise KeyDataError(
                f"frequency 'period' is for an integer time column, but {t!r} holds {dtype}; "
                "use hourly, daily, business_daily, weekly, monthly, quarterly or yearly"
            )
        return infer_period(times) or Period(int_step=1)
    if declared:
        if integer:
            raise KeyDataError(
                f"frequency {declared!r} needs dates, but {t!r} holds integers; use frequency 'period', "
                "or a 'time_format' that reads them as dates"
            )
        return FREQUENCY_PERIODS[declared]
    # a calendar list needs no frequency; `calendar_features: true` takes the frequency's defaults
    needed = (
        spec.task == "forecast" or spec.holdout.periods is not None or (spec.calendar_features is True and not integer)
    )
    inferred = infer_period(times)
    if inferred is None:
        if needed:
            raise KeyDataError("cannot infer the period length from a single time value")
        return None
    # Periods must be exact where lags, horizons and period holdouts count them. Event data
    # (regression, classification, anomaly) only takes calendar features from them: irregular
    # event times get those of the nearest frequency at or below their most common gap.
    exact = spec.task == "forecast" or spec.holdout.periods is not None
    if inferred.frequency is None and exact and _mostly_irregular(inferred, times):
        raise KeyDataError(
            f"cannot tell the frequency of {t!r}: its gaps are inconsistent (the most common is "
            f"{inferred.describe()}, and most gaps are not a whole number of it); set 'frequency' in the use case"
        )
    return inferred


# --- feature columns ---------------------------------------------------------------------------
def calendar_names(spec: UseCaseSpec, time_dtype: pl.DataType | None, frequency: str | None) -> list[str]:
    """The calendar features a key gets: those of its frequency that its time column can give
    (no hour on dates, none on integer periods)."""
    if not _is_temporal(time_dtype):
        return []
    names = spec.calendar_features if isinstance(spec.calendar_features, list) else spec.calendar_for(frequency)
    return [n for n in names if n != "hour" or isinstance(time_dtype, pl.Datetime)]


def calendar_of(features: Sequence[str]) -> list[str]:
    """The calendar features a fitted model uses, from its feature columns."""
    return [c[4:] for c in features if c.startswith("cal_") and c[4:] in CALENDAR_EXPRS]


def feature_columns(
    spec: UseCaseSpec, time_dtype: pl.DataType | None = None, frequency: str | None = None
) -> list[str]:
    """Exactly the columns ``make_features`` adds for a key with this time dtype and frequency."""
    cols = [*spec.features, *spec.categorical_features, *[f"lag_{lag}" for lag in spec.lags]]
    if spec.time_column and time_dtype is not None:
        cols += [f"cal_{n}" for n in calendar_names(spec, time_dtype, frequency)]
        if spec.task == "forecast" and spec.wants_calendar:
            cols.append(T_INDEX)
    return cols


_ANOMALY_LABELS = {"0", "1", "0.0", "1.0", "true", "false"}


def check_anomaly_labels(target: str, labels: pl.Series) -> None:
    """An anomaly label is 1 or true for an anomaly, 0 or false for normal: other labels would
    be scored as the wrong class (scikit-learn's -1/1) or not at all ("anomaly"/"normal")."""
    found = set(labels.drop_nulls().cast(pl.Utf8).str.strip_chars().str.to_lowercase().unique().to_list())
    other = sorted(found - _ANOMALY_LABELS)
    if other:
        hint = ""
        if found <= {"-1", "1", "-1.0", "1.0"}:
            hint = " (scikit-learn's convention: export -1, an outlier, as 1 and 1 as 0)"
        raise KeyDataError(
            f"anomaly labels in {target!r} must be 1 or true (an anomaly) and 0 or false (normal); "
            f"got {', '.join(repr(v) for v in other[:5])}{hint}"
        )


def anomaly_truth(labels: pl.Series) -> pl.Series:
    """Text anomaly labels ('TRUE', ' false', '1.0') as 1 (an anomaly) and 0 (normal), which the
    metrics compare with the detector's 1/0: text never equals a number. Numbers and booleans
    already compare as 1/0 and are left as they are."""
    if labels.dtype != pl.Utf8:
        return labels
    text = pl.col(labels.name).str.strip_chars().str.to_lowercase()
    truth = (
        pl.when(text.is_in(["1", "1.0", "true"]))
        .then(pl.lit(1, pl.Int8))
        .when(text.is_in(["0", "0.0", "false"]))
        .then(pl.lit(0, pl.Int8))
    )
    return labels.to_frame().select(truth.alias(labels.name)).to_series()


def label_text(values: pl.Series) -> pl.Series:
    """Class labels as the text published (``predicted_label``, ``actual_label``): a whole float
    as an integer (a Parquet export's 1.0 and a CSV's 1 are one class, '1'), text as it is."""
    if values.dtype.is_float() and all_whole(values):
        return values.cast(pl.Int64, strict=False).cast(pl.Utf8)
    return values.cast(pl.Utf8)


def check_numeric_features(spec: UseCaseSpec, frame: pl.DataFrame) -> None:
    """A text value in a numeric feature is the user's to fix: say which column and show one."""
    for c in spec.features:
        dtype = frame.schema.get(c)
        if dtype == pl.Utf8 or isinstance(dtype, pl.Categorical | pl.Enum):
            text = pl.col(c).cast(pl.Utf8)  # an export's token for a missing value (NA) is no text
            point, comma = to_number(text, False), to_number(text, True)
            marks = frame.select(
                bad=is_written(text) & point.is_null() & comma.is_null(),
                one_mark=point.is_null() != comma.is_null(),  # '12,5' reads with a decimal comma only
            )
            values = frame[c].cast(pl.Utf8)
            bad = values.filter(marks["bad"])
            if bad.len():
                raise KeyDataError(
                    f"feature {c!r} holds text, e.g. {bad[0]!r} ({bad.len()} of {frame.height} rows); "
                    "if it is a number with a unit or symbol other than % or a currency ('12 kg'), strip it "
                    "in the export; if it is a category, declare it in 'categorical_features'"
                )
            shown = values.filter(marks["one_mark"])
            if shown.len():  # every value a number, left as text: some read only with the mark their file did not
                raise KeyDataError(
                    f"feature {c!r} holds numbers such as {shown[0]!r} ({shown.len()} of {frame.height} rows) that "
                    "read only with the other decimal mark than the rest of their file's numbers, so it was read "
                    "as text; export one decimal mark, or declare it: 'csv: {decimal_comma: ...}'"
                )


def _finite(values: pl.Expr) -> pl.Expr:
    return pl.when(values.is_infinite()).then(None).otherwise(values)


def make_features(
    spec: UseCaseSpec,
    frame: pl.DataFrame,
    origin: object | None = None,
    *,
    period: Period | None = None,
    calendar: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Add lag and calendar features to one key's rows, sorted by time.

    ``origin`` anchors the trend index, so scoring rows continue the training numbering.
    ``period`` is the key's period (resolved here when not given). ``calendar`` names the
    calendar features to build (scoring passes the model's), else the frequency's.
    """
    t = spec.time_column
    check_numeric_features(spec, frame)
    # an infinite feature value is a missing one (imputed), as a NaN is: the models cannot take it
    exprs: list[pl.Expr] = [_finite(pl.col(c).cast(pl.Float64, strict=False)).alias(c) for c in spec.features]
    exprs += [pl.col(c).cast(pl.Utf8) for c in spec.categorical_features]
    if not t:
        return frame.with_columns(exprs)
    frame = frame.sort(t)
    if period is None and (spec.task == "forecast" or calendar is None):
        period = key_period(spec, frame[t])
    if spec.lags and period is not None:
        frame = frame.with_columns(period.lag_key(pl.col(t)).alias(_LAG_KEY))
        source = frame.select(_LAG_KEY, pl.col(spec.target).cast(pl.Float64)).unique(
            _LAG_KEY, keep="last", maintain_order=True
        )
        for lag in spec.lags:
            shifted = source.select(
                period.shift_lag_key(pl.col(_LAG_KEY), lag), pl.col(spec.target).alias(f"lag_{lag}")
            )
            frame = frame.join(shifted, on=_LAG_KEY, how="left", maintain_order="left")
        frame = frame.drop(_LAG_KEY)
    elif spec.lags:
        exprs += [pl.lit(None, dtype=pl.Float64).alias(f"lag_{lag}") for lag in spec.lags]
    dtype = frame.schema[t]
    if calendar is None:
        calendar = calendar_names(spec, dtype, period.calendar_frequency if period else None)
    if _is_temporal(dtype):
        exprs += [_calendar_expr(t, name, dtype) for name in calendar]
    if spec.task == "forecast" and spec.wants_calendar:
        first = frame[t].min() if origin is None else origin
        exprs.append(period.index(pl.col(t), first).cast(pl.Float64).alias(T_INDEX))
    return frame.with_columns([e for e in exprs if e is not None])


def _calendar_expr(t: str, name: str, dtype: pl.DataType) -> pl.Expr | None:
    if name == "hour" and not isinstance(dtype, pl.Datetime):
        return None
    return CALENDAR_EXPRS[name](pl.col(t)).cast(pl.Float64).alias(f"cal_{name}")


def add_calendar(frame: pl.DataFrame, time_column: str | None, features: Sequence[str]) -> pl.DataFrame:
    """Add calendar columns a model needs that these rows lack (a champion fitted with an
    older calendar set, e.g. ``cal_week``), derived from the time column."""
    if not time_column or time_column not in frame.columns or not _is_temporal(frame.schema[time_column]):
        return frame
    dtype = frame.schema[time_column]
    missing = [n for n in calendar_of(features) if f"cal_{n}" not in frame.columns]
    exprs = [e for n in missing if (e := _calendar_expr(time_column, n, dtype)) is not None]
    return frame.with_columns(exprs) if exprs else frame


# --- training set ------------------------------------------------------------------------------
@dataclass
class TrainingSet:
    """One key's training set and what building it did to the rows."""

    frame: pl.DataFrame
    rows_in: int
    drops: dict[str, int] = field(default_factory=dict)
    frequency: str | None = None
    irregular_gaps: int = 0

    def info(self) -> dict[str, Any]:
        """Row accounting (``rows_in == rows_out + rows_dropped + rows_merged``) and the period."""
        info: dict[str, Any] = {
            "rows_in": self.rows_in,
            "rows_out": self.frame.height,
            "rows_dropped": sum(self.drops.values()),
            "rows_merged": 0,
            "drops": dict(self.drops),
            "frequency": self.frequency,
        }
        if self.irregular_gaps:
            info["irregular_gaps"] = self.irregular_gaps
        return info


def _drop(frame: pl.DataFrame, reasons: list[tuple[str, pl.Expr]], drops: dict[str, int]) -> pl.DataFrame:
    """Remove the rows matching any reason, counted under the first reason each row matches;
    one pass to count and, only when something goes, one filter."""
    if not reasons:
        return frame
    seen = pl.lit(False)
    exclusive = []
    for reason, expr in reasons:
        expr = expr.fill_null(False)
        exclusive.append((expr & ~seen).sum().alias(reason))
        seen = seen | expr
    counts = frame.select(exclusive).row(0, named=True)
    if not any(counts.values()):
        return frame
    for reason, n in counts.items():
        if n:
            drops[reason] = drops.get(reason, 0) + n
    return frame.filter(~seen)


def prepare_training_set(spec: UseCaseSpec, bronze: pl.DataFrame) -> TrainingSet:
    """Validate one key's rows, add features and mark the holdout; count every row dropped.
    Raises KeyDataError with the reason a key cannot be modelled."""
    rows_in, drops = bronze.height, {}
    t, y = spec.time_column, spec.target
    reasons = [("time is null", pl.col(t).is_null())] if t else []
    if y and spec.task != "anomaly":  # ingest removes these already; a training set must never fit on them
        reasons.append(("target is null", pl.col(y).is_null()))
        if bronze.schema[y].is_float():
            reasons += [("target is NaN", pl.col(y).is_nan()), ("target is inf", pl.col(y).is_infinite())]
    bronze = _drop(bronze, reasons, drops)
    if bronze.height < spec.min_rows:
        raise KeyDataError(f"too few rows: {bronze.height} < min_rows {spec.min_rows}")
    if y and spec.non_negative_target:
        negative = bronze.filter(pl.col(y) < 0)[y]
        if negative.len():
            raise KeyDataError(
                f"negative target: {negative.len()} {y!r} value(s) below 0 (e.g. {negative[0]!r}) "
                "but the use case sets non_negative_target"
            )
    if y and spec.task in ("forecast", "regression") and bronze[y].n_unique() < 2:
        raise KeyDataError(f"constant target: every {y!r} value is {bronze[y][0]!r}")
    check_numeric_features(spec, bronze)
    if y and spec.task == "anomaly":
        check_anomaly_labels(y, bronze[y])
        bronze = bronze.with_columns(anomaly_truth(bronze[y]))
    null_features = [
        c for c in spec.features if bronze[c].cast(pl.Float64, strict=False).fill_nan(None).is_null().all()
    ]
    if null_features:
        raise KeyDataError(
            f"all-NaN features: {null_features}: no row of this key ({bronze.height}) has a value in them (empty, "
            "NaN or an export's token for none such as 'N/A'); drop them from 'features', or fill them in the export"
        )
    null_categories = [c for c in spec.categorical_features if bronze[c].is_null().all()]
    if null_categories:
        raise KeyDataError(f"all-null categorical features: {null_categories}")
    period = key_period(spec, bronze[t]) if t else None
    exact = spec.task == "forecast" or spec.holdout.periods is not None
    if period is not None and period.months and exact:
        _check_one_date_per_period(t, bronze[t], period)
    landed = bronze[t] if t else None  # the times as landed, off-grid ones included (for the reasons)
    if period is not None and exact:  # lags and holdouts step along the grid: a stray time has none
        bronze = _drop(bronze, [(OFF_GRID, pl.lit(period.off_grid(bronze[t])))], drops)
    frame = make_features(spec, bronze, period=period)
    if spec.lags:
        # the key's first rows, before any has its longest lag; a null lag after them is a gap
        # in the series (a missing reading), imputed like a missing feature, never a dropped row
        started = pl.col(f"lag_{max(spec.lags)}").is_not_null().cast(pl.Int8).cum_max() == 1
        frame = _drop(frame, [("no lag history", ~started)], drops)
        if frame.is_empty():  # every row is within the longest lag of the key's start
            advice = "shorten 'lags' or add history" if not drops.get(OFF_GRID) else _OFF_GRID_ADVICE
            raise KeyDataError(
                f"too few rows for the lags: no row has a value {max(spec.lags)} periods before it "
                f"({bronze.height} rows); {advice}" + _why_so_few(drops, period, landed)
            )
    if not t:
        frame = frame.with_columns(pl.Series(ROW_HASH, row_hashes(frame, split_identity(spec)), dtype=pl.UInt64))
    try:
        frame = frame.with_columns(_split_expr(spec, frame, period))
    except KeyDataError as exc:  # what took the rows, as below
        raise KeyDataError(f"{exc}{_why_so_few(drops, period, landed)}") from None
    n_train = int((frame[SPLIT] == TRAIN).sum())
    n_holdout = frame.height - n_train
    if n_train < spec.min_rows or n_holdout == 0:
        raise KeyDataError(
            f"too few rows after features and split: {n_train} train, {n_holdout} holdout (min_rows {spec.min_rows})"
            + _why_so_few(drops, period, landed)
        )
    if spec.task == "classification" and frame.filter(pl.col(SPLIT) == TRAIN)[y].n_unique() < 2:
        (only,) = frame.filter(pl.col(SPLIT) == TRAIN)[y].unique().to_list()
        everywhere = frame[y].n_unique() < 2
        where = (
            "every row" if everywhere else f"all {n_train} training rows (the other classes are only in the holdout)"
        )
        raise KeyDataError(
            f"the training split holds a single class: {y!r} is {only!r} on {where}; a classifier needs two"
        )
    frequency = period.name if period else None
    keep = [c for c in (t, y) if c]
    keep += feature_columns(spec, frame.schema.get(t) if t else None, period.calendar_frequency if period else None)
    keep = [*dict.fromkeys(keep), SPLIT] + ([ROW_HASH] if ROW_HASH in frame.columns else [])
    return TrainingSet(
        frame=frame.select(keep),
        rows_in=rows_in,
        drops=drops,
        frequency=frequency,
        irregular_gaps=period.irregular_gaps(landed) if period else 0,
    )


OFF_GRID = "time off the key's grid"  # a Saturday among Sunday weeks: no lag, no step, no forecast origin


def _check_one_date_per_period(t: str, times: pl.Series, period: Period) -> None:
    """A monthly (quarterly, yearly) series has one date per period. Two (2023-07-01 in one
    file, 2023-07-31 in a re-export) are two stampings of one month: a later file replaces an
    earlier one's rows only at the same date, so both stayed, and lags and the holdout would
    count the month twice."""
    distinct = times.drop_nulls().unique().sort().to_frame()
    bucket = (period.lag_key(pl.col(t)) - 1) // period.months
    shared = (
        distinct.group_by(bucket.alias("period"))
        .agg(pl.col(t).min().alias("first"), pl.col(t).max().alias("last"), pl.len().alias("n"))
        .filter(pl.col("n") > 1)
        .sort("period")
    )
    if shared.is_empty():
        return
    first = shared.row(0, named=True)
    name = {1: "month", 3: "quarter", 12: "year"}.get(period.months, f"{period.months}-month period")
    raise KeyDataError(
        f"{shared.height} {name}(s) hold more than one date (e.g. {time_text(first['first'])} and "
        f"{time_text(first['last'])}): a {period.name} series has one row per {name}. Landing files that stamp "
        f"the {name} differently (its first and its last day) do not replace each other's rows; re-export "
        f"the older file with the same stamp, or remove it"
    )


_OFF_GRID_ADVICE = (
    "most of its rows are off the key's grid (counted below), the step inferred from its times: declare the "
    "'frequency' its data has (or a 'time_format' that reads its times as dates)"
)


def _why_so_few(drops: dict[str, int], period: Period | None, times: pl.Series | None) -> str:
    """What took the rows (the drops), and times off the key's grid, which leave lags nothing
    exactly k periods back (transactions at 08:26 in a daily use case)."""
    out = ""
    taken = {reason: n for reason, n in drops.items() if n}
    if taken:
        out += "; rows dropped: " + ", ".join(f"{reason} {n:,}" for reason, n in taken.items())
    off = period.irregular_gaps(times) if period is not None and times is not None else 0
    if off:
        out += (
            f"; {off:,} gap(s) between times are not whole periods of {period.describe()}: times off the "
            "grid have no lag (a time of day in daily data: declare 'frequency' to floor each time to its "
            "period, with 'duplicates: sum' to add up a period's rows)"
        )
    return out


def build_training_set(spec: UseCaseSpec, bronze: pl.DataFrame) -> pl.DataFrame:
    """The training set frame alone (see ``prepare_training_set``)."""
    return prepare_training_set(spec, bronze).frame


def _split_expr(spec: UseCaseSpec, frame: pl.DataFrame, period: Period | None) -> pl.Expr:
    if spec.holdout.periods is not None:
        # The last N periods of calendar time, not the last N rows: with a missing week, a lag
        # of at least N periods still never reaches a holdout actual.
        t = spec.time_column
        if period is None:
            raise KeyDataError("cannot infer the period length from a single time value")
        is_holdout = period.in_last(pl.col(t), frame[t].max(), spec.holdout.periods)
        if frame.filter(~is_holdout).is_empty():
            raise KeyDataError(f"no training data before the {spec.holdout.periods}-period holdout")
    elif spec.time_column:
        n_holdout = max(1, round(frame.height * spec.holdout.fraction))
        is_holdout = pl.int_range(0, pl.len()) >= frame.height - n_holdout
    else:
        is_holdout = pl.lit(pl.Series(hash_holdout(frame[ROW_HASH].to_numpy(), spec.holdout.fraction)))
    return pl.when(is_holdout).then(pl.lit(HOLDOUT)).otherwise(pl.lit(TRAIN)).alias(SPLIT)


# --- stable splits without a time column ----------------------------------------------------------
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fixed, well-mixed function of 64 bits (pure arithmetic, so the
    same on every machine and library version, unlike polars' row hash)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _column_codes(column: pl.Series) -> np.ndarray:
    """64 bits per value: a float's bits (0.0 and -0.0 alike, every NaN and null alike), or a
    keyed BLAKE2 hash of the text of anything else."""
    if column.dtype.is_numeric():
        values = column.cast(pl.Float64).fill_nan(None).fill_null(np.nan).to_numpy().copy()
        values[values == 0] = 0.0
        codes = values.view(np.uint64).copy()
        codes[np.isnan(values)] = np.uint64(0x7FF8000000000001)
        return codes
    text = column.cast(pl.Utf8)
    uniques = text.unique()
    table = {
        v: np.uint64(int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little"))
        for v in uniques.drop_nulls().to_list()
    }
    return np.array([table[v] if v is not None else np.uint64(1) for v in text.to_list()], dtype=np.uint64)


def split_identity(spec: UseCaseSpec) -> list[str]:
    """The columns whose values identify a row for the stable split: the target and the features
    (after their casts), in the use case's order."""
    return [c for c in (spec.target, *spec.all_features) if c]


def row_hashes(frame: pl.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash of each row's values in ``columns``: the same row always gets the
    same hash, whatever rows are added, removed or reordered around it."""
    h = np.full(frame.height, np.uint64(0x243F6A8885A308D3), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in columns:
            h = _mix(h ^ (_column_codes(frame[c]) + np.uint64(0x9E3779B97F4A7C15)))
    return h


def hash_unit(hashes: np.ndarray, low: bool = False) -> np.ndarray:
    """A uniform number in [0, 1) from the high (holdout) or the low (validation) 32 bits."""
    bits = hashes & np.uint64(0xFFFFFFFF) if low else hashes >> np.uint64(32)
    return bits.astype(np.float64) / 2.0**32


def hash_holdout(hashes: np.ndarray, fraction: float) -> np.ndarray:
    """Rows whose hash falls below ``fraction``: about that share of the rows, and a row's side
    never depends on the others. A key where no row falls there gets its lowest-hash row (that
    row can only be a new row or one that was already held out: the minimum of more rows is a
    new row or the old minimum). Equal rows hash alike, so they always share a side."""
    unit = hash_unit(hashes)
    mask = unit < fraction
    if len(unit) and not mask.any():
        mask = unit == unit.min()  # every copy of that row: a repeated row never lands on both sides
    return mask


def split_descriptor(spec: UseCaseSpec) -> str:
    """How the holdout was drawn, recorded on every candidate: ``time`` (the latest rows), or
    ``hash:<fraction>:<columns digest>``. Two models drawn with the same hash descriptor share
    their holdout rows, so neither was fitted on the other's holdout."""
    if spec.time_column:
        return "time"
    digest = hashlib.sha256(",".join(split_identity(spec)).encode()).hexdigest()[:8]
    return f"hash:{spec.holdout.fraction}:{digest}"


# --- validation inside the training part -----------------------------------------------------------
@dataclass
class Fold:
    """One validation window: fit on ``fit``, compare candidates on ``validate``."""

    fit: pl.DataFrame
    validate: pl.DataFrame


def validation_folds(spec: UseCaseSpec, train: pl.DataFrame, period: Period | None) -> list[Fold]:
    """Validation windows carved from the training part, oldest first. Time-ordered data: the
    last ``validation.periods`` periods before the holdout (``windows`` > 1: consecutive windows
    of that many periods ending there, each fitted on everything before it), or the latest
    ``validation.fraction`` of the rows. Without a time column: the rows whose hash (low bits)
    falls below the fraction, stable like the holdout. Windows that leave nothing to fit on, or
    nothing to validate, or a single class to a classifier, are left out."""
    t = spec.time_column
    folds: list[Fold] = []
    if spec.validation_periods is not None:
        if period is None:
            return []
        end = train[t].max()
        p, w = spec.validation_periods, spec.validation.windows
        for i in range(w, 0, -1):
            in_window = period.in_last(pl.col(t), end, i * p) & ~period.in_last(pl.col(t), end, (i - 1) * p)
            first = train.filter(in_window)
            if first.is_empty():
                continue
            folds.append(Fold(train.filter(pl.col(t) < first[t].min()), first))
    elif t:
        ordered = train.sort(t, maintain_order=True)
        n_val = max(1, round(ordered.height * spec.validation_fraction))
        folds.append(Fold(ordered.head(ordered.height - n_val), ordered.tail(n_val)))
    else:
        is_val = hash_unit(train[ROW_HASH].to_numpy(), low=True) < spec.validation_fraction
        mask = pl.Series(is_val)
        folds.append(Fold(train.filter(~mask), train.filter(mask)))
    usable = []
    for fold in folds:
        if fold.fit.height < 2 or fold.validate.is_empty():
            continue
        if spec.task == "classification" and fold.fit[spec.target].n_unique() < 2:
            continue
        usable.append(fold)
    return usable


def season_length(frequency: str | None) -> int:
    """Periods per season of a frequency (weekly 52, monthly 12, ...), 1 when unknown."""
    from .spec import SEASON_LENGTHS

    return SEASON_LENGTHS.get(frequency or "", 1)


# --- scoring -----------------------------------------------------------------------------------
def future_frame(
    spec: UseCaseSpec,
    history: pl.DataFrame,
    future_exog: pl.DataFrame | None,
    origin: object,
    calendar: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Feature rows for the next ``horizon`` periods after a key's last observed period.

    Exogenous values (numeric and categorical) come from the scoring source when given;
    otherwise the last observed value is carried forward (documented in docs/use-cases.md).
    ``calendar``: the calendar features to build (the scoring model's), else the frequency's.
    """
    t = spec.time_column
    history = history.filter(pl.col(spec.target).is_not_null()).sort(t)
    period = key_period(spec, history[t])
    if period is None:
        raise KeyDataError("cannot infer the period length from a single time value")
    dtype = history.schema[t]
    on_grid = history[t].filter(~period.off_grid(history[t]))  # a last Saturday among Sundays: weeks go on Sundays
    last = on_grid.max() if on_grid.len() else history[t].max()
    steps = [period.shift(pl.lit(last, dtype=dtype), k).alias(str(k)) for k in range(1, spec.horizon + 1)]
    times = pl.Series(t, list(pl.select(steps).row(0)), dtype=dtype)
    if period.months and _is_temporal(dtype):
        times = _month_stamps(history[t], times, last)
    future = pl.DataFrame(times)
    features = spec.all_features
    if future_exog is not None and future_exog.height:
        try:  # a number column holding text ('ten') in the scoring file: said, not a cast error
            check_numeric_features(spec, future_exog)
        except KeyDataError as exc:
            raise KeyDataError(f"the scoring_source rows of this key: {exc}") from None
        exog_cols = [c for c in features if c in future_exog.columns]
        exog = future_exog.select(pl.col(t).cast(dtype), *exog_cols).unique(subset=[t], keep="last")
        future = future.join(exog, on=t, how="left")
    last_row = history.tail(1)
    fill = [
        (pl.col(c).fill_null(pl.lit(last_row[c][0])) if c in future.columns else pl.lit(last_row[c][0]))
        .cast(history.schema[c])
        .alias(c)
        for c in features
    ]
    future = future.with_columns(fill).with_columns(pl.lit(None, dtype=history.schema[spec.target]).alias(spec.target))
    cols = [t, *features, spec.target]
    combined = pl.concat([history.select(cols), future.select(cols)])
    featured = make_features(spec, combined, origin=origin, period=period, calendar=calendar)
    return featured.filter(pl.col(t).is_in(times.implode()) & pl.col(spec.target).is_null())


def carried_forward(spec: UseCaseSpec, future_exog: pl.DataFrame, times: pl.Series) -> tuple[int, int]:
    """(forecast periods ``times`` without a scoring row, feature values missing in the rows of
    the others): :func:`future_frame` gives both the key's last observed values, which a user
    should be told, not find out from a flat forecast."""
    t = spec.time_column
    features = [c for c in spec.all_features if c in future_exog.columns]
    if not features:  # nothing is carried forward
        return 0, 0
    rows = future_exog.select(pl.col(t).cast(times.dtype), *features).unique(subset=[t], keep="last")
    joined = pl.DataFrame({t: times}).join(rows.with_columns(pl.lit(True).alias("__row")), on=t, how="left")
    has_row = joined["__row"].is_not_null()
    missing = joined.filter(has_row).select(pl.sum_horizontal(pl.col(c).is_null() for c in features)).to_series()
    return int((~has_row).sum()), int(missing.sum())


def _month_stamps(history: pl.Series, times: pl.Series, last: Any) -> pl.Series:
    """Forecast months stamped as the key's months are: on month ends when most of its dates
    are (Nov 30 -> Dec 31, not Dec 30), on the 1st when most are, whatever day its last date is
    (a month-to-date row on the 15th); else as its last date."""
    dates = history.drop_nulls()
    if (dates == dates.dt.month_end()).mean() > 0.5:
        return times.dt.month_end()
    if (dates.dt.day() == 1).mean() > 0.5:
        return times.dt.month_start()
    return times.dt.month_end() if pl.select(pl.lit(last).dt.month_end()).item() == last else times


def series_end(times: pl.Series) -> tuple[float, float, str] | None:
    """A key's last time and its median step between times, as numbers (microseconds, or the
    units of integer periods), and the last time as text; None with fewer than two times."""
    distinct = times.drop_nulls().unique().sort()
    if distinct.len() < 2:
        return None
    values = distinct if distinct.dtype.is_integer() else distinct.cast(pl.Datetime("us")).dt.epoch("us")
    step = float(np.median(np.diff(values.to_numpy())))
    return float(values[-1]), step, str(time_text(distinct[-1]))


def ending_early(ends: Mapping[str, tuple[float, float, str]], horizon: int) -> list[str]:
    """Keys whose forecast horizon ends before the latest time of the others, by more than the
    longest step among them: a series that stopped (a store closed in 2018) is forecast for
    2019, beside forecasts for next week. The longest step's slack keeps a quarter stamped on
    its last day (30 September) from making weekly keys that end in June look stale."""
    if not ends:
        return []
    latest = max(last for last, _, _ in ends.values())
    slack = max(step for _, step, _ in ends.values())
    return [key for key, (last, step, _) in ends.items() if last + horizon * step + slack < latest]


def fingerprint(frame: pl.DataFrame) -> str:
    """A content hash of a key's data: the 'data version' tag on registered models."""
    buf = io.BytesIO()
    frame.write_ipc(buf, compression="uncompressed")
    return hashlib.sha256(buf.getvalue()).hexdigest()[:16]


def to_matrix(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """A float matrix: the input of a model without categorical features."""
    return frame.select([pl.col(c).cast(pl.Float64) for c in columns]).to_numpy()


def frame_input(frame: pl.DataFrame, columns: Sequence[str], categorical: Collection[str]):
    """A pandas DataFrame with named columns: the input of a model with categorical features
    (text columns as text, the rest as float), which selects its columns by name."""
    import pandas as pd

    cats = set(categorical)
    data = {
        c: frame[c].cast(pl.Utf8).to_numpy() if c in cats else frame[c].cast(pl.Float64).to_numpy() for c in columns
    }
    return pd.DataFrame(data, columns=list(columns))


def labels(frame: pl.DataFrame, column: str) -> np.ndarray:
    return frame[column].to_numpy()


def key_classes(spec: UseCaseSpec, training_set: pl.DataFrame) -> np.ndarray | None:
    """A classification key's classes, every label of its training set (training and holdout
    rows): what its models and baselines are all scored over, so a model that predicts a class
    the holdout lacks and a baseline that predicts one class are averaged alike. None otherwise."""
    if spec.task != "classification" or spec.target not in training_set.columns:
        return None
    return labels(training_set.select(pl.col(spec.target).unique().sort()).drop_nulls(), spec.target)


def split(frame: pl.DataFrame) -> Mapping[str, pl.DataFrame]:
    return {TRAIN: frame.filter(pl.col(SPLIT) == TRAIN), HOLDOUT: frame.filter(pl.col(SPLIT) == HOLDOUT)}


def time_text(value: Any) -> str | None:
    """A time value as recorded on a model (``train_end``, ``fitted_through``): ISO text for dates
    and datetimes, the number for integer periods."""
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def parse_time_text(text: str, dtype: pl.DataType) -> Any:
    """A recorded time value back in the type of a time column (see ``time_text``)."""
    if dtype.is_integer():
        return int(text)
    if isinstance(dtype, pl.Datetime):
        return dt.datetime.fromisoformat(text)
    return dt.datetime.fromisoformat(text).date() if "T" in text else dt.date.fromisoformat(text)
