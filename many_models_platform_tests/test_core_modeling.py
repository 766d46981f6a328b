"""Per-key fitting: the better candidate wins on the holdout, and bad candidates never sink a key."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from conftest_core import make_spec, regression_body
from sklearn.pipeline import Pipeline

from many_models_platform.core import features as F
from many_models_platform.core.modeling import anomaly_score, build_pipeline, evaluate, fit_key, predict

DUMMY = {"name": "dummy", "estimator": "sklearn.dummy.DummyRegressor"}
LINEAR = {"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}
EXPLODING = {"name": "exploding", "estimator": "conftest_core.ExplodingRegressor"}


def linear_data(n: int = 80, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    return pl.DataFrame({"x1": x1, "x2": x2, "y": 5.0 + 3.0 * x1 - 2.0 * x2 + 0.05 * rng.normal(size=n)})


def prepared(spec, frame):
    ts = F.build_training_set(spec, frame)
    return ts, F.feature_columns(spec, None)


@pytest.mark.parametrize("order", [(DUMMY, LINEAR), (LINEAR, DUMMY)])
@pytest.mark.parametrize("metric", ["rmse", "mae", "r2"])
def test_fit_key_picks_the_better_candidate_on_the_holdout(order, metric):
    spec = make_spec(regression_body(candidates=list(order), metric=metric))
    ts, cols = prepared(spec, linear_data())
    fitted = fit_key(spec, ts, cols)
    assert fitted.candidate == "linear"
    assert set(fitted.candidate_scores) == {"dummy", "linear"}
    scores = fitted.candidate_scores
    if spec.lower_is_better:
        assert scores["linear"] < scores["dummy"]
    else:
        assert scores["linear"] > scores["dummy"]
    assert fitted.metrics[metric] == scores["linear"]
    n_holdout = round(80 * spec.holdout.fraction)
    assert (fitted.rows_train, fitted.rows_holdout) == (80 - n_holdout, n_holdout)
    assert fitted.feature_columns == ["x1", "x2"]
    # the winner really learnt the relation: y = 5 + 3 x1 - 2 x2
    pred = predict("regression", fitted.model, np.array([[0.0, 0.0], [1.0, 1.0]]))
    assert pred == pytest.approx([5.0, 6.0], abs=0.1)


def test_reported_metrics_match_an_independent_evaluation():
    spec = make_spec(regression_body(candidates=[DUMMY, LINEAR]))
    ts, cols = prepared(spec, linear_data(seed=3))
    fitted = fit_key(spec, ts, cols)
    holdout = F.split(ts)[F.HOLDOUT]
    pred = fitted.model.predict(holdout.select(cols).to_numpy())
    rmse = float(np.sqrt(np.mean((pred - holdout["y"].to_numpy()) ** 2)))
    assert fitted.metrics["rmse"] == pytest.approx(rmse)
    assert evaluate(spec, fitted.model, cols, holdout) == fitted.metrics


def test_a_failing_candidate_does_not_sink_the_key():
    spec = make_spec(regression_body(candidates=[EXPLODING, DUMMY]))
    ts, cols = prepared(spec, linear_data())
    fitted = fit_key(spec, ts, cols)
    assert fitted.candidate == "dummy"
    assert set(fitted.candidate_scores) == {"dummy"}


def test_every_candidate_failing_raises_key_data_error_with_reasons():
    second = {"name": "also_exploding", "estimator": "conftest_core.ExplodingRegressor", "params": {"message": "bang"}}
    spec = make_spec(regression_body(candidates=[EXPLODING, second]))
    ts, cols = prepared(spec, linear_data())
    with pytest.raises(F.KeyDataError) as err:
        fit_key(spec, ts, cols)
    message = str(err.value)
    assert "every candidate failed" in message
    assert "exploding: RuntimeError: boom" in message
    assert "also_exploding: RuntimeError: bang" in message


def test_undefined_holdout_metric_is_a_key_data_error():
    # MAPE ignores zero actuals; a holdout of zeros has no MAPE at all
    spec = make_spec(regression_body(candidates=[DUMMY, LINEAR], metric="mape", time_column="day"))
    frame = linear_data(n=40).with_columns(
        pl.date_range(date(2024, 1, 1), date(2024, 1, 1) + timedelta(days=39), "1d", eager=True).alias("day"),
        pl.when(pl.int_range(0, pl.len()) >= 30).then(0.0).otherwise(pl.col("y")).alias("y"),
    )
    ts = F.build_training_set(spec, frame)
    assert ts.filter(pl.col(F.SPLIT) == F.HOLDOUT)["y"].to_list() == [0.0] * 10
    with pytest.raises(F.KeyDataError, match="undefined"):
        fit_key(spec, ts, F.feature_columns(spec, pl.Date))


def test_missing_feature_values_are_imputed_not_fatal():
    spec = make_spec(regression_body(candidates=[LINEAR]))
    frame = linear_data().with_columns(
        pl.when(pl.int_range(0, pl.len()) % 4 == 0).then(None).otherwise(pl.col("x2")).alias("x2")
    )
    ts, cols = prepared(spec, frame)
    fitted = fit_key(spec, ts, cols)
    assert isinstance(fitted.model, Pipeline)
    assert np.isfinite(predict("regression", fitted.model, np.array([[np.nan, np.nan]]))).all()


def test_build_pipeline_is_fresh_and_imputes():
    spec = make_spec(regression_body(candidates=[DUMMY, LINEAR]))
    a, b = build_pipeline(spec, "linear"), build_pipeline(spec, "linear")
    assert a is not b
    assert [name for name, _ in a.steps] == ["impute", "scale", "model"]
    assert type(a.named_steps["model"]).__name__ == "LinearRegression"


def anomaly_data(n: int = 240, seed: int = 1):
    rng = np.random.default_rng(seed)
    value = rng.normal(0.0, 1.0, size=n)
    outliers = np.arange(7, n, 23)  # spread over train and holdout
    value[outliers] = np.where(np.arange(len(outliers)) % 2 == 0, 12.0, -12.0)
    label = np.zeros(n, dtype=np.int8)
    label[outliers] = 1
    return pl.DataFrame({"value": value, "y": label}), outliers


def test_anomaly_detector_flags_injected_outliers():
    spec = make_spec(
        regression_body(
            task="anomaly",
            features=["value"],
            metric="f1",
            min_rows=20,
            candidates=[
                {
                    "name": "iforest",
                    "estimator": "sklearn.ensemble.IsolationForest",
                    "params": {"contamination": 0.05, "random_state": 0, "n_estimators": 50},
                }
            ],
        )
    )
    frame, outliers = anomaly_data()
    ts = F.build_training_set(spec, frame)
    fitted = fit_key(spec, ts, ["value"])
    x = frame.select("value").to_numpy()
    flags = predict("anomaly", fitted.model, x)
    assert set(np.unique(flags)) <= {0, 1}
    assert (flags[outliers] == 1).all()
    assert flags.sum() <= 0.1 * len(flags)  # the normal bulk is mostly left alone
    assert fitted.metrics["recall"] == 1.0  # every labelled outlier in the holdout was found
    new = np.array([[0.0], [0.3], [15.0], [-15.0]])
    assert predict("anomaly", fitted.model, new).tolist() == [0, 0, 1, 1]
    scores = anomaly_score(fitted.model, new)
    assert min(scores[2:]) > max(scores[:2])  # higher = more anomalous


class _Stub:
    def __init__(self, raw):
        self.raw = np.asarray(raw)

    def predict(self, x):
        return self.raw


def test_predict_maps_sklearn_outlier_labels_to_one_equals_anomaly():
    stub = _Stub([1, -1, 1, -1])
    assert predict("anomaly", stub, np.zeros((4, 1))).tolist() == [0, 1, 0, 1]
    assert predict("regression", stub, np.zeros((4, 1))).tolist() == [1, -1, 1, -1]
    # a detector without scoring methods falls back to its labels
    assert anomaly_score(stub, np.zeros((4, 1))).tolist() == [0.0, 1.0, 0.0, 1.0]
