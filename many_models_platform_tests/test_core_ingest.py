"""Ingest rules as pure functions over polars frames: time columns, targets, duplicates, counts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
import pytest
from conftest_core import forecast_body, make_spec, regression_body

from many_models_platform.core import ingest
from many_models_platform.core.ingest import FILE, FileRejected, normalise_file, parse_time, resolve

D = dt.date


def parsed(values, **kw):
    return parse_time(pl.Series("t", values), column="t", **kw)


# --- time columns ---------------------------------------------------------------------------
def test_integer_years_become_january_first_dates():
    for values in ([1980, 1981, None], ["1980", " 1981 ", None]):  # Parquet ints, CSV text
        p = parsed(values)
        assert p.kind == "date" and p.values.dtype == pl.Date
        assert p.values.to_list() == [D(1980, 1, 1), D(1981, 1, 1), None]
        assert p.bad.to_list() == [None, None, ingest.MISSING_TIME]


def test_integers_that_are_not_all_years_are_a_period_index_unless_frequency_says_otherwise():
    p = parsed([1, 2, 1990])
    assert p.kind == "period" and p.values.dtype == pl.Int64 and p.values.to_list() == [1, 2, 1990]
    assert parsed([1980, 1981], frequency="period").values.to_list() == [1980, 1981]
    # yearly forces years: the stray 0 is one unparseable value, the rest are dates
    p = parsed([1980, 1981, 0], frequency="yearly")
    assert p.values.to_list() == [D(1980, 1, 1), D(1981, 1, 1), None]
    assert p.bad.to_list() == [None, None, ingest.UNPARSEABLE_TIME]
    with pytest.raises(FileRejected, match="cannot be read as monthly times; set 'time_format'"):
        parsed([1, 2], frequency="monthly")


def test_yyyymm_integers_are_months_and_unix_micro_and_nanoseconds_are_datetimes():
    """202412 (a statistics office's month) was a period index whose next periods were 202413
    and 202414; Unix times in µs (Spark) and ns (pandas' int64) were period indexes too."""
    p = parsed([202311, 202312, 202401, 202413, None])
    assert p.kind == "date" and p.values.to_list() == [D(2023, 11, 1), D(2023, 12, 1), D(2024, 1, 1), None, None]
    assert p.bad.to_list()[3] == ingest.UNPARSEABLE_TIME
    assert parsed(["202401", "202402"]).values.to_list() == [D(2024, 1, 1), D(2024, 2, 1)]  # CSV text
    us, ns = 1_709_251_200_000_000, 1_709_251_200_000_000_000  # 2024-03-01 00:00 UTC
    for values in ([us, us + 3_600_000_000], [ns, ns + 3_600_000_000_000]):
        p = parsed(values)
        assert p.kind == "datetime" and p.values.to_list() == [dt.datetime(2024, 3, 1), dt.datetime(2024, 3, 1, 1)]
    assert parsed([1, 2, 3]).kind == "period"
    # seconds with a fraction, as time.time() and devices write them, as text or as floats (Parquet)
    at = dt.datetime(2023, 11, 14, 22, 13, 20, 421000)
    for values in (["1700000000.421", "1700000060", "soon"], [1700000000.421, 1700000060.0, float("nan")]):
        p = parsed(values)
        assert p.kind == "datetime" and p.values.to_list() == [at, dt.datetime(2023, 11, 14, 22, 14, 20), None]


def test_whole_float_years_from_a_pandas_export_are_years():
    p = parsed([1980.0, float("nan"), 1982.0])
    assert p.values.to_list() == [D(1980, 1, 1), None, D(1982, 1, 1)]
    assert p.bad.to_list() == [None, ingest.MISSING_TIME, None]
    with pytest.raises(FileRejected, match="non-integer numbers"):
        parsed([1980.5, 1981.0])


def test_two_digit_years_follow_strftime_y_pivot():
    # a two-digit year never lands in the future (63..92 is 1963..1992); ints are zero-padded
    p = parsed([63, 92, 5, 69, 70], time_format="%y")
    assert p.values.to_list() == [D(1963, 1, 1), D(1992, 1, 1), D(2005, 1, 1), D(1969, 1, 1), D(1970, 1, 1)]
    assert parsed(["201901", "201912"], time_format="%Y%m").values.to_list() == [D(2019, 1, 1), D(2019, 12, 1)]
    assert parsed([201901], time_format="%Y%m").values.to_list() == [D(2019, 1, 1)]


def test_time_format_with_a_time_of_day_gives_datetimes():
    p = parsed(["31/01/2020 13:45"], time_format="%d/%m/%Y %H:%M")
    assert p.kind == "datetime" and p.values.to_list() == [dt.datetime(2020, 1, 31, 13, 45)]


def test_iso_text_dates_and_datetimes_with_offsets_become_naive_utc():
    assert parsed(["2020-01-01", "2020-01-08"]).kind == "date"
    p = parsed(
        ["2020-01-01T03:00:00Z", "2020-01-01T05:00:00+02:00", "2020-01-02 04:00", "2020-01-03", "2020-01-03T01:02:03.5"]
    )
    assert p.kind == "datetime" and p.values.dtype == pl.Datetime("us")
    assert p.values.to_list() == [
        dt.datetime(2020, 1, 1, 3),
        dt.datetime(2020, 1, 1, 3),
        dt.datetime(2020, 1, 2, 4),
        dt.datetime(2020, 1, 3),
        dt.datetime(2020, 1, 3, 1, 2, 3, 500000),
    ]


def test_the_rule_decided_over_a_whole_file_reads_each_batch_as_the_whole_file():
    """A file read in batches: the rule comes from all rows (lazily), and a batch holding only
    one of the layouts, or a value the file itself fails on, reads exactly as in the whole."""
    values = ["2020-01-01T03:00:00Z", "2020-01-02 04:00", "2020-01-03", "2020-01-03T01:02:03.5", "soon", None] * 3
    whole = parsed(values)
    rule = ingest.time_rule(pl.LazyFrame({"t": values}), column="t")
    assert rule.kind == whole.kind == "datetime"
    for start in range(len(values)):
        batch = rule.apply(pl.DataFrame({"t": values[start : start + 1]}))
        assert batch["t"].to_list() == whole.values[start : start + 1].to_list()
        assert batch[ingest.DROP].to_list() == whole.bad[start : start + 1].to_list()
    assert whole.bad.to_list()[4:6] == [ingest.UNPARSEABLE_TIME, ingest.MISSING_TIME]


def test_tz_aware_datetimes_are_converted_to_utc_and_made_naive():
    s = pl.Series("t", [dt.datetime(2020, 7, 1, 12)]).dt.replace_time_zone("Europe/Paris")
    p = parse_time(s, column="t")
    assert p.kind == "datetime" and p.values.dtype == pl.Datetime("us", None)
    assert p.values.to_list() == [dt.datetime(2020, 7, 1, 10)]
    # days exported with their zone (midnight where they were recorded) stay those days: in UTC
    # they would be the evening before, and every weekday feature one off
    days = pl.Series("t", [dt.datetime(2024, 3, d) for d in (29, 30, 31)]).dt.replace_time_zone("Europe/Berlin")
    p = parse_time(days, column="t")
    assert p.kind == "date" and p.values.to_list() == [D(2024, 3, 29), D(2024, 3, 30), D(2024, 3, 31)]
    p = parse_time(days.dt.offset_by("1h"), column="t")  # one hour later: times, in UTC
    assert p.kind == "datetime" and p.values.to_list()[0] == dt.datetime(2024, 3, 29)


def test_a_few_impossible_dates_are_dropped_rows_but_a_mostly_unparseable_column_rejects_the_file():
    p = parsed(["1969-02-28", "1969-02-30", "1969-03-01"])
    assert p.values.to_list() == [D(1969, 2, 28), None, D(1969, 3, 1)]
    assert p.bad.to_list() == [None, ingest.UNPARSEABLE_TIME, None]
    with pytest.raises(FileRejected) as err:
        parsed(["soon", "later", "2020-01-01"])
    assert "time column 't'" in str(err.value) and "'soon', 'later'" in str(err.value)
    assert "2 of 3 values" in str(err.value)
    with pytest.raises(FileRejected, match="holds no values"):
        parsed([None, None], time_format="%Y")


def test_a_file_of_another_time_kind_than_earlier_files_is_rejected():
    with pytest.raises(FileRejected, match="holds dates here but integer periods in an earlier landing file"):
        parsed(["2020-01-01"], prefer="period")
    # an earlier file of years settles ambiguous integers as years
    assert parsed([1990, 1991], prefer="date").kind == "date"
    assert parsed([1990, 1991], prefer="period").kind == "period"


def test_yyyymmdd_integers_and_unix_times_are_calendar_times_without_a_time_format():
    for values in ([20240131, 20240229, None], ["20240131", "20240229", None]):  # Parquet ints, CSV text
        p = parsed(values)
        assert p.kind == "date" and p.values.to_list() == [D(2024, 1, 31), D(2024, 2, 29), None]
    assert parsed([20240131], frequency="daily").values.to_list() == [D(2024, 1, 31)]
    p = parsed([1_700_000_000, 1_700_003_600])  # Unix seconds
    assert p.kind == "datetime" and p.values.to_list() == [
        dt.datetime(2023, 11, 14, 22, 13, 20),
        dt.datetime(2023, 11, 14, 23, 13, 20),
    ]
    assert parsed([1_700_000_000_000]).values.to_list() == [dt.datetime(2023, 11, 14, 22, 13, 20)]  # milliseconds
    # mostly dates: a stray value is a row dropped and counted, not every key read as a period index
    p = parsed([20240131, 20240201, 20240202, 0, 20241345])
    assert p.kind == "date" and p.values.to_list() == [D(2024, 1, 31), D(2024, 2, 1), D(2024, 2, 2), None, None]
    assert p.bad.to_list() == [None, None, None, ingest.UNPARSEABLE_TIME, ingest.UNPARSEABLE_TIME]
    p = parsed([1_700_000_000, 1_700_003_600, 0])
    assert p.kind == "datetime" and p.bad.to_list() == [None, None, ingest.UNPARSEABLE_TIME]
    # what may be a period index stays one: half impossible dates, Excel serials, a small index, or 'period'
    assert parsed([20240131, 20241345]).kind == "period"
    assert parsed([45000, 45001]).kind == "period"
    assert parsed([20240131, 20240201], frequency="period").values.to_list() == [20240131, 20240201]
    assert parsed([20240131], prefer="period").kind == "period"


def test_month_and_quarter_text_is_the_first_day_of_that_period():
    p = parsed(["2018-01", "2018-02", "2018/3", "2018-13", None])
    assert p.kind == "date" and p.values.to_list() == [D(2018, 1, 1), D(2018, 2, 1), D(2018, 3, 1), None, None]
    assert p.bad.to_list() == [None, None, None, ingest.UNPARSEABLE_TIME, ingest.MISSING_TIME]
    p = parsed(["2020Q1", "2020-Q2", "2020 q3", "Q4 2020", "Q1-2021"])
    assert p.values.to_list() == [D(2020, 1, 1), D(2020, 4, 1), D(2020, 7, 1), D(2020, 10, 1), D(2021, 1, 1)]
    with pytest.raises(FileRejected, match=r"3 of 4 values are not quarters"):  # mostly quarter-shaped, not quarters
        parsed(["2020Q1", "2020Q5", "2020Q6", "2020Q7"])
    # a time_format that reads nothing: the hint is to fix or drop it, not to set one
    with pytest.raises(
        FileRejected, match=r"not in time_format '%Y-Q%q'.*fix 'time_format' \(strftime\), or remove it"
    ):
        parsed(["2020-Q1", "2020-Q2"], time_format="%Y-Q%q")


def test_month_names_with_a_year_are_the_first_day_of_that_month():
    """Excel's mmm-yy (Mar-24), report headers' 'January 2024', '2024-Jan': months without a
    time_format; a two-digit year never lands in the future; a word that is no month is an
    unparseable value, not a guess."""
    p = parsed(
        ["Jan 2024", "February-2024", "Mar-24", "2024-Apr", "2024 May", "Sept 2024", "Dec-99", "Janx 2024", None]
    )
    assert p.kind == "date"
    assert p.values.to_list() == [
        D(2024, 1, 1),
        D(2024, 2, 1),
        D(2024, 3, 1),
        D(2024, 4, 1),
        D(2024, 5, 1),
        D(2024, 9, 1),
        D(1999, 12, 1),
        None,
        None,
    ]
    assert p.bad.to_list()[-2:] == [ingest.UNPARSEABLE_TIME, ingest.MISSING_TIME]
    # a word and a number that is no month ('soon12', 'batch 2024') is not taken for one: the
    # rejection lists every layout tried, not 'not months (Jan 2024)'
    with pytest.raises(FileRejected, match=r"2 of 2 values are not ISO-8601 dates or datetimes, weeks"):
        parsed(["soon12", "batch 2024"])


def test_pandas_float_written_integer_times_in_a_csv_read_as_the_integers():
    """A CSV year or Unix-time column with a gap is written by pandas as 1970.0: the docs' whole
    floats, read as the integers, as from a Parquet float column."""
    p = parsed(["1970.0", "1971.0", None, "1972.0"])
    assert p.kind == "date" and p.values.to_list() == [D(1970, 1, 1), D(1971, 1, 1), None, D(1972, 1, 1)]
    p = parsed(["1714521600000.0", "1714608000000.0", ""])
    assert p.kind == "datetime" and p.values.to_list()[:2] == [dt.datetime(2024, 5, 1), dt.datetime(2024, 5, 2)]


def test_days_written_with_a_utc_offset_at_local_midnight_stay_those_days():
    """pandas writes a tz-aware daily index as '2024-03-31 00:00:00+02:00': in UTC that is the
    evening before (and after a DST change an hour earlier still); as with tz-aware Parquet,
    values that are all local midnight are the local dates. One time of day keeps datetimes."""
    p = parsed(["2024-01-01 00:00:00+01:00", "2024-03-31 00:00:00+02:00", "2024-04-01T00:00Z", None])
    assert p.kind == "date" and p.values.to_list() == [D(2024, 1, 1), D(2024, 3, 31), D(2024, 4, 1), None]
    p = parsed(["2024-01-01 00:00:00+01:00", "2024-01-01 05:00:00+01:00"])
    assert p.kind == "datetime" and p.values.to_list() == [dt.datetime(2023, 12, 31, 23), dt.datetime(2024, 1, 1, 4)]


def test_a_named_period_index_like_m5s_d_1_is_a_period_index_never_years():
    p = parsed(["d_1", "d_2", "d_1941", None])
    assert p.kind == "period" and p.values.to_list() == [1, 2, 1941, None]
    p = parsed(["d_1000", "d_1001"])  # a later file's slice: in the years' range, still periods
    assert p.kind == "period" and p.values.to_list() == [1000, 1001]


def test_a_declared_daily_or_hourly_frequency_floors_times_of_day_to_the_period():
    """Transactions at 08:26 and 14:02 are one day's rows of a daily use case: floored to the
    day, the duplicates policy adds them up (and counts the merge); undeclared, times stay."""
    p = parsed(["12/1/2010 8:26", "12/1/2010 14:02"], time_format="%m/%d/%Y %H:%M", frequency="daily")
    assert p.values.to_list() == [dt.datetime(2010, 12, 1)] * 2
    p = parsed(["2010-12-01 08:26", "2010-12-01 09:59:59"], frequency="hourly")
    assert p.values.to_list() == [dt.datetime(2010, 12, 1, 8), dt.datetime(2010, 12, 1, 9)]
    p = parsed(["2010-12-01 08:26", "2010-12-01 09:59:59"])
    assert p.values.to_list() == [dt.datetime(2010, 12, 1, 8, 26), dt.datetime(2010, 12, 1, 9, 59, 59)]


def test_iso_week_text_is_the_monday_of_that_week():
    p = parsed(["2024-W05", "2024W01", "2020-W53", "2021-W53", None])
    assert p.kind == "date"
    assert p.values.to_list() == [D(2024, 1, 29), D(2024, 1, 1), D(2020, 12, 28), None, None]
    assert p.bad.to_list() == [None, None, None, ingest.UNPARSEABLE_TIME, ingest.MISSING_TIME]


def _parts_spec(parts: dict[str, str]):
    body = regression_body(time_column="when", time_parts=parts, holdout={"fraction": 0.25})
    return make_spec(body)


def test_a_time_spread_over_year_month_day_hour_columns_is_one_time_column():
    """Exports that give Year, Month (number or name), Day and Hour in columns of their own: the
    parts make the time column, and are gone from bronze; a month 13 or a 'Foo' is an
    unparseable time (its parts shown), a missing part a missing time."""
    spec = _parts_spec({"year": "Year", "month": "Month", "day": "Day", "hour": "Hour"})
    assert spec.landing_columns == ["segment", "Year", "Month", "Day", "Hour", "x1", "x2", "y"]
    frame = pl.DataFrame(
        {
            "segment": ["a"] * 6,
            "Year": [2013, 2013, 2013, 2013, 2013, None],
            "Month": ["3", "Mar", "March", "13", "3", "3"],
            "Day": [1, 1, 2, 1, 31, 1],
            "Hour": [0, 23, 7, 1, 2, 3],
            "x1": [1.0] * 6,
            "x2": [2.0] * 6,
            "y": [1.0] * 6,
        }
    )
    out, kind = normalise_file(frame, spec)
    assert kind == "datetime" and "Year" not in out.columns and "Month" not in out.columns
    assert out["when"].to_list() == [
        dt.datetime(2013, 3, 1, 0),
        dt.datetime(2013, 3, 1, 23),
        dt.datetime(2013, 3, 2, 7),
        None,
        dt.datetime(2013, 3, 31, 2),
        None,
    ]
    assert out[ingest.DROP].to_list() == [None, None, None, ingest.UNPARSEABLE_TIME, None, ingest.MISSING_TIME]


def test_year_with_month_quarter_or_week_columns():
    def times(parts: dict[str, str], **columns) -> list:
        n = len(next(iter(columns.values())))
        frame = pl.DataFrame({"segment": ["a"] * n, **columns, "x1": [1.0] * n, "x2": [1.0] * n, "y": [1.0] * n})
        return normalise_file(frame, _parts_spec(parts))[0]["when"].to_list()

    months = times({"year": "yr", "month": "mo"}, yr=["2020", "2020", "2021"], mo=["01", "dec", "2.0"])
    assert months == [D(2020, 1, 1), D(2020, 12, 1), D(2021, 2, 1)]
    quarters = times({"year": "yr", "quarter": "q"}, yr=[2020, 2020], q=["Q1", "4"])
    assert quarters == [D(2020, 1, 1), D(2020, 10, 1)]
    weeks = times({"year": "yr", "week": "wk"}, yr=[2024, 2024], wk=["5", "W01"])
    assert weeks == [D(2024, 1, 29), D(2024, 1, 1)]
    minutes = times(
        {"year": "y4", "month": "m", "day": "d", "hour": "h", "minute": "mi"}, y4=[2024], m=[2], d=[29], h=[9], mi=[5]
    )
    assert minutes == [dt.datetime(2024, 2, 29, 9, 5)]


@pytest.mark.parametrize(
    "parts, error",
    [
        ({"month": "m", "day": "d"}, r"make no time; use one of: year\+quarter"),
        ({"year": "y", "day": "d"}, "make no time"),
        ({"year": "x1", "month": "m"}, "also key, feature or target"),
        ({"year": "m", "month": "m"}, "names a column twice"),
    ],
)
def test_time_parts_that_make_no_time_are_a_configuration_error(parts, error):
    with pytest.raises(ValueError, match=error):
        _parts_spec(parts)
    with pytest.raises(ValueError, match="exclude each other"):
        make_spec(regression_body(time_column="t", time_parts={"year": "y", "month": "m"}, time_format="%Y"))


# --- one file's columns and row reasons -----------------------------------------------------
def test_keys_and_categoricals_become_text_and_bad_targets_are_marked():
    spec = make_spec(regression_body(categorical_features=["day"]))
    frame = pl.DataFrame(
        {
            "segment": [12, 12, 7, 7, None, 7],
            "x1": [1.0] * 6,
            "x2": [2] * 6,
            "day": pl.Series([1, 2, 3, 4, 5, 6], dtype=pl.Int8),
            "y": [1.0, None, float("nan"), float("inf"), 1.0, -float("inf")],
        }
    )
    out, kind = normalise_file(frame, spec)
    assert kind is None
    assert out.schema["segment"] == pl.Utf8 and out["segment"].to_list()[:3] == ["12", "12", "7"]
    assert out.schema["day"] == pl.Utf8
    assert out[ingest.DROP].to_list() == [
        None,
        ingest.TARGET_NULL,
        ingest.TARGET_NAN,
        ingest.TARGET_INF,
        ingest.NULL_KEY,
        ingest.TARGET_INF,
    ]


def test_text_in_a_numeric_target_is_counted_not_a_number_and_scoring_keeps_every_row():
    spec = make_spec(regression_body())
    y = ["1.5", "kg", None, "n/a", " NA ", "-", "?", "null", "."]  # an export's tokens for missing are null
    frame = pl.DataFrame({"segment": ["a"] * 9, "x1": list(range(9)), "x2": list(range(9)), "y": y})
    out, _ = normalise_file(frame, spec)
    assert out.schema["y"] == pl.Float64 and out["y"].to_list() == [1.5] + [None] * 8
    assert out[ingest.DROP].to_list() == [None, ingest.TARGET_TEXT] + [ingest.TARGET_NULL] * 7
    scoring, _ = normalise_file(frame.drop("y"), spec, scoring=True)
    assert scoring[ingest.DROP].to_list() == [None] * 9
    with pytest.raises(FileRejected, match=r"missing required column\(s\) \['y'\]"):
        normalise_file(frame.drop("y"), spec)


def test_numbers_written_as_text_with_thousands_separators_or_a_decimal_comma():
    values = pl.Series(["1,234.5", " 7 ", "-12,345,678", "12 kg", "1,23", None])
    assert pl.select(ingest.to_number(pl.lit(values))).to_series().to_list() == [
        1234.5,
        7.0,
        -12345678.0,
        None,
        None,
        None,
    ]
    # SAP writes a negative with its minus last, typesetting tools with U+2212; '12-3' is no number
    signs = pl.Series(["12.50-", "1,234.5-", "\u221212.5", "12-3", "-3-"])
    assert pl.select(ingest.to_number(pl.lit(signs))).to_series().to_list() == [-12.5, -1234.5, -12.5, None, None]
    flags = pl.Series(["t", "F", "TRUE", "false", "yes"])  # PostgreSQL's t/f and true/false are 1/0
    assert pl.select(ingest.to_number(pl.lit(flags))).to_series().to_list() == [1.0, 0.0, 1.0, 0.0, None]
    # database clients' nulls and Excel's error values are missing values, not text
    tokens = pl.Series(["\\N", "(null)", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "gold"])
    assert pl.select(ingest.is_written(pl.lit(tokens))).to_series().to_list() == [False] * 6 + [True]
    money = pl.Series(["$1,234.50", "-$12", "12%", " 3.5 % ", "(1,234.50)", "€ 7", "7 £", "$", "12 kg%", "(x)"])
    assert pl.select(ingest.to_number(pl.lit(money))).to_series().to_list() == [
        1234.5,
        -12.0,
        12.0,
        3.5,
        -1234.5,
        7.0,
        7.0,
        None,
        None,
        None,
    ]
    european = pl.Series(["1.234,5", "3,5", "7", "1,234.5"])
    assert pl.select(ingest.to_number(pl.lit(european), decimal_comma=True)).to_series().to_list() == [
        1234.5,
        3.5,
        7.0,
        None,
    ]
    assert pl.select(
        ingest.to_number(pl.lit(pl.Series(["1.234,50 €", "12,5%"])), decimal_comma=True)
    ).to_series().to_list() == [1234.5, 12.5]
    # a leading zero is no thousands group: 0,125 is a decimal comma's number, never 125
    zero = pl.Series(["0,125", "0.125"])
    assert pl.select(ingest.to_number(pl.lit(zero))).to_series().to_list() == [None, 0.125]
    assert pl.select(ingest.to_number(pl.lit(zero), decimal_comma=True)).to_series().to_list() == [0.125, 0.125]
    spaced = pl.Series(["12\u202f035,88", "1 234 567,5", "12\u00a0035", "12 35,5"])  # fr/sv/pl exports
    assert pl.select(ingest.to_number(pl.lit(spaced), decimal_comma=True)).to_series().to_list() == [
        12035.88,
        1234567.5,
        12035.0,
        None,
    ]


def test_a_target_that_is_mostly_text_rejects_the_file_with_what_to_set():
    spec = make_spec(regression_body())
    points = make_spec(regression_body(source={"path": "landing/x/*.csv", "csv": {"decimal_comma": False}}))
    frame = pl.DataFrame({"segment": ["a"] * 3, "x1": [1, 2, 3], "x2": [1, 2, 3], "y": ["1,5", "2,5", "3"]})
    with pytest.raises(FileRejected, match=r"column 'y' writes '1,5', a decimal comma, where the source declares a"):
        normalise_file(frame, points)  # declared a decimal point, and the file shows commas only
    with pytest.raises(
        FileRejected, match=r"target 'y': 2 of 3 values are not numbers \(e.g. '1,5', '2,5'\); .*decimal_comma: true"
    ):  # with a decimal point beside them, the commas are not numbers
        normalise_file(frame.with_columns(x1=pl.Series(["1.5", "2", "3"])), points)
    with pytest.raises(FileRejected, match=r"'3 kg'.*strip units"):
        normalise_file(frame.with_columns(y=pl.lit("3 kg")), spec)
    ok, _ = normalise_file(frame.with_columns(y=pl.Series(["1,234.5", "2", "3 kg"])), spec)
    assert ok["y"].to_list() == [1234.5, 2.0, None] and ok[ingest.DROP].to_list() == [None, None, ingest.TARGET_TEXT]
    # mostly missing is not mostly text: the rows are dropped as null targets, the file is read
    missing, _ = normalise_file(frame.with_columns(y=pl.Series(["NA", "N/A", "3"])), spec)
    assert missing[ingest.DROP].to_list() == [ingest.TARGET_NULL, ingest.TARGET_NULL, None]
    european = make_spec(regression_body(source={"path": "landing/x/*.csv", "csv": {"decimal_comma": True}}))
    for declared in (european, spec):  # undeclared, the file's '1,5' shows its decimal comma
        out, _ = normalise_file(frame, declared)
        assert out["y"].to_list() == [1.5, 2.5, 3.0]


def test_a_column_writing_a_separator_both_as_thousands_and_as_a_decimal_mark_rejects_the_file():
    """'56,300' alone is 56300 and '0,25' alone is not a number; together the column writes ','
    as a decimal mark, so 56,300 may be 56.3: the file is rejected, not read 1000x off. With
    decimal_comma declared, '1.810' beside '1.5' is the same clash; '1,234.5' beside '12,345'
    (a thousands separator and a decimal point) is none."""
    spec = make_spec(regression_body(source={"path": "landing/x/*.csv", "csv": {"decimal_comma": False}}))
    frame = pl.DataFrame({"segment": ["a"] * 3, "x1": [1, 2, 3], "x2": [1, 2, 3], "y": ["56,300", "0,25", "12"]})
    with pytest.raises(
        FileRejected,
        match=r"target 'y': '56,300' would read as thousands .*as a decimal mark \('0,25'\).*decimal_comma: true",
    ):
        normalise_file(frame, spec)
    # undeclared, '0,25' shows the file's decimal comma, of which 56,300 is one too
    out, _ = normalise_file(frame, make_spec(regression_body()))
    assert out["y"].to_list() == [56.3, 0.25, 12.0]
    european = make_spec(regression_body(source={"path": "landing/x/*.csv", "csv": {"decimal_comma": True}}))
    with pytest.raises(FileRejected, match=r"feature 'x1': '1.810' would read as thousands .*\('1.5'\)"):
        normalise_file(frame.with_columns(x1=pl.Series(["1.810", "1.5", "2"]), y=pl.Series(["1", "2", "3"])), european)
    out, _ = normalise_file(frame.with_columns(y=pl.Series(["1,234.5", "12,345", "3"])), spec)
    assert out["y"].to_list() == [1234.5, 12345.0, 3.0]


def test_pandas_periods_of_any_frequency_are_the_times_they_start_at():
    """pandas numbers periods its own way per frequency (weeks from a Monday, business days):
    pandas itself turns them into start dates (times, under a day); a missing one stays missing."""
    import pandas as pd
    import pyarrow as pa

    def read(values: list[str | None], freq: str) -> list[Any]:
        table = pa.Table.from_pandas(pd.DataFrame({"p": pd.PeriodIndex(values, freq=freq)}))
        return ingest.parquet_types(pl.from_arrow(table)).to_series().to_list()

    assert read(["2024-01", None, "2024-12"], "M") == [dt.date(2024, 1, 1), None, dt.date(2024, 12, 1)]
    assert read(["2024Q2"], "Q") == [dt.date(2024, 4, 1)]
    assert read(["2024-01-03"], "W-SUN") == [dt.date(2024, 1, 1)]  # the week (Mon-Sun) holding it
    assert read(["2024-01-03 07:00"], "h") == [dt.datetime(2024, 1, 3, 7)]


def test_an_undeclared_decimal_mark_is_the_one_each_file_shows_and_a_semicolon_file_showing_none_is_rejected():
    """Without 'decimal_comma', a file's text numbers decide: a comma with other than three digits
    after it (3,5; 0,125) or after dot groups (1.234,5) shows a decimal comma, the same swapped a
    decimal point. A ';'-separated export (Europe's) writing only 1.234-like numbers cannot be
    read without a guess a thousand times off half the time: rejected, naming both readings."""
    spec = make_spec(regression_body())

    def rules(y: list[str], x1: list[str], separator: str | None, use: Any = spec) -> Any:
        frame = pl.DataFrame({"segment": ["a"] * len(y), "x1": x1, "x2": [1] * len(y), "y": y})
        found = ingest.file_rules(frame, use, separator=separator)
        out = ingest.normalise_rows(frame, use, found)
        return found.decimal_comma, out["y"].to_list(), out["x1"].to_list()

    german = (["1.234", "12.500", "987"], ["1,5", "2", "0,125"])
    assert rules(*german, ";") == (True, [1234.0, 12500.0, 987.0], [1.5, 2.0, 0.125])
    assert rules(["1.234.567", "2"], ["1", "2"], ";") == (True, [1234567.0, 2.0], [1.0, 2.0])
    assert rules(["1.234", "0.5", "1234.567"], ["1", "2", "3"], ";") == (False, [1.234, 0.5, 1234.567], [1, 2, 3])
    # nothing shown: a comma file's 1.234 is a decimal, as ever; a ';' file's is rejected
    assert rules(["1.234", "12.500"], ["1", "2"], ",") == (False, [1.234, 12.5], [1.0, 2.0])
    shapes = (("1.234", "1234", "1.234", ";", "';'"), ("1,234", "1.234", "1234", "|", "'|'"))
    for value, comma, point, separator, named in (*shapes, ("1.005", "1005", "1.005", "\t", "tab")):
        with pytest.raises(FileRejected) as rejected:  # ';', '|' and tab exports alike
            rules([value, "987"], ["1", "2"], separator)
        assert str(rejected.value).startswith(
            f"column 'y' writes '{value}': {comma} with a decimal comma, {point} with a decimal point, and no number "
            f"in this {named}-separated file"
        )
        assert "'csv: {decimal_comma: true}'" in str(rejected.value)
    for declared, y in ((True, [1234.0, 987.0]), (False, [1.234, 987.0])):
        body = regression_body(source={"path": "landing/x/*.csv", "csv": {"decimal_comma": declared}})
        assert rules(["1.234", "987"], ["1", "2"], ";", make_spec(body))[:2] == (declared, y)
    # a file of another tool among declared ones: its 1.250 beside another column's 1.5 was 1250
    commas = make_spec(regression_body(source={"path": "landing/x/*.csv", "csv": {"decimal_comma": True}}))
    with pytest.raises(FileRejected, match=r"column 'x1' writes '1.5', a decimal point, where the source declares a "):
        rules(["1.250", "2.500"], ["1.5", "2"], ";", commas)
    assert rules(["1.25", "2"], ["1.5", "2"], ";", commas) == (True, [1.25, 2.0], [1.5, 2.0])  # nothing misread
    # a file showing both keeps the decimal point; its comma column is then text, said by training_set
    assert rules(["1.5", "2"], ["1,5", "2"], ";") == (False, [1.5, 2.0], ["1,5", "2"])


def test_a_numeric_feature_of_formatted_numbers_becomes_numbers_but_real_text_stays_for_training_set_to_name():
    spec = make_spec(regression_body())
    frame = pl.DataFrame({"segment": ["a"] * 2, "x1": ["1,000", "2,500.5"], "x2": ["1", "gold"], "y": [1.0, 2.0]})
    out, _ = normalise_file(frame, spec)
    assert out["x1"].to_list() == [1000.0, 2500.5] and out["x2"].to_list() == ["1", "gold"]
    # an export's tokens for a missing value leave a feature numeric, with those values missing
    out, _ = normalise_file(frame.with_columns(x2=pl.Series(["NA", " 3 "])), spec)
    assert out["x2"].to_list() == [None, 3.0]


def test_key_values_are_stripped_and_an_empty_key_is_a_missing_one():
    spec = make_spec(regression_body())
    frame = pl.DataFrame(
        {"segment": ["a", "a ", " a", "A", "", "  ", None], "x1": [1] * 7, "x2": [1] * 7, "y": [1.0] * 7}
    )
    out, _ = normalise_file(frame, spec)
    assert out["segment"].to_list() == ["a", "a", "a", "A", None, None, None]
    assert out[ingest.DROP].to_list() == [None] * 4 + [ingest.NULL_KEY] * 3


def test_anomaly_rows_without_a_label_are_kept_for_the_detector():
    """A detector is fitted on features alone: a row nobody labelled (null, NaN, N/A) still
    trains it, so ingest keeps it (its label null); an inf label is no label and is dropped."""
    spec = make_spec(regression_body(task="anomaly", metric="f1"))
    frame = pl.DataFrame(
        {"segment": ["a"] * 5, "x1": [1] * 5, "x2": [1] * 5, "y": [1.0, None, float("nan"), 0.0, float("inf")]}
    )
    out, _ = normalise_file(frame, spec)
    assert out[ingest.DROP].to_list() == [None, None, None, None, ingest.TARGET_INF]
    assert out["y"].to_list()[:4] == [1, None, None, 0]
    text, _ = normalise_file(frame.with_columns(y=pl.Series(["TRUE", "N/A", "", "false", "1"])), spec)
    assert text[ingest.DROP].to_list() == [None] * 5 and text["y"].to_list() == ["TRUE", None, None, "false", "1"]


def test_one_key_written_two_ways_by_unicode_forms_or_excels_formula_text_is_one_key():
    """'Zürich' composed (Windows) and decomposed (macOS, NFD) were two keys both shown as
    Zürich; Excel's '="0012"' (how it keeps leading zeros) was a key apart from 0012."""
    import unicodedata

    spec = make_spec(regression_body())
    values = ["Z\u00fcrich", unicodedata.normalize("NFD", "Z\u00fcrich"), '="0012"', "0012", '=""', "=x"]
    frame = pl.DataFrame({"segment": values, "x1": [1] * 6, "x2": [1] * 6, "y": [1.0] * 6})
    out, _ = normalise_file(frame, spec)
    assert out["segment"].to_list() == ["Z\u00fcrich", "Z\u00fcrich", "0012", "0012", None, "=x"]


def test_a_float_key_column_from_pandas_gives_the_integer_ids_and_nan_is_missing():
    spec = make_spec(regression_body())
    frame = pl.DataFrame(
        {"segment": [12.0, -3.0, 1.5, float("nan"), None], "x1": [1] * 5, "x2": [1] * 5, "y": [1.0] * 5}
    )
    out, _ = normalise_file(frame, spec)
    assert out["segment"].to_list() == ["12", "-3", "1.5", None, None]
    assert out[ingest.DROP].to_list() == [None, None, None, ingest.NULL_KEY, ingest.NULL_KEY]


def test_header_names_match_up_to_case_and_surrounding_spaces_when_unambiguous():
    match = ingest.match_columns
    assert match(["store", "y"], [" Store ", "Y", "other"]) == {" Store ": "store", "Y": "y"}
    assert match(["store"], ["store", "STORE"]) == {"store": "store"}  # the exact name wins
    assert match(["store"], ["Store", "STORE"]) == {}  # two candidates: no guess


# --- duplicates -----------------------------------------------------------------------------
def weekly(**overrides):
    if overrides.get("duplicates") == "keep":  # forecasts refuse 'keep': the same rows as timed events
        overrides.update(task="regression", holdout={"fraction": 0.25})
    return make_spec(forecast_body(lags=[], **overrides))


def landed(files: list[list[tuple]]) -> pl.DataFrame:
    """Rows (store, week, quantity, price) per file, normalised and indexed like the stage does."""
    spec = weekly()
    frames = []
    for i, rows in enumerate(files):
        frame = pl.DataFrame(
            rows,
            schema={"store": pl.Utf8, "week_start": pl.Utf8, "quantity": pl.Float64, "price": pl.Float64},
            orient="row",
        ).with_columns(pl.lit("b").alias("brand"))
        out, _ = normalise_file(frame, spec)
        frames.append(out.with_columns(pl.lit(i, dtype=pl.Int32).alias(FILE)))
    return pl.concat(frames)


W1, W2 = "2024-01-01", "2024-01-08"
ONE_FILE = [[("s1", W1, 1.0, 10.0), ("s1", W1, 3.0, 20.0), ("s1", W1, 5.0, 30.0), ("s1", W2, 7.0, 1.0)]]


def counts_of(res: ingest.Resolved) -> dict:
    return {
        (r["store"], r["reason"], r["kind"]): r["n"]
        for r in ingest.per_key_counts(res.counts, ["store", "brand"]).iter_rows(named=True)
    }


def quantities(res: ingest.Resolved) -> list[tuple]:
    return sorted(res.data.select("week_start", "quantity", "price").iter_rows())


@pytest.mark.parametrize(
    ("policy", "rows", "reason", "kind"),
    [
        ("keep", [(D(2024, 1, 1), 1.0, 10.0), (D(2024, 1, 1), 3.0, 20.0), (D(2024, 1, 1), 5.0, 30.0)], None, None),
        ("first", [(D(2024, 1, 1), 1.0, 10.0)], "duplicate (key, time) removed by policy 'first'", "dropped"),
        ("last", [(D(2024, 1, 1), 5.0, 30.0)], "duplicate (key, time) removed by policy 'last'", "dropped"),
        ("sum", [(D(2024, 1, 1), 9.0, 20.0)], "duplicate (key, time) merged by policy 'sum'", "merged"),
        ("mean", [(D(2024, 1, 1), 3.0, 20.0)], "duplicate (key, time) merged by policy 'mean'", "merged"),
    ],
)
def test_duplicate_policies_inside_one_file(policy, rows, reason, kind):
    res = resolve(landed(ONE_FILE), weekly(duplicates=policy))
    assert quantities(res) == sorted([*rows, (D(2024, 1, 8), 7.0, 1.0)])
    assert res.rows_in["rows_in"].to_list() == [4]
    assert counts_of(res) == ({} if reason is None else {("s1", reason, kind): 2})
    assert res.data.height + res.counts["n"].sum() == 4


def test_error_policy_fails_only_the_key_with_duplicates():
    files = [[("s1", W1, 1.0, 1.0), ("s1", W1, 2.0, 1.0), ("s1", W2, 3.0, 1.0), ("s2", W1, 4.0, 1.0)]]
    res = resolve(landed(files), weekly(), file_names={0: "landing/x/a.csv"})
    assert weekly().duplicate_policy == "error"
    assert res.data["store"].to_list() == ["s2"]
    (reason,) = res.failures.values()
    assert list(res.failures) == [("s1", "b")]
    assert "1 row(s) repeat a (store, brand, week_start)" in reason and "landing/x/a.csv" in reason
    assert "week_start=2024-01-01" in reason and "one of last, first, sum, mean" in reason  # no keep for forecasts
    assert counts_of(res) == {("s1", "key failed: duplicate (key, time)", "dropped"): 3}


def test_a_later_file_replaces_earlier_rows_of_the_same_key_and_time_for_every_policy():
    files = [
        [("s1", W1, 1.0, 1.0), ("s1", W2, 2.0, 1.0)],
        [("s1", W1, 10.0, 1.0), ("s1", W1, 20.0, 1.0)],  # a re-landed week, itself repeated
    ]
    for policy, kept in [("keep", [10.0, 20.0]), ("last", [20.0]), ("sum", [30.0])]:
        res = resolve(landed(files), weekly(duplicates=policy))
        week1 = res.data.filter(pl.col("week_start") == D(2024, 1, 1))["quantity"].to_list()
        assert sorted(week1) == kept, policy
        assert res.data.filter(pl.col("week_start") == D(2024, 1, 8))["quantity"].to_list() == [2.0]
        c = counts_of(res)
        assert c[("s1", ingest.LATER_FILE, "merged")] == 1
        assert sum(c.values()) + res.data.height == 4


def test_dropped_rows_are_counted_per_key_and_file_and_never_reach_the_policy():
    files = [
        [("s1", W1, None, 1.0), ("s1", "2024-02-30", 1.0, 1.0), ("s1", W2, float("nan"), 1.0)],
        [("s1", W2, 5.0, 1.0)],
    ]
    res = resolve(landed(files), weekly(duplicates="error"))
    assert res.failures == {} and res.data["quantity"].to_list() == [5.0]
    by_file = {(r[FILE], r["reason"]): r["n"] for r in ingest.per_file_counts(res.counts).iter_rows(named=True)}
    assert by_file == {(0, ingest.TARGET_NULL): 1, (0, ingest.UNPARSEABLE_TIME): 1, (0, ingest.TARGET_NAN): 1}


def test_null_key_rows_are_set_aside_not_counted_against_a_key():
    spec = make_spec(regression_body())
    frame = pl.DataFrame({"segment": ["a", None, "a"], "x1": [1, 2, 3], "x2": [1, 2, 3], "y": [1.0, 2.0, 3.0]})
    out, _ = normalise_file(frame, spec)
    res = resolve(out.with_columns(pl.lit(0, dtype=pl.Int32).alias(FILE)), spec)
    assert res.null_key_rows.height == 1 and res.data.height == 2
    assert res.rows_in.to_dicts() == [{"segment": "a", "rows_in": 2}]
    assert res.counts.is_empty()


def test_an_unlabelled_anomaly_use_case_reads_no_target_and_keeps_simultaneous_events():
    body = regression_body(
        task="anomaly", target=None, metric="flag_rate", time_column="ts", holdout={"fraction": 0.25}
    )
    spec = make_spec(body)
    assert spec.duplicate_policy == "keep"
    frame = pl.DataFrame(
        {"segment": ["a", "a"], "ts": ["2024-01-01 10:00", "2024-01-01 10:00"], "x1": [1, 2], "x2": [3, 4]}
    )
    out, kind = normalise_file(frame, spec)
    assert kind == "datetime" and out[ingest.DROP].to_list() == [None, None]
    res = resolve(out.with_columns(pl.lit(0, dtype=pl.Int32).alias(FILE)), spec)
    assert res.data.height == 2 and res.counts.is_empty()


def test_text_labels_are_stripped_and_an_exports_missing_value_is_no_class():
    spec = make_spec(regression_body(task="classification", metric="f1"))
    labels = ["yes", " no", "N/A", "", "-", "yes ", None]
    frame = pl.DataFrame({"segment": ["a"] * 7, "x1": list(range(7)), "x2": list(range(7)), "y": labels})
    out, _ = normalise_file(frame, spec)
    assert out["y"].to_list() == ["yes", "no", None, None, None, "yes", None]
    assert out[ingest.DROP].to_list() == [None, None] + [ingest.TARGET_NULL] * 3 + [None, ingest.TARGET_NULL]


def test_anomaly_labels_other_than_1_0_or_true_false_fail_the_key_saying_what_to_export():
    from many_models_platform.core.features import KeyDataError, check_anomaly_labels

    for fine in ([0, 1, None], [True, False], ["TRUE", "false"], [0.0, 1.0]):
        check_anomaly_labels("y", pl.Series(fine))
    with pytest.raises(KeyDataError, match=r"got 'anomaly', 'normal'$"):
        check_anomaly_labels("y", pl.Series(["anomaly", "normal", "normal"]))
    with pytest.raises(KeyDataError, match=r"got '-1'.*export -1, an outlier, as 1 and 1 as 0"):
        check_anomaly_labels("y", pl.Series([-1, 1, 1]))


def test_month_names_of_german_french_spanish_italian_dutch_and_portuguese_exports():
    """'1. Januar 2024', '15 mars 2024', '14 juil. 2024', 'März 2024', '15 de marzo de 2024': a
    European export's month names read as English ones do, whole words only (French juin and juillet share their first
    three letters); a word no language has is no month."""

    d = dt.date
    files = {  # one file each: its values and the dates they are
        "de": {"1. Januar 2024": d(2024, 1, 1), "15. März 2024": d(2024, 3, 15), "3. Dez. 2024": d(2024, 12, 3)},
        "de caps": {"15-MÄR-2024": d(2024, 3, 15), "1. Okt 2024": d(2024, 10, 1)},
        "fr": {"2 juin 2024": d(2024, 6, 2), "14 juil. 2024": d(2024, 7, 14), "1 févr. 2024": d(2024, 2, 1)},
        "fr long": {"1 août 2024": d(2024, 8, 1), "25 décembre 2024": d(2024, 12, 25)},
        "es it nl": {"15 marzo 2024": d(2024, 3, 15), "1 mei 2024": d(2024, 5, 1), "3 mrt 2024": d(2024, 3, 3)},
        "months": {"Januar 2024": d(2024, 1, 1), "juin 2024": d(2024, 6, 1), "juillet 2024": d(2024, 7, 1)},
        "it pt": {"gennaio 2024": d(2024, 1, 1), "outubro 2024": d(2024, 10, 1), "Juix 2024": None},
        "es pt de": {"15 de marzo de 2024": d(2024, 3, 15), "1 De Abr. Del 2024": d(2024, 4, 1)},
        "pt de": {"2 de maio de 24": d(2024, 5, 2), "9 de dezembro de 2024": d(2024, 12, 9)},
    }
    for name, expected in files.items():
        assert parse_time(pl.Series(list(expected)), column="t").values.to_list() == list(expected.values()), name


def test_dates_as_locales_write_them_read_with_the_order_the_file_shows():
    """US, European, dotted German, year-first, SAS, Oracle and 'Mar 15, 2024' dates need no
    time_format; whether the day or the month comes first, a number above 12 shows, and a file
    where none does (or where both do) is rejected naming the formats to choose from, unless the
    use case's other files showed the order (``day_first``)."""

    def read(values: list[str], day_first: bool | None = None) -> tuple[list[Any], str]:
        parsed = parse_time(pl.Series(values), column="t", day_first=day_first)
        return parsed.values.to_list(), parsed.kind

    d = dt.date
    assert read(["1/22/20", "12/31/20"]) == ([d(2020, 1, 22), d(2020, 12, 31)], "date")  # JHU's month first
    assert read(["15/03/2024", "01/04/2024"]) == ([d(2024, 3, 15), d(2024, 4, 1)], "date")  # day first
    assert read(["01.04.2024", "02.04.2024"]) == ([d(2024, 4, 1), d(2024, 4, 2)], "date")  # dotted: day first
    assert read(["2024/03/15", "2024/04/01"])[0] == [d(2024, 3, 15), d(2024, 4, 1)]
    assert read(["15-Mar-2024", "15MAR2024", "15-MAR-24", "Mar 15, 2024", "March 15 2024"])[0] == [d(2024, 3, 15)] * 5
    assert read(["03/15/2024 02:00 PM", "03/16/2024 12:00 AM"]) == (
        [dt.datetime(2024, 3, 15, 14), dt.datetime(2024, 3, 16)],
        "datetime",
    )
    assert read(["31/04/2024", "15/03/2024", "16/03/2024"])[0] == [None, d(2024, 3, 15), d(2024, 3, 16)]
    with pytest.raises(FileRejected, match=r"'01/02/2024' could be day/month or month/day.*'%d/%m/%Y'.*'%m/%d/%Y'"):
        read(["01/02/2024", "02/03/2024"])
    with pytest.raises(FileRejected, match=r"some dates give the day first .* and others the month"):
        read(["15/03/2024", "03/15/2024"])
    # the order other files showed reads a file that shows none, never one that shows its own
    assert read(["01/02/2024", "02/02/2024"], day_first=False)[0] == [d(2024, 1, 2), d(2024, 2, 2)]
    # mostly ISO, the newest rows in a locale's layout (the export tool changed): both read, the
    # locale's order from its own values; an ambiguous rest stays unparseable (counted), never guessed
    assert read(["2024-03-19", "2024-03-20", "2024-03-21", "21/03/2024", "22/03/2024"]) == (
        [d(2024, 3, 19), d(2024, 3, 20), d(2024, 3, 21), d(2024, 3, 21), d(2024, 3, 22)],
        "date",
    )
    assert read(["2024-03-19T10:00", "2024-03-20T11:00", "03/21/2024 1:00 PM"])[0][2] == dt.datetime(2024, 3, 21, 13)
    assert read(["2024-03-19", "2024-03-20", "2024-03-21", "01/02/2024"])[0][3] is None
    assert read(["01/02/2024", "13/02/2024"], day_first=False)[0] == [d(2024, 2, 1), d(2024, 2, 13)]


def test_excel_serial_dates_read_with_time_format_excel_and_are_named_where_integers_fail():
    def read(values: list[Any], **kw: Any) -> tuple[list[Any], str]:
        parsed = parse_time(pl.Series(values), column="t", **kw)
        return parsed.values.to_list(), parsed.kind

    assert read([45366, 45367], time_format="excel") == ([dt.date(2024, 3, 15), dt.date(2024, 3, 16)], "date")
    assert read([45366.0, float("nan"), 45367.25], time_format="excel") == (
        [dt.datetime(2024, 3, 15), None, dt.datetime(2024, 3, 16, 6)],
        "datetime",
    )
    # a time of day written with six decimals is the second it is 29 ms from, on an hourly grid
    assert read([45366.041667, 45366.083333], time_format="excel")[0] == [
        dt.datetime(2024, 3, 15, 1),
        dt.datetime(2024, 3, 15, 2),
    ]
    noon = dt.datetime(2024, 3, 16, 12)
    assert read(["45366", "45367,5"], time_format="excel")[0] == [dt.datetime(2024, 3, 15), noon]
    with pytest.raises(FileRejected, match=r"cannot be read as daily times; set 'time_format: excel' for Excel"):
        read([45366, 45367], frequency="daily")
    with pytest.raises(FileRejected) as rejected:
        read([1, 2], frequency="daily")
    assert "excel" not in str(rejected.value)
