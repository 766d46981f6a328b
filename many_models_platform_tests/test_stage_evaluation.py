"""Honest evaluation through the real stages (lake, MLflow registries, DuckDB): a refitted
forecast whose production artifact differs from the evaluated one, a champion compared only on
the holdout rows it was not fitted on, and a champion that cannot be compared at all."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest_core import home_settings, make_spec
from conftest_core import run_all as run_stages

from many_models_platform.core import features as F
from many_models_platform.core.keys import encode_key
from many_models_platform.core.modeling import model_input, predict
from many_models_platform.stages import StageReport
from many_models_platform.storage.registry import (
    EVAL_MODEL_FILE,
    MODEL_FILE,
    TRUSTED_MODULES,
    load_model_from_source,
    production_registry,
)
from many_models_platform.storage.settings import PlatformSettings

WEEKS = 110
DEMAND = {
    "task": "forecast",
    "source": {"path": "landing/demand/*.parquet"},
    "keys": ["shop"],
    "time_column": "week",
    "target": "units",
    "features": ["price"],
    "lags": [12, 13],
    "holdout": {"periods": 8},
    "horizon": 4,
    "metric": "wape",
    "min_rows": 30,
    "candidates": [{"name": "ridge", "estimator": "sklearn.linear_model.Ridge", "params": {"alpha": 1.0}}],
}
SEGMENTS = {
    "task": "regression",
    "source": {"path": "landing/segments/*.parquet"},
    "keys": ["segment"],
    "target": "y",
    "features": ["x1", "x2"],
    "holdout": {"fraction": 0.2},
    "metric": "rmse",
    "min_rows": 20,
    "candidates": [{"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}],
}


def demand_rows() -> pl.DataFrame:
    rng = np.random.default_rng(5)
    frames = []
    for shop, level in (("s1", 100.0), ("s2", 300.0)):
        price = rng.uniform(1, 3, WEEKS)
        units = level - 20 * price + 0.3 * np.arange(WEEKS) + rng.normal(0, 2, WEEKS)
        start = dt.date(2022, 1, 3)
        weeks = pl.date_range(start, start + dt.timedelta(weeks=WEEKS - 1), "1w", eager=True)
        frames.append(pl.DataFrame({"shop": shop, "week": weeks, "price": price, "units": units}))
    return pl.concat(frames)


def segment_rows() -> pl.DataFrame:
    rng = np.random.default_rng(6)
    x1, x2 = rng.normal(size=80), rng.normal(size=80)
    return pl.DataFrame({"segment": "a", "x1": x1, "x2": x2, "y": 5 + 3 * x1 - 2 * x2 + 0.1 * rng.normal(size=80)})


@dataclass
class World:
    settings: PlatformSettings
    demand: list[dict[str, StageReport]]
    segments: list[dict[str, StageReport]]


def run_all(spec, settings, run_id: str, day: dt.date) -> dict[str, StageReport]:
    return run_stages(spec, settings, run_id, day, workers=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    settings = home_settings(tmp_path_factory.mktemp("mmp_home"))
    lake = Path(settings.lake_url)
    for name in ("demand", "segments"):
        (lake / "landing" / name).mkdir(parents=True)
    demand_rows().write_parquet(lake / "landing/demand/part-1.parquet")
    segment_rows().write_parquet(lake / "landing/segments/part-1.parquet")
    day1, day2 = dt.date(2025, 3, 1), dt.date(2025, 3, 2)
    demand = make_spec(DEMAND, name="demand")
    # day two, same data, a 12-week holdout: its first 4 weeks are rows the champion's evaluated
    # model was fitted on, so only the last 8 may be compared
    longer = make_spec({**DEMAND, "holdout": {"periods": 12}}, name="demand")
    demand_days = [run_all(demand, settings, "demand-1", day1), run_all(longer, settings, "demand-2", day2)]
    segments = make_spec(SEGMENTS, name="segments")
    # day two, a 25 % holdout: rows of the champion's training part are now held out, and a hash
    # split cannot tell which, so the champion is not compared
    wider = make_spec({**SEGMENTS, "holdout": {"fraction": 0.25}}, name="segments")
    segment_days = [run_all(segments, settings, "seg-1", day1), run_all(wider, settings, "seg-2", day2)]
    return World(settings, demand_days, segment_days)


def outcome(report: StageReport, key: str):
    return next(o for o in report.outcomes if o.key == key)


def test_production_gets_the_refit_and_the_evaluated_model_is_kept_beside_it(world):
    key = encode_key(["s1"])
    model = outcome(world.demand[0]["model"], key).info
    folder = model["source"]
    assert model["refit"] is True and model["eval_artifact_sha256"] != model["artifact_sha256"]
    assert sorted(os.listdir(folder)).count(EVAL_MODEL_FILE) == 1
    trusted = list(TRUSTED_MODULES)
    refit = load_model_from_source(folder, model["artifact_sha256"], trusted)
    evaluated = load_model_from_source(folder, model["eval_artifact_sha256"], trusted, file=EVAL_MODEL_FILE)
    assert not np.allclose(refit.steps[-1][1].coef_, evaluated.steps[-1][1].coef_)
    # the evaluated model was fitted through the week before the 8-week holdout, the refit through the last week
    last = dt.date(2022, 1, 3) + dt.timedelta(weeks=WEEKS - 1)
    assert model["train_end"] == (last - dt.timedelta(weeks=8)).isoformat()
    assert model["fitted_through"] == last.isoformat()
    # the reported metrics are the evaluated model's, on the holdout it never saw (the training set
    # file now holds day two's split: day one's holdout is its rows after train_end)
    lake = Path(world.settings.lake_url)
    ts = pl.read_parquet(lake / f"training/demand/{key}.parquet")
    holdout = ts.filter(pl.col("week") > dt.date.fromisoformat(model["train_end"]))
    features = model["features"]
    pred = predict("forecast", evaluated, model_input(evaluated, holdout, features))
    actual = holdout["units"].to_numpy()
    evaluation = outcome(world.demand[0]["evaluation"], key).info
    assert evaluation["metrics"]["wape"] == pytest.approx(np.abs(pred - actual).sum() / np.abs(actual).sum())
    # production holds the refit (its hash) and the lineage; both files were copied
    versions = production_registry(world.settings).snapshot("demand").versions[key]
    first = versions[0]
    assert first.tags["artifact_sha256"] == model["artifact_sha256"]
    assert first.tags["eval_artifact_sha256"] == model["eval_artifact_sha256"]
    assert (first.tags["train_end"], first.tags["fitted_through"]) == (model["train_end"], model["fitted_through"])
    assert {MODEL_FILE, EVAL_MODEL_FILE} <= set(os.listdir(first.source))
    # BI's holdout rows come from the production version's evaluated model (honest errors), the
    # forecast from its refit
    prod = production_registry(world.settings).aliased_versions("demand")[key]
    twin = load_model_from_source(prod.source, prod.tags["eval_artifact_sha256"], trusted, file=EVAL_MODEL_FILE)
    published = pl.read_parquet(lake / f"predictions/demand/{key}.parquet")
    today = F.split(ts)[F.HOLDOUT]
    assert published.filter(pl.col("kind") == "holdout")["prediction"].to_numpy() == pytest.approx(
        predict("forecast", twin, model_input(twin, today, features))
    )
    assert published.filter(pl.col("kind") == "forecast").height == 4


def test_baselines_and_skill_are_in_the_evaluation_record(world):
    for o in world.demand[0]["evaluation"].outcomes:
        info = o.info
        assert set(info["baselines"]) == {"naive", "seasonal_naive"}
        assert info["baseline_name"] in info["baselines"]
        assert info["baseline_metrics"] == info["baselines"][info["baseline_name"]]
        assert info["skill"] == pytest.approx(1 - info["metrics"]["wape"] / info["baseline_metrics"]["wape"])
        assert info["skill"] > 0  # price drives demand here: the model beats last week and last year
    assert world.demand[0]["evaluation"].summary["keys_beating_baseline"] == 2


def test_the_champion_is_compared_only_on_holdout_rows_it_was_not_fitted_on(world):
    for key in (encode_key(["s1"]), encode_key(["s2"])):
        day1 = outcome(world.demand[0]["model"], key).info
        info = outcome(world.demand[1]["evaluation"], key).info
        assert info["rows_holdout"] == 12 and info["champion_version"] == 1
        # the champion's evaluated model was fitted through its train_end: the first 4 holdout weeks are out
        assert info["comparison"] == f"compared on 8 of 12 holdout rows after {day1['train_end']} (champion v1)"
        assert info["comparison_rows"] == 8
        assert set(info["comparison_metrics"]) == set(info["champion_metrics"]) >= {"wape", "mase"}
        decision = outcome(world.demand[1]["promoted_model"], key).info
        assert decision["decision"] in ("promoted", "kept_champion")
        assert decision["reason"].endswith("on 8 rows") or "on 8 rows (needs" in decision["reason"]


def test_a_champion_drawn_on_another_split_is_not_comparable_and_the_rule_alone_decides(world):
    key = encode_key(["a"])
    first = outcome(world.segments[0]["promoted_model"], key).info
    assert first["decision"] == "promoted"
    info = outcome(world.segments[1]["evaluation"], key).info
    assert info["champion_version"] == 1 and info["champion_metrics"] is None
    assert info["comparison"].startswith("not comparable: champion v1's holdout was drawn differently (hash:0.2:")
    decision = outcome(world.segments[1]["promoted_model"], key).info
    assert decision["decision"] == "promoted"
    assert decision["reason"] == f"{info['comparison']}; promoted on the rule alone"
    # day one's holdout rows all stay held out on day two (the hash split only grew)
    lake = Path(world.settings.lake_url)
    ts = pl.read_parquet(lake / f"training/segments/{key}.parquet")
    units = F.hash_unit(ts[F.ROW_HASH].to_numpy())
    held = (ts[F.SPLIT] == F.HOLDOUT).to_numpy()
    assert held[units < 0.2].all() and held.sum() == (units < 0.25).sum()
