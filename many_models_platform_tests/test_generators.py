"""Contract tests for the synthetic landing-data generators (no Dagster needed)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from many_models_platform.core.generators import (
    GENERATORS,
    GeneratedData,
    generate_group_regression,
    generate_retail_demand,
    generate_sensor_anomaly,
    write_landing,
)

RETAIL_SCHEMA = {
    "store": pl.Int64,
    "brand": pl.String,
    "week_start": pl.Date,
    "quantity": pl.Float64,
    "price": pl.Float64,
    "deal": pl.Int8,
    "feat": pl.Int8,
}
SENSOR_SCHEMA = {
    "device_id": pl.String,
    "sensor": pl.String,
    "timestamp": pl.Datetime("us"),
    "value": pl.Float64,
    "ambient_temperature": pl.Float64,
    "is_anomaly": pl.Int8,
}
GROUP_SCHEMA = {
    "segment_id": pl.String,
    **{f"x{i}": pl.Float64 for i in range(1, 6)},
    "y": pl.Float64,
}
KEYS = {
    "retail_demand": ["store", "brand"],
    "sensor_anomaly": ["device_id", "sensor"],
    "group_regression": ["segment_id"],
}


def test_registry_names():
    assert set(GENERATORS) == {"retail_demand", "sensor_anomaly", "group_regression"}
    assert all(isinstance(gen(keys=2, rows=3), GeneratedData) for gen in GENERATORS.values())


@pytest.mark.parametrize(
    ("name", "schema"),
    [("retail_demand", RETAIL_SCHEMA), ("sensor_anomaly", SENSOR_SCHEMA), ("group_regression", GROUP_SCHEMA)],
)
@pytest.mark.parametrize(("keys", "rows"), [(1, 5), (13, 37), (45, 60)])
def test_keys_rows_and_schema(name, schema, keys, rows):
    history = GENERATORS[name](keys=keys, rows=rows, seed=1).history
    assert dict(history.schema) == schema
    counts = history.group_by(KEYS[name]).len()
    assert counts.height == keys
    assert counts["len"].to_list() == [rows] * keys
    assert history.null_count().sum_horizontal().item() == 0


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_deterministic_per_seed(name):
    gen = GENERATORS[name]
    a, b, c = gen(keys=6, rows=40, seed=7), gen(keys=6, rows=40, seed=7), gen(keys=6, rows=40, seed=8)
    assert a.history.equals(b.history)
    assert not a.history.equals(c.history)
    if a.future is not None:
        assert a.future.equals(b.future)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_first_keys_do_not_depend_on_key_count(name):
    small = GENERATORS[name](keys=4, rows=30, seed=3).history
    large = GENERATORS[name](keys=40, rows=30, seed=3).history
    assert small.equals(large.head(small.height))


def test_retail_keys_are_store_major():
    history = generate_retail_demand(keys=23, rows=2).history
    keys = history.select("store", "brand").unique(maintain_order=True)
    assert keys["store"].to_list() == [1001] * 10 + [1002] * 10 + [1003] * 3
    assert keys["brand"].n_unique() == 10
    assert keys.filter(pl.col("store") == 1001)["brand"].to_list()[:2] == ["tropicana", "minute_maid"]


def test_retail_values_and_weeks():
    history = generate_retail_demand(keys=30, rows=104, seed=2, start=date(2024, 1, 3)).history
    assert (history["quantity"] > 0).all()
    assert history["price"].min() > 1.0
    assert history["price"].max() < 5.0
    assert set(history["deal"].unique().to_list()) == {0, 1}
    assert set(history["feat"].unique().to_list()) == {0, 1}
    weeks = history["week_start"].unique().sort()
    assert weeks[0] == date(2024, 1, 8)  # first Monday on/after start
    assert (weeks.dt.weekday() == 1).all()
    assert weeks.diff().drop_nulls().unique().to_list() == [timedelta(weeks=1)]


def test_retail_quantity_responds_to_price_and_promotions():
    history = generate_retail_demand(keys=40, rows=156, seed=4).history
    per_key = history.group_by("store", "brand").agg(
        pl.corr(pl.col("price").log(), pl.col("quantity").log()).alias("price_corr"),
        (
            pl.col("quantity").filter(pl.col("deal") == 1).mean()
            / pl.col("quantity").filter(pl.col("deal") == 0).mean()
        ).alias("deal_ratio"),
    )
    assert (per_key["price_corr"] < 0).mean() > 0.9
    assert (per_key["deal_ratio"] > 1).mean() > 0.9


def test_retail_future_covers_next_horizon_weeks():
    data = generate_retail_demand(keys=12, rows=20, horizon=5, seed=0)
    assert data.future is not None
    assert dict(data.future.schema) == {k: v for k, v in RETAIL_SCHEMA.items() if k != "quantity"}
    last = data.history.group_by("store", "brand").agg(pl.col("week_start").max().alias("last"))
    fut = data.future.group_by("store", "brand").agg(pl.col("week_start").sort().alias("weeks"))
    joined = last.join(fut, on=["store", "brand"], how="full", coalesce=True)
    assert joined.height == 12
    for row in joined.iter_rows(named=True):
        assert row["weeks"] == [row["last"] + timedelta(weeks=i) for i in range(1, 6)]


def test_sensor_anomalies_present_and_labelled():
    history = generate_sensor_anomaly(keys=30, rows=240, seed=5, anomaly_rate=0.02).history
    keys = history.select("device_id", "sensor").unique(maintain_order=True)
    assert keys["device_id"][:5].to_list() == ["dev-0001"] * 4 + ["dev-0002"]
    assert keys["sensor"][:4].to_list() == ["temperature", "vibration", "pressure", "humidity"]
    stamps = history.filter(pl.col("device_id") == "dev-0001", pl.col("sensor") == "vibration")["timestamp"]
    assert stamps[0] == datetime(2025, 1, 1)
    assert stamps.diff().drop_nulls().unique().to_list() == [timedelta(hours=1)]

    scored = history.with_columns(
        (
            (pl.col("value") - pl.col("value").filter(pl.col("is_anomaly") == 0).mean()).abs()
            / pl.col("value").filter(pl.col("is_anomaly") == 0).std()
        )
        .over("device_id", "sensor")
        .alias("z")
    )
    per_key = scored.group_by("device_id", "sensor").agg(
        pl.col("is_anomaly").sum().alias("n"),
        pl.col("z").filter(pl.col("is_anomaly") == 1).min().alias("min_anom_z"),
        pl.col("z").filter(pl.col("is_anomaly") == 0).max().alias("max_normal_z"),
    )
    assert (per_key["n"] >= 1).all()
    assert (per_key["min_anom_z"] > 3.5).all()
    assert (per_key["max_normal_z"] < 4.5).all()
    assert 0.01 < history["is_anomaly"].cast(pl.Float64).mean() < 0.04


def test_sensor_every_key_gets_an_anomaly_even_at_zero_rate():
    history = generate_sensor_anomaly(keys=8, rows=10, anomaly_rate=0.0).history
    assert history.group_by("device_id", "sensor").agg(pl.col("is_anomaly").sum())["is_anomaly"].min() >= 1
    assert generate_sensor_anomaly().future is None


def test_group_regression_linear_fit_is_good_but_not_perfect():
    history = generate_group_regression(keys=40, rows=200, seed=6).history
    assert set(history["x5"].unique().to_list()) == {0.0, 1.0, 2.0, 3.0}
    r2 = []
    for part in history.partition_by("segment_id"):
        x = np.column_stack([np.ones(part.height), part.select("x1", "x2", "x3", "x4", "x5").to_numpy()])
        y = part["y"].to_numpy()
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        r2.append(1 - np.sum((y - x @ beta) ** 2) / np.sum((y - y.mean()) ** 2))
    assert 0.7 <= np.median(r2) <= 0.9
    assert max(r2) < 0.97
    assert history["segment_id"][0] == "seg-001"


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_write_landing_csv_round_trip(tmp_path: Path, name: str):
    data = GENERATORS[name](keys=5, rows=12, seed=0)
    landing = tmp_path / "landing"
    paths = write_landing(data, landing, name, files=2)

    history_paths = sorted(p for p in paths if Path(p).parent == landing)
    assert [Path(p).name for p in history_paths] == [f"{name}_part-0000.csv", f"{name}_part-0001.csv"]
    parts = [pl.read_csv(p, try_parse_dates=True) for p in history_paths]
    # A key lives in exactly one file.
    key_sets = [set(p.select(KEYS[name]).unique().iter_rows()) for p in parts]
    assert not key_sets[0] & key_sets[1]

    expected = data.history
    back = pl.concat(parts).cast({c: t for c, t in expected.schema.items() if t == pl.Int8})
    assert dict(back.schema) == dict(expected.schema)
    sort_cols = [*KEYS[name], *[c for c in ("week_start", "timestamp") if c in expected.columns]]
    if name == "group_regression":
        sort_cols = expected.columns
    assert back.sort(sort_cols).equals(expected.sort(sort_cols))

    future_dir = tmp_path / "landing_future"
    future_paths = [p for p in paths if Path(p).parent == future_dir]
    if data.future is None:
        assert not future_paths
    else:
        assert Path(future_paths[0]).name == f"{name}_future_part-0000.csv"
        future = pl.concat([pl.read_csv(p, try_parse_dates=True) for p in future_paths])
        assert future["week_start"].dtype == pl.Date
        assert future.height == data.future.height


def test_write_landing_fewer_files_than_keys_and_parquet(tmp_path: Path):
    data = generate_sensor_anomaly(keys=2, rows=5)
    paths = write_landing(data, tmp_path / "in", "sensors", files=10, fmt="parquet")
    assert [Path(p).name for p in paths] == ["sensors_part-0000.parquet", "sensors_part-0001.parquet"]
    assert (
        pl.concat([pl.read_parquet(p) for p in paths])
        .sort("sensor", "timestamp")
        .equals(data.history.sort("sensor", "timestamp"))
    )
    with pytest.raises(ValueError):
        write_landing(data, tmp_path / "in", "sensors", fmt="json")
