"""A shorter way through the platform's numeric pipeline, used only where it is proven equal.

A float-matrix model is ``Pipeline([SimpleImputer, StandardScaler, estimator])``
(``core.modeling.build_pipeline``). Predicting one row through it costs three rounds of
scikit-learn's input validation, several times the arithmetic. For such a model the service
computes the same arithmetic directly (NaN -> the imputer's statistics, minus the scaler's
mean, divided by its scale, then the estimator: LightGBM's booster or a linear model's
coefficients directly), and keeps this
path only if, at load, it gives bit-for-bit the model's own ``predict`` on probe rows
(including missing values). Anything else uses ``model.predict``.
"""

from __future__ import annotations

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
        final = estimator.booster_.predict
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
    try:
        for probe in (np.asfortranarray(rows), np.ascontiguousarray(rows), np.asfortranarray(rows[:1])):
            if not np.array_equal(np.asarray(predict(probe)), np.asarray(model.predict(probe))):
                return None
        return predict
    except Exception:
        return None


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value
