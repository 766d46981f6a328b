"""Per-key features and the holdout split: no leakage, honest reasons, and future rows that fit the model."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from conftest_core import forecast_body, make_spec, regression_body

from many_models_platform.core import features as F
from many_models_platform.core.generators import (
    generate_group_regression,
    generate_retail_demand,
    generate_sensor_anomaly,
)
from many_models_platform.core.spec import load_config

ROWS = 110
CONFIG = load_config()
RETAIL = CONFIG.use_case("retail_demand")  # lags 8..52, holdout 8 periods, horizon 8, min_rows 40
GROUP = CONFIG.use_case("group_regression")  # no time column, holdout fraction 0.2, min_rows 30
SENSOR = CONFIG.use_case("sensor_anomaly")  # hourly, holdout fraction 0.25, min_rows 48


@pytest.fixture(scope="module")
def retail():
    return generate_retail_demand(keys=3, rows=ROWS, seed=1, horizon=RETAIL.horizon)


def _keys(frame: pl.DataFrame, cols=("store", "brand")) -> list[pl.DataFrame]:
    return frame.partition_by(list(cols), maintain_order=True)


def test_holdout_is_exactly_the_last_periods_and_follows_train(retail):
    for bronze in _keys(retail.history):
        shuffled = bronze.sample(fraction=1.0, shuffle=True, seed=3)  # input order is irrelevant
        ts = F.build_training_set(RETAIL, shuffled)
        holdout = ts.filter(pl.col(F.SPLIT) == F.HOLDOUT)
        train = ts.filter(pl.col(F.SPLIT) == F.TRAIN)
        last_weeks = bronze["week_start"].unique().sort().tail(RETAIL.holdout.periods).to_list()
        assert holdout["week_start"].sort().to_list() == last_weeks
        assert train["week_start"].max() < holdout["week_start"].min()
        # the first max(lags) periods have no lag_52 and are dropped; every other row is kept once
        assert ts.height == ROWS - max(RETAIL.lags)
        assert ts["week_start"].n_unique() == ts.height
        assert train.height == ROWS - max(RETAIL.lags) - RETAIL.holdout.periods
        assert ts["week_start"].is_sorted()


def test_lag_features_equal_earlier_targets_and_never_reveal_holdout_actuals(retail):
    for bronze in _keys(retail.history):
        target_at = dict(zip(bronze["week_start"].to_list(), bronze["quantity"].to_list(), strict=True))
        ts = F.build_training_set(RETAIL, bronze)
        first_holdout = ts.filter(pl.col(F.SPLIT) == F.HOLDOUT)["week_start"].min()
        for row in ts.iter_rows(named=True):
            for lag in RETAIL.lags:
                source_week = row["week_start"] - timedelta(weeks=lag)
                assert row[f"lag_{lag}"] == target_at[source_week]
                if row[F.SPLIT] == F.HOLDOUT:
                    assert source_week < first_holdout


def test_training_set_columns_and_trend_index(retail):
    bronze = _keys(retail.history)[0]
    ts = F.build_training_set(RETAIL, bronze)
    expected_features = F.feature_columns(RETAIL, pl.Date, "weekly")
    assert ts.columns == ["week_start", "quantity", *expected_features, F.SPLIT]
    # weekly dates: calendar month and a trend index; no week number, hour or day of week
    assert expected_features[-2:] == ["cal_month", F.T_INDEX]
    assert not {"cal_week", "cal_hour", "cal_dayofweek"} & set(expected_features)
    first_week = bronze["week_start"].min()
    weeks_since_start = [(w - first_week).days / 7 for w in ts["week_start"]]
    assert ts[F.T_INDEX].to_list() == weeks_since_start
    assert ts["cal_month"].to_list() == [float(w.month) for w in ts["week_start"]]
    for c in expected_features:
        assert ts[c].dtype == pl.Float64
        assert ts[c].null_count() == 0


def test_rows_with_missing_target_are_dropped_before_counting():
    bronze = _keys(generate_retail_demand(keys=1, rows=ROWS, seed=2).history)[0]
    with_gaps = bronze.sort("week_start").with_columns(
        pl.when(pl.int_range(0, pl.len()) < 5).then(None).otherwise(pl.col("quantity")).alias("quantity")
    )
    ts = F.build_training_set(RETAIL, with_gaps)
    assert ts["quantity"].null_count() == 0
    # 5 unlabelled rows go first, then the lag warm-up of max(lags) rows
    assert ts.height == ROWS - 5 - max(RETAIL.lags)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b.head(RETAIL.min_rows - 1), f"too few rows: {RETAIL.min_rows - 1} < min_rows {RETAIL.min_rows}"),
        (lambda b: b.head(70), "too few rows after features and split"),  # 70 rows, but 52 are lag warm-up
        (lambda b: b.with_columns(pl.lit(5.0).alias("quantity")), "constant target"),
        (lambda b: b.with_columns(pl.lit(None, dtype=pl.Float64).alias("price")), "all-NaN features: ['price']"),
        (lambda b: b.with_columns(pl.lit(None, dtype=pl.String).alias("deal")), "all-NaN features: ['deal']"),
        (lambda b: b.with_columns(pl.lit("N/A").alias("deal")), "['deal']: no row of this key (110) has a value"),
    ],
)
def test_unusable_keys_raise_key_data_error_with_reason(retail, mutate, reason):
    bronze = _keys(retail.history)[0]
    with pytest.raises(F.KeyDataError) as err:
        F.build_training_set(RETAIL, mutate(bronze))
    assert reason in str(err.value)


def test_all_nan_float_feature_is_reported(retail):
    bronze = _keys(retail.history)[0].with_columns(pl.lit(float("nan")).alias("price"))
    with pytest.raises(F.KeyDataError, match="all-NaN"):
        F.build_training_set(RETAIL, bronze)


def test_too_few_periods_for_the_holdout():
    spec = make_spec(forecast_body(lags=[], holdout={"periods": 4}, min_rows=3))
    week = date(2024, 1, 1)
    bronze = pl.DataFrame(
        {
            "week_start": [week] * 3 + [week + timedelta(weeks=1)] * 3,
            "quantity": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "price": [1.0] * 6,
        }
    )
    with pytest.raises(F.KeyDataError, match="no training data before the 4-period holdout"):
        F.build_training_set(spec, bronze)


def test_a_key_whose_rows_are_mostly_off_its_grid_says_so_where_lags_or_the_holdout_fail():
    """Twice-monthly rows (the 1st and the 15th) have a 14-day step and most rows off it: the
    lag failure said 'shorten lags', and the holdout failure nothing, of the rows taken."""
    days = [date(2023, m, d) for m in range(1, 13) for d in (1, 15)]
    bronze = pl.DataFrame({"week_start": days, "quantity": [float(i) for i in range(24)], "price": [1.0] * 24})
    with pytest.raises(F.KeyDataError) as lags:
        F.build_training_set(make_spec(forecast_body(lags=[4, 5], holdout={"periods": 4})), bronze)
    assert "most of its rows are off the key's grid" in str(lags.value) and "shorten" not in str(lags.value)
    assert "rows dropped: time off the key's grid 20" in str(lags.value)
    with pytest.raises(F.KeyDataError) as holdout:
        F.build_training_set(make_spec(forecast_body(lags=[], holdout={"periods": 4}, min_rows=2)), bronze)
    assert "no training data before the 4-period holdout; rows dropped: time off the key's grid 20" in str(
        holdout.value
    )


def test_classification_with_one_class_in_train_is_rejected():
    spec = make_spec(
        regression_body(
            task="classification",
            metric="f1",
            time_column="day",
            candidates=[{"name": "tree", "estimator": "sklearn.tree.DecisionTreeClassifier"}],
        )
    )
    n = 40
    bronze = pl.DataFrame(
        {
            "day": pl.date_range(date(2024, 1, 1), date(2024, 1, 1) + timedelta(days=n - 1), "1d", eager=True),
            "x1": np.arange(n, dtype=float),
            "x2": np.ones(n),
            "y": [0] * (n - 5) + [1] * 5,  # the only positives fall in the last 25% (the holdout)
        }
    )
    with pytest.raises(F.KeyDataError, match=r"single class: 'y' is 0 on all \d+ training rows \(the other classes"):
        F.build_training_set(spec, bronze)
    with pytest.raises(F.KeyDataError, match="single class: 'y' is 0 on every row; a classifier needs two"):
        F.build_training_set(spec, bronze.with_columns(y=pl.lit(0)))


def test_fraction_split_without_time_column_is_deterministic_and_drawn_by_row_hash():
    bronze = generate_group_regression(keys=1, rows=50, seed=4).history
    first = F.build_training_set(GROUP, bronze)
    second = F.build_training_set(GROUP, bronze.reverse())  # row order does not matter, values do
    assert first.sort(F.ROW_HASH).equals(second.sort(F.ROW_HASH))
    # each row is held out when its hash falls below the fraction: about 20 %, not exactly
    expected = F.hash_unit(first[F.ROW_HASH].to_numpy()) < GROUP.holdout.fraction
    assert ((first[F.SPLIT] == F.HOLDOUT).to_numpy() == expected).all()
    assert 0 < expected.sum() < 25
    # every input row is in exactly one split, unchanged
    cols = ["y", "x1", "x2", "x3", "x4", "x5"]
    assert first.select(cols).sort(cols).equals(bronze.select(cols).sort(cols))
    assert first.columns == ["y", "x1", "x2", "x3", "x4", "x5", F.SPLIT, F.ROW_HASH]


def test_fraction_split_with_time_column_holds_out_the_latest_rows():
    bronze = generate_sensor_anomaly(keys=1, rows=80, seed=2).history
    spec = SENSOR.model_copy(update={"calendar_features": True})  # the shipped one turns them off
    ts = F.build_training_set(spec, bronze.reverse())
    holdout = ts.filter(pl.col(F.SPLIT) == F.HOLDOUT)
    train = ts.filter(pl.col(F.SPLIT) == F.TRAIN)
    assert holdout.height == round(80 * SENSOR.holdout.fraction)
    assert train["timestamp"].max() < holdout["timestamp"].min()
    assert holdout["timestamp"].to_list() == bronze["timestamp"].sort().tail(holdout.height).to_list()
    # hourly data: day-of-week and hour features; no trend index outside forecasting
    assert {"cal_dayofweek", "cal_hour"} <= set(ts.columns)
    assert F.T_INDEX not in ts.columns
    assert ts["cal_hour"].to_list() == [float(t.hour) for t in ts["timestamp"]]


def _expected_future_weeks(bronze: pl.DataFrame, horizon: int) -> list[date]:
    last = bronze["week_start"].max()
    return [last + timedelta(weeks=i) for i in range(1, horizon + 1)]


def test_future_frame_carries_exogenous_values_forward_without_scoring_data(retail):
    for bronze in _keys(retail.history):
        shuffled = bronze.sample(fraction=1.0, shuffle=True, seed=9)
        future = F.future_frame(RETAIL, shuffled, None, origin=bronze["week_start"].min())
        assert future.height == RETAIL.horizon
        assert future["week_start"].to_list() == _expected_future_weeks(bronze, RETAIL.horizon)
        last = bronze.sort("week_start").tail(1)
        for c in RETAIL.features:
            assert future[c].to_list() == [float(last[c][0])] * RETAIL.horizon
        assert future["quantity"].null_count() == RETAIL.horizon


def test_future_frame_uses_given_future_exogenous_values(retail):
    histories = _keys(retail.history)
    futures = _keys(retail.future)
    assert len(histories) == len(futures)
    for bronze, exog in zip(histories, futures, strict=True):
        future = F.future_frame(RETAIL, bronze, exog.reverse(), origin=bronze["week_start"].min())
        assert future["week_start"].to_list() == exog["week_start"].sort().to_list()
        expected = exog.sort("week_start")
        for c in RETAIL.features:
            assert future[c].to_list() == expected[c].cast(pl.Float64).to_list()


def test_future_frame_fills_weeks_missing_from_scoring_data(retail):
    bronze, exog = _keys(retail.history)[0], _keys(retail.future)[0]
    partial = exog.sort("week_start").head(3)
    future = F.future_frame(RETAIL, bronze, partial, origin=bronze["week_start"].min())
    assert future.height == RETAIL.horizon
    last_price = bronze.sort("week_start")["price"][-1]
    assert future["price"].to_list() == [*partial["price"].to_list(), *[last_price] * (RETAIL.horizon - 3)]
    # what stood in is counted: the weeks without a row, and a value missing in a row
    assert F.carried_forward(RETAIL, partial, future["week_start"]) == (RETAIL.horizon - 3, 0)
    gap = partial.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("price")).alias("price")
    )
    assert F.carried_forward(RETAIL, gap, future["week_start"]) == (RETAIL.horizon - 3, 1)


def test_future_frame_names_text_in_a_numeric_feature_of_the_scoring_rows(retail):
    """'ten' in a scoring file's price fails the key with the feature-holds-text reason, not
    polars' 'conversion from str to f64' cast error."""
    bronze, exog = _keys(retail.history)[0], _keys(retail.future)[0]
    texty = exog.with_columns(pl.col("price").cast(pl.Utf8)).with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("ten")).otherwise(pl.col("price")).alias("price")
    )
    with pytest.raises(
        F.KeyDataError, match=r"^the scoring_source rows of this key: feature 'price' holds text, e.g. 'ten'"
    ):
        F.future_frame(RETAIL, bronze, texty, origin=bronze["week_start"].min())


def test_future_frame_rows_have_every_model_feature(retail):
    bronze = _keys(retail.history)[0]
    target_at = dict(zip(bronze["week_start"].to_list(), bronze["quantity"].to_list(), strict=True))
    ts = F.build_training_set(RETAIL, bronze)
    model_features = [c for c in ts.columns if c not in ("week_start", "quantity", F.SPLIT)]
    future = F.future_frame(RETAIL, bronze, None, origin=bronze["week_start"].min())
    for c in model_features:
        assert future[c].null_count() == 0, c
    # lags >= horizon, so every future lag is an observed target from the history
    for row in future.iter_rows(named=True):
        for lag in RETAIL.lags:
            assert row[f"lag_{lag}"] == target_at[row["week_start"] - timedelta(weeks=lag)]
    # the trend index continues the training numbering
    assert future[F.T_INDEX].to_list() == [float(ROWS - 1 + i) for i in range(1, RETAIL.horizon + 1)]
    assert ts[F.T_INDEX].max() == ROWS - 1
    assert F.to_matrix(future, model_features).shape == (RETAIL.horizon, len(model_features))


def test_future_frame_on_hourly_history():
    spec = make_spec(
        forecast_body(time_column="ts", keys=["k"], lags=[3], holdout={"periods": 2}, horizon=3, target="y")
    )
    start = datetime(2025, 1, 1, 22)
    history = pl.DataFrame(
        {
            "ts": pl.datetime_range(start, start + timedelta(hours=9), "1h", eager=True, time_unit="us"),
            "price": np.arange(10, dtype=float),
            "y": np.arange(10, dtype=float) * 2,
        }
    )
    future = F.future_frame(spec, history, None, origin=start)
    assert future["ts"].to_list() == [start + timedelta(hours=h) for h in (10, 11, 12)]
    assert future["cal_hour"].to_list() == [8.0, 9.0, 10.0]
    assert future["lag_3"].to_list() == [14.0, 16.0, 18.0]


def test_future_frame_needs_two_periods():
    spec = make_spec(forecast_body())
    history = pl.DataFrame({"week_start": [date(2024, 1, 1)], "price": [1.0], "quantity": [3.0]})
    with pytest.raises(F.KeyDataError, match="period length"):
        F.future_frame(spec, history, None, origin=date(2024, 1, 1))


def test_infer_period_uses_the_most_common_gap():
    weeks = pl.Series([date(2024, 1, 1) + timedelta(weeks=w) for w in (0, 1, 2, 3, 5, 6)])
    assert F.infer_period(weeks) == F.Period(step=timedelta(weeks=1))
    assert F.infer_period(pl.Series([date(2024, 1, 1)] * 3)) is None
    months = pl.Series([date(2024, m, 1) for m in range(1, 13)])
    assert F.infer_period(months) == F.Period(months=1)
    quarters = pl.Series([date(2023 + (m - 1) // 12, (m - 1) % 12 + 1, 1) for m in range(1, 25, 3)])
    assert F.infer_period(quarters) == F.Period(months=3)


def test_lags_move_by_periods_so_a_missing_week_never_shifts_them():
    spec = make_spec(forecast_body(features=[], lags=[4], holdout={"periods": 4}, calendar_features=False))
    weeks = [w for w in range(30) if w != 10]  # week 10 is missing
    frame = pl.DataFrame(
        {
            "store": "1",
            "brand": "b",
            "week_start": [date(2024, 1, 1) + timedelta(weeks=w) for w in weeks],
            "quantity": [float(100 + w) for w in weeks],
        }
    )
    featured = F.make_features(spec, frame).filter(pl.col("lag_4").is_not_null())
    # quantity encodes the week number, so lag_4 must be exactly quantity - 4 on every row
    assert (featured["quantity"] - featured["lag_4"]).unique().to_list() == [4.0]
    # the row whose lag falls on the missing week has no lag rather than a wrong one
    week14 = F.make_features(spec, frame).filter(pl.col("week_start") == date(2024, 1, 1) + timedelta(weeks=14))
    assert week14["lag_4"].to_list() == [None]


def test_monthly_forecasts_land_on_the_first_of_each_month():
    spec = make_spec(forecast_body(features=["price"], lags=[4], holdout={"periods": 4}, horizon=3))
    months = [date(2022 + (m // 12), m % 12 + 1, 1) for m in range(30)]
    history = pl.DataFrame({"week_start": months, "price": [2.0] * 30, "quantity": [float(10 + m) for m in range(30)]})
    future = F.future_frame(spec, history, None, origin=months[0])
    assert future["week_start"].to_list() == [date(2024, 7, 1), date(2024, 8, 1), date(2024, 9, 1)]
    # the trend index continues the training numbering: month 30, 31, 32
    assert future[F.T_INDEX].to_list() == [30.0, 31.0, 32.0]


def test_fingerprint_tracks_content():
    a = pl.DataFrame({"x": [1, 2, 3]})
    assert F.fingerprint(a) == F.fingerprint(a.clone())
    assert F.fingerprint(a) != F.fingerprint(pl.DataFrame({"x": [1, 2, 4]}))
    assert len(F.fingerprint(a)) == 16


def test_a_missing_week_inside_the_holdout_never_leaks_actuals_into_lags():
    """The holdout is the last N periods of calendar time, so lags >= N stay in train."""
    spec = make_spec(forecast_body(features=[], lags=[4], holdout={"periods": 4}, calendar_features=False, min_rows=5))
    weeks = [w for w in range(30) if w != 27]  # a gap inside the last four weeks
    frame = pl.DataFrame(
        {
            "store": "1",
            "brand": "b",
            "week_start": [date(2024, 1, 1) + timedelta(weeks=w) for w in weeks],
            "quantity": [float(100 + w) for w in weeks],
        }
    )
    ts = F.build_training_set(spec, frame)
    holdout = ts.filter(pl.col(F.SPLIT) == F.HOLDOUT)
    first_holdout = holdout["week_start"].min()
    assert first_holdout == date(2024, 1, 1) + timedelta(weeks=26)  # weeks 26..29, of which 27 is missing
    assert holdout.height == 3
    holdout_actuals = set(holdout["quantity"].to_list())
    assert not holdout_actuals & set(holdout["lag_4"].drop_nulls().to_list())


def test_a_champion_fitted_before_frequency_calendars_still_scores(retail):
    """Yesterday's production model: a float-matrix pipeline over cal_month and cal_week."""
    from many_models_platform.core.modeling import build_pipeline, model_input, predict

    bronze = _keys(retail.history)[0]
    ts = F.build_training_set(RETAIL, bronze)
    old_features = [*RETAIL.features, *(f"lag_{lag}" for lag in RETAIL.lags), "cal_month", "cal_week", F.T_INDEX]
    train = F.add_calendar(F.split(ts)[F.TRAIN], "week_start", old_features)
    model = build_pipeline(RETAIL, "ridge").fit(F.to_matrix(train, old_features), train["quantity"].to_numpy())
    calendar = F.calendar_of(old_features)
    future = F.future_frame(RETAIL, bronze, None, origin=bronze["week_start"].min(), calendar=calendar)
    assert future["cal_week"].to_list() == [float(w.isocalendar()[1]) for w in future["week_start"]]
    x = model_input(model, future, old_features)
    assert isinstance(x, np.ndarray) and x.shape == (RETAIL.horizon, len(old_features))
    assert np.isfinite(predict("forecast", model, x)).all()
