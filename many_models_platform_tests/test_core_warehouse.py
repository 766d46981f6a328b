"""The warehouse writer: idempotent per (use case, key, run date), values only through bound parameters."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from many_models_platform.storage import warehouse as W
from many_models_platform.storage.warehouse import Warehouse

DAY = dt.date(2025, 3, 1)
NOW = dt.datetime(2025, 3, 1, 12, 0)


def predictions(key: str, values: list[float], day: dt.date = DAY, run_id: str = "r1") -> pl.DataFrame:
    n = len(values)
    return pl.DataFrame(
        {
            "use_case": ["uc"] * n,
            "key": [key] * n,
            "run_date": [day] * n,
            "row_index": list(range(n)),
            "key_label": [f"k={key}"] * n,
            "period": pl.Series([None] * n, dtype=pl.Datetime("us")),
            "kind": ["holdout"] * n,
            "prediction": pl.Series(values, dtype=pl.Float64),
            "predicted_label": pl.Series([None] * n, dtype=pl.Utf8),
            "actual": pl.Series(values, dtype=pl.Float64),
            "model_name": [f"uc.{key}"] * n,
            "model_version": [1] * n,
            "dagster_run_id": [run_id] * n,
            "published_at": [NOW] * n,
        }
    )


def summary(run_id: str, total: int, day: dt.date = DAY) -> pl.DataFrame:
    row = {
        "use_case": "uc",
        "run_date": day,
        "dagster_run_id": run_id,
        "keys_total": total,
        "keys_published": total,
        "keys_failed": 0,
        "keys_promoted": 0,
        "metric": "rmse",
        "metric_p10": 1.0,
        "metric_p50": 2.0,
        "metric_p90": 3.0,
        "published_at": NOW,
    }
    return W.records_frame(W.run_summary, [row])


@pytest.fixture
def wh(tmp_path: Path):
    warehouse = Warehouse(f"duckdb:///{tmp_path / 'wh.duckdb'}")
    warehouse.ensure_schema()
    yield warehouse
    warehouse.dispose()


def rows(wh: Warehouse, table: str) -> pl.DataFrame:
    return wh.query(f"SELECT * FROM {table} ORDER BY key, run_date, row_index")


def test_schema_has_the_bi_tables(wh):
    tables = {"predictions", "key_metrics", "key_status", "promotion_history", "run_summary", "model_family"}
    assert tables | {"key_columns", "alembic_version"} == set(wh.table_names())
    assert wh.current_revision() == "0005"  # made by the Alembic migrations, not create_all


def test_replacing_keys_is_idempotent_and_scoped(wh):
    frame = pl.concat([predictions("a", [1.0, 2.0]), predictions("b", [3.0])])
    wh.replace_keys("uc", DAY, ["a", "b"], {"predictions": frame}, {"run_summary": summary("r1", 2)})
    wh.replace_keys("uc", DAY, ["a", "b"], {"predictions": frame}, {"run_summary": summary("r1", 2)})
    assert rows(wh, "predictions").height == 3
    assert wh.query("SELECT count(*) AS n FROM run_summary")["n"][0] == 1

    # republishing only key "a" with new values replaces "a" and leaves "b" alone
    wh.replace_keys("uc", DAY, ["a"], {"predictions": predictions("a", [9.0])})
    got = rows(wh, "predictions")
    assert got.select("key", "prediction").rows() == [("a", 9.0), ("b", 3.0)]

    # another run date is a separate slice
    tomorrow = DAY + dt.timedelta(days=1)
    wh.replace_keys("uc", tomorrow, ["a"], {"predictions": predictions("a", [5.0], tomorrow)})
    assert rows(wh, "predictions").height == 3


def test_a_key_with_no_new_rows_is_cleared(wh):
    wh.replace_keys("uc", DAY, ["a"], {"predictions": predictions("a", [1.0, 2.0])})
    wh.replace_keys("uc", DAY, ["a"], {"predictions": pl.DataFrame()})
    assert rows(wh, "predictions").height == 0


def test_hostile_key_values_are_bound_not_spliced(wh):
    evil = "x'); DROP TABLE predictions; --"
    wh.replace_keys("uc", DAY, [evil], {"predictions": predictions(evil, [1.0])})
    wh.replace_keys("uc", DAY, [evil], {"predictions": predictions(evil, [2.0])})
    got = wh.query("SELECT key, prediction FROM predictions WHERE key = :k", k=evil)
    assert got.rows() == [(evil, 2.0)]


def test_many_keys_are_deleted_in_chunks(wh):
    keys = [f"k{i:04d}" for i in range(1203)]  # more than one delete chunk of 500
    frame = pl.concat([predictions(k, [1.0]) for k in keys])
    wh.replace_keys("uc", DAY, keys, {"predictions": frame})
    wh.replace_keys("uc", DAY, keys, {"predictions": frame})
    assert wh.query("SELECT count(*) AS n FROM predictions")["n"][0] == len(keys)


def test_published_values_keep_double_precision(wh):
    values = [16_777_217.0, 0.1, 1.2345486154944982]
    wh.replace_keys("uc", DAY, ["a"], {"predictions": predictions("a", values)})
    got = rows(wh, "predictions")
    assert got["prediction"].to_list() == values
    assert got["actual"].to_list() == values


def test_a_writer_waits_for_another_processes_duckdb_lock(tmp_path):
    """DuckDB allows one writer process: publishing must wait for the lock, not fail."""
    import subprocess
    import sys
    import time

    from many_models_platform.storage.warehouse import Warehouse

    db = tmp_path / "wh.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('locked', flush=True); "
            "time.sleep(3); c.close()",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    wh = Warehouse(f"duckdb:///{db}")
    start = time.monotonic()
    wh.ensure_schema()
    status = W.records_frame(
        W.key_status,
        [{"key": "k", "stage": "raw", "key_label": "id=k", "status": "ok", "dagster_run_id": "r"}],
        use_case="uc",
        run_date=DAY,
    )
    wh.replace_keys("uc", DAY, ["k"], {"key_status": status})
    waited = time.monotonic() - start
    holder.wait(timeout=10)
    assert waited > 1.0, "the lock was held, so the write must have waited"
    assert wh.query("SELECT count(*) AS n FROM key_status")["n"][0] == 1
    wh.dispose()


def test_records_frames_take_their_types_from_the_table_not_the_first_rows():
    """The crash of issue 8: 150 NULL reasons, then text; NULL, NaN, int and float metrics; ISO text times."""
    rows = [{"key": f"k{i:03d}", "stage": "raw", "reason": None, "rows_in": None} for i in range(150)]
    rows += [
        {"key": "k150", "stage": "raw", "reason": "constant target: every 'murders' value is 0", "rows_in": 17},
        {"key": "k151", "stage": "raw", "reason": 404, "rows_in": 3.0, "updated_at": "2025-03-01T13:00:00+01:00"},
    ]
    frame = W.records_frame(W.key_status, rows, use_case="uc", run_date=DAY)
    assert frame.schema == pl.Schema(W.polars_schema(W.key_status))
    assert frame["reason"].to_list()[-2:] == ["constant target: every 'murders' value is 0", "404"]
    assert frame["rows_in"].to_list()[-3:] == [None, 17, 3]
    assert frame["updated_at"][-1] == dt.datetime(2025, 3, 1, 12, 0)  # naive UTC
    values = [None, float("nan"), 3, 0.25, "n/a"]
    metric = W.records_frame(W.key_metrics, [{"value": v} for v in values])["value"].to_list()
    assert metric[0] is None and metric[1] != metric[1] and metric[2:] == [3.0, 0.25, None]
