"""Per-key fitting: the better candidate wins on the holdout, and bad candidates never sink a key."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from conftest_core import make_spec, regression_body
from sklearn.pipeline import Pipeline

from many_models_platform.core import features as F
from many_models_platform.core.modeling import (
    anomaly_score,
    build_pipeline,
    clip_predictions,
    evaluate,
    fit_key,
    predict,
    stability,
    training_scale,
)

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
@pytest.mark.parametrize("metric", ["rmse", "mae", "r2", "wape", "mase"])
def test_fit_key_picks_the_better_candidate_on_validation(order, metric):
    spec = make_spec(regression_body(candidates=list(order), metric=metric))
    ts, cols = prepared(spec, linear_data())
    fitted = fit_key(spec, ts, cols)
    assert fitted.candidate == "linear"
    assert set(fitted.candidate_scores) == {"dummy", "linear"}
    scores = fitted.candidate_scores  # validation scores, not holdout metrics
    if spec.lower_is_better:
        assert scores["linear"] < scores["dummy"]
    else:
        assert scores["linear"] > scores["dummy"]
    assert fitted.metrics[metric] != scores["linear"]  # the holdout is scored once, apart
    n_holdout = int((ts[F.SPLIT] == F.HOLDOUT).sum())
    assert (fitted.rows_train, fitted.rows_holdout) == (80 - n_holdout, n_holdout)
    assert 0 < fitted.rows_validation < fitted.rows_train and fitted.validation_windows == 1
    assert fitted.feature_columns == ["x1", "x2"]
    # the winner really learnt the relation: y = 5 + 3 x1 - 2 x2
    pred = predict("regression", fitted.model, np.array([[0.0, 0.0], [1.0, 1.0]]))
    assert pred == pytest.approx([5.0, 6.0], abs=0.1)


def test_reported_metrics_match_an_independent_evaluation():
    spec = make_spec(regression_body(candidates=[DUMMY, LINEAR]))
    ts, cols = prepared(spec, linear_data(seed=3))
    fitted = fit_key(spec, ts, cols)
    holdout, train = F.split(ts)[F.HOLDOUT], F.split(ts)[F.TRAIN]
    pred = fitted.model.predict(holdout.select(cols).to_numpy())
    rmse = float(np.sqrt(np.mean((pred - holdout["y"].to_numpy()) ** 2)))
    assert fitted.metrics["rmse"] == pytest.approx(rmse)
    assert evaluate(spec, fitted.model, cols, holdout, training_scale(spec, train, None)) == fitted.metrics
    # without a time order, MASE scales by the training mean's absolute error
    y = train["y"].to_numpy()
    assert fitted.metrics["mase"] == pytest.approx(fitted.metrics["mae"] / np.mean(np.abs(y - y.mean())))


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


def test_undefined_holdout_metric_is_reported_with_its_reason_not_a_failure():
    # MAPE divides by each actual; a holdout of zeros has no MAPE at all (WAPE neither), sMAPE has
    spec = make_spec(regression_body(candidates=[DUMMY, LINEAR], metric="mape", time_column="day"))
    frame = linear_data(n=40).with_columns(
        pl.date_range(date(2024, 1, 1), date(2024, 1, 1) + timedelta(days=39), "1d", eager=True).alias("day"),
        pl.when(pl.int_range(0, pl.len()) >= 30).then(0.0).otherwise(pl.col("y")).alias("y"),
    )
    ts = F.build_training_set(spec, frame)
    assert ts.filter(pl.col(F.SPLIT) == F.HOLDOUT)["y"].to_list() == [0.0] * 10
    fitted = fit_key(spec, ts, F.feature_columns(spec, pl.Date))
    assert np.isnan(fitted.metrics["mape"]) and np.isnan(fitted.metrics["wape"])
    assert fitted.metrics["smape"] > 0
    assert fitted.undefined["mape"].startswith("10 of 10 holdout actuals are 0")
    assert fitted.undefined["wape"] == "every holdout actual is 0"


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


def labelled_detector_spec():
    """An isolation forest on 'value', scored by F1 against the 'y' labels."""
    iforest = {
        "name": "iforest",
        "estimator": "sklearn.ensemble.IsolationForest",
        "params": {"contamination": 0.05, "random_state": 0, "n_estimators": 50},
    }
    return make_spec(
        regression_body(task="anomaly", features=["value"], metric="f1", min_rows=20, candidates=[iforest])
    )


def test_anomaly_detector_flags_injected_outliers():
    spec = labelled_detector_spec()
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


def test_an_anomaly_key_labelled_on_some_rows_trains_on_all_and_is_scored_on_the_labelled():
    """Labels exist for the outliers and a few normal rows only (someone reviewed the alarms):
    the detector, fitted on features alone, trains on every row, not on the anomaly-rich
    labelled few (a flag rate of 20 % for a 5 % contamination); metrics and baselines use the
    labelled holdout rows; a holdout without labels says so."""
    spec = labelled_detector_spec()
    frame, outliers = anomaly_data()
    reviewed = np.zeros(frame.height, dtype=bool)
    reviewed[outliers] = True
    reviewed[::10] = True
    partial = frame.with_columns(pl.when(pl.Series(reviewed)).then(pl.col("y")).alias("y"))
    ts = F.build_training_set(spec, partial)
    assert ts.height == frame.height  # no row dropped for its missing label
    fitted = fit_key(spec, ts, ["value"])
    assert fitted.metrics["recall"] == 1.0 and fitted.metrics["precision"] > 0.5
    holdout = F.split(ts)[F.HOLDOUT]
    labelled = holdout.filter(pl.col("y").is_not_null())
    on_all, on_labelled = (evaluate(spec, fitted.model, ["value"], h) for h in (holdout, labelled))
    label_metrics = ("accuracy", "precision", "recall", "f1")
    assert [on_all[m] for m in label_metrics] == [on_labelled[m] for m in label_metrics]
    assert on_all["flag_rate"] < 0.2 < on_labelled["flag_rate"]  # the flag rate is of every holdout row
    notes: dict[str, str] = {}
    unlabelled = holdout.with_columns(pl.lit(None, dtype=pl.Int8).alias("y"))
    evaluate(spec, fitted.model, ["value"], unlabelled, notes=notes)
    assert notes["f1"] == f"none of the {holdout.height} holdout rows has a label"


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


IFOREST = {
    "name": "iforest",
    "estimator": "sklearn.ensemble.IsolationForest",
    "params": {"contamination": 0.05, "random_state": 0, "n_estimators": 50},
}
OVERFIT_SVM = {"name": "overfit_svm", "estimator": "sklearn.svm.OneClassSVM", "params": {"nu": 0.05, "gamma": 50.0}}
AUTO_IFOREST = {"name": "auto", "estimator": "sklearn.ensemble.IsolationForest", "params": {"random_state": 0}}


def unlabelled_spec(candidates, metric="flag_rate"):
    return make_spec(
        regression_body(task="anomaly", target=None, features=["value", "other"], metric=metric, candidates=candidates)
    )


def unlabelled_data(n: int = 240, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"value": rng.normal(size=n), "other": rng.normal(size=n)})


@pytest.mark.parametrize("order", [(OVERFIT_SVM, IFOREST), (IFOREST, OVERFIT_SVM)])
def test_without_labels_the_detector_closest_to_its_configured_flag_rate_wins(order):
    spec = unlabelled_spec(list(order))
    ts = F.build_training_set(spec, unlabelled_data())
    fitted = fit_key(spec, ts, ["value", "other"])
    # both are configured to flag 5 %; the overfitted SVM flags nearly every unseen row
    assert fitted.candidate == "iforest"
    assert fitted.candidate_scores["overfit_svm"] > 0.5
    assert abs(fitted.candidate_scores["iforest"] - 0.05) < 0.05
    holdout = F.split(ts)[F.HOLDOUT]
    flags = predict("anomaly", fitted.model, holdout.select("value", "other").to_numpy())
    assert fitted.metrics["flag_rate"] == pytest.approx(flags.mean())
    assert np.isnan(fitted.metrics["score_stability"])  # needs a champion


def test_without_labels_a_detector_that_declares_no_rate_comes_last():
    spec = unlabelled_spec([AUTO_IFOREST, IFOREST], metric="score_stability")
    ts = F.build_training_set(spec, unlabelled_data())
    assert fit_key(spec, ts, ["value", "other"]).candidate == "iforest"
    # none declares a rate: the first that fits
    only_auto = unlabelled_spec([AUTO_IFOREST, {**AUTO_IFOREST, "name": "auto2"}])
    assert fit_key(only_auto, ts, ["value", "other"]).candidate == "auto"


def test_score_stability_of_a_detector_with_itself_and_another():
    spec = unlabelled_spec([IFOREST])
    ts = F.build_training_set(spec, unlabelled_data())
    holdout = F.split(ts)[F.HOLDOUT]
    cols = ["value", "other"]
    a = fit_key(spec, ts, cols).model
    assert stability(a, cols, a, cols, holdout) == pytest.approx(1.0)
    other = fit_key(unlabelled_spec([{**IFOREST, "params": {**IFOREST["params"], "random_state": 7}}]), ts, cols)
    # another seed ranks the rows almost, not exactly, alike
    assert 0.5 < stability(a, cols, other.model, cols, holdout) < 1.0


def test_non_negative_target_clips_predictions_before_scoring():
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0, 10, size=80))
    y = np.maximum(0.0, 5.0 - x) + 0.01 * rng.random(80)  # demand that runs out; a line goes below 0
    frame = pl.DataFrame({"x1": x, "x2": np.zeros(80), "y": y, "day": list(range(80))})
    body = regression_body(candidates=[LINEAR], metric="mae", time_column="day", frequency="period")
    raw_spec, spec = make_spec(body), make_spec({**body, "non_negative_target": True})
    ts = F.build_training_set(spec, frame)
    holdout = F.split(ts)[F.HOLDOUT]
    fitted = fit_key(spec, ts, ["x1", "x2"])
    raw = predict("regression", fitted.model, holdout.select("x1", "x2").to_numpy())
    assert (raw < 0).any()  # the line does go negative on the holdout
    clipped = clip_predictions(spec, raw)
    assert clipped.min() == 0.0
    actual = holdout["y"].to_numpy()
    assert evaluate(spec, fitted.model, ["x1", "x2"], holdout)["mae"] == pytest.approx(np.abs(clipped - actual).mean())
    assert evaluate(raw_spec, fitted.model, ["x1", "x2"], holdout)["mae"] == pytest.approx(np.abs(raw - actual).mean())
