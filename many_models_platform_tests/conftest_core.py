"""Shared helpers for the ``test_core_*`` modules (imported explicitly, not a pytest conftest).

Everything here is plain Python: no Dagster, no fixtures that other engineers' tests could pick up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sklearn.base import BaseEstimator, RegressorMixin

from many_models_platform.core.spec import UseCaseSpec


def regression_body(**overrides: Any) -> dict[str, Any]:
    """A small, valid regression use case body (as it would appear under ``use_cases:``)."""
    body: dict[str, Any] = {
        "task": "regression",
        "source": {"path": "landing/demo/*.csv"},
        "keys": ["segment"],
        "target": "y",
        "features": ["x1", "x2"],
        "holdout": {"fraction": 0.25},
        "metric": "rmse",
        "min_rows": 10,
        "candidates": [
            {"name": "dummy", "estimator": "sklearn.dummy.DummyRegressor"},
            {"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"},
        ],
    }
    body.update(overrides)
    return body


def forecast_body(**overrides: Any) -> dict[str, Any]:
    """A small, valid weekly forecast use case body."""
    body: dict[str, Any] = {
        "task": "forecast",
        "source": {"path": "landing/demo/*.csv"},
        "keys": ["store", "brand"],
        "time_column": "week_start",
        "target": "quantity",
        "features": ["price"],
        "lags": [4, 5],
        "holdout": {"periods": 4},
        "horizon": 4,
        "metric": "mape",
        "min_rows": 10,
        "candidates": [{"name": "ridge", "estimator": "sklearn.linear_model.Ridge", "params": {"alpha": 1.0}}],
    }
    body.update(overrides)
    return body


def make_spec(body: dict[str, Any], name: str = "demo") -> UseCaseSpec:
    return UseCaseSpec.model_validate({"name": name, **body})


def write_config(directory: Path, use_cases: dict[str, dict[str, Any]], **top: Any) -> Path:
    path = directory / "use_cases.yaml"
    path.write_text(yaml.safe_dump({"use_cases": use_cases, **top}, sort_keys=False))
    return path


class ExplodingRegressor(BaseEstimator, RegressorMixin):
    """A scikit-learn-shaped estimator whose fit always raises (importable as ``conftest_core.ExplodingRegressor``)."""

    def __init__(self, message: str = "boom"):
        self.message = message

    def fit(self, x, y=None):
        raise RuntimeError(self.message)

    def predict(self, x):  # pragma: no cover - never fitted
        return np.zeros(len(x))


def clear_platform_env(monkeypatch) -> None:
    """Make PlatformSettings.from_env(home) use only ``home`` whatever the caller's environment holds."""
    for var in list(os.environ):
        if var.startswith("MMP_"):
            monkeypatch.delenv(var, raising=False)
