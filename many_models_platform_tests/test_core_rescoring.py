"""A key whose training set fails today is never scored from an earlier day's holdout."""

import datetime as dt
from pathlib import Path

import polars as pl

from many_models_platform.core.generators import GENERATORS, write_landing
from many_models_platform.core.keys import decode_key, encode_key
from many_models_platform.core.spec import load_config
from many_models_platform.stages import STAGES, StageRun, run_stage
from many_models_platform.stages.raw import discover_keys
from many_models_platform.storage.lake import Lake
from many_models_platform.storage.settings import PlatformSettings


def run_all(spec, settings, run_id, day, keys):
    run = StageRun(spec, settings, run_id=run_id, run_date=day, workers=1)
    return {stage: {o.key: o for o in run_stage(stage, run, keys).outcomes} for stage in STAGES}


def day_one(tmp_path, use_case, **size):
    """A fresh platform home with ``use_case``'s generated data landed in one file and run once:
    (spec, settings, landing folder, data, keys, day one's outcomes)."""
    settings = PlatformSettings.from_env(tmp_path)
    settings.ensure_local_dirs()
    spec = load_config().use_case(use_case)
    landing = Path(settings.lake_url) / f"landing/{use_case}"
    data = GENERATORS[use_case](**size)
    write_landing(data, landing, spec.name, files=1)
    keys = discover_keys(spec, Lake(settings.lake_url))
    return spec, settings, landing, data, keys, run_all(spec, settings, "run-1", dt.date(2025, 1, 1), keys)


def test_failed_training_set_today_means_no_stale_holdout_predictions(tmp_path):
    spec, settings, landing, data, keys, day1 = day_one(tmp_path, "group_regression", keys=4, rows=60)
    assert all(o.ok for o in day1["predictions"].values())

    # day two: one key now has too few rows, but it keeps its day-one production model
    bad = encode_key(["seg-002"])
    history = data.history.filter((pl.col("segment_id") != "seg-002") | (pl.int_range(pl.len()).over("segment_id") < 5))
    for f in landing.iterdir():
        f.unlink()
    history.write_csv(landing / "group_regression_part-0000.csv")
    day2 = run_all(spec, settings, "run-2", dt.date(2025, 1, 2), keys)
    assert day2["training_set"][bad].status == "failed"
    assert day2["predictions"][bad].status == "skipped"
    assert "nothing to score" in day2["predictions"][bad].reason
    assert "training_set failed: too few rows" in day2["predictions"][bad].reason
    assert all(day2["predictions"][k].ok for k in keys if k != bad)


def test_a_key_that_fails_ingest_today_is_not_forecast_from_yesterdays_bronze(tmp_path):
    spec, settings, landing, data, keys, day1 = day_one(tmp_path, "retail_demand", keys=3, rows=120)
    scored = [k for k in keys if day1["predictions"][k].ok]
    assert scored, {k: o.reason for k, o in day1["predictions"].items()}

    # day two: every sale of one scored key arrives without a quantity, so its ingest fails;
    # its bronze from day one is still in the lake and its production model still serves
    bad = scored[0]
    is_bad = pl.all_horizontal([pl.col(c).cast(pl.Utf8) == v for c, v in zip(spec.keys, decode_key(bad), strict=True)])
    history = data.history.with_columns(pl.when(is_bad).then(None).otherwise(pl.col("quantity")).alias("quantity"))
    write_landing(type(data)(history=history, future=data.future), landing, spec.name, files=1)
    day2 = run_all(spec, settings, "run-2", dt.date(2025, 1, 2), keys)
    assert day2["raw"][bad].status == "failed"
    assert day2["predictions"][bad].status == "skipped"
    assert "nothing fresh to score: raw failed: all" in day2["predictions"][bad].reason
    assert all(day2["predictions"][k].ok for k in scored if k != bad)


def test_scoring_rows_dated_off_the_forecast_periods_are_counted_as_unused(tmp_path):
    """A forecast takes a future row's features only on a forecast period: one dated a day off
    (a Sunday export of Monday weeks) reaches no forecast, and says so in the key's row counts."""
    from many_models_platform.stages.predictions import UNUSED_SCORING

    settings = PlatformSettings.from_env(tmp_path)
    settings.ensure_local_dirs()
    spec = load_config().use_case("retail_demand")
    landing = Path(settings.lake_url) / "landing/retail_demand"
    write_landing(GENERATORS["retail_demand"](keys=3, rows=120), landing, spec.name, files=1)
    (future_file,) = (Path(settings.lake_url) / "landing/retail_demand_future").iterdir()
    future = pl.read_csv(future_file, schema_overrides={"store": pl.Utf8})
    shifted = (future["store"].cast(pl.Utf8) + "." + future["brand"]).first()
    future = future.with_columns(
        pl.when(pl.col("store").cast(pl.Utf8) + "." + pl.col("brand") == shifted)
        .then(pl.col("week_start").str.to_date() - pl.duration(days=1))
        .otherwise(pl.col("week_start").str.to_date())
        .alias("week_start")
    )
    future.write_csv(future_file)
    keys = discover_keys(spec, Lake(settings.lake_url))
    outcomes = run_all(spec, settings, "run-1", dt.date(2025, 1, 1), keys)["predictions"]
    scored = {k: o.info for k, o in outcomes.items() if o.ok}
    assert encode_key(shifted.split(".")) in scored and len(scored) >= 2, {k: o.reason for k, o in outcomes.items()}
    from many_models_platform.stages.base import read_state

    for key, info in scored.items():
        n = info["rows_in"]
        assert n == spec.horizon
        reason = read_state(Lake(settings.lake_url), spec.name, "predictions", key).reason
        if key == encode_key(shifted.split(".")):  # its features are the last observed ones: said
            assert (info["rows_out"], info["rows_dropped"], info["drops"]) == (0, n, {UNUSED_SCORING: n})
            assert info["periods_without_scoring_row"] == n
            said = f"{n} of {n} forecast periods have no scoring_source row: the key's last observed values stand in"
            assert reason == f"{said} for them"
        else:
            assert (info["rows_out"], info["rows_dropped"], info["drops"]) == (n, 0, {})
            assert (info["periods_without_scoring_row"], info["scoring_values_missing"], reason) == (0, 0, "")


def test_a_key_scored_without_its_scoring_rows_says_so_and_names_the_rejected_scoring_file(tmp_path):
    """The future file lost a column today, so it is rejected: the keys are still forecast (their
    exogenous features carried forward), ok, but their predictions record says why, and which
    scoring file was rejected, instead of looking like forecasts from the scoring rows."""
    from many_models_platform.stages.base import read_state

    spec, settings, landing, _, keys, day1 = day_one(tmp_path, "retail_demand", keys=3, rows=120)
    lake = Lake(settings.lake_url)
    scored = [k for k in keys if day1["predictions"][k].ok]
    assert scored and all(not read_state(lake, spec.name, "predictions", k).reason for k in scored)
    future = Path(f"{landing}_future")
    (part,) = future.iterdir()
    pl.read_csv(part).drop("feat").write_csv(part)
    day2 = run_all(spec, settings, "run-2", dt.date(2025, 1, 2), keys)
    for key in scored:
        assert day2["predictions"][key].ok
        reason = read_state(lake, spec.name, "predictions", key).reason
        assert reason.startswith("no scoring_source rows for this key: its future features are its last observed")
        assert f"1 file(s) rejected for this use case: landing/{part.parent.name}/{part.name}: missing" in reason
