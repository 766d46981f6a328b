"""Pipeline benchmark (DESIGN.md targets). Not a test: run it by hand and put the numbers in
your note.

    uv run python benchmarks/pipeline_bench.py --keys 200 --rows 4000 --naive-keys 5

It measures, on the retail use case (about 12 features, Ridge + LightGBM with 50 trees,
an 8-week holdout):
1. the whole pipeline, landing -> published tables, through Dagster and MLflow (`mmp run`);
2. the bare compute for the same keys: features, fitting both candidates and predicting the
   holdout, over the same number of processes, with no Dagster, MLflow, lake or warehouse;
3. the naive way for a few keys: one Dagster run per key, each in its own process as a run
   launcher starts it, with a default `mlflow.log_model` (benchmarks/naive_defs.py).
It prints the overhead ratio (1 / 2, target <= 1.3x) and the per-key cost ratio (3 / 1,
target >= 50x). `--dagster-storage postgres` and `--store-backend postgres` put the Dagster
instance, and the MLflow registries and warehouse, in fresh PostgreSQL databases (the scale
setup); the databases are left for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def bench_config(path: Path, workers: int) -> Path:
    import yaml

    from many_models_platform.core.spec import DEFAULT_CONFIG

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    retail = raw["use_cases"]["retail_demand"]
    retail["candidates"] = [
        {"name": "ridge", "estimator": "sklearn.linear_model.Ridge", "params": {"alpha": 1.0}},
        {"name": "lightgbm", "estimator": "lightgbm.LGBMRegressor", "params": {"n_estimators": 50, "n_jobs": 1}},
    ]
    retail["promotion"] = {"threshold": 10.0}  # everything promotes: the benchmark measures work, not quality
    run = {"max_keys_per_run": 100_000, "workers": workers}
    path.write_text(yaml.safe_dump({"run": run, "use_cases": {"retail_demand": retail}}))
    return path


def _bare_one(key: str, spec, frames: dict) -> dict:
    from many_models_platform.core import features as F
    from many_models_platform.core.modeling import build_pipeline, predict

    ts = F.build_training_set(spec, frames[key])
    cols = [c for c in ts.columns if c not in (spec.time_column, spec.target, F.SPLIT)]
    parts = F.split(ts)
    x, y = F.to_matrix(parts[F.TRAIN], cols), parts[F.TRAIN][spec.target].to_numpy()
    xh = F.to_matrix(parts[F.HOLDOUT], cols)
    for cand in spec.candidates:
        model = build_pipeline(spec, cand.name).fit(x, y)
        predict(spec.task, model, xh)
    return {}


def bare_compute(spec, frames: dict, workers: int) -> float:
    """Features + fit + predict for every key, over `workers` processes, data already in memory."""
    from many_models_platform.core.engine import map_keys

    keys = sorted(frames)
    # warm the pool first: worker start-up is not compute
    map_keys(_bare_one, keys[: workers * 8], (spec, {k: frames[k] for k in keys[: workers * 8]}), workers=workers)
    t = time.perf_counter()
    # ship each chunk its own data, as a real compute engine would have it local
    outcomes = map_keys(_bare_one, keys, (spec, frames), workers=workers)
    assert all(o.ok for o in outcomes), [o.reason for o in outcomes if not o.ok][:3]
    return time.perf_counter() - t


def naive_per_key(home: Path, keys: list[str]) -> float:
    """One Dagster run per key, each in its own process as a run launcher would start it,
    fitting and logging with `mlflow.sklearn.log_model` (benchmarks/naive_defs.py)."""
    import subprocess

    from dagster import DagsterInstance

    dagster_home = home / "naive_dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions("naive_keys", keys)
    defs_file = str(Path(__file__).resolve().parent / "naive_defs.py")
    t = time.perf_counter()
    for key in keys:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dagster",
                "asset",
                "materialize",
                "-f",
                defs_file,
                "--select",
                "naive_model",
                "--partition",
                key,
            ],
            env=env,
            cwd=home,  # MLflow's default artifact folder (./mlruns) lands in the benchmark's home
            check=True,
            capture_output=True,
        )
    return (time.perf_counter() - t) / len(keys)


def fresh_postgres_database(prefix: str = "mmp_bench") -> str:
    """A new database on $MMP_BENCH_PG; returns its psycopg2 SQLAlchemy URL."""
    import uuid

    import sqlalchemy as sa

    server = os.environ.get("MMP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    url = sa.engine.make_url(server)
    db = f"{prefix}_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(
        url.set(drivername="postgresql+psycopg2", database="postgres"), isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {db}")
    engine.dispose()
    # an explicit psycopg2 URL: SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3, whose
    # NOTIFY statement fails inside dagster-postgres (DESIGN.md)
    return url.set(drivername="postgresql+psycopg2", database=db).render_as_string(hide_password=False)


def postgres_instance_yaml(dagster_home: Path) -> None:
    """A fresh database and a dagster.yaml that stores runs, events and schedules in it."""
    import yaml

    dagster_home.mkdir(parents=True, exist_ok=True)
    pg_url = fresh_postgres_database()
    db = pg_url.rsplit("/", 1)[-1]
    storage = {"postgres": {"postgres_url": pg_url}}
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump({"storage": storage, "telemetry": {"enabled": False}}))
    print(f"dagster storage: postgres database {db}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--naive-keys", type=int, default=4, help="keys for the naive baseline (0 to skip)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--dagster-storage",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="Dagster instance storage; postgres uses $MMP_BENCH_PG (default postgresql://postgres@127.0.0.1:5432)",
    )
    ap.add_argument(
        "--store-backend",
        choices=["embedded", "postgres"],
        default="embedded",
        help="MLflow registries and warehouse: embedded SQLite + DuckDB, or fresh PostgreSQL databases",
    )
    args = ap.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="mmp-bench-"))
    os.environ["MMP_HOME"] = str(home)
    if args.store_backend == "postgres":
        os.environ["MMP_CANDIDATE_REGISTRY_URI"] = fresh_postgres_database("mmp_bench_cand")
        os.environ["MMP_PRODUCTION_REGISTRY_URI"] = fresh_postgres_database("mmp_bench_prod")
        os.environ["MMP_WAREHOUSE_URL"] = fresh_postgres_database("mmp_bench_wh")
    os.environ.pop("DAGSTER_HOME", None)
    config = bench_config(Path(tempfile.mkdtemp()) / "bench.yaml", args.workers)
    os.environ["MMP_CONFIG"] = str(config)

    import polars as pl

    from many_models_platform.core.generators import generate_retail_demand, write_landing
    from many_models_platform.core.keys import encode_key
    from many_models_platform.core.spec import load_config
    from many_models_platform.definitions import build_definitions
    from many_models_platform.defs.runner import prepare_instance, run_use_case
    from many_models_platform.storage.settings import PlatformSettings

    cfg = load_config(config)
    spec = cfg.use_case("retail_demand")
    settings = PlatformSettings.from_env()
    settings.ensure_local_dirs()
    t = time.perf_counter()
    data = generate_retail_demand(keys=args.keys, rows=args.rows)
    write_landing(data, Path(settings.lake_url) / "landing/retail_demand", "retail_demand", files=4, fmt="csv")
    print(f"generated {args.keys} keys x {args.rows} rows in {time.perf_counter() - t:.1f}s  (home {home})")

    # 1. the pipeline through Dagster, as `mmp run` does it (imports and instance set-up excluded)
    if args.dagster_storage == "postgres":
        postgres_instance_yaml(Path(settings.home) / "dagster")
    instance = prepare_instance(settings)
    defs = build_definitions(str(config))
    import mlflow  # noqa: F401 - import cost is start-up, not per-key work

    t = time.perf_counter()
    result = run_use_case(defs, instance, cfg, spec, settings)
    pipeline_s = time.perf_counter() - t
    assert result.success, result.errors

    # 2. bare compute on the same keys
    hist = data.history.with_columns(pl.col("store").cast(pl.Utf8))
    frames = {encode_key(k): f for k, f in hist.partition_by(spec.keys, as_dict=True).items()}
    bare_s = bare_compute(spec, frames, args.workers)

    out = {
        "keys": args.keys,
        "rows_per_key": args.rows,
        "workers": args.workers,
        "pipeline_s": round(pipeline_s, 2),
        "stage_s": {k: round(v, 2) for k, v in result.stage_seconds.items()},
        "bare_compute_s": round(bare_s, 2),
        "overhead_ratio": round(pipeline_s / bare_s, 2),
        "pipeline_per_key_ms": round(1000 * pipeline_s / args.keys, 1),
        "dagster_storage": type(instance.event_log_storage).__name__,
        "store_backend": args.store_backend,
    }
    print(json.dumps(out, indent=2), flush=True)
    if args.naive_keys > 1:
        naive = naive_per_key(home, sorted(frames)[: args.naive_keys])
        out["naive_per_key_ms"] = round(1000 * naive, 1)
        out["naive_vs_ours"] = round(naive / (pipeline_s / args.keys), 1)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
