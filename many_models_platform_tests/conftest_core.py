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


# --- module worlds: the stages on real stores in a fresh home ------------------------------------
_EMPTY_REGISTRY: Path | None = None


def empty_registry_db() -> Path:
    """An MLflow SQLite store with its schema, made once per test process (MLflow's migrations
    cost about a second per store, two stores per home) and copied into each home."""
    global _EMPTY_REGISTRY
    if _EMPTY_REGISTRY is None or not _EMPTY_REGISTRY.exists():
        import tempfile

        from many_models_platform.storage.registry import ModelRegistry

        folder = Path(tempfile.mkdtemp(prefix="mmp_mlflow_template_"))
        path = folder / "empty.db"
        ModelRegistry(f"sqlite:///{path}", str(folder), "candidate").client.search_registered_models()
        _EMPTY_REGISTRY = path
    return _EMPTY_REGISTRY


def with_empty_registries(home: Path, empty: Path | None = None) -> None:
    """Both embedded registries of ``home`` start from a copy of an empty MLflow store."""
    import shutil

    empty = empty or empty_registry_db()
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    for name in ("candidate.db", "production.db"):
        shutil.copyfile(empty, home / "mlflow" / name)


def home_settings(home: Path, env: dict[str, str] | None = None, registries: bool = True):
    """PlatformSettings for ``home`` alone (nothing from the caller's environment but ``env``),
    its local folders made and, for the embedded registries, their empty stores in place."""
    import pytest

    from many_models_platform.storage.settings import PlatformSettings

    env = env or {}
    if registries and not any(k.endswith("_REGISTRY_URI") for k in env):
        with_empty_registries(home)
    with pytest.MonkeyPatch.context() as mp:
        clear_platform_env(mp)
        for k, v in env.items():
            mp.setenv(k, v)
        settings = PlatformSettings.from_env(home)
    settings.ensure_local_dirs()
    return settings


def run_all(spec, settings, run_id: str, day, keys: list[str] | None = None, workers: int | None = None) -> dict:
    """Every stage in order for ``keys`` (default: the keys discovered in the lake); stage -> StageReport."""
    from many_models_platform.stages import STAGES, StageRun, run_stage
    from many_models_platform.stages.raw import discover_keys
    from many_models_platform.storage.lake import Lake

    if keys is None:
        keys = discover_keys(spec, Lake(settings.lake_url))
    run = StageRun(spec, settings, run_id=run_id, run_date=day, workers=workers)
    return {stage: run_stage(stage, run, keys) for stage in STAGES}
