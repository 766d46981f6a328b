"""``scoring_source.row_id``: every scored row is published with the id of the row it was made
from, so the rows a user sent join back to their predictions (a customer id, Kaggle's ``id``)."""

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest_core import clear_platform_env, make_spec, regression_body

from many_models_platform.core import ingest as core_ingest
from many_models_platform.core.generators import GENERATORS, write_landing
from many_models_platform.core.keys import encode_key
from many_models_platform.core.spec import load_config
from many_models_platform.stages import STAGES, StageRun, run_stage
from many_models_platform.stages.raw import discover_keys
from many_models_platform.storage import warehouse as W
from many_models_platform.storage.lake import Lake
from many_models_platform.storage.settings import PlatformSettings


def run_all(spec, settings, keys):
    run = StageRun(spec, settings, run_id="run-1", run_date=dt.date(2025, 1, 1), workers=1)
    return {stage: {o.key: o for o in run_stage(stage, run, keys).outcomes} for stage in STAGES}


def published(settings, spec) -> pl.DataFrame:
    wh = W.Warehouse(settings.warehouse_url)
    try:
        return wh.query(
            "SELECT key, row_index, row_id, kind, period, actual FROM predictions WHERE use_case = :uc",
            uc=spec.name,
        )
    finally:
        wh.dispose()


@pytest.fixture
def settings(tmp_path, monkeypatch) -> PlatformSettings:
    clear_platform_env(monkeypatch)
    s = PlatformSettings.from_env(tmp_path / "home")
    s.ensure_local_dirs()
    return s


def test_regression_scoring_rows_are_published_with_their_own_ids(settings):
    """Each scoring row carries a unique actual, so a published row's id and actual must come
    from the same input row; zero-padded ids keep their zeros, an empty id publishes NULL."""
    rng = np.random.default_rng(0)
    landing = Path(settings.lake_url) / "landing"
    (landing / "reg").mkdir(parents=True)
    (landing / "reg_score").mkdir(parents=True)
    train = pl.DataFrame(
        {
            "segment": np.repeat(["a", "b"], 40),
            "x1": rng.normal(size=80),
            "x2": rng.normal(size=80),
        }
    ).with_columns((pl.col("x1") * 3 + pl.col("x2")).alias("y"))
    train.write_csv(landing / "reg/train.csv")
    ids = ["0007", "0012", "", "0100", "0003", "0050"]
    lines = ["customer,segment,x1,x2,y"] + [
        f"{cid},{seg},{i / 10},{-i / 10},{1000 + i}" for i, (cid, seg) in enumerate(zip(ids, "abbaab", strict=True))
    ]
    (landing / "reg_score/to_score.csv").write_text("\n".join(lines) + "\n")
    body = regression_body(
        source={"path": "landing/reg/*.csv"},
        scoring_source={"path": "landing/reg_score/*.csv", "row_id": "customer"},
        candidates=[{"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}],
    )
    spec = make_spec(body, name="reg")
    keys = discover_keys(spec, Lake(settings.lake_url))
    outcomes = run_all(spec, settings, keys)
    assert all(o.ok for o in outcomes["published"].values()), {k: o.reason for k, o in outcomes["published"].items()}

    rows = published(settings, spec)
    assert set(rows["kind"]) == {"scoring"} and rows.height == len(ids)
    sent = {1000 + i: (cid or None, seg) for i, (cid, seg) in enumerate(zip(ids, "abbaab", strict=True))}
    got = {int(r["actual"]): (r["row_id"], r["key"]) for r in rows.iter_rows(named=True)}
    assert got == {actual: (cid, encode_key([seg])) for actual, (cid, seg) in sent.items()}


def test_customers_scored_on_one_day_in_two_batches_are_all_scored(settings):
    """Two scoring files of one key and snapshot date but other customers are other rows: the
    later file replaced the first batch (and 'last' kept one customer a day). A row dropped at
    ingest (an id too long) is counted and named in the key's predictions reason."""
    from many_models_platform.stages.base import read_state

    landing = Path(settings.lake_url) / "landing"
    (landing / "st/score").mkdir(parents=True)
    days = pl.date_range(dt.date(2024, 1, 1), dt.date(2024, 5, 29), eager=True)
    rng = np.random.default_rng(1)
    pl.DataFrame(
        {"segment": "a", "snapshot": days, "x1": rng.normal(size=days.len()), "x2": rng.normal(size=days.len())}
    ).with_columns((pl.col("x1") * 2).alias("y")).write_csv(landing / "st/train.csv")
    (landing / "st/score/batch_1.csv").write_text(
        "customer_id,segment,snapshot,x1,x2\nA1,a,2024-06-01,0,0\nA2,a,2024-06-01,1,0\n"
    )
    (landing / "st/score/batch_2.csv").write_text(
        f"customer_id,segment,snapshot,x1,x2\nB1,a,2024-06-01,2,0\n{'L' * 257},a,2024-06-01,3,0\n"
    )
    body = regression_body(
        source={"path": "landing/st/*.csv"},
        scoring_source={"path": "landing/st/score/*.csv", "row_id": "customer_id"},
        time_column="snapshot",
        duplicates="last",
        candidates=[{"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}],
    )
    spec = make_spec(body, name="st")
    outcomes = run_all(spec, settings, discover_keys(spec, Lake(settings.lake_url)))
    assert outcomes["predictions"]["a"].ok, outcomes["predictions"]["a"].reason
    rows = published(settings, spec)
    assert sorted(rows["row_id"].to_list()) == ["A1", "A2", "B1"] and set(rows["kind"]) == {"scoring"}
    reason = read_state(Lake(settings.lake_url), spec.name, "predictions", "a").reason
    assert reason == (
        "1 scoring_source row(s) of this key are not scored: removed or merged at ingest "
        f"({core_ingest.ROW_ID_TOO_LONG}: 1)"
    )


def test_forecast_rows_carry_the_id_of_the_scoring_row_of_their_period(settings):
    """A forecast row's features come from the scoring row of its period: it publishes that
    row's id; the holdout rows have none."""
    spec = load_config().use_case("retail_demand")
    spec = spec.model_copy(update={"scoring_source": spec.scoring_source.model_copy(update={"row_id": "request"})})
    landing = Path(settings.lake_url) / "landing/retail_demand"
    write_landing(GENERATORS["retail_demand"](keys=3, rows=120), landing, spec.name, files=1)
    (future_file,) = (Path(settings.lake_url) / "landing/retail_demand_future").iterdir()
    future = pl.read_csv(future_file, infer_schema=False)
    future = future.with_columns(
        (pl.lit("R-") + pl.col("store") + "-" + pl.col("brand") + "-" + pl.col("week_start")).alias("request")
    )
    future.write_csv(future_file)
    keys = discover_keys(spec, Lake(settings.lake_url))
    outcomes = run_all(spec, settings, keys)
    scored = [k for k, o in outcomes["predictions"].items() if o.ok]
    assert scored, {k: o.reason for k, o in outcomes["predictions"].items()}

    rows = published(settings, spec).filter(pl.col("key").is_in(scored))
    forecast = rows.filter(pl.col("kind") == "forecast")
    assert forecast.height == spec.horizon * len(scored)
    holdout = rows.filter(pl.col("kind") == "holdout")
    assert holdout.height and holdout["row_id"].null_count() == holdout.height
    for r in forecast.iter_rows(named=True):
        store, brand = r["row_id"].split("-")[1:3]
        assert encode_key([store, brand]) == r["key"]
        assert r["row_id"].endswith(r["period"].date().isoformat())


def test_the_row_id_fits_the_warehouse_column():
    assert core_ingest.ROW_ID_LENGTH == W.ROW_ID_LENGTH == W.predictions.c.row_id.type.length


def test_a_row_id_is_a_scoring_source_column_of_its_own():
    from many_models_platform.core.spec import ConfigError, parse_config

    with pytest.raises(ValueError, match=r"'source\.row_id' is not read"):
        make_spec(regression_body(source={"path": "landing/x/*.csv", "row_id": "id"}))
    taken = r"'scoring_source\.row_id' {} is the use case's column {} \(a key, time, time part, feature or target\)"
    with pytest.raises(ValueError, match=taken.format("'x1'", "'x1'")):
        make_spec(regression_body(scoring_source={"path": "landing/s/*.csv", "row_id": "x1"}))
    with pytest.raises(ValueError, match=taken.format("' SEGMENT'", "'segment'")):  # headers match up to case
        make_spec(regression_body(scoring_source={"path": "landing/s/*.csv", "row_id": " SEGMENT"}))
    parts = {"time_column": "t", "time_parts": {"year": "yr", "month": "mo"}}
    with pytest.raises(ValueError, match=taken.format("'t'", "'t'")):  # a time made of parts
        make_spec(regression_body(**parts, scoring_source={"path": "landing/s/*.csv", "row_id": "t"}))
    with pytest.raises(ValueError, match="must name a column of the scoring files"):
        make_spec(regression_body(scoring_source={"path": "landing/s/*.csv", "row_id": "  "}))
    with pytest.raises(
        ConfigError, match="field 'row_id': Extra inputs are not permitted: it belongs under 'scoring_source'"
    ):
        parse_config({"use_cases": {"u": regression_body(row_id="id")}})


def test_float_ids_and_keys_read_as_the_integers_they_are():
    """pandas writes an integer id column with gaps as floats: 12.0 is 12, and 1e16 is the
    integer, not '1e+16'."""
    frame = pl.DataFrame({"id": [12.0, 1e16, float("nan"), 2.5, -3.0]})
    got = frame.select(core_ingest.key_values(["id"], frame.schema))["id"].to_list()
    assert got == ["12", "10000000000000000", None, "2.5", "-3"]
