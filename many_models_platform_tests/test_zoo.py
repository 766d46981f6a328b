"""The real-data zoo: shapes of public panels as users export them, each run by configuration alone
through `mmp run`, with its expected outcome and every dropped or merged row asserted.

The data is generated here (the team has no real files), shaped like what broke before:
integer and two-digit years, ISO text timestamps in Parquet, events sharing timestamps, text
categories, zero-padded ids, constant-zero keys, NaN and inf targets, 220 keys whose first
failures sort late, duplicate periods under each policy, one file read by two use cases, a
count target near zero, and a European Excel export (cp1252, ';', decimal commas, YYYYMMDD dates).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
import yaml

pytestmark = pytest.mark.slow

RIDGE = {"name": "ridge", "estimator": "sklearn.linear_model.Ridge", "params": {"alpha": 1.0}}
LINEAR = {"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}
LGBM = {
    "name": "lightgbm",
    "estimator": "lightgbm.LGBMRegressor",
    "params": {"n_estimators": 20, "num_leaves": 7, "min_child_samples": 3, "n_jobs": 1},
}


def mmp(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMP_", "DAGSTER_HOME"))}
    env.update({"MMP_HOME": str(home), "COLUMNS": "240"})
    return subprocess.run(
        [sys.executable, "-m", "many_models_platform.cli", *args], env=env, capture_output=True, text=True, timeout=900
    )


# --- the datasets -------------------------------------------------------------------------------
def county_panel(rng: np.random.Generator) -> pl.DataFrame:
    """~2,200 counties in real life, 220 here: zero-padded FIPS ids, integer years, a count
    target; keys 160.. (sorting after the first 150) are constant zero, and one key has a NaN
    and an inf count that must be dropped and counted."""
    rows = []
    for i in range(220):
        fips = f"{i + 1:05d}"  # "00001" .. "00220": must not become 1 .. 220
        level = rng.uniform(2, 40)
        for year in range(1980, 2017):
            murders = 0.0 if i >= 160 else float(max(0, round(level + 0.3 * (year - 1980) + rng.normal(0, 2))))
            rows.append({"fips": fips, "year": year, "population": 1000.0 + i + year, "murders": murders})
    frame = pl.DataFrame(
        rows, schema={"fips": pl.Utf8, "year": pl.Int64, "population": pl.Float64, "murders": pl.Float64}
    )
    # "0012" vs "12": a second id that only differs by its leading zeros is another county
    extra = frame.filter(pl.col("fips") == "00012").with_columns(pl.lit("12").alias("fips"), pl.col("murders") + 1)
    bad = frame.filter(pl.col("fips") == "00003").with_columns(
        pl.when(pl.col("year") == 1990)
        .then(float("nan"))
        .when(pl.col("year") == 1991)
        .then(float("inf"))
        .otherwise(pl.col("murders"))
        .alias("murders")
    )
    return pl.concat([frame.filter(pl.col("fips") != "00003"), bad, extra])


def two_digit_years(rng: np.random.Generator) -> pl.DataFrame:
    rows = [
        {"state": s, "yr": y, "income": float(30 + y + rng.normal()), "crime_rate": float(50 + 0.5 * y + rng.normal())}
        for s in ("AL", "AK", "AZ", "AR")
        for y in range(63, 93)
    ]
    return pl.DataFrame(rows)


def daily_iso_parquet(rng: np.random.Generator) -> pl.DataFrame:
    """Daily series per state with ISO-8601 *text* timestamps, as some Parquet exports store them."""
    start = datetime(2020, 3, 1)
    rows = []
    for s in ("NY", "CA", "TX"):
        for d in range(120):
            t = start + timedelta(days=d)
            weekly = 10 if t.weekday() >= 5 else 0
            rows.append(
                {"state": s, "date": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "cases": float(100 + d + weekly + rng.normal())}
            )
    return pl.DataFrame(rows, schema={"state": pl.Utf8, "date": pl.Utf8, "cases": pl.Float64})


def flights(rng: np.random.Generator) -> pl.DataFrame:
    """Flight records per route: many share a departure hour; carrier and weekday are text."""
    carriers = ["UA", "AA", "DL", "B6"]
    rows = []
    for route in ("EWR-LAX", "JFK-SFO", "LGA-ORD"):
        for h in range(60):
            t = datetime(2013, 1, 1, 6) + timedelta(hours=3 * h)
            for _ in range(3):  # three flights leave in the same hour
                carrier = carriers[int(rng.integers(0, 4))]
                effect = {"UA": 5.0, "AA": -3.0, "DL": 0.0, "B6": 12.0}[carrier]
                rows.append(
                    {
                        "route": route,
                        "time_hour": t,
                        "carrier": carrier,
                        "weekday": t.strftime("%A"),
                        "distance": 2000.0 + rng.normal(0, 5),
                        "dep_delay": effect + rng.normal(0, 1),
                    }
                )
    return pl.DataFrame(rows)


def weekly_with_duplicates(rng: np.random.Generator) -> pl.DataFrame:
    """Weekly sales per shop where week 10 appears twice in the same file (two tills)."""
    rows = []
    for shop in ("s1", "s2"):
        for w in range(60):
            day = date(2022, 1, 3) + timedelta(weeks=w)
            rows.append({"shop": shop, "week": day, "price": 2.0 + 0.01 * w, "sales": float(50 + w + rng.normal())})
            if w == 10:
                rows.append({"shop": shop, "week": day, "price": 2.0, "sales": 7.0})
    return pl.DataFrame(rows)


def counts_near_zero(rng: np.random.Generator) -> pl.DataFrame:
    """Weekly counts that fall toward zero: a linear trend extrapolates below it."""
    rows = []
    for k in ("a", "b"):
        for w in range(50):
            rows.append({"site": k, "week": date(2021, 1, 4) + timedelta(weeks=w), "visits": float(max(0, 40 - w))})
    return pl.DataFrame(rows)


def european_export(rng: np.random.Generator) -> bytes:
    """A German Excel export: cp1252, ';' and decimal commas ('1.234,56'), CRLF, a header in
    another case with spaces, a key padded with a space in some rows, dates as YYYYMMDD integers."""
    lines = [" Filiale ;Datum;Preis;Umsatz"]
    for store in ("Zürich", "Köln"):
        for w in range(30):
            day = date(2023, 1, 2) + timedelta(weeks=w)
            padded = f"{store} " if w % 2 else store
            price = f"{2 + rng.random():.2f}".replace(".", ",")
            sales = f"{1000 + 30 * w + rng.normal(0, 5):,.2f}".translate(str.maketrans(",.", ".,"))
            lines.append(f"{padded};{day:%Y%m%d};{price};{sales}")
    return ("\r\n".join(lines) + "\r\n").encode("cp1252")


def excel_serial_days(rng: np.random.Generator) -> pl.DataFrame:
    """A spreadsheet export whose dates are Excel serial day numbers (45292 is 2024-01-01): not
    years, YYYYMMDD or Unix time, so a period index, each day one period."""
    days = range(45_292, 45_352)
    rows = [
        {"shop": shop, "day": day, "sales": float(20 * s + 0.5 * (day - 45_292) + rng.normal())}
        for s, shop in enumerate(("north", "south", "east"))
        for day in days
    ]
    return pl.DataFrame(rows)


def trading_days(rng: np.random.Generator) -> pl.DataFrame:
    """Daily closing prices per ticker on trading days: no weekend, a market holiday (Good
    Friday), ISO dates; a 'close' that follows its own last value (a random walk)."""
    days = pl.date_range(date(2024, 1, 2), date(2024, 6, 28), eager=True)
    days = days.filter((days.dt.weekday() <= 5) & (days != date(2024, 3, 29)))
    rows = []
    for ticker in ("ACME", "GLOBEX", "INITECH"):
        close = float(rng.uniform(50, 150))
        for day in days:
            close += float(rng.normal(0, 1))
            rows.append({"ticker": ticker, "date": day, "close": round(close, 2)})
    return pl.DataFrame(rows)


def air_quality(rng: np.random.Generator) -> pl.DataFrame:
    """Hourly readings per station with the time in four columns (year, month, day, hour), as
    the Beijing multi-site air-quality export has it, and 'NA' where the sensor gave nothing."""
    rows = []
    start = datetime(2013, 3, 1)
    for s, station in enumerate(("Aotizhongxin", "Changping", "Dingling")):
        for h in range(24 * 20):
            t = start + timedelta(hours=h)
            level = 80 + 20 * s + 30 * np.sin(2 * np.pi * t.hour / 24) + rng.normal(0, 5)
            pm = "NA" if rng.random() < 0.02 else f"{level:.1f}"
            rows.append(
                {"No": h + 1, "year": t.year, "month": t.month, "day": t.day, "hour": t.hour, "PM2.5": pm}
                | {"TEMP": round(float(rng.normal(10, 3)), 1), "station": station}
            )
    return pl.DataFrame(rows)


def churn_report(rng: np.random.Generator) -> bytes:
    """A CRM report export: two title lines above the header, text class labels with the
    report's own missing-value token, no time column."""
    lines = ["Churn by country (all segments)", 'Exported 2024-05-01 by "crm", filters: none', ""]
    lines.append("country,tenure_months,monthly_fee,status")
    for country in ("DE", "FR", "NL", "SE", "PL", "IT"):
        for _ in range(150):
            tenure, fee = int(rng.integers(1, 60)), round(float(rng.uniform(10, 90)), 2)
            churned = rng.random() < 1 / (1 + np.exp(0.08 * tenure - 0.03 * fee))
            status = "N/A" if rng.random() < 0.02 else ("churned" if churned else "stayed")
            lines.append(f"{country},{tenure},{fee},{status}")
    return ("\n".join(lines) + "\n").encode()


def machine_alarms(rng: np.random.Generator) -> pl.DataFrame:
    """Hourly machine readings with anomaly labels exported as TRUE/FALSE text (a BI tool's
    boolean) with an N/A where a label is missing, which makes the column text; some spikes
    labelled as anomalies."""
    rows = []
    start = datetime(2024, 3, 1)
    for machine in ("M-01", "M-02", "M-03"):
        for h in range(240):
            spike = rng.random() < 0.04
            rows.append(
                {
                    "machine": machine,
                    "ts": (start + timedelta(hours=h)).strftime("%Y-%m-%d %H:%M"),
                    "temperature": float(rng.normal(60, 2) + (25 if spike else 0)),
                    "vibration": float(rng.normal(1, 0.1) + (2 if spike else 0)),
                    "alarm": "N/A" if h == 5 else ("TRUE" if spike else "FALSE"),
                }
            )
    return pl.DataFrame(rows)


def forecast_case(source: str, keys: list[str], time: str, target: str, **extra) -> dict:
    body = {
        "task": "forecast",
        "source": {"path": source},
        "keys": keys,
        "time_column": time,
        "target": target,
        "holdout": {"periods": 3},
        "horizon": 3,
        "metric": "rmse",
        "min_rows": 10,
        "candidates": [RIDGE],
    }
    body.update(extra)
    return body


ZOO = {
    "counties": forecast_case(
        "landing/counties/*.csv",
        ["fips"],
        "year",
        "murders",
        features=["population"],
        lags=[3],
        non_negative_target=True,
        promotion={},
    ),
    "two_digit": forecast_case(
        "landing/two_digit/*.csv", ["state"], "yr", "crime_rate", features=["income"], time_format="%y"
    ),
    "daily_iso": forecast_case("landing/daily/*.parquet", ["state"], "date", "cases", lags=[7], holdout={"periods": 7}),
    "flights": {
        "task": "regression",
        "source": {"path": "landing/flights/*.csv"},
        "keys": ["route"],
        "time_column": "time_hour",
        "target": "dep_delay",
        "features": ["distance"],
        "categorical_features": ["carrier", "weekday"],
        "holdout": {"fraction": 0.2},
        "metric": "mae",
        "min_rows": 20,
        "candidates": [LINEAR, LGBM],
    },
    **{
        f"dup_{policy}": forecast_case(
            f"landing/dup_{policy}/*.csv", ["shop"], "week", "sales", features=["price"], duplicates=policy
        )
        for policy in ("sum", "mean", "last", "first", "error")
    },
    "serial_days": forecast_case("landing/serial/*.csv", ["shop"], "day", "sales", lags=[3]),
    "counts": forecast_case(
        "landing/counts/*.csv", ["site"], "week", "visits", non_negative_target=True, candidates=[LINEAR]
    ),
    "eu_export": {
        **forecast_case("landing/eu/*.csv", ["filiale"], "datum", "umsatz", features=["preis"], lags=[3]),
        "source": {"path": "landing/eu/*.csv", "csv": {"decimal_comma": True, "encoding": "cp1252"}},
    },
    "stocks": forecast_case(
        "landing/stocks/*.csv", ["ticker"], "date", "close", lags=[5], holdout={"periods": 5}, horizon=5
    ),
    "air": {
        **forecast_case(
            "landing/air/*.csv", ["station"], "hour_start", "PM2.5", lags=[6, 24], holdout={"periods": 6}, horizon=6
        ),
        "features": ["TEMP"],
        "time_parts": {"year": "year", "month": "month", "day": "day", "hour": "hour"},
    },
    "churn": {
        "task": "classification",
        "source": {"path": "landing/churn/*.csv"},
        "keys": ["country"],
        "target": "status",
        "features": ["tenure_months", "monthly_fee"],
        "holdout": {"fraction": 0.25},
        "metric": "accuracy",
        "min_rows": 40,
        "candidates": [
            {"name": "logistic", "estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}}
        ],
    },
    "alarms": {
        "task": "anomaly",
        "source": {"path": "landing/alarms/*.csv"},
        "keys": ["machine"],
        "time_column": "ts",
        "target": "alarm",
        "features": ["temperature", "vibration"],
        "calendar_features": False,
        "holdout": {"fraction": 0.25},
        "metric": "f1",
        "min_rows": 48,
        "candidates": [
            {
                "name": "isolation_forest",
                "estimator": "sklearn.ensemble.IsolationForest",
                "params": {"n_estimators": 50, "contamination": 0.04, "random_state": 0},
            }
        ],
    },
}
# The same county file read by a second use case that needs a column the file does not have.
REJECTING = {
    "counties_by_party": forecast_case("landing/counties/*.csv", ["fips"], "year", "murders", features=["party"])
}


@dataclass
class Zoo:
    home: Path
    landing: Path
    data: dict[str, pl.DataFrame]
    run: subprocess.CompletedProcess
    rejecting: subprocess.CompletedProcess

    def sql(self, query: str, *params) -> list[tuple]:
        con = duckdb.connect(str(self.home / "warehouse" / "warehouse.duckdb"), read_only=True)
        try:
            return con.execute(query, list(params)).fetchall()
        finally:
            con.close()

    def bronze(self, use_case: str) -> pl.DataFrame:
        files = sorted((self.home / "lake" / "bronze" / use_case).glob("*.parquet"))
        return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Zoo:
    rng = np.random.default_rng(7)
    home = tmp_path_factory.mktemp("zoo")
    landing = home / "lake" / "landing"
    data = {
        "counties": county_panel(rng),
        "two_digit": two_digit_years(rng),
        "daily": daily_iso_parquet(rng),
        "flights": flights(rng),
        "dup": weekly_with_duplicates(rng),
        "counts": counts_near_zero(rng),
        "serial": excel_serial_days(rng),
        "stocks": trading_days(rng),
        "air": air_quality(rng),
    }
    for folder, frame in data.items():
        if folder == "dup":
            for policy in ("sum", "mean", "last", "first", "error"):
                (landing / f"dup_{policy}").mkdir(parents=True)
                frame.write_csv(landing / f"dup_{policy}" / "sales.csv")
            continue
        (landing / folder).mkdir(parents=True)
        if folder == "daily":
            frame.write_parquet(landing / folder / "cases.parquet")
        else:
            frame.write_csv(landing / folder / f"{folder}.csv")
    (landing / "eu").mkdir(parents=True)
    (landing / "eu" / "export.csv").write_bytes(european_export(rng))
    (landing / "churn").mkdir(parents=True)
    (landing / "churn" / "churn_report.csv").write_bytes(churn_report(rng))
    (landing / "alarms").mkdir(parents=True)
    machine_alarms(rng).write_csv(landing / "alarms" / "alarms.csv")
    config = home / "zoo.yaml"
    config.write_text(yaml.safe_dump({"use_cases": ZOO}, sort_keys=False))
    run = mmp("run", "--config", str(config), home=home)
    rejecting_config = home / "rejecting.yaml"
    rejecting_config.write_text(yaml.safe_dump({"use_cases": REJECTING}, sort_keys=False))
    rejecting = mmp("run", "--config", str(rejecting_config), home=home)
    return Zoo(home, landing, data, run, rejecting)


def published_keys(zoo: Zoo, use_case: str) -> set[str]:
    rows = zoo.sql("SELECT key FROM key_status WHERE use_case = ? AND stage = 'published' AND status = 'ok'", use_case)
    return {r[0] for r in rows}


def test_the_zoo_runs_by_configuration_alone(zoo):
    out = zoo.run.stdout + zoo.run.stderr
    assert "Traceback" not in out
    # one use case (dup_error) has every key failing on purpose; the others publish
    for use_case in (
        "counties",
        "two_digit",
        "daily_iso",
        "flights",
        "dup_sum",
        "dup_mean",
        "dup_last",
        "dup_first",
        "counts",
        "eu_export",
        "serial_days",
        "churn",
        "alarms",
        "stocks",
        "air",
    ):
        assert published_keys(zoo, use_case), f"{use_case} published nothing\n{out[-3000:]}"


def test_integer_years_and_zero_padded_ids(zoo):
    bronze = zoo.bronze("counties")
    assert bronze.schema["year"] == pl.Date
    assert bronze["year"].min() == date(1980, 1, 1)
    ids = set(bronze["fips"].unique())
    assert "00012" in ids and "12" in ids and "00001" in ids and "1" not in ids
    assert len(ids) == 221


def test_nan_and_inf_targets_are_dropped_and_counted(zoo):
    (row,) = zoo.sql(
        "SELECT rows_in, rows_out, rows_dropped, drop_detail FROM key_status "
        "WHERE use_case = 'counties' AND stage = 'raw' AND key = '00003'"
    )
    rows_in, rows_out, dropped, detail = row
    assert (rows_in, rows_out, dropped) == (37, 35, 2)
    assert "NaN" in detail and "inf" in detail
    assert zoo.bronze("counties").filter(pl.col("fips") == "00003").height == 35


def test_constant_keys_fail_with_a_reason_and_do_not_sink_publishing(zoo):
    """220+ keys whose first failures (constant zero counts) sort after the first 150 keys."""
    failed = zoo.sql(
        "SELECT key, reason FROM key_status WHERE use_case = 'counties' AND stage = 'training_set' "
        "AND status = 'failed' ORDER BY key"
    )
    assert len(failed) == 60
    assert all("constant target" in reason for _, reason in failed)
    assert min(k for k, _ in failed) == "00161"
    assert len(published_keys(zoo, "counties")) == 221 - 60
    (summary,) = zoo.sql("SELECT keys_total, keys_published, rows_dropped FROM run_summary WHERE use_case = 'counties'")
    assert summary == (221, 161, 2)


def test_two_digit_years_with_a_time_format(zoo):
    years = zoo.bronze("two_digit")["yr"]
    assert years.dtype == pl.Date
    assert years.n_unique() == 30
    # "63" is 1963 here, not 2063: a two-digit year never lands in the future
    assert (years.min(), years.max()) == (date(1963, 1, 1), date(1992, 1, 1))
    freq = zoo.sql(
        "SELECT count(*) FROM key_status WHERE use_case = 'two_digit' AND stage = 'training_set' AND status = 'ok'"
    )
    assert freq == [(4,)]


def test_iso_text_timestamps_in_parquet_get_daily_features(zoo):
    bronze = zoo.bronze("daily_iso")
    assert bronze.schema["date"] in (pl.Date, pl.Datetime("us"))
    training = pl.read_parquet(next((zoo.home / "lake" / "training" / "daily_iso").glob("*.parquet")))
    assert "cal_dayofweek" in training.columns and "cal_week" not in training.columns
    predicted = zoo.sql("SELECT count(*) FROM predictions WHERE use_case = 'daily_iso' AND kind = 'forecast'")
    assert predicted == [(3 * 3,)]


def test_events_sharing_timestamps_lose_no_row_and_text_categories_help(zoo):
    landed = zoo.data["flights"]
    assert zoo.bronze("flights").height == landed.height == 540
    dropped = zoo.sql(
        "SELECT sum(rows_dropped) + sum(rows_merged) FROM key_status WHERE use_case = 'flights' AND stage = 'raw'"
    )
    assert dropped == [(0,)]
    # the carrier effect is only learnable from the text column: a mean model would sit near 7 MAE
    maes = [
        v
        for (v,) in zoo.sql(
            "SELECT value FROM key_metrics WHERE use_case = 'flights' AND model_role = 'candidate' AND metric = 'mae'"
        )
    ]
    assert len(maes) == 3 and max(maes) < 2.5, maes


def test_duplicate_periods_under_each_policy(zoo):
    def week10(use_case: str) -> list[float]:
        bronze = zoo.bronze(use_case).filter(pl.col("week") == date(2022, 1, 3) + timedelta(weeks=10)).sort("shop")
        return bronze["sales"].to_list()

    first_value = (
        zoo.data["dup"]
        .filter(pl.col("week") == date(2022, 1, 3) + timedelta(weeks=10))
        .group_by("shop", maintain_order=True)
        .first()["sales"]
        .to_list()
    )
    assert week10("dup_first") == first_value
    assert week10("dup_last") == [7.0, 7.0]
    assert week10("dup_sum") == [pytest.approx(v + 7.0) for v in first_value]
    assert week10("dup_mean") == [pytest.approx((v + 7.0) / 2) for v in first_value]
    for policy, column in (
        ("first", "rows_dropped"),
        ("last", "rows_dropped"),
        ("sum", "rows_merged"),
        ("mean", "rows_merged"),
    ):
        counted = zoo.sql(
            f"SELECT sum({column}), sum(rows_in), sum(rows_out) FROM key_status WHERE use_case = ? AND stage = 'raw'",
            f"dup_{policy}",
        )
        assert counted == [(2, 122, 120)], (policy, counted)
    errors = zoo.sql("SELECT status, reason FROM key_status WHERE use_case = 'dup_error' AND stage = 'raw'")
    assert len(errors) == 2 and all(s == "failed" and "duplicate" in r for s, r in errors)


def test_count_target_never_predicted_below_zero(zoo):
    # the premise: a straight trend through these counts is below zero over the horizon
    visits = zoo.data["counts"].filter(pl.col("site") == "a")["visits"].to_numpy()
    slope, intercept = np.polyfit(np.arange(len(visits)), visits, 1)
    assert slope * (len(visits) + 2) + intercept < 0
    forecast = [
        v for (v,) in zoo.sql("SELECT prediction FROM predictions WHERE use_case = 'counts' AND kind = 'forecast'")
    ]
    assert len(forecast) == 2 * 3
    assert min(forecast) == 0.0  # clipped, not merely positive by luck


def test_a_file_rejected_by_one_use_case_stays_for_the_other(zoo):
    out = zoo.rejecting.stdout
    assert zoo.rejecting.returncode != 0, out
    assert "Traceback" not in out + zoo.rejecting.stderr
    assert "counties.csv" in out and "party" in out
    # the landing file is the user's input: still there, still read by the first use case
    assert (zoo.landing / "counties" / "counties.csv").exists()
    assert not (zoo.home / "lake" / "quarantine" / "counties_by_party").exists() or not any(
        p.name.endswith(".csv") for p in (zoo.home / "lake" / "quarantine" / "counties_by_party").iterdir()
    )
    reasons = zoo.sql("SELECT DISTINCT reason FROM key_status WHERE use_case = 'counties_by_party' AND stage = 'raw'")
    assert reasons and all("rejected" in r and "party" in r for (r,) in reasons)


def test_a_european_excel_export_runs_with_its_dialect_declared(zoo):
    bronze = zoo.bronze("eu_export").sort("filiale", "datum")
    assert sorted(bronze["filiale"].unique()) == ["Köln", "Zürich"]  # cp1252, and "Köln " is "Köln"
    assert bronze.schema["datum"] == pl.Date and bronze["datum"].min() == date(2023, 1, 2)  # 20230102
    assert bronze.height == 60 and bronze["umsatz"].min() > 900 and 2 <= bronze["preis"].min() < 3  # 1.016,43
    assert published_keys(zoo, "eu_export") == {"K%C3%B6ln", "Z%C3%BCrich"}


def test_a_period_index_is_published_as_a_number_not_as_a_timestamp(zoo):
    rows = zoo.sql(
        "SELECT kind, min(period_index), max(period_index), count(period) FROM predictions "
        "WHERE use_case = 'serial_days' AND key = 'north' GROUP BY kind ORDER BY kind"
    )
    # the last 3 days are the holdout, the next 3 the forecast; no period became a time of 1970
    assert rows == [("forecast", 45_352, 45_354, 0), ("holdout", 45_349, 45_351, 0)]


def test_a_report_export_with_title_lines_and_text_classes_publishes_its_actual_classes(zoo):
    """The churn report's title lines are skipped (and counted), its 'N/A' labels dropped and
    counted, and every holdout row is published with its actual class next to the predicted one."""
    rows = zoo.sql(
        "SELECT predicted_label, actual_label, actual, prediction FROM predictions "
        "WHERE use_case = 'churn' AND kind = 'holdout'"
    )
    assert rows and all(r[1] in ("churned", "stayed") and r[0] in ("churned", "stayed") for r in rows), rows[:5]
    assert all(r[2] is None for r in rows)  # a class is no number
    assert all(0.5 <= r[3] <= 1.0 for r in rows)  # the probability of the predicted one of two classes
    agree = sum(r[0] == r[1] for r in rows) / len(rows)
    accuracy = zoo.sql(
        "SELECT avg(value) FROM key_metrics WHERE use_case = 'churn' AND metric = 'accuracy' "
        "AND model_role = 'candidate'"
    )[0][0]
    assert abs(agree - accuracy) < 0.05, (agree, accuracy)  # what BI sees matches the reported metric
    dropped = zoo.sql("SELECT sum(rows_dropped) FROM key_status WHERE use_case = 'churn' AND stage = 'raw'")[0][0]
    assert dropped and dropped > 0  # the N/A labels
    assert "1 file(s) with title lines above the header (2 line(s) skipped)" in zoo.run.stdout


def test_text_true_false_anomaly_labels_are_scored_as_anomalies_not_as_text(zoo):
    """'TRUE'/'FALSE' labels are 1/0 to the metrics: spikes this large are found, so F1 is far
    above 0 (as text, no label ever equalled a prediction and F1 was undefined)."""
    f1 = zoo.sql(
        "SELECT min(value) FROM key_metrics WHERE use_case = 'alarms' AND metric = 'f1' AND model_role = 'candidate'"
    )[0][0]
    assert f1 is not None and f1 > 0.5, f1
    labels = zoo.sql("SELECT DISTINCT actual_label FROM predictions WHERE use_case = 'alarms' AND kind = 'holdout'")
    assert {r[0] for r in labels} <= {"0", "1"} and ("1",) in labels


def test_trading_days_forecast_business_days_not_weekends(zoo):
    """A ticker's closes are business-day data: the horizon after Friday 2024-06-28 is the next
    five weekdays, the holdout is the last five trading days, and lags skip weekends."""
    periods = zoo.sql(
        "SELECT DISTINCT CAST(period AS DATE) FROM predictions WHERE use_case = 'stocks' AND kind = 'forecast' "
        "ORDER BY 1"
    )
    assert [p for (p,) in periods] == [date(2024, 7, d) for d in (1, 2, 3, 4, 5)]
    holdout = zoo.sql(
        "SELECT DISTINCT CAST(period AS DATE) FROM predictions WHERE use_case = 'stocks' AND kind = 'holdout' "
        "ORDER BY 1"
    )
    assert [p for (p,) in holdout] == [date(2024, 6, d) for d in (24, 25, 26, 27, 28)]
    # a lag of 5 periods drops the first five trading days; the day whose lag falls on the holiday
    # (Friday 5 April) is a gap after the start, kept with its lag imputed
    dropped = zoo.sql("SELECT drop_detail FROM key_status WHERE use_case = 'stocks' AND stage = 'training_set'")
    assert len(dropped) == 3 and all(d == "no lag history: 5" for (d,) in dropped), dropped


def test_a_time_in_year_month_day_hour_columns_forecasts_hourly(zoo):
    """The four time columns make one hourly time: the forecast is the six hours after the last
    reading (2013-03-20 23:00), the NA readings are dropped and counted."""
    periods = zoo.sql("SELECT DISTINCT period FROM predictions WHERE use_case = 'air' AND kind = 'forecast' ORDER BY 1")
    assert [p for (p,) in periods] == [datetime(2013, 3, 21, h) for h in range(6)]
    bronze = zoo.bronze("air")
    assert "hour_start" in bronze.columns and not {"year", "month", "day", "hour"} & set(bronze.columns)
    na = (zoo.data["air"]["PM2.5"] == "NA").sum()
    dropped = zoo.sql("SELECT sum(rows_dropped) FROM key_status WHERE use_case = 'air' AND stage = 'raw'")[0][0]
    assert na > 0 and dropped == na
