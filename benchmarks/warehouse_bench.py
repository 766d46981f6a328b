"""Warehouse bulk-load benchmark. Not a test: run it by hand and put the numbers in your note.

    uv run python benchmarks/warehouse_bench.py --keys 1000 --rows 100 --backend both

It publishes ``--keys`` keys through ``Warehouse.replace_keys`` exactly as the ``published``
stage does: ``--rows`` prediction rows per key, 4 metric rows, 7 status rows and 1 promotion
decision per key, 1 run summary, in one transaction. It times, per backend:

1. ``ensure_schema`` on an empty database (the Alembic upgrade) and again at head;
2. the first load (empty tables: deletes find nothing);
3. the replace: the same publish again, which deletes every row of the first and loads anew;

and reports rows per second over all five tables. ``--baseline`` also times the replace through
the generic path (SQLAlchemy ``executemany`` of the INSERT, the path SQL Server takes with
``fast_executemany``) to show what the fast path buys.

DuckDB writes a file in a temporary directory. PostgreSQL gets a fresh database
``mmp_bench_<hex>`` on ``--pg`` (default ``$MMP_BENCH_PG`` or
``postgresql://postgres@127.0.0.1:5432``), dropped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from many_models_platform.storage.warehouse import Warehouse

DAY = dt.date(2025, 3, 1)
NOW = dt.datetime(2025, 3, 1, 12, 0)
STAGES = ["raw", "training_set", "model", "evaluation", "promoted_model", "predictions", "published"]
METRICS = ["mape", "rmse", "mae", "r2"]


class ExecutemanyWarehouse(Warehouse):
    """The generic path for every backend: one executemany per batch of rows."""

    def _insert(self, conn, table, frame):
        self._insert_executemany(conn, table, frame)


def publish_frames(n_keys: int, rows: int, run_id: str):
    """What the published stage hands to replace_keys for ``n_keys`` retail-like keys."""
    keys = [f"{1000 + i}.brand{i % 7}" for i in range(n_keys)]
    labels = [f"store={1000 + i}, brand=brand{i % 7}" for i in range(n_keys)]
    common = [pl.lit("retail_demand").alias("use_case"), pl.lit(DAY).alias("run_date")]
    n = n_keys * rows
    preds = pl.DataFrame(
        {
            "key": [k for k in keys for _ in range(rows)],
            "row_index": [i for _ in keys for i in range(rows)],
            "key_label": [lab for lab in labels for _ in range(rows)],
            "period": [NOW + dt.timedelta(weeks=i) for _ in keys for i in range(rows)],
            "kind": ["forecast" if i >= rows - 8 else "holdout" for _ in keys for i in range(rows)],
            "prediction": [1000.0 + (j * 7919 % 1000) / 7 for j in range(n)],
            "predicted_label": pl.Series([None] * n, dtype=pl.Utf8),
            "actual": [None if j % 10 == 9 else 990.0 + (j % 97) for j in range(n)],
            "model_name": [f"retail_demand.{k}" for k in keys for _ in range(rows)],
            "model_version": [3] * n,
            "dagster_run_id": [run_id] * n,
            "published_at": [NOW] * n,
        }
    ).with_columns(common)
    metrics = pl.DataFrame(
        {
            "key": [k for k in keys for _ in METRICS],
            "model_role": ["candidate"] * (n_keys * len(METRICS)),
            "metric": METRICS * n_keys,
            "value": [0.05 + (j % 13) / 100 for j in range(n_keys * len(METRICS))],
            "model_name": [f"retail_demand.{k}" for k in keys for _ in METRICS],
            "model_version": [3] * (n_keys * len(METRICS)),
            "estimator": ["lightgbm"] * (n_keys * len(METRICS)),
            "dagster_run_id": [run_id] * (n_keys * len(METRICS)),
        }
    ).with_columns(common)
    status = pl.DataFrame(
        {
            "key": [k for k in keys for _ in STAGES],
            "stage": STAGES * n_keys,
            "key_label": [lab for lab in labels for _ in STAGES],
            "status": ["ok"] * (n_keys * len(STAGES)),
            "reason": pl.Series([None] * (n_keys * len(STAGES)), dtype=pl.Utf8),
            "dagster_run_id": [run_id] * (n_keys * len(STAGES)),
            "updated_at": [NOW] * (n_keys * len(STAGES)),
        }
    ).with_columns(common)
    decisions = pl.DataFrame(
        {
            "key": keys,
            "decided_at": [NOW] * n_keys,
            "decision": ["kept_champion"] * n_keys,
            "reason": ["champion v3 stays: mape 0.061 vs 0.072"] * n_keys,
            "metric": ["mape"] * n_keys,
            "candidate_version": [4] * n_keys,
            "candidate_value": [0.072] * n_keys,
            "champion_version": [3] * n_keys,
            "champion_value": [0.061] * n_keys,
            "production_version": [3] * n_keys,
            "decided_by": [f"dagster run {run_id}"] * n_keys,
            "dagster_run_id": [run_id] * n_keys,
        }
    ).with_columns(common)
    summary = pl.DataFrame(
        [
            {
                "use_case": "retail_demand",
                "run_date": DAY,
                "dagster_run_id": run_id,
                "keys_total": n_keys,
                "keys_published": n_keys,
                "keys_failed": 0,
                "keys_promoted": 0,
                "metric": "mape",
                "metric_p10": 0.05,
                "metric_p50": 0.1,
                "metric_p90": 0.15,
                "published_at": NOW,
            }
        ]
    )
    frames = {"predictions": preds, "key_metrics": metrics, "key_status": status}
    append = {"promotion_history": decisions, "run_summary": summary}
    return keys, frames, append


@contextmanager
def duckdb_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="mmp_wh_bench_") as tmp:
        yield f"duckdb:///{Path(tmp) / 'warehouse.duckdb'}"


@contextmanager
def postgres_url(server: str) -> Iterator[str]:
    import psycopg2

    u = sa.make_url(server)
    admin = psycopg2.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password, dbname="postgres")
    admin.autocommit = True
    name = f"mmp_bench_{uuid.uuid4().hex}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield u.set(drivername="postgresql+psycopg2", database=name).render_as_string(hide_password=False)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(url: str, n_keys: int, rows: int, baseline: bool) -> dict:
    keys, frames, append = publish_frames(n_keys, rows, "bench-run")
    total = sum(f.height for f in frames.values()) + sum(f.height for f in append.values())
    wh = Warehouse(url)
    migrate_s = timed(wh.ensure_schema)
    at_head_s = timed(Warehouse(url).ensure_schema)  # a new instance: the one-query check
    first_s = timed(lambda: wh.replace_keys("retail_demand", DAY, keys, frames, append))
    replace_s = timed(lambda: wh.replace_keys("retail_demand", DAY, keys, frames, append))
    n = wh.query("SELECT count(*) AS n FROM predictions")["n"][0]
    assert n == frames["predictions"].height, (n, frames["predictions"].height)
    out = {
        "rows_per_publish": total,
        "prediction_rows": frames["predictions"].height,
        "ensure_schema_migrate_s": round(migrate_s, 3),
        "ensure_schema_at_head_ms": round(at_head_s * 1000, 1),
        "first_load_s": round(first_s, 3),
        "first_load_rows_per_s": round(total / first_s),
        "replace_s": round(replace_s, 3),
        "replace_rows_per_s": round(total / replace_s),
    }
    wh.dispose()
    if baseline:
        generic = ExecutemanyWarehouse(url)
        generic_s = timed(lambda: generic.replace_keys("retail_demand", DAY, keys, frames, append))
        generic.dispose()
        out["replace_executemany_s"] = round(generic_s, 3)
        out["replace_executemany_rows_per_s"] = round(total / generic_s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=100, help="prediction rows per key")
    ap.add_argument("--backend", choices=["duckdb", "postgres", "both"], default="both")
    ap.add_argument("--pg", default=os.environ.get("MMP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432"))
    ap.add_argument("--baseline", action="store_true", help="also time the replace through plain executemany")
    ap.add_argument("--repeat", type=int, default=1, help="runs per backend, each on a fresh database (medians)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    results: dict = {"keys": args.keys, "rows_per_key": args.rows, "repeat": args.repeat, "backends": {}}
    backends = ["duckdb", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        runs = []
        for _ in range(args.repeat):
            ctx = duckdb_url() if backend == "duckdb" else postgres_url(args.pg)
            with ctx as url:
                runs.append(bench(url, args.keys, args.rows, args.baseline))
            print(backend, json.dumps(runs[-1]), flush=True)
        results["backends"][backend] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
