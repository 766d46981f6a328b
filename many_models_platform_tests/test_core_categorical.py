"""Text categories as features: one-hot for linear models, native categoricals for LightGBM, unseen
categories at scoring, skops round trips, and categorical exogenous values in forecasts."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest
from conftest_core import forecast_body, make_spec, regression_body
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

from many_models_platform.core import features as F
from many_models_platform.core.modeling import categorical_inputs, fit_key, model_input, predict
from many_models_platform.storage.registry import (
    TRUSTED_MODULES,
    load_model_from_source,
    model_template_dir,
    write_model_dir,
)

EFFECT = {"Mon": 0.0, "Tue": 10.0, "Wed": -10.0}
LINEAR = {"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}
LIGHTGBM = {
    "name": "lightgbm",
    "estimator": "lightgbm.LGBMRegressor",
    # small keys: let LightGBM split on categories and leaves with few rows
    "params": {"n_estimators": 60, "min_child_samples": 3, "min_data_per_group": 3, "cat_smooth": 1, "n_jobs": 1},
}


def weekday_data(n: int = 180, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    day = rng.choice(list(EFFECT), size=n)
    x1 = rng.normal(size=n)
    y = 20.0 + 2.0 * x1 + np.array([EFFECT[d] for d in day]) + 0.1 * rng.normal(size=n)
    return pl.DataFrame({"x1": x1, "day": pl.Series(day.tolist(), dtype=pl.Utf8), "y": y})


def spec_with(candidate: dict):
    return make_spec(regression_body(features=["x1"], categorical_features=["day"], candidates=[candidate]))


SCORING = pl.DataFrame(
    {"x1": [0.0, 0.0, 0.0, 0.0, 0.0], "day": ["Mon", "Tue", "Wed", "Sun", None]},
    schema={"x1": pl.Float64, "day": pl.Utf8},
)


@pytest.fixture(scope="module", params=[LINEAR, LIGHTGBM], ids=["linear", "lightgbm"])
def fitted(request):
    spec = spec_with(request.param)
    ts = F.build_training_set(spec, weekday_data())
    columns = F.feature_columns(spec)
    return spec, ts, fit_key(spec, ts, columns)


def test_categorical_features_are_learnt_and_unseen_categories_still_score(fitted):
    _, ts, key = fitted
    assert key.feature_columns == ["x1", "day"]
    assert ts["day"].dtype == pl.Utf8
    # a model blind to the day would be off by about 8 on average; this one is not
    assert key.metrics["rmse"] < 2.0
    x = model_input(key.model, SCORING, key.feature_columns)
    assert isinstance(x, pd.DataFrame) and list(x.columns) == ["x1", "day"]
    mon, tue, wed, unseen, missing = predict("regression", key.model, x)
    assert tue - mon == pytest.approx(10.0, abs=2.5)
    assert wed - mon == pytest.approx(-10.0, abs=2.5)
    assert np.isfinite([unseen, missing]).all()  # 'Sun' never appeared in training; None neither


def test_linear_models_one_hot_encode_and_lightgbm_uses_native_categoricals(fitted):
    _, _, key = fitted
    assert isinstance(key.model, Pipeline)
    prepare = key.model.named_steps["prepare"]
    assert isinstance(prepare, ColumnTransformer)
    encoder = prepare.named_transformers_["categorical"]
    assert categorical_inputs(key.model) == ["day"]
    if key.candidate == "linear":
        assert isinstance(encoder, OneHotEncoder) and encoder.handle_unknown == "ignore"
        assert encoder.categories_[0].tolist() == ["Mon", "Tue", "Wed"]
        assert key.model.named_steps["model"].coef_.shape == (1 + 3,)  # x1 and one column per day
    else:
        assert isinstance(encoder, OrdinalEncoder)
        infos = key.model.named_steps["model"].booster_.dump_model()["feature_infos"]
        # LightGBM lists the category codes of a categorical feature; a numeric one has none
        assert infos["Column_0"]["values"] == []
        assert {0, 1, 2} <= set(infos["Column_1"]["values"])


def test_a_model_with_categoricals_round_trips_through_skops(fitted, tmp_path):
    spec, _, key = fitted
    trusted = [*TRUSTED_MODULES, *spec.trusted_types]
    folder = tmp_path / key.candidate
    sha = write_model_dir(key.model, str(folder), model_template_dir(), trusted)
    loaded = load_model_from_source(str(folder), sha, trusted)
    before = predict("regression", key.model, model_input(key.model, SCORING, key.feature_columns))
    after = predict("regression", loaded, model_input(loaded, SCORING, key.feature_columns))
    assert after.tolist() == before.tolist()
    assert categorical_inputs(loaded) == ["day"]


def test_a_model_without_categoricals_keeps_the_float_matrix_pipeline():
    spec = make_spec(regression_body(features=["x1"], candidates=[LINEAR]))
    ts = F.build_training_set(spec, weekday_data().drop("day"))
    key = fit_key(spec, ts, ["x1"])
    assert [name for name, _ in key.model.steps] == ["impute", "scale", "model"]
    assert categorical_inputs(key.model) is None
    assert isinstance(model_input(key.model, SCORING, ["x1"]), np.ndarray)


def test_forecast_carries_categorical_exogenous_values_forward():
    weeks = [date(2024, 1, 1) + timedelta(weeks=w) for w in range(60)]
    promo = ["none", "display", "none", "coupon"] * 15
    lift = {"none": 0.0, "display": 15.0, "coupon": 30.0}
    history = pl.DataFrame(
        {
            "week_start": weeks,
            "price": 2.0,
            "promo": promo,
            "quantity": [100.0 + lift[p] + (w % 3) for w, p in enumerate(promo)],
        }
    )
    spec = make_spec(forecast_body(categorical_features=["promo"], candidates=[LINEAR], lags=[4]))
    ts = F.build_training_set(spec, history)
    assert F.feature_columns(spec, pl.Date, "weekly") == ["price", "promo", "lag_4", "cal_month", F.T_INDEX]
    key = fit_key(spec, ts, F.feature_columns(spec, pl.Date, "weekly"))
    assert promo[-1] == "coupon"
    exog = pl.DataFrame({"week_start": [weeks[-1] + timedelta(weeks=1)], "promo": ["display"]})
    future = F.future_frame(spec, history, exog, origin=weeks[0])
    # week 1 from the scoring source, later weeks carry the last known value forward
    assert future["promo"].to_list() == ["display", *["coupon"] * (spec.horizon - 1)]
    no_exog = F.future_frame(spec, history, None, origin=weeks[0])
    assert no_exog["promo"].to_list() == [promo[-1]] * spec.horizon
    pred = predict("forecast", key.model, model_input(key.model, future, key.feature_columns))
    assert len(pred) == spec.horizon and np.isfinite(pred).all()
