"""All seven pipeline stages without Dagster, on a small group-regression lake in a temporary home.

One module fixture runs the pipeline twice (a first run that promotes every key, a rerun of
``publish``, and a second day on the same data where the champion stays) and the tests read
what it left in the lake, the registries and the DuckDB warehouse.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from conftest_core import home_settings, run_all

from many_models_platform.core.engine import KeyOutcome
from many_models_platform.core.generators import GeneratedData, generate_group_regression, write_landing
from many_models_platform.core.keys import encode_key
from many_models_platform.core.spec import load_config
from many_models_platform.stages import STAGES, StageReport, StageRun
from many_models_platform.stages.published import publish
from many_models_platform.stages.raw import discover_keys
from many_models_platform.storage.lake import Lake
from many_models_platform.storage.settings import PlatformSettings
from many_models_platform.storage.warehouse import Warehouse

USE_CASE = "group_regression"
# 120 rows: with the 20 % holdout drawn by row hash (about 24 rows), every good key's model beats the
# training-mean baseline (promotion.beat_baseline); with 60 rows one key's 12-row holdout held an
# outlier that made the mean the better predictor by RMSE
ROWS, SHORT_ROWS = 120, 10
HOSTILE = "seg/001, Zürich.."  # a key value that must survive paths, MLflow names and SQL
LONG = "長い名前" * 10  # 360 characters encoded: too long for a file name or an MLflow name as it is
SHORT = ["seg-011", "seg-012"]  # fewer rows than min_rows (30)
ORPHAN = "seg-bad"  # only present in a malformed file
DAY1, DAY2 = dt.date(2025, 1, 15), dt.date(2025, 1, 16)
TABLES = ("predictions", "key_metrics", "key_status", "run_summary", "promotion_history")


@dataclass
class World:
    settings: PlatformSettings
    landing: Path
    keys: list[str]
    good: list[str]
    day1: dict[str, StageReport]
    day2: dict[str, StageReport]
    counts_first_publish: dict[str, int]
    counts_republish: dict[str, int]

    def query(self, sql: str, **params) -> pl.DataFrame:
        wh = Warehouse(self.settings.warehouse_url)
        try:
            return wh.query(sql, **params)
        finally:
            wh.dispose()

    def counts(self, day: dt.date) -> dict[str, int]:
        return counts(self.settings, day)


def counts(settings: PlatformSettings, day: dt.date) -> dict[str, int]:
    wh = Warehouse(settings.warehouse_url)
    try:
        return {t: wh.query(f"SELECT count(*) AS n FROM {t} WHERE run_date = :d", d=day)["n"][0] for t in TABLES}
    finally:
        wh.dispose()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    settings = home_settings(tmp_path_factory.mktemp("mmp_home"))
    spec = load_config().use_case(USE_CASE)

    history = generate_group_regression(keys=12, rows=ROWS, seed=0).history
    history = history.with_columns(pl.col("segment_id").replace({"seg-001": HOSTILE, "seg-002": LONG})).filter(
        ~pl.col("segment_id").is_in(SHORT) | (pl.int_range(0, pl.len()).over("segment_id") < SHORT_ROWS)
    )
    landing = Path(settings.lake_url) / "landing" / USE_CASE
    write_landing(GeneratedData(history), landing, USE_CASE, files=3)
    (landing / "bad_columns.csv").write_text(f"segment_id,x1,x2,x4,x5,y\n{ORPHAN},1,2,3,4,5\n{ORPHAN},2,3,4,5,6\n")
    (landing / "garbage.csv").write_bytes(bytes(range(256)) * 8)

    keys = discover_keys(spec, Lake(settings.lake_url))
    good = sorted(encode_key([s]) for s in history["segment_id"].unique() if s not in SHORT)

    day1 = run_all(spec, settings, "run-day1", DAY1, keys)
    first = counts(settings, DAY1)
    publish(StageRun(spec, settings, run_id="run-day1", run_date=DAY1), keys)
    again = counts(settings, DAY1)
    day2 = run_all(spec, settings, "run-day2", DAY2, keys)
    return World(settings, landing, keys, good, day1, day2, first, again)


def by_key(report: StageReport) -> dict[str, KeyOutcome]:
    return {o.key: o for o in report.outcomes}


def test_keys_are_discovered_from_readable_files_only(world):
    expected = sorted([*world.good, *(encode_key([s]) for s in SHORT), encode_key([ORPHAN])])
    assert world.keys == expected
    assert encode_key([HOSTILE]) in world.keys and encode_key([LONG]) in world.keys
    assert len(world.good) == 10


def test_malformed_landing_files_are_rejected_with_reasons_and_left_in_place(world):
    raw = world.day1["raw"]
    rejected = {Path(r["file"]).name: r["reason"] for r in raw.summary["rejected"]}
    assert sorted(rejected) == ["bad_columns.csv", "garbage.csv"]
    assert "missing required column" in rejected["bad_columns.csv"] and "x3" in rejected["bad_columns.csv"]
    assert rejected["garbage.csv"]
    # never moved: every landing file is still there, byte for byte
    remaining = sorted(p.name for p in world.landing.iterdir())
    assert remaining == sorted(["bad_columns.csv", "garbage.csv", *(f"{USE_CASE}_part-000{i}.csv" for i in range(3))])
    assert (world.landing / "garbage.csv").read_bytes() == bytes(range(256)) * 8
    records = Path(world.settings.lake_url) / "rejected" / USE_CASE
    assert len(list(records.glob("*.json"))) == 2
    # the second day does not read them again: they have not changed
    statuses = {Path(f["file"]).name: f["status"] for f in world.day2["raw"].summary["files"]}
    assert statuses["bad_columns.csv"] == statuses["garbage.csv"] == "unchanged_rejected"
    assert raw.summary["landing_rows"] == 10 * ROWS + 2 * SHORT_ROWS
    outcomes = by_key(raw)
    for key in world.good:
        assert outcomes[key].ok and outcomes[key].info["rows"] == ROWS
    orphan = outcomes[encode_key([ORPHAN])]
    assert orphan.status == "failed" and "no rows" in orphan.reason
    assert "2 file(s) rejected for this use case" in orphan.reason and "bad_columns.csv" in orphan.reason


def test_short_keys_fail_at_training_set_and_downstream_skips(world):
    ts = by_key(world.day1["training_set"])
    for key in SHORT:
        assert ts[key].status == "failed"
        assert ts[key].reason == f"too few rows: {SHORT_ROWS} < min_rows 30"
    for stage in STAGES[2:6]:
        outcomes = by_key(world.day1[stage])
        for key in [*SHORT, encode_key([ORPHAN])]:
            assert outcomes[key].status == "skipped", (stage, key)
        for key in world.good:
            assert outcomes[key].ok, (stage, key, outcomes[key].reason)


def test_key_status_table_records_every_stage_and_reason(world):
    status = world.query("SELECT * FROM key_status WHERE run_date = :d", d=DAY1)
    assert status.height == len(world.keys) * 7
    assert status.select("key", "stage").n_unique() == status.height
    for key in SHORT:
        row = status.filter((pl.col("key") == key) & (pl.col("stage") == "training_set"))
        assert row["status"].to_list() == ["failed"]
        assert "too few rows: 10 < min_rows 30" in row["reason"][0]
        assert row["dagster_run_id"][0] == "run-day1"
        later = status.filter((pl.col("key") == key) & (pl.col("stage") == "predictions"))
        assert later["status"].to_list() == ["skipped"]
        published = status.filter((pl.col("key") == key) & (pl.col("stage") == "published"))
        assert published["status"].to_list() == ["skipped"]
        assert published["reason"][0].startswith("training_set failed: too few rows")
    ok_rows = status.filter(pl.col("key").is_in(world.good))
    assert ok_rows["status"].unique().to_list() == ["ok"]
    assert ok_rows["reason"].null_count() == ok_rows.height
    hostile = status.filter(pl.col("key") == encode_key([HOSTILE]))
    assert hostile["key_label"].unique().to_list() == [f"segment_id={HOSTILE}"]
    long = status.filter(pl.col("key") == encode_key([LONG]))  # published whole, though its files are named short
    assert long["key_label"].unique().to_list() == [f"segment_id={LONG}"] and len(encode_key([LONG])) == 360


def holdout_rows(world) -> dict[str, int]:
    """Each good key's holdout size: about 20 % of its rows, drawn by row hash (not exactly 20 %)."""
    ts = by_key(world.day1["training_set"])
    return {k: ts[k].info["rows_holdout"] for k in world.good}


def test_every_good_key_has_one_prediction_set(world):
    preds = world.query("SELECT * FROM predictions WHERE run_date = :d", d=DAY1)
    n_holdout = holdout_rows(world)
    assert preds.height == sum(n_holdout.values())
    assert all(0 < n < ROWS * 0.4 for n in n_holdout.values())
    assert sorted(preds["key"].unique().to_list()) == world.good
    per_key = preds.group_by("key").agg(
        pl.len().alias("n"),
        pl.col("row_index").n_unique().alias("distinct_rows"),
        pl.col("model_version").unique().alias("versions"),
        pl.col("kind").unique().alias("kinds"),
    )
    for row in per_key.iter_rows(named=True):
        assert row["n"] == row["distinct_rows"] == n_holdout[row["key"]]
        assert row["versions"] == [1]
        assert row["kinds"] == ["holdout"]
    assert preds["actual"].null_count() == 0
    assert preds["prediction"].null_count() == 0
    assert preds["period"].null_count() == preds.height  # no time column in this use case
    assert preds["model_name"].unique().len() == len(world.good)


def test_published_predictions_agree_with_the_published_metric(world):
    preds = world.query("SELECT key, prediction, actual FROM predictions WHERE run_date = :d", d=DAY1)
    metrics = world.query(
        "SELECT key, value FROM key_metrics WHERE run_date = :d AND metric = 'rmse' AND model_role = 'candidate'",
        d=DAY1,
    )
    rmse = dict(metrics.iter_rows())
    for key, part in preds.partition_by("key", as_dict=True).items():
        err = (part["prediction"] - part["actual"]).to_numpy()
        assert math.sqrt(float((err**2).mean())) == pytest.approx(rmse[key[0]], rel=1e-12)


def test_warehouse_row_counts_after_first_run(world):
    g, n = len(world.good), len(world.keys)
    assert world.counts_first_publish == {
        "predictions": sum(holdout_rows(world).values()),
        # mape, rmse, mae, r2, wape, smape, mase of the candidate and of its best baseline, and the
        # candidate's skill; no champion yet
        "key_metrics": g * (7 + 7 + 1),
        "key_status": n * 7,  # every key, every stage including publishing itself
        "run_summary": 1,
        "promotion_history": g,  # keys whose promotion step ran
    }
    summary = world.query("SELECT * FROM run_summary WHERE run_date = :d", d=DAY1).row(0, named=True)
    assert summary["keys_total"] == n
    assert summary["keys_failed"] == n - g
    assert summary["keys_published"] == g
    assert summary["keys_promoted"] == g
    assert summary["metric"] == "rmse"
    assert summary["metric_p10"] <= summary["metric_p50"] <= summary["metric_p90"]
    decisions = world.query("SELECT decision, reason FROM promotion_history WHERE run_date = :d", d=DAY1)
    assert decisions["decision"].unique().to_list() == ["promoted"]
    assert decisions["reason"].unique().to_list() == ["first model for this key"]


def test_publishing_twice_for_the_same_run_date_adds_no_rows(world):
    assert world.counts_republish == world.counts_first_publish


def test_second_day_keeps_the_identical_champion(world):
    promo = by_key(world.day2["promoted_model"])
    for key in world.good:
        info = promo[key].info
        # same data and model config: day one's candidate is reused, and it is already in production
        assert info["decision"] == "kept_champion", info
        assert info["reason"] == "this candidate is already in production"
        assert (info["candidate_version"], info["champion_version"], info["production_version"]) == (1, 1, 1)
        assert info["candidate_value"] == pytest.approx(info["champion_value"])
    models = by_key(world.day2["model"])
    assert all(models[k].info["reused"] is True for k in world.good)
    g, n = len(world.good), len(world.keys)
    assert world.counts(DAY2) == {
        "predictions": sum(holdout_rows(world).values()),
        "key_metrics": g * (7 + 7 + 1 + 7),  # candidate, baseline, skill and champion
        "key_status": n * 7,
        "run_summary": 1,
        "promotion_history": g,
    }
    # the first day's rows are untouched by the second day
    assert world.counts(DAY1) == world.counts_first_publish
    versions = world.query("SELECT DISTINCT model_version FROM predictions WHERE run_date = :d", d=DAY2)
    assert versions["model_version"].to_list() == [1]  # still served by the day-one production model


def test_a_training_stage_that_crashes_ends_its_mlflow_run_failed(world, monkeypatch):
    """Left RUNNING, MLflow's UI would show the crashed stage's run as still training, forever."""
    from many_models_platform.stages import model as model_stage

    def broken_pool(*args, **kwargs):
        raise RuntimeError("the worker pool broke")

    monkeypatch.setattr(model_stage, "map_keys", broken_pool)
    spec = load_config().use_case(USE_CASE)
    run = StageRun(spec, world.settings, run_id="run-crashed", run_date=DAY2)
    with pytest.raises(RuntimeError, match="worker pool broke"):
        model_stage.train(run, world.keys)
    registry = run.candidates()
    runs = registry.client.search_runs(
        [registry.experiment_id(USE_CASE)], filter_string="tags.dagster_run_id = 'run-crashed'"
    )
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].info.end_time is not None
