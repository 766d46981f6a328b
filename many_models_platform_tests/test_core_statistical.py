"""Statistical candidates (statsforecast) beside scikit-learn ones: fitted on the key's series,
saved and loaded with skops like any model, scored by time, and chosen when they forecast best."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from conftest_core import forecast_body, make_spec

from many_models_platform.core import features as F
from many_models_platform.core.modeling import evaluate, fit_key, model_input, predict, training_scale
from many_models_platform.core.statistical import StatisticalForecaster
from many_models_platform.storage.registry import (
    TRUSTED_MODULES,
    ModelIntegrityError,
    load_model_from_source,
    model_template_dir,
    write_model_dir,
)

RIDGE = {"name": "ridge", "estimator": "sklearn.linear_model.Ridge", "params": {"alpha": 1.0}}
SNAIVE = {"name": "snaive", "estimator": "statsforecast.models.SeasonalNaive"}
ETS = {"name": "ets", "estimator": "statsforecast.models.AutoETS", "params": {"season_length": 52}}


def seasonal(n: int = 160, seed: int = 0) -> pl.DataFrame:
    """Weekly demand with a strong yearly season and a price that does not matter."""
    rng = np.random.default_rng(seed)
    weeks = pl.date_range(dt.date(2021, 1, 4), dt.date(2021, 1, 4) + dt.timedelta(weeks=n - 1), "1w", eager=True)
    y = 100 + 30 * np.sin(2 * np.pi * np.arange(n) / 52) + rng.normal(0, 1, n)
    return pl.DataFrame({"week_start": weeks, "price": rng.normal(size=n), "quantity": y})


def spec_with(*candidates):
    return make_spec(
        forecast_body(
            lags=[], calendar_features=False, metric="wape", holdout={"periods": 8}, candidates=list(candidates)
        )
    )


def test_a_statistical_candidate_wins_a_seasonal_series_and_round_trips_through_skops(tmp_path):
    spec = spec_with(RIDGE, SNAIVE, ETS)
    ts = F.build_training_set(spec, seasonal())
    cols = ["price"]
    fitted = fit_key(spec, ts, cols)
    # the price carries no signal: the series models beat the regression on validation, and on the holdout
    assert fitted.candidate in ("snaive", "ets")
    assert max(fitted.candidate_scores["snaive"], fitted.candidate_scores["ets"]) < fitted.candidate_scores["ridge"]
    assert fitted.metrics["wape"] < 0.03
    assert isinstance(fitted.model, StatisticalForecaster) and fitted.model.params["season_length"] == 52
    # saved with only the adapter trusted: no statsforecast type is in the file
    trusted = [*TRUSTED_MODULES, *spec.trusted_types]
    sha = write_model_dir(fitted.model, str(tmp_path / "m"), model_template_dir(), trusted)
    with pytest.raises(ModelIntegrityError, match="untrusted"):
        load_model_from_source(str(tmp_path / "m"), sha)  # the platform's defaults alone do not trust it
    loaded = load_model_from_source(str(tmp_path / "m"), sha, trusted)
    holdout = F.split(ts)[F.HOLDOUT]
    train = F.split(ts)[F.TRAIN]
    scale = training_scale(spec, train, "weekly")
    assert evaluate(spec, loaded, cols, holdout, scale) == evaluate(spec, fitted.model, cols, holdout, scale)
    # the production refit has seen the holdout: it forecasts from the last week on
    assert fitted.production_model.last_code_ > fitted.model.last_code_
    assert fitted.fitted_through == ts["week_start"].max() and fitted.train_end == train["week_start"].max()


def test_rows_are_placed_by_time_in_sample_ahead_and_beyond_the_stored_forecasts():
    spec = spec_with(SNAIVE)
    ts = F.build_training_set(spec, seasonal())
    fitted = fit_key(spec, ts, ["price"])
    model = fitted.production_model  # fitted through the last week
    y = ts["quantity"].to_numpy()
    last = ts["week_start"].max()
    ahead = pl.DataFrame(
        {"week_start": [last + dt.timedelta(weeks=k) for k in (1, 2, 40)], "price": [0.0] * 3}
    )  # week 40 is beyond the 16 stored forecasts: the model is refitted on the stored series
    got = predict("forecast", model, model_input(model, ahead, ["price"]))
    assert got == pytest.approx([y[-52], y[-51], y[-52 + 39]])
    # inside the fitted range: the in-sample fit, here last season's value
    inside = ts.tail(3).select("week_start", "price")
    assert predict("forecast", model, model_input(model, inside, ["price"])) == pytest.approx(y[-55:-52])


def test_loading_the_use_case_file_does_not_import_statsforecast():
    # the shipped file lists a statistical candidate; loading it must not pay statsforecast's import
    code = (
        "import sys; from many_models_platform.core.spec import load_config; "
        "spec = load_config().use_case('retail_demand'); "
        "assert any(c.statistical for c in spec.candidates); "
        "print(sorted(m for m in sys.modules if 'statsforecast' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    spec = spec_with(RIDGE, ETS)
    assert "many_models_platform.core.statistical.StatisticalForecaster" in spec.trusted_types
    with pytest.raises(ValueError, match="does not accept parameter"):
        spec_with({**ETS, "params": {"season": 52}})
    with pytest.raises(ValueError, match="has no class 'AutoNothing'"):
        spec_with({**ETS, "estimator": "statsforecast.models.AutoNothing"})
    with pytest.raises(ValueError, match="need task 'forecast'"):
        make_spec({**forecast_body(), "task": "regression", "metric": "rmse", "lags": [], "candidates": [ETS]})
