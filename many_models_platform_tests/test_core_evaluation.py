"""Honest evaluation without stores: stable splits, selection on validation, zero-safe and
undefined metrics, baselines and skill, the rows a champion may be compared on, and the
promotion rule's answers to all of these."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
from conftest_core import forecast_body, make_spec, regression_body

from many_models_platform.core import features as F
from many_models_platform.core.baselines import baselines, best_baseline, chance_metrics, comparable_rows
from many_models_platform.core.metrics import explain_undefined, label_metrics, mase_scale, regression_metrics, skill
from many_models_platform.core.modeling import evaluate, fit_key, training_scale
from many_models_platform.stages.promoted_model import decide

DUMMY = {"name": "dummy", "estimator": "sklearn.dummy.DummyRegressor"}
LINEAR = {"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}


# --- stable splits ---------------------------------------------------------------------------------
def identities(frame: pl.DataFrame) -> list[tuple]:
    return [tuple(r) for r in frame.select("y", "x1", "x2").iter_rows()]


@pytest.mark.parametrize("fraction", [0.02, 0.2, 0.5])
def test_appended_rows_never_move_a_training_row_into_a_later_holdout(fraction):
    """Property, over many random histories: rerun the split after each batch of appended rows
    (in any order, with repeated values); no holdout row of any run was a training row of an
    earlier run, so no champion is ever scored on a row it was fitted on."""
    spec = make_spec(regression_body(holdout={"fraction": fraction}, min_rows=2))
    for seed in range(30):
        rng = np.random.default_rng(seed)
        rows = pl.DataFrame(
            {"x1": rng.integers(0, 5, 12).astype(float), "x2": rng.normal(size=12), "y": rng.normal(size=12)}
        )
        trained: set[tuple] = set()  # every row any earlier model was fitted on
        for _ in range(6):
            batch = pl.DataFrame(
                {"x1": rng.integers(0, 5, 8).astype(float), "x2": rng.normal(size=8), "y": rng.normal(size=8)}
            )
            rows = pl.concat([rows, batch, rows.sample(2, seed=seed)])  # some values repeat
            rows = rows.sample(fraction=1.0, shuffle=True, seed=seed)  # and the order changes
            ts = F.build_training_set(spec, rows)
            parts = F.split(ts)
            held_out = set(identities(parts[F.HOLDOUT]))
            assert held_out and not held_out & trained, (seed, held_out & trained)
            trained |= set(identities(parts[F.TRAIN]))


def test_row_hashes_depend_on_values_only():
    frame = pl.DataFrame({"a": [1.0, 0.0, None, 2.5], "b": ["x", "y", None, "x"]})
    h = F.row_hashes(frame, ["a", "b"])
    assert len(set(h.tolist())) == 4
    assert (F.row_hashes(frame.reverse(), ["a", "b"])[::-1] == h).all()
    # -0.0 is 0.0, NaN is a null; a value change changes the hash
    same = frame.with_columns(pl.Series("a", [1.0, -0.0, float("nan"), 2.5]))
    assert (F.row_hashes(same, ["a", "b"]) == h).all()
    assert F.row_hashes(frame.with_columns(pl.lit(9.0).alias("a")), ["a", "b"])[0] != h[0]


# --- selection on validation -------------------------------------------------------------------------
def drifting(n: int = 100) -> pl.DataFrame:
    """y = 3 x before the holdout (the latest 20 %); in the holdout the relation is gone and y sits
    at the training mean, where a constant predictor is right and the line is far off."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=n)
    y = 3 * x + 0.1 * rng.normal(size=n)
    holdout = np.arange(n) >= n - 20
    y[holdout] = y[~holdout].mean()
    days = pl.date_range(dt.date(2024, 1, 1), dt.date(2024, 1, 1) + dt.timedelta(days=n - 1), "1d", eager=True)
    return pl.DataFrame({"day": days, "x1": x, "x2": np.zeros(n), "y": y})


@pytest.mark.parametrize("order", [(DUMMY, LINEAR), (LINEAR, DUMMY)])
def test_the_winner_is_chosen_on_validation_even_when_the_holdout_would_choose_otherwise(order):
    spec = make_spec(
        regression_body(candidates=list(order), time_column="day", calendar_features=False, holdout={"fraction": 0.2})
    )
    ts = F.build_training_set(spec, drifting())
    fitted = fit_key(spec, ts, ["x1", "x2"])
    assert fitted.candidate == "linear"  # best on the validation rows, carved before the holdout
    assert fitted.candidate_scores["linear"] < fitted.candidate_scores["dummy"]
    assert fitted.selection == "best rmse on 1 validation window(s) of 16 rows"
    # the holdout alone would have picked the constant predictor: selecting on it is what changed
    only_dummy = spec.model_copy(update={"candidates": [c for c in spec.candidates if c.name == "dummy"]})
    assert fit_key(only_dummy, ts, ["x1", "x2"]).metrics["rmse"] < fitted.metrics["rmse"]
    # the validation rows are the latest 20 % of the training part, never the holdout
    assert fitted.rows_validation == 16 and fitted.rows_train == 80


def test_rolling_backtest_windows_end_at_the_holdout():
    spec = make_spec(forecast_body(lags=[], validation={"windows": 3, "periods": 4}))
    weeks = pl.date_range(dt.date(2024, 1, 1), dt.date(2024, 1, 1) + dt.timedelta(weeks=39), "1w", eager=True)
    ts = F.build_training_set(
        spec, pl.DataFrame({"week_start": weeks, "price": np.arange(40.0), "quantity": np.arange(40.0) + 1})
    )
    train = F.split(ts)[F.TRAIN]
    folds = F.validation_folds(spec, train, F.key_period(spec, ts["week_start"]))
    assert [f.validate.height for f in folds] == [4, 4, 4]
    ends = [f.validate["week_start"].max() for f in folds]
    assert ends[-1] == train["week_start"].max() and ends == sorted(ends)
    for fold in folds:  # each window is fitted only on what came before it
        assert fold.fit["week_start"].max() < fold.validate["week_start"].min()


def test_a_validation_window_longer_than_the_shortest_lag_is_refused():
    with pytest.raises(ValueError, match=r"every lag must be >= validation\.periods"):
        make_spec(forecast_body(lags=[4, 5], validation={"periods": 6}))


def test_refit_needs_a_time_column_and_defaults_to_forecasts_only():
    assert make_spec(forecast_body()).refits and not make_spec(regression_body()).refits
    with pytest.raises(ValueError, match="'refit: true' needs a 'time_column'"):
        make_spec(regression_body(refit=True))


# --- metrics -------------------------------------------------------------------------------------------
def test_zero_safe_metrics_hand_computed():
    # actual [0, 2, 4], predicted [1, 2, 2]: |e| = 1, 0, 2
    m = regression_metrics(np.array([0.0, 2.0, 4.0]), np.array([1.0, 2.0, 2.0]), scale=2.0)
    assert math.isnan(m["mape"])  # a zero actual: undefined, not the mean of the other two
    assert m["wape"] == pytest.approx(3 / 6)
    assert m["smape"] == pytest.approx((2 * 1 / 1 + 0 + 2 * 2 / 6) / 3)
    assert m["mase"] == pytest.approx((3 / 3) / 2.0)
    # both zero is no error; a forecast of 50 over actual zeros is an error sMAPE and WAPE see
    both = regression_metrics(np.array([0.0, 0.0, 0.0, 0.0, 10.0]), np.array([0.0, 50.0, 50.0, 50.0, 50.0]))
    assert both["smape"] == pytest.approx((0 + 2 + 2 + 2 + 2 * 40 / 60) / 5)
    assert both["wape"] == pytest.approx(190 / 10)
    assert math.isnan(both["mase"])  # no scale given


def test_mase_scale_is_the_in_sample_seasonal_naive_error():
    y = np.array([1.0, 5.0, 2.0, 6.0, 3.0, 8.0])
    assert mase_scale(y, 2) == pytest.approx(np.mean([1, 1, 1, 2]))
    assert mase_scale(y, 1) == pytest.approx(np.mean([4, 3, 4, 3, 5]))
    assert math.isnan(mase_scale(y[:2], 2))


def test_weekly_mase_scales_by_the_52_week_naive_error_of_the_training_part():
    spec = make_spec(forecast_body(lags=[], metric="mase"))
    n = 120
    weeks = pl.date_range(dt.date(2022, 1, 3), dt.date(2022, 1, 3) + dt.timedelta(weeks=n - 1), "1w", eager=True)
    y = 100 + 10 * np.sin(2 * np.pi * np.arange(n) / 52) + np.arange(n) * 0.5
    ts = F.build_training_set(spec, pl.DataFrame({"week_start": weeks, "price": np.ones(n), "quantity": y}))
    train = F.split(ts)[F.TRAIN]
    assert training_scale(spec, train, "weekly") == pytest.approx(26.0)  # the trend: 52 weeks x 0.5
    assert training_scale(spec, train, None) == pytest.approx(np.mean(np.abs(np.diff(train["quantity"].to_numpy()))))


def test_label_metrics_are_undefined_not_zero_without_a_positive():
    # a perfect detector on a holdout without anomalies: nothing to find, nothing flagged
    m = label_metrics(np.zeros(5, dtype=int), np.zeros(5, dtype=int))
    assert m["accuracy"] == 1.0
    assert all(math.isnan(m[k]) for k in ("precision", "recall", "f1"))
    notes = explain_undefined("anomaly", np.zeros(5, dtype=int), np.zeros(5, dtype=int), m)
    assert notes["f1"] == "the holdout holds no positive (class 1)"
    assert notes["precision"] == "nothing in the holdout was predicted positive (class 1)"
    # flags where nothing is anomalous: precision 0, recall and F1 still undefined
    m = label_metrics(np.zeros(4, dtype=int), np.array([1, 0, 0, 0]))
    assert m["precision"] == 0.0 and math.isnan(m["recall"]) and math.isnan(m["f1"])


def test_skill_direction():
    assert skill(0.5, 1.0, "wape") == pytest.approx(0.5)
    assert skill(1.5, 1.0, "rmse") == pytest.approx(-0.5)
    assert skill(0.8, 0.6, "f1") == pytest.approx(0.2)
    assert skill(math.nan, 1.0, "rmse") is None and skill(0.5, None, "rmse") is None
    assert skill(0.5, 0.0, "mae") is None  # a perfect baseline leaves no ratio


# --- baselines ---------------------------------------------------------------------------------------------
def weekly(n: int, y: np.ndarray) -> pl.DataFrame:
    weeks = pl.date_range(dt.date(2022, 1, 3), dt.date(2022, 1, 3) + dt.timedelta(weeks=n - 1), "1w", eager=True)
    return pl.DataFrame({"week_start": weeks, "price": np.ones(n), "quantity": y})


def test_forecast_baselines_naive_and_seasonal_naive_by_hand():
    spec = make_spec(forecast_body(lags=[], metric="mae"))
    n = 60  # 56 training weeks, 4 holdout weeks
    y = np.arange(n, dtype=float)
    y[52:56] = [500.0, 600.0, 700.0, 800.0]  # the last 4 training weeks
    ts = F.build_training_set(spec, weekly(n, y))
    train, holdout = F.split(ts)[F.TRAIN], F.split(ts)[F.HOLDOUT]
    period = F.key_period(spec, ts["week_start"])
    scored = baselines(spec, train, holdout, period, scale=None)
    actual = holdout["quantity"].to_numpy()  # 56, 57, 58, 59
    assert scored["naive"]["mae"] == pytest.approx(np.mean(np.abs(actual - 800.0)))
    # holdout week 57 (h = 1) takes week 57 - 52 = 5 of the training part, and so on
    assert scored["seasonal_naive"]["mae"] == pytest.approx(np.mean(np.abs(actual - np.array([4.0, 5.0, 6.0, 7.0]))))
    assert best_baseline("mae", scored)[0] == "seasonal_naive"
    # less than a season of history: no seasonal naive
    short = F.build_training_set(spec, weekly(30, np.arange(30.0)))
    assert set(baselines(spec, *(F.split(short)[s] for s in (F.TRAIN, F.HOLDOUT)), period, None)) == {"naive"}


def test_regression_classification_and_anomaly_baselines():
    reg = make_spec(regression_body())
    train = pl.DataFrame({"y": [1.0, 2.0, 3.0], "x1": [0.0] * 3, "x2": [0.0] * 3})
    holdout = pl.DataFrame({"y": [2.0, 4.0], "x1": [0.0] * 2, "x2": [0.0] * 2})
    assert baselines(reg, train, holdout, None, None)["mean"]["mae"] == pytest.approx(1.0)

    clf = make_spec(regression_body(task="classification", metric="f1", target="y"))
    train = pl.DataFrame({"y": [0, 0, 0, 1]})
    holdout = pl.DataFrame({"y": [0, 1, 1, 0]})
    scored = baselines(clf, train, holdout, None, None)
    assert scored["majority"]["accuracy"] == 0.5 and scored["majority"]["f1"] == 0.0
    # guessing 1 a quarter of the time: precision = holdout share 0.5, recall 0.25
    assert scored["chance"]["f1"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert scored["chance"]["accuracy"] == pytest.approx(0.5 * 0.75 + 0.5 * 0.25)
    assert best_baseline("f1", scored)[0] == "chance"

    det = make_spec(regression_body(task="anomaly", metric="f1", target="y"))
    scored = baselines(det, pl.DataFrame({"y": [0] * 9 + [1]}), pl.DataFrame({"y": [0, 0, 0, 1]}), None, None, 0.2)
    assert math.isnan(scored["flag_nothing"]["precision"]) and scored["flag_nothing"]["f1"] == 0.0
    assert scored["chance_at_rate"] == pytest.approx(chance_metrics(np.array([0, 0, 0, 1]), {1: 0.2, 0: 0.8}))
    assert scored["chance_at_rate"]["f1"] == pytest.approx(2 * 0.25 * 0.2 / 0.45)


# --- the rows a champion is compared on --------------------------------------------------------------------
def test_champion_is_compared_only_on_rows_after_its_cutoff():
    spec = make_spec(forecast_body(lags=[]))
    holdout = weekly(6, np.arange(6.0))  # 2022-01-03 ... 2022-02-07
    rows, said = comparable_rows(spec, holdout, {"version": 3, "cutoff": "2022-01-24"}, "time")
    assert rows["week_start"].to_list() == [dt.date(2022, 1, 31), dt.date(2022, 2, 7)]
    assert said == "compared on 2 of 6 holdout rows after 2022-01-24 (champion v3)"
    none, said = comparable_rows(spec, holdout, {"version": 3, "cutoff": "2022-02-07"}, "time")
    assert none is None and said.startswith("not comparable: champion v3 was fitted through 2022-02-07")
    none, said = comparable_rows(spec, holdout, {"version": 2, "cutoff": None}, "time")
    assert none is None and "records no training cutoff" in said


def test_a_hash_split_champion_is_comparable_only_when_drawn_the_same_way():
    spec = make_spec(regression_body())
    split = F.split_descriptor(spec)
    holdout = pl.DataFrame({"y": [1.0, 2.0]})
    rows, said = comparable_rows(spec, holdout, {"version": 1, "split": split}, split)
    assert rows.height == 2 and said.startswith("compared on all 2 holdout rows")
    other = F.split_descriptor(make_spec(regression_body(holdout={"fraction": 0.1})))
    none, said = comparable_rows(spec, holdout, {"version": 1, "split": other}, split)
    assert none is None and said.startswith("not comparable: champion v1's holdout was drawn differently")


# --- the promotion rule ----------------------------------------------------------------------------------------
def report(value=0.3, baseline=0.5, **extra):
    return {
        "metrics": {"wape": value},
        "rows_train": 100,
        "rows_holdout": 8,
        "baseline_name": "seasonal_naive",
        "baseline_metrics": {"wape": baseline},
        "champion_version": None,
        "champion_metrics": None,
        **extra,
    }


@pytest.mark.parametrize(
    ("rule", "rep", "decision", "reason"),
    [
        ({}, report(), "promoted", "first model for this key"),
        (
            {"beat_baseline": True},
            report(0.6),
            "rejected",
            "does not beat the baseline: wape 0.6 vs seasonal_naive 0.5",
        ),
        # a tie passes: the candidate may be the baseline
        ({"beat_baseline": True}, report(0.5), "promoted", "first model for this key"),
        ({}, report(0.6), "promoted", "first model for this key"),  # off by default: skill shows, no rejection
        (
            {"beat_baseline": True},
            report(0.6, math.nan),
            "promoted",
            "first model for this key (baseline check skipped: wape of seasonal_naive is undefined on the holdout)",
        ),
        (
            {},
            report(math.nan, undefined={"wape": "every holdout actual is 0"}),
            "rejected",
            "wape is undefined on the holdout: every holdout actual is 0",
        ),
        (
            {},
            report(champion_version=4, comparison="not comparable: champion v4 records no training cutoff"),
            "promoted",
            "not comparable: champion v4 records no training cutoff; promoted on the rule alone",
        ),
        (
            {},
            report(
                0.3,
                champion_version=4,
                champion_metrics={"wape": 0.25},
                comparison_metrics={"wape": 0.2},
                comparison_rows=3,
                comparison="compared on 3 of 8 holdout rows after 2024-01-01 (champion v4)",
            ),
            "promoted",
            "beats champion v4: wape 0.2 vs 0.25 on 3 rows",  # on the same rows, not the whole holdout
        ),
        (
            {},
            report(0.2, champion_version=4, champion_metrics={"wape": 0.25}, comparison_metrics={"wape": 0.3}),
            "kept_champion",
            "champion v4 stays: wape 0.3 vs 0.25",
        ),
    ],
)
def test_rule_with_baselines_undefined_metrics_and_comparisons(rule, rep, decision, reason):
    spec = make_spec(forecast_body(metric="wape", promotion=rule))
    assert decide(spec, rep) == (decision, reason)


def test_evaluate_explains_undefined_metrics():
    spec = make_spec(regression_body(candidates=[LINEAR], metric="mape"))
    frame = pl.DataFrame({"x1": [1.0, 2.0, 3.0, 4.0], "x2": [0.0] * 4, "y": [0.0, 2.0, 4.0, 6.0]})
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(frame.select("x1", "x2").to_numpy(), frame["y"].to_numpy())
    notes: dict[str, str] = {}
    metrics = evaluate(spec, model, ["x1", "x2"], frame, None, notes)
    assert math.isnan(metrics["mape"]) and metrics["wape"] == pytest.approx(0.0, abs=1e-9)
    assert notes["mape"].startswith("1 of 4 holdout actuals are 0")
    assert "mase" in notes  # no scale was given
