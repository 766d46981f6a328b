"""Statistical forecasters (Nixtla's ``statsforecast``: AutoETS, AutoARIMA, AutoTheta,
SeasonalNaive, ...) as candidates beside scikit-learn estimators, by configuration alone.

A statsforecast model forecasts a series ``h`` steps ahead; the platform scores rows. The
adapter bridges the two: it is fitted on the key's training rows (their time values and
targets), turns them into a regular series of periods, and answers ``predict`` for rows by
their time: a row ``h`` periods after the last fitted period gets the ``h``-step forecast, a
row inside the fitted range gets the model's in-sample fit.

What is saved is only the series, the forecasts and the in-sample fit as arrays, next to the
model's name and parameters: no statsforecast object, so skops saves and loads it without
trusting statsforecast's types, and scoring never imports statsforecast (its import takes
seconds). Only a row beyond the stored forecasts makes ``predict`` refit the model on the
stored series. The forecasts are univariate: exogenous features are not used.
"""

from __future__ import annotations

import importlib
import math
import os
from typing import Any

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator, RegressorMixin

from .spec import STATISTICAL_PREFIX


class StatisticalForecaster(RegressorMixin, BaseEstimator):
    """One statsforecast model on one key's series.

    ``model``: the import path (``statsforecast.models.AutoETS``); ``params``: its constructor
    arguments; ``time_column``: the column whose values place rows in time; ``months`` /
    ``step_us`` / ``int_step`` / ``business_days``: the key's period (calendar months, a fixed step
    in microseconds, an integer period step, or business days); ``cache_periods``: how many periods
    ahead are forecast at fit.
    """

    def __init__(
        self,
        model: str = "statsforecast.models.SeasonalNaive",
        params: dict[str, Any] | None = None,
        time_column: str = "",
        months: int = 0,
        step_us: int = 0,
        int_step: int = 0,
        cache_periods: int = 16,
        business_days: bool = False,
    ):
        self.model = model
        self.params = params
        self.time_column = time_column
        self.months = months
        self.step_us = step_us
        self.int_step = int_step
        self.cache_periods = cache_periods
        self.business_days = business_days

    # --- time ----------------------------------------------------------------------------------
    def time_codes(self, frame: pl.DataFrame) -> np.ndarray:
        """The model's input: each row's time as an integer on the period's scale (month number,
        microseconds, or the integer period), from ``time_column``."""
        t = frame[self.time_column]
        if self.months:
            return (t.dt.year().cast(pl.Int64) * 12 + t.dt.month().cast(pl.Int64)).to_numpy()
        if self.int_step:
            return t.cast(pl.Int64).to_numpy()
        if getattr(self, "business_days", False):  # business days since 1970 (a model saved before: none)
            return np.busday_count(np.datetime64("1970-01-01"), t.cast(pl.Date).to_numpy(), weekmask="1111100")
        if t.dtype == pl.Date:
            return t.cast(pl.Int64).to_numpy() * 86_400_000_000
        return t.dt.epoch("us").to_numpy()

    def _unit(self) -> int:
        return self.months or self.int_step or (1 if getattr(self, "business_days", False) else self.step_us)

    def _positions(self, codes: np.ndarray, last: int) -> np.ndarray:
        """Periods after ``last`` (0 = the last fitted period, negative = inside the fit)."""
        return np.round((np.asarray(codes, dtype=np.float64) - last) / self._unit()).astype(np.int64)

    # --- fit and predict -----------------------------------------------------------------------
    def fit(self, X, y):
        codes = np.asarray(X, dtype=np.int64).reshape(-1)
        values = np.asarray(y, dtype=np.float64).reshape(-1)
        order = np.argsort(codes, kind="stable")
        codes, values = codes[order], values[order]
        self.last_code_ = int(codes[-1])
        pos = self._positions(codes, self.last_code_)
        series = np.full(int(-pos.min()) + 1, np.nan)
        series[pos - pos.min()] = values  # one value per period; a repeated period keeps the last
        missing = np.isnan(series)
        if missing.any():  # a period without a row: interpolated, so the model sees a regular series
            series[missing] = np.interp(np.flatnonzero(missing), np.flatnonzero(~missing), series[~missing])
        self.series_ = series
        self.filled_periods_ = int(missing.sum())
        self.forecast_, self.fitted_ = self._forecast(series, max(1, int(self.cache_periods)))
        return self

    def _forecast(self, series: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
        os.environ.setdefault("NIXTLA_NUMBA_CACHE", "1")  # cache compiled code where a version uses numba
        module, _, name = self.model.rpartition(".")
        if module + "." != STATISTICAL_PREFIX:
            raise ValueError(f"{self.model!r} is not a statsforecast model")
        model = getattr(importlib.import_module(module), name)(**(self.params or {}))
        try:
            out = model.forecast(y=series, h=h, fitted=True)
        except Exception:  # a model without an in-sample fit
            out = model.forecast(y=series, h=h)
        mean = np.asarray(out["mean"], dtype=np.float64)
        fitted = np.asarray(out.get("fitted", np.full(len(series), np.nan)), dtype=np.float64)
        if len(fitted) != len(series):
            fitted = np.full(len(series), np.nan)
        if not np.isfinite(mean).all():
            raise ValueError(f"{name} forecast is not finite on this series")
        return mean, fitted

    def predict(self, X) -> np.ndarray:
        """Forecasts for rows after the fitted series; the in-sample fit for rows inside it (where
        the model has none, e.g. the first season of a seasonal naive, the previous period's value)."""
        pos = self._positions(np.asarray(X, dtype=np.int64).reshape(-1), self.last_code_)
        ahead = self.forecast_
        if len(pos) and pos.max() > len(ahead):
            ahead, _ = self._forecast(self.series_, int(pos.max()))
        n = len(self.series_)
        out = np.empty(len(pos), dtype=np.float64)
        for i, p in enumerate(pos):
            if p >= 1:
                out[i] = ahead[p - 1]
                continue
            idx = n - 1 + int(p)
            if idx < 0:
                out[i] = self.series_[0]
            elif math.isfinite(self.fitted_[idx]):
                out[i] = self.fitted_[idx]
            else:
                out[i] = self.series_[max(idx - 1, 0)]
        return out


def build(path: str, params: dict[str, Any], time_column: str, period: Any, season: int, cache_periods: int):
    """The adapter for one candidate and one key's period. A model taking ``season_length`` gets
    the frequency's season (weekly 52, monthly 12, ...) unless the candidate sets one."""
    from .spec import statistical_parameters

    params = dict(params)
    accepted, _ = statistical_parameters(path)
    if "season_length" in accepted and "season_length" not in params:
        params["season_length"] = season
    step_us = round(period.step.total_seconds() * 1_000_000) if period.step is not None else 0
    return StatisticalForecaster(
        model=path,
        params=params,
        time_column=time_column,
        months=period.months,
        step_us=step_us,
        int_step=period.int_step,
        cache_periods=cache_periods,
        business_days=period.business,
    )
