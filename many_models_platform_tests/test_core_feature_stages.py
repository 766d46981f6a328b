"""The stages on real stores (lake, MLflow registries, DuckDB) for what features and modelling added:
an anomaly use case without labels over two days (flag rate, score stability against the champion,
the unranked promotion), and a regression with a text category and a non-negative target."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest_core import home_settings, make_spec
from conftest_core import run_all as run_stages

from many_models_platform.core.keys import encode_key
from many_models_platform.stages import StageReport
from many_models_platform.storage.settings import PlatformSettings
from many_models_platform.storage.warehouse import Warehouse

DAY1, DAY2 = dt.date(2025, 2, 1), dt.date(2025, 2, 2)
DEVICES = ["d1", "d2"]

SENSORS = make_spec(
    {
        "task": "anomaly",
        "source": {"path": "landing/sensors/*.parquet"},
        "keys": ["device"],
        "time_column": "timestamp",
        "features": ["value"],
        "calendar_features": False,
        "holdout": {"fraction": 0.25},
        "metric": "flag_rate",
        "min_rows": 40,
        "candidates": [
            {
                "name": "iforest",
                "estimator": "sklearn.ensemble.IsolationForest",
                "params": {"contamination": 0.05, "random_state": 0, "n_estimators": 50},
            }
        ],
        "promotion": {"bounds": {"flag_rate": {"max": 0.2}, "score_stability": {"min": 0.3}}},
    },
    name="sensors",
)
DEMAND = make_spec(
    {
        "task": "regression",
        "source": {"path": "landing/demand/*.parquet"},
        "keys": ["shop"],
        "target": "units",
        "features": ["price"],
        "categorical_features": ["weekday"],
        "non_negative_target": True,
        "holdout": {"fraction": 0.3},
        "metric": "mae",
        "min_rows": 20,
        "candidates": [{"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}],
    },
    name="demand",
)


def sensor_rows(hours: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for device in DEVICES:
        start = dt.datetime(2025, 1, 1)
        frames.append(
            pl.DataFrame(
                {
                    "device": device,
                    "timestamp": pl.datetime_range(
                        start, start + dt.timedelta(hours=hours - 1), "1h", eager=True, time_unit="us"
                    ),
                    "value": rng.normal(size=hours),
                }
            )
        )
    return pl.concat(frames)


def demand_rows(n: int = 60) -> pl.DataFrame:
    rng = np.random.default_rng(3)
    price = np.sort(rng.uniform(0, 12, size=n))
    weekday = rng.choice(["Mon", "Sat"], size=n)
    # units run out as the price rises: a straight line goes below zero for the dearest rows
    units = np.maximum(0.0, 4.0 - price) + np.where(weekday == "Sat", 1.0, 0.0)
    rng.shuffle(idx := np.arange(n))  # holdout rows come from the whole price range
    return pl.DataFrame({"shop": "0012", "price": price[idx], "weekday": weekday[idx].tolist(), "units": units[idx]})


@dataclass
class World:
    settings: PlatformSettings
    sensors: list[dict[str, StageReport]]
    demand: dict[str, StageReport]

    def query(self, sql: str, **params) -> pl.DataFrame:
        wh = Warehouse(self.settings.warehouse_url, read_only=True)
        try:
            return wh.query(sql, **params)
        finally:
            wh.dispose()


def run_all(spec, settings, run_id: str, day: dt.date) -> dict[str, StageReport]:
    return run_stages(spec, settings, run_id, day, workers=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    settings = home_settings(tmp_path_factory.mktemp("mmp_home"))
    lake = Path(settings.lake_url)
    for name in ("sensors", "demand"):
        (lake / "landing" / name).mkdir(parents=True)
    sensor_rows(160, seed=1).write_parquet(lake / "landing/sensors/part-1.parquet")
    demand_rows().write_parquet(lake / "landing/demand/part-1.parquet")
    day1 = run_all(SENSORS, settings, "sensors-1", DAY1)
    # day two: 40 more hours per device, so each key gets a new candidate next to its champion
    sensor_rows(200, seed=1).write_parquet(lake / "landing/sensors/part-1.parquet")
    day2 = run_all(SENSORS, settings, "sensors-2", DAY2)
    demand = run_all(DEMAND, settings, "demand-1", DAY1)
    return World(settings, [day1, day2], demand)


def outcomes(report: StageReport) -> dict:
    return {o.key: o for o in report.outcomes}


def test_unlabelled_training_set_records_frequency_and_row_counts(world):
    for day, hours in zip(world.sensors, (160, 200), strict=True):
        for o in day["training_set"].outcomes:
            assert o.ok, o.reason
            info = o.info
            assert info["frequency"] == "hourly" and "irregular_gaps" not in info
            assert (info["rows_in"], info["rows_out"], info["rows_dropped"], info["rows_merged"]) == (
                hours,
                hours,
                0,
                0,
            )
            assert info["drops"] == {}
            assert info["features"] == ["value"]


def test_first_day_reports_flag_rate_and_promotes_without_a_champion(world):
    for o in world.sensors[0]["evaluation"].outcomes:
        metrics = o.info["metrics"]
        assert 0.0 <= metrics["flag_rate"] <= 0.2
        assert math.isnan(metrics["score_stability"])
        assert o.info["champion_metrics"] is None
    for o in world.sensors[0]["promoted_model"].outcomes:
        assert o.info["decision"] == "promoted"
        assert o.info["reason"] == (
            "first model for this key (bound on score_stability skipped: no champion scored on this holdout)"
        )


def test_second_day_scores_stability_against_the_champion_and_does_not_rank_it(world):
    evaluation = outcomes(world.sensors[1]["evaluation"])
    promoted = outcomes(world.sensors[1]["promoted_model"])
    for key in (encode_key([d]) for d in DEVICES):
        info = evaluation[key].info
        assert info["champion_version"] == 1
        # same detector settings, 40 more hours: the two rank the holdout rows much alike
        assert 0.3 <= info["metrics"]["score_stability"] <= 1.0
        assert set(info["champion_metrics"]) == {"flag_rate"}
        decision = promoted[key].info
        assert decision["decision"] == "promoted"
        assert decision["reason"].startswith("no labels: champion v1 not ranked; candidate passes the rule (flag_rate ")
        assert decision["production_version"] == 2


def test_unlabelled_predictions_and_published_metrics(world):
    for o in world.sensors[1]["predictions"].outcomes:
        assert o.ok, o.reason
    rows = world.query(
        "SELECT predicted_label, actual FROM predictions WHERE use_case = 'sensors' AND run_date = :d", d=DAY2
    )
    assert rows.height == 2 * 50  # the latest 25 % of 200 hours per device
    assert set(rows["predicted_label"].unique()) <= {"0", "1"}
    assert rows["actual"].null_count() == rows.height
    metrics = world.query(
        "SELECT DISTINCT metric FROM key_metrics WHERE use_case = :uc AND run_date = :d AND model_role = 'candidate'",
        uc="sensors",
        d=DAY2,
    )
    assert set(metrics["metric"]) == {"flag_rate", "score_stability"}


def test_categorical_regression_runs_end_to_end_and_never_predicts_below_zero(world):
    key = encode_key(["0012"])
    stages = {stage: outcomes(report)[key] for stage, report in world.demand.items()}
    assert all(o.ok for o in stages.values()), {s: o.reason for s, o in stages.items() if not o.ok}
    assert stages["training_set"].info["features"] == ["price", "weekday"]
    assert stages["training_set"].info["frequency"] is None  # no time column
    predictions = pl.read_parquet(Path(world.settings.lake_url) / f"predictions/demand/{key}.parquet")
    # about 30 % of the 60 rows, drawn by row hash: exactly the training set's holdout
    assert predictions.height == stages["training_set"].info["rows_holdout"] > 0
    assert predictions["prediction"].min() == 0.0  # the dearest rows: a line would go below zero
    assert (predictions["prediction"] > 0).any()
