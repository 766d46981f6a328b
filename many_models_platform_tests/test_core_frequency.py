"""Frequency per key, calendar features by frequency, integer periods, and the training set's row accounting."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from conftest_core import forecast_body, make_spec, regression_body

from many_models_platform.core import features as F

N = 40


def _regression(**overrides):
    body = regression_body(time_column="t", features=["x1"], min_rows=10)
    body.update(overrides)
    return make_spec(body)


def _frame(times: list, dtype: pl.DataType, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {"t": pl.Series(times, dtype=dtype), "x1": rng.normal(size=len(times)), "y": rng.normal(size=len(times))}
    )


def _months(start_year: int, n: int, every: int = 1) -> list[date]:
    return [date(start_year + (m * every) // 12, (m * every) % 12 + 1, 1) for m in range(n)]


SERIES = {
    "hourly": ([datetime(2025, 3, 1) + timedelta(hours=h) for h in range(N)], pl.Datetime("us")),
    "daily": ([date(2025, 3, 1) + timedelta(days=d) for d in range(N)], pl.Date),
    "business_daily": (
        pl.date_range(date(2025, 3, 3), date(2025, 5, 30), eager=True)
        .filter(pl.date_range(date(2025, 3, 3), date(2025, 5, 30), eager=True).dt.weekday() <= 5)
        .to_list()[:N],
        pl.Date,
    ),
    "weekly": ([date(2025, 3, 3) + timedelta(weeks=w) for w in range(N)], pl.Date),
    "monthly": (_months(2020, N), pl.Date),
    "quarterly": (_months(2010, N, every=3), pl.Date),
    "yearly": ([date(1980 + y, 1, 1) for y in range(N)], pl.Date),  # integer years as ingest gives them
    "period": (list(range(100, 100 + 5 * N, 5)), pl.Int64),  # an integer period column, step 5
}
CALENDAR = {
    "hourly": {"cal_hour": lambda t: t.hour, "cal_dayofweek": lambda t: t.isoweekday()},
    "daily": {"cal_dayofweek": lambda t: t.isoweekday(), "cal_dayofyear": lambda t: t.timetuple().tm_yday},
    "business_daily": {"cal_dayofweek": lambda t: t.isoweekday(), "cal_dayofyear": lambda t: t.timetuple().tm_yday},
    "weekly": {"cal_month": lambda t: t.month},
    "monthly": {"cal_month": lambda t: t.month},
    "quarterly": {"cal_quarter": lambda t: (t.month - 1) // 3 + 1},
    "yearly": {},
    "period": {},
}


@pytest.mark.parametrize("frequency", list(SERIES))
def test_calendar_features_follow_the_inferred_frequency(frequency):
    times, dtype = SERIES[frequency]
    spec = _regression()
    prepared = F.prepare_training_set(spec, _frame(times, dtype))
    ts = prepared.frame
    assert prepared.frequency == frequency
    assert prepared.info()["frequency"] == frequency
    calendar = [c for c in ts.columns if c.startswith("cal_")]
    assert calendar == list(CALENDAR[frequency])
    # feature_columns names exactly what was built, in order
    assert F.feature_columns(spec, dtype, frequency) == [c for c in ts.columns if c not in ("t", "y", F.SPLIT)]
    for column, expected in CALENDAR[frequency].items():
        assert ts[column].to_list() == [float(expected(t)) for t in ts["t"]]


def test_yearly_forecast_gets_a_trend_but_no_calendar_columns():
    times, dtype = SERIES["yearly"]
    spec = make_spec(
        forecast_body(time_column="t", target="y", features=["x1"], lags=[3], holdout={"periods": 3}, horizon=3)
    )
    ts = F.build_training_set(spec, _frame(times, dtype))
    assert [c for c in ts.columns if c not in ("t", "y", F.SPLIT)] == ["x1", "lag_3", F.T_INDEX]
    assert ts[F.T_INDEX].to_list() == [float(t.year - 1980) for t in ts["t"]]


def test_a_declared_frequency_wins_and_inapplicable_calendar_features_are_skipped():
    times, dtype = SERIES["weekly"]
    daily = F.prepare_training_set(_regression(frequency="daily"), _frame(times, dtype))
    assert daily.frequency == "daily"
    assert [c for c in daily.frame.columns if c.startswith("cal_")] == ["cal_dayofweek", "cal_dayofyear"]
    # hour cannot apply to dates: skipped for the key, the rest is built
    spec = _regression(calendar_features=["hour", "quarter"])
    ts = F.build_training_set(spec, _frame(times, dtype))
    assert [c for c in ts.columns if c.startswith("cal_")] == ["cal_quarter"]
    assert F.feature_columns(spec, pl.Date, "weekly") == ["x1", "cal_quarter"]
    assert F.feature_columns(spec, pl.Datetime("us"), "weekly") == ["x1", "cal_hour", "cal_quarter"]
    off = F.build_training_set(_regression(calendar_features=False), _frame(times, dtype))
    assert off.columns == ["t", "y", "x1", F.SPLIT]


def test_a_regular_step_without_a_name_is_a_period_of_its_own():
    times = [date(2025, 1, 1) + timedelta(days=10 * i) for i in range(N)]
    prepared = F.prepare_training_set(_regression(), _frame(times, pl.Date))
    # every 10 days: the calendar features of the nearest named frequency below it (weekly: month)
    assert prepared.frequency == "every 10 days"
    assert [c for c in prepared.frame.columns if c.startswith("cal_")] == ["cal_month"]
    assert "irregular_gaps" not in prepared.info()
    declared = F.prepare_training_set(_regression(frequency="daily"), _frame(times, pl.Date))
    assert declared.frequency == "daily"
    assert "irregular_gaps" not in declared.info()  # 10 days is a whole number of days
    # a calendar list needs no frequency: events at odd spacing still get exactly those columns
    listed = F.prepare_training_set(_regression(calendar_features=["dayofweek"]), _frame(times, pl.Date))
    assert listed.frame["cal_dayofweek"].to_list() == [float(t.isoweekday()) for t in listed.frame["t"]]


def test_inconsistent_spacing_fails_where_periods_are_counted_and_not_for_events():
    # gaps of 3, 4 and 5 days in turn: no step fits most of them
    times, day = [], date(2025, 1, 1)
    for i in range(N):
        times.append(day)
        day += timedelta(days=3 + i % 3)
    with pytest.raises(F.KeyDataError, match=r"gaps are inconsistent.*set 'frequency'"):
        F.build_training_set(_regression(holdout={"periods": 4}), _frame(times, pl.Date))
    events = F.prepare_training_set(_regression(), _frame(times, pl.Date))
    assert events.info()["irregular_gaps"] > 0
    assert [c for c in events.frame.columns if c.startswith("cal_")] == ["cal_dayofweek", "cal_dayofyear"]


@pytest.mark.parametrize(
    ("overrides", "times", "dtype", "reason"),
    [
        ({"frequency": "period"}, SERIES["daily"][0], pl.Date, "frequency 'period' is for an integer time column"),
        ({"frequency": "daily"}, SERIES["period"][0], pl.Int64, "use frequency 'period'"),
    ],
)
def test_a_frequency_that_does_not_fit_the_time_column_is_a_key_error(overrides, times, dtype, reason):
    with pytest.raises(F.KeyDataError, match=reason):
        F.build_training_set(_regression(**overrides), _frame(times, dtype))


def test_gaps_that_are_not_whole_periods_are_counted_not_guessed():
    start = datetime(2025, 3, 1)
    hours = [start + timedelta(hours=h) for h in range(N)]
    hours[10] += timedelta(minutes=30)  # two readings off the hourly grid: each breaks two gaps
    hours[20] += timedelta(minutes=30)
    del hours[30]  # a missing hour is a whole number of periods, not irregular
    prepared = F.prepare_training_set(_regression(), _frame(hours, pl.Datetime("us")))
    assert prepared.frequency == "hourly"
    assert prepared.info()["irregular_gaps"] == 4
    weekly = F.prepare_training_set(_regression(), _frame(SERIES["weekly"][0], pl.Date))
    assert "irregular_gaps" not in weekly.info()


def test_integer_period_forecast_lags_holdout_and_horizon():
    step, n = 5, 40
    periods = list(range(100, 100 + step * n, step))
    history = pl.DataFrame(
        {"t": periods, "price": np.linspace(1.0, 2.0, n), "y": [float(p) * 2 for p in periods]},
        schema={"t": pl.Int64, "price": pl.Float64, "y": pl.Float64},
    )
    spec = make_spec(
        forecast_body(time_column="t", target="y", lags=[3, 4], holdout={"periods": 3}, horizon=3, min_rows=10)
    )
    prepared = F.prepare_training_set(spec, history)
    ts = prepared.frame
    assert prepared.frequency == "period"
    assert [c for c in ts.columns if c not in ("t", "y", F.SPLIT)] == ["price", "lag_3", "lag_4", F.T_INDEX]
    # lags move by periods of the column's own step: lag_3 of period p is the target at p - 15
    assert (ts["y"] - ts["lag_3"]).unique().to_list() == [2.0 * 3 * step]
    assert ts["t"].min() == 100 + 4 * step  # the first four periods have no lag_4
    assert prepared.drops == {"no lag history": 4}
    holdout = ts.filter(pl.col(F.SPLIT) == F.HOLDOUT)["t"].to_list()
    assert holdout == periods[-3:]
    assert ts[F.T_INDEX].to_list() == [float((p - 100) // step) for p in ts["t"]]
    future = F.future_frame(spec, history, None, origin=100)
    last = periods[-1]
    assert future["t"].to_list() == [last + step, last + 2 * step, last + 3 * step]
    assert future["lag_3"].to_list() == [2.0 * (p - 3 * step) for p in future["t"]]
    assert future[F.T_INDEX].to_list() == [float(n), float(n + 1), float(n + 2)]
    assert future["price"].to_list() == [history["price"][-1]] * 3


def test_month_end_series_lag_by_calendar_month_and_forecast_on_month_ends():
    ends = pl.date_range(date(2021, 1, 1), date(2023, 12, 1), "1mo", eager=True).dt.month_end()
    history = pl.DataFrame({"t": ends, "price": 1.0, "y": [float(100 + i) for i in range(len(ends))]})
    spec = make_spec(
        forecast_body(time_column="t", target="y", lags=[3], holdout={"periods": 3}, horizon=3, min_rows=10)
    )
    prepared = F.prepare_training_set(spec, history)
    assert prepared.frequency == "monthly"
    assert "irregular_gaps" not in prepared.info()
    # February (28 days) and 31-day months still line up: every lag is three months back
    assert (prepared.frame["y"] - prepared.frame["lag_3"]).unique().to_list() == [3.0]
    assert prepared.drops == {"no lag history": 3}
    future = F.future_frame(spec, history, None, origin=ends[0])
    assert future["t"].to_list() == [date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31)]
    assert future["lag_3"].to_list() == [133.0, 134.0, 135.0]


def test_a_month_stamped_twice_by_two_exports_fails_the_forecast_key_saying_so():
    """The 2023 file stamps months on the 1st, a re-export from July 2023 on stamps them on
    the last day: the later file replaced nothing (other dates), so six months are there twice and
    lags and the holdout would count them twice. The key fails, naming a month and both dates."""
    starts = pl.date_range(date(2020, 1, 1), date(2023, 12, 1), "1mo", eager=True)
    ends = pl.date_range(date(2023, 7, 1), date(2024, 6, 1), "1mo", eager=True).dt.month_end()
    times = pl.concat([starts, ends])
    history = pl.DataFrame({"t": times, "price": 1.0, "y": [float(100 + i % 7) for i in range(len(times))]})
    spec = make_spec(
        forecast_body(time_column="t", target="y", lags=[3], holdout={"periods": 3}, horizon=3, min_rows=10)
    )
    with pytest.raises(
        F.KeyDataError, match=r"^6 month\(s\) hold more than one date \(e.g. 2023-07-01 and 2023-07-31\)"
    ):
        F.prepare_training_set(spec, history)
    # one stamp per month (the first file alone) is a monthly series
    assert F.prepare_training_set(spec, history.filter(pl.col("t").dt.day() == 1)).frequency == "monthly"


def _business_days(start: date, n: int) -> list[date]:
    days = pl.date_range(start, start + timedelta(days=2 * n), eager=True)
    return days.filter(days.dt.weekday() <= 5).to_list()[:n]


def test_business_day_series_lag_over_weekends_and_forecast_only_business_days():
    """Trading days, a B2B order book: no Saturday or Sunday in weeks of daily values. Monday's
    lag_3 is Wednesday's value (not an empty Friday-less weekend day), a 3-period holdout is the last three business
    days, and the horizon after a Thursday is Friday, Monday, Tuesday, never a weekend."""
    days = _business_days(date(2024, 1, 1), 59)  # Mon 2024-01-01 .. Thu 2024-03-21
    assert days[-1] == date(2024, 3, 21)
    history = pl.DataFrame({"t": days, "price": 1.0, "y": [float(i) for i in range(len(days))]})
    spec = make_spec(
        forecast_body(time_column="t", target="y", lags=[3, 5], holdout={"periods": 3}, horizon=3, min_rows=10)
    )
    prepared = F.prepare_training_set(spec, history)
    ts = prepared.frame
    assert prepared.frequency == "business_daily" and "irregular_gaps" not in prepared.info()
    assert (ts["y"] - ts["lag_3"]).unique().to_list() == [3.0]  # Mondays included: no weekend in between
    assert (ts["y"] - ts["lag_5"]).unique().to_list() == [5.0]  # a week back
    assert prepared.drops == {"no lag history": 5}
    assert ts.filter(pl.col(F.SPLIT) == F.HOLDOUT)["t"].to_list() == days[-3:]
    assert ts[F.T_INDEX].to_list() == [float(i) for i in range(5, 59)]  # business days since the first
    future = F.future_frame(spec, history, None, origin=days[0])
    assert future["t"].to_list() == [date(2024, 3, 22), date(2024, 3, 25), date(2024, 3, 26)]
    assert future["lag_3"].to_list() == [56.0, 57.0, 58.0]  # Tue, Wed, Thu before them
    assert future[F.T_INDEX].to_list() == [59.0, 60.0, 61.0]
    # the seasonal-naive baseline's season is a business week
    assert F.season_length(prepared.frequency) == 5
    # the same days with one Saturday are daily data with gaps, as before
    odd = pl.concat([history, pl.DataFrame({"t": [date(2024, 1, 6)], "price": 1.0, "y": 0.5})]).sort("t")
    assert F.prepare_training_set(spec, odd).frequency == "daily"
    # declared, it is taken as it is
    declared = make_spec(
        forecast_body(
            time_column="t",
            target="y",
            lags=[3],
            horizon=3,
            holdout={"periods": 3},
            frequency="business_daily",
            min_rows=2,
        )
    )
    assert F.prepare_training_set(declared, history.head(8)).frequency == "business_daily"


def test_a_statistical_forecaster_counts_business_days():
    from many_models_platform.core import statistical

    days = _business_days(date(2024, 1, 1), 40)
    frame = pl.DataFrame({"t": days, "y": [float(i) for i in range(40)]})
    period = F.FREQUENCY_PERIODS["business_daily"]
    model = statistical.build("statsforecast.models.Naive", {}, "t", period, 5, 6)
    model.fit(model.time_codes(frame), frame["y"].to_numpy())
    assert model.filled_periods_ == 0  # weekends are no missing periods
    ahead = pl.DataFrame({"t": [date(2024, 2, 26), date(2024, 2, 27)]})  # the two business days after Friday
    assert model.predict(model.time_codes(ahead)).tolist() == [39.0, 39.0]


def test_too_few_rows_says_what_took_them_and_when_times_are_off_the_grid():
    """A key left with too few rows says which drops took them, and when times sit off the key's
    grid (transactions at 08:26 in daily data have no value exactly 7 days back) what to declare."""
    days = [datetime(2024, 1, 1) + timedelta(days=d) for d in range(30)]
    times = [t + timedelta(hours=8, minutes=26) if i % 6 == 0 else t for i, t in enumerate(days)]
    history = pl.DataFrame({"t": times, "price": 1.0, "y": [float(i) for i in range(30)]})
    spec = make_spec(
        forecast_body(time_column="t", target="y", lags=[7], holdout={"periods": 7}, horizon=7, min_rows=20)
    )
    with pytest.raises(F.KeyDataError) as err:
        F.prepare_training_set(spec, history)
    message = str(err.value)
    assert message.startswith("too few rows after features and split:")
    # the five 08:26 rows are off the grid (no lag, no step); the others lack 7 days of history
    assert "rows dropped: time off the key's grid 5, no lag history" in message
    assert "gap(s) between times are not whole periods of 1 day" in message and "declare 'frequency'" in message


def test_a_weekly_key_whose_last_week_is_stamped_a_day_early_forecasts_on_its_own_weekday():
    """Sunday weeks whose last row is a Saturday (an export taken a day early): the Saturday is
    off the key's grid, dropped and counted as such (not as 'no lag history'), the holdout is the
    latest Sundays, and the forecast goes on Sundays after it, where the scoring rows are."""
    sundays = [date(2024, 1, 7) + timedelta(weeks=w) for w in range(40)]
    times = [*sundays, sundays[-1] + timedelta(days=6)]
    history = pl.DataFrame({"t": times, "price": 1.0, "y": [float(10 + i % 5) for i in range(len(times))]})
    spec = make_spec(
        forecast_body(time_column="t", target="y", lags=[4], holdout={"periods": 4}, horizon=4, min_rows=10)
    )
    prepared = F.prepare_training_set(spec, history)
    assert prepared.drops == {F.OFF_GRID: 1, "no lag history": 4}
    holdout = prepared.frame.filter(pl.col(F.SPLIT) == F.HOLDOUT)["t"].to_list()
    assert holdout == sundays[-4:]
    future = F.future_frame(spec, history, None, origin=sundays[0])
    assert future["t"].to_list() == [sundays[-1] + timedelta(weeks=k) for k in range(1, 5)]


def test_daily_rows_stored_as_utc_instants_of_local_midnight_stay_on_the_grid_across_dst():
    """Spark and pandas store a day as the UTC instant of its local midnight: 23:00 in winter,
    22:00 after the March change in Berlin. One grid: no row is off it; 08:26 is."""
    days = [datetime(2024, 3, 1, 23) + timedelta(days=d) for d in range(60)]
    days = [t - timedelta(hours=1) if t >= datetime(2024, 3, 30, 23) else t for t in days]
    assert not F.FREQUENCY_PERIODS["daily"].off_grid(pl.Series("t", days)).any()
    stray = [*days[:-1], days[-1] + timedelta(hours=9, minutes=26)]
    assert F.FREQUENCY_PERIODS["daily"].off_grid(pl.Series("t", stray)).to_list() == [False] * 59 + [True]


def test_monthly_forecasts_keep_the_keys_month_stamp_after_a_month_to_date_row():
    """Months stamped on the 1st, then a month-to-date row on the 15th: forecasts on the 1st of
    the next months (where the scoring rows are), not on the 15th."""
    firsts = pl.date_range(date(2022, 1, 1), date(2024, 5, 1), "1mo", eager=True).to_list()
    history = pl.DataFrame({"t": [*firsts, date(2024, 6, 15)], "price": 1.0, "y": [float(i) for i in range(30)]})
    spec = make_spec(forecast_body(time_column="t", target="y", lags=[4], horizon=3, min_rows=10))
    future = F.future_frame(spec, history, None, origin=firsts[0])
    assert future["t"].to_list() == [date(2024, 7, 1), date(2024, 8, 1), date(2024, 9, 1)]


def test_row_accounting_of_the_training_set():
    weeks = [date(2024, 1, 1) + timedelta(weeks=w) for w in range(30)]
    quantity = [float(10 + w) for w in range(30)]
    quantity[3], quantity[7], quantity[11] = None, float("nan"), float("inf")
    bronze = pl.DataFrame(
        {"week_start": weeks, "price": 1.0, "quantity": quantity},
        schema={"week_start": pl.Date, "price": pl.Float64, "quantity": pl.Float64},
    )
    spec = make_spec(forecast_body(min_rows=5))  # lags 4 and 5, holdout 4 weeks
    prepared = F.prepare_training_set(spec, bronze)
    info = prepared.info()
    assert info["rows_in"] == 30
    # no lag_5 history: weeks 0-4 but the dropped week 3. Weeks 8, 12 and 16, whose lag_5 is a dropped
    # target, are gaps in the series after it started: kept, their lag_5 null (imputed by the model)
    assert info["drops"] == {"target is null": 1, "target is NaN": 1, "target is inf": 1, "no lag history": 4}
    assert info["rows_out"] == prepared.frame.height == 30 - 3 - 4
    assert prepared.frame.filter(pl.col("lag_5").is_null())["week_start"].to_list() == [weeks[8], weeks[12], weeks[16]]
    assert info["rows_dropped"] == 7 and info["rows_merged"] == 0
    assert info["rows_in"] == info["rows_out"] + info["rows_dropped"] + info["rows_merged"]
    assert prepared.frame["quantity"].is_finite().all()
    assert info["frequency"] == "weekly"


def test_non_negative_target_refuses_negative_values():
    spec = _regression(non_negative_target=True)
    frame = _frame(SERIES["daily"][0], pl.Date).with_columns(pl.col("y").abs())
    assert F.build_training_set(spec, frame).height == N
    with pytest.raises(F.KeyDataError, match=r"negative target: 1 'y' value\(s\) below 0 \(e.g. -2.5\)"):
        F.build_training_set(
            spec, frame.with_columns(pl.when(pl.col("x1") == pl.col("x1").max()).then(-2.5).otherwise("y").alias("y"))
        )


def test_text_in_a_numeric_feature_says_to_declare_it_categorical():
    frame = _frame(SERIES["daily"][0], pl.Date).with_columns(
        pl.Series("x1", ["Monday", "Tuesday"] * (N // 2), dtype=pl.Utf8)
    )
    with pytest.raises(F.KeyDataError) as err:
        F.build_training_set(_regression(), frame)
    assert str(err.value) == (
        f"feature 'x1' holds text, e.g. 'Monday' ({N} of {N} rows); if it is a number with a unit or symbol other "
        "than % or a currency ('12 kg'), strip it in the export; if it is a category, declare it in "
        "'categorical_features'"
    )
    # '15 %' is a number (ingest reads it as 15); '12,5 %' beside '107.72' in one file is one only with the
    # decimal comma the rest of the file does not write: that is what the key is told, not '15 %'
    percents = _frame(SERIES["daily"][0], pl.Date).with_columns(
        pl.Series("x1", ["15 %", "12,5 %"] * (N // 2), dtype=pl.Utf8)
    )
    with pytest.raises(F.KeyDataError, match=rf"feature 'x1' holds numbers such as '12,5 %' \({N // 2} of {N} rows\)"):
        F.build_training_set(_regression(), percents)
    # the example and the count are of text, not of an export's token for a missing value
    mixed = _frame(SERIES["daily"][0], pl.Date).with_columns(
        pl.Series("x1", ["n/a", "abc"] + ["1.5"] * (N - 2), dtype=pl.Utf8)
    )
    with pytest.raises(F.KeyDataError, match=r"feature 'x1' holds text, e.g. 'abc' \(1 of"):
        F.build_training_set(_regression(), mixed)
    # numbers that arrive as text are still numbers
    as_text = _frame(SERIES["daily"][0], pl.Date).with_columns(pl.col("x1").cast(pl.Utf8))
    assert F.build_training_set(_regression(), as_text)["x1"].dtype == pl.Float64
    # an infinite value is a missing one, imputed like a NaN, never given to a model as is
    infinite = _frame(SERIES["daily"][0], pl.Date).with_columns(pl.col("x1").cast(pl.Float64))
    infinite = infinite.with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(float("inf")).otherwise("x1").alias("x1")
    )
    x1 = F.build_training_set(_regression(), infinite)["x1"]
    assert x1.null_count() > 0 and x1.drop_nulls().is_finite().all()


def test_a_legacy_calendar_column_is_rebuilt_for_an_old_model():
    times, dtype = SERIES["weekly"]
    ts = F.build_training_set(_regression(), _frame(times, dtype))
    old_features = ["x1", "cal_month", "cal_week"]  # what models fitted before frequency-based calendars used
    rows = F.add_calendar(ts, "t", old_features)
    assert rows["cal_week"].to_list() == [float(t.isocalendar()[1]) for t in rows["t"]]
    assert F.calendar_of(old_features) == ["month", "week"]


def test_a_key_shorter_than_its_longest_lag_fails_with_a_reason_not_an_expression_error():
    history = pl.DataFrame({"t": list(range(30)), "price": [1.0] * 30, "y": [float(i % 7) for i in range(30)]})
    spec = make_spec(forecast_body(time_column="t", target="y", lags=[4, 52], holdout={"periods": 3}, min_rows=10))
    with pytest.raises(
        F.KeyDataError, match=r"too few rows for the lags: no row has a value 52 periods before it \(30"
    ):
        F.prepare_training_set(spec, history)


def test_keys_whose_forecast_horizon_ends_before_the_others_latest_data_are_found():
    """A store closed in 2018 is forecast for 2019 beside stores forecast for next week: listed.
    A key one week behind (its horizon still reaches the latest week) is not."""
    weeks = lambda first, n: pl.Series("t", [first + timedelta(weeks=w) for w in range(n)])  # noqa: E731
    ends = {
        "open": F.series_end(weeks(date(2020, 1, 5), 235)),
        "a_week_behind": F.series_end(weeks(date(2020, 1, 5), 234)),
        "closed": F.series_end(weeks(date(2015, 1, 4), 209)),
        "periods": F.series_end(pl.Series("t", [1, 2, 3])),
    }
    assert ends["closed"][2] == "2018-12-30" and ends["periods"][:2] == (3.0, 1.0)
    assert F.series_end(pl.Series("t", [date(2020, 1, 1)])) is None
    del ends["periods"]
    assert F.ending_early(ends, horizon=4) == ["closed"]
    assert F.ending_early({}, horizon=4) == []
    # a quarter stamped on its last day (30 September) is no later data than weeks through June
    quarters = pl.Series("t", [date(2023, 12, 31), date(2024, 3, 31), date(2024, 6, 30), date(2024, 9, 30)])
    mixed = {"weekly": F.series_end(weeks(date(2020, 1, 5), 235)), "quarterly": F.series_end(quarters)}
    assert F.ending_early(mixed, horizon=3) == []
