"""A shorter way through the platform's numeric pipeline, used only where it is proven equal.

A float-matrix model is ``Pipeline([SimpleImputer, StandardScaler, estimator])``
(``core.modeling.build_pipeline``). Predicting one row through it costs three rounds of
scikit-learn's input validation, several times the arithmetic. For such a model the service
computes the same arithmetic directly (NaN -> the imputer's statistics, minus the scaler's
mean, divided by its scale, then the estimator: LightGBM's booster or a linear model's
coefficients directly), and keeps this path only if, at load, it gives bit-for-bit the
model's own ``predict`` on probe rows (including missing values). Anything else uses
``model.predict``.

A single row through LightGBM goes through its C API's single-row fast predictor
(``LGBM_BoosterPredictForMatSingleRowFast``: the configuration parsed once per model, not per
call), which LightGBM's Python package does not expose; its Python ``Booster.predict``
spends about 30 us per call building a predictor and checking the array, several times the
trees' own work. It is probed row by row like the rest.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np


def compile_predictor(model: Any, width: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function equal to ``model.predict`` on float matrices of ``width`` columns, or None."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if not isinstance(model, Pipeline) or len(model.steps) != 3 or width < 1:
        return None
    (_, imputer), (_, scaler), (_, estimator) = model.steps
    if type(imputer) is not SimpleImputer or type(scaler) is not StandardScaler:
        return None
    if imputer.add_indicator or not _is_nan(imputer.missing_values) or len(imputer.statistics_) != width:
        return None
    statistics = np.asarray(imputer.statistics_, dtype=np.float64)
    mean = scaler.mean_ if scaler.with_mean else None
    scale = scaler.scale_ if scaler.with_std else None
    final = estimator.predict
    if type(estimator).__name__ == "LGBMRegressor" and type(estimator).__module__.startswith("lightgbm"):
        final = _lightgbm_predictor(estimator.booster_, width) or estimator.booster_.predict
    elif type(estimator).__module__.startswith("sklearn.linear_model") and hasattr(estimator, "coef_"):
        coef, intercept = np.asarray(estimator.coef_).T, estimator.intercept_
        if np.ndim(coef) == 1 and np.ndim(intercept) == 0:  # a regressor with one output

            def final(x: np.ndarray) -> np.ndarray:
                return x @ coef + intercept

    def predict(x: np.ndarray) -> np.ndarray:
        x = np.where(np.isnan(x), statistics, x)
        if mean is not None:
            x = x - mean
        if scale is not None:
            x = x / scale
        return final(x)

    rows = np.vstack([statistics, statistics + 1.5, statistics * -0.5, np.full(width, np.nan)] * 2)
    probes = [np.asfortranarray(rows), np.ascontiguousarray(rows)]
    # one row at a time (LightGBM's single-row path): one without and one with missing values;
    # each probe costs a model.predict, a millisecond or more of every cold load
    probes += [np.asfortranarray(rows[i : i + 1]) for i in (1, 3)]
    try:
        for probe in probes:
            if not np.array_equal(np.asarray(predict(probe)), np.asarray(model.predict(probe))):
                return None
        return predict
    except Exception:
        return None


def _lightgbm_predictor(booster: Any, width: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """``booster.predict`` with one row through LightGBM's single-row fast path (more rows go
    to ``booster.predict``); None if the C library lacks it."""
    try:
        from lightgbm.basic import _C_API_DTYPE_FLOAT64, _C_API_PREDICT_NORMAL, _LIB, _c_str, _safe_call

        init = _LIB.LGBM_BoosterPredictForMatSingleRowFastInit
        single = _LIB.LGBM_BoosterPredictForMatSingleRowFast
        free = _LIB.LGBM_FastConfigFree
    except (ImportError, AttributeError):
        return None
    # as Booster.predict(num_iteration=None) does: the best iteration when there is one
    num_iteration = booster.best_iteration if booster.best_iteration > 0 else -1
    config = ctypes.c_void_p()
    try:
        _safe_call(
            init(
                booster._handle,
                ctypes.c_int(_C_API_PREDICT_NORMAL),
                ctypes.c_int(0),
                ctypes.c_int(num_iteration),
                ctypes.c_int(_C_API_DTYPE_FLOAT64),
                ctypes.c_int32(width),
                _c_str("num_threads=1"),
                ctypes.byref(config),
            )
        )
    except Exception:  # the shortcut is optional: booster.predict serves instead
        return None
    if booster.num_model_per_iteration() != 1:  # one value per row only
        free(config)
        return None
    handle = config.value

    def predict(x: np.ndarray) -> np.ndarray:
        if x.shape != (1, width):  # the C call reads exactly ``width`` values
            return booster.predict(x)
        row = np.ascontiguousarray(x, dtype=np.float64)
        out = np.empty(1, dtype=np.float64)
        length = ctypes.c_int64(0)
        _safe_call(
            single(
                ctypes.c_void_p(handle),
                ctypes.c_void_p(row.ctypes.data),
                ctypes.byref(length),
                ctypes.c_void_p(out.ctypes.data),
            )
        )
        return out

    weakref.finalize(predict, free, ctypes.c_void_p(handle))  # freed with the model (the booster outlives it)
    return predict


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value
