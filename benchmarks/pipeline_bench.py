"""Pipeline benchmark (DESIGN.md targets). Not a test: run it by hand and put the numbers in
your note.

    uv run python benchmarks/pipeline_bench.py --keys 200 --rows 4000 --naive-keys 5

It measures, on the retail use case (Ridge + LightGBM with 50 trees, one validation window,
an 8-week holdout, refit on every row), in one invocation:
1. the whole pipeline, landing -> published tables, through Dagster and MLflow (`mmp run`):
   wall time, keys/s and rows/s per stage, Dagster events and registry calls per key, and
   where the time goes: per stage, the CPU of this process and of the workers against the CPU
   of the same work done bare (`cost_breakdown`);
2. the bare compute for the same keys: the same fits and predictions (`fit_key`, baselines,
   holdout and horizon predictions), each worker reading the key's bronze file as the
   pipeline's workers do, over the same warm pool, with no Dagster, MLflow or warehouse;
3. the naive way for a few keys: one Dagster run per key, each in its own process as a run
   launcher starts it, with a default `mlflow.log_model` (benchmarks/naive_defs.py);
and the peak RSS of the main process and of each worker, per phase. The data is generated in
a separate process, so the benchmark process never holds the whole dataset.
It prints the overhead ratio (1 / 2, target <= 1.3x) and the per-key cost ratio (3 / 1,
target >= 50x). `--dagster-storage postgres` and `--store-backend postgres` put the Dagster
instance, and the MLflow registries and warehouse, in fresh PostgreSQL databases (the scale
setup); the databases are left for inspection.
"""

from __future__ import annotations

import argparse
import contextlib
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


def _training_set(key: str, spec, lake):
    """The key's bronze frame, its training set and feature columns, as ``training_set`` builds them."""
    from many_models_platform.core import features as F

    bronze = lake.read_parquet(lake.key_path("bronze", spec.name, key, ".parquet"))
    ts = F.prepare_training_set(spec, bronze).frame
    features = [c for c in ts.columns if c not in (spec.time_column, spec.target, *F.SPLIT_COLUMNS)]
    return bronze, ts, features


def _bare_one(key: str, spec, lake) -> dict:
    """The fits and predictions the pipeline does for one key, prepared as its workers prepare
    them (the key's bronze file read in the worker), with nothing persisted: features and the
    split, the validation fits that choose the candidate, the winner on the training part and
    its refit on every row (``fit_key``), the holdout baselines (evaluation), and the holdout
    and horizon predictions (predictions). Returns the CPU seconds of each piece, by the stage
    that does that work in the pipeline."""
    from many_models_platform.core import features as F
    from many_models_platform.core.baselines import baselines
    from many_models_platform.core.modeling import fit_key, model_input, predict, training_scale

    cpu = time.process_time
    t0 = cpu()
    bronze, ts, features = _training_set(key, spec, lake)
    t1 = cpu()
    fitted = fit_key(spec, ts, features)
    t2 = cpu()
    parts = F.split(ts)
    train, holdout = parts[F.TRAIN], parts[F.HOLDOUT]
    t = spec.time_column
    period = F.key_period(spec, ts[t])
    baselines(spec, train, holdout, period, training_scale(spec, train, period.frequency if period else None))
    predict(spec.task, fitted.model, model_input(fitted.model, holdout, features))
    t3 = cpu()
    production = fitted.production_model or fitted.model
    scoring = lake.key_path("bronze_scoring", spec.name, key, ".parquet")
    exog = lake.read_parquet(scoring) if scoring.exists() else None
    origin = bronze.filter(bronze[spec.target].is_not_null())[t].min()
    future = F.future_frame(spec, bronze, exog, origin=origin, calendar=F.calendar_of(features))
    predict(spec.task, production, model_input(production, future, features))
    t4 = cpu()
    return {"training_set": t1 - t0, "model": t2 - t1, "evaluation": t3 - t2, "predictions": t4 - t3}


def bare_compute(spec, lake, keys: list[str], workers: int) -> tuple[float, dict[str, float]]:
    """`_bare_one` for every key over the pipeline's own worker pool (`core.engine.map_keys`),
    warmed first: worker start-up is a fixed cost of the pipeline, not compute. Returns the
    wall time and the CPU seconds of the work, summed over keys, by stage."""
    from collections import Counter

    from many_models_platform.core.engine import map_keys

    map_keys(_bare_one, keys[: workers * 8], (spec, lake), workers=workers)
    t = time.perf_counter()
    outcomes = map_keys(_bare_one, keys, (spec, lake), workers=workers)
    wall = time.perf_counter() - t
    assert all(o.ok for o in outcomes), [o.reason for o in outcomes if not o.ok][:3]
    pieces: Counter = Counter()
    for o in outcomes:
        pieces.update(o.info)
    return wall, dict(pieces)


# ---- where the time goes ------------------------------------------------------------------


def workers_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process's live children: the pool."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    return total


class StageCPU:
    """Meters every stage function the pipeline calls (``stages.STAGE_FUNCTIONS``, looked up at
    each call): its wall time, the CPU of this process (all its threads: the stage, Dagster,
    MLflow) and the CPU of the pool's workers while it ran."""

    def __init__(self):
        from many_models_platform import stages

        self.by_stage: dict[str, dict[str, float]] = {}
        for name, fn in list(stages.STAGE_FUNCTIONS.items()):
            stages.STAGE_FUNCTIONS[name] = self._metered(name, fn)

    def _metered(self, name: str, fn):
        import functools

        @functools.wraps(fn)
        def metered(*args, **kwargs):
            wall, main, workers = time.perf_counter(), time.process_time(), workers_cpu_s()
            try:
                return fn(*args, **kwargs)
            finally:
                c = self.by_stage.setdefault(name, {"wall_s": 0.0, "main_cpu_s": 0.0, "workers_cpu_s": 0.0})
                c["wall_s"] += time.perf_counter() - wall
                c["main_cpu_s"] += time.process_time() - main
                c["workers_cpu_s"] += workers_cpu_s() - workers
                # the main process's running peak when the stage ends: the stage where it jumps set it
                c["main_peak_mib_after"] = round(_hwm_mib() or 0.0, 1)

        return metered


def cost_breakdown(
    metered: StageCPU, bare: dict[str, float], step_seconds: dict[str, float], pipeline_s: float, pipeline_cpu_s: float
) -> dict:
    """Per stage: CPU the pipeline spent (this process and the workers), CPU of the same work
    done bare, their difference (the overhead in CPU seconds), and the Dagster step's time
    outside the stage function (events, metadata, the IO manager). Totals add the wall time
    outside every stage function (run start and end, between steps) and the cores left idle."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    stages = {}
    for stage, c in metered.by_stage.items():
        bare_cpu = bare.get(stage, 0.0)
        stages[stage] = {
            "wall_s": round(c["wall_s"], 2),
            "main_cpu_s": round(c["main_cpu_s"], 2),
            "workers_cpu_s": round(c["workers_cpu_s"], 2),
            "bare_cpu_s": round(bare_cpu, 2),
            "overhead_cpu_s": round(c["main_cpu_s"] + c["workers_cpu_s"] - bare_cpu, 2),
            "dagster_step_s": round(step_seconds.get(stage, 0.0) - c["wall_s"], 2),
            "main_peak_mib_after": c["main_peak_mib_after"],
        }
    bare_cpu = sum(bare.values())
    return {
        "stages": stages,
        "pipeline_cpu_s": round(pipeline_cpu_s, 2),
        "bare_cpu_s": round(bare_cpu, 2),
        "overhead_cpu_s": round(pipeline_cpu_s - bare_cpu, 2),
        "outside_stages_s": round(pipeline_s - sum(c["wall_s"] for c in metered.by_stage.values()), 2),
        "cores": cores,
        "idle_core_s": round(cores * pipeline_s - pipeline_cpu_s, 2),
    }


def _generate(home: str, keys: int, rows: int, lake_url: str) -> float:
    """Generate the data and drop it into the landing zone; runs in its own process so the
    40M-row frame never counts against the benchmark process's memory."""
    from many_models_platform.core.generators import generate_retail_demand, write_landing

    t = time.perf_counter()
    data = generate_retail_demand(keys=keys, rows=rows)
    write_landing(data, Path(lake_url) / "landing/retail_demand", "retail_demand", files=4, fmt="csv")
    return time.perf_counter() - t


# ---- per-process peak memory -------------------------------------------------------------


def _hwm_mib(pid: int | str = "self") -> float | None:
    """A process's peak resident set (VmHWM) in MiB, from /proc; None when unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_hwm(pid: int | str = "self") -> None:
    """Start a new peak (Linux: writing 5 to clear_refs resets VmHWM); harmless where unsupported."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def process_peaks() -> dict:
    """Peak RSS of this process and of each live child (the worker pool), in MiB."""
    import resource

    import psutil

    main = _hwm_mib()
    if main is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * (1024 if sys.platform == "darwin" else 1))
    workers = {}
    for child in psutil.Process().children(recursive=True):
        peak = _hwm_mib(child.pid)
        if peak is not None and peak > 1:
            workers[str(child.pid)] = round(peak, 1)
    return {"main_mib": round(main, 1), "workers_mib": workers, "max_mib": round(max([main, *workers.values()]), 1)}


def reset_peaks() -> None:
    import psutil

    _reset_hwm()
    for child in psutil.Process().children(recursive=True):
        _reset_hwm(child.pid)


# ---- Dagster events and registry calls ---------------------------------------------------


def dagster_events(instance, run_ids: list[str]) -> dict[str, int]:
    """Event-log entries of the runs, by type, read a page at a time (never all in memory)."""
    from collections import Counter

    counts: Counter = Counter()
    for run_id in run_ids:
        cursor = None
        while True:
            conn = instance.get_records_for_run(run_id, cursor=cursor, limit=5000)
            for record in conn.records:
                event = record.event_log_entry.dagster_event
                counts[event.event_type_value if event else "log_message"] += 1
            cursor = conn.cursor
            if not conn.has_more:
                break
    return dict(counts)


class RegistryCalls:
    """Counts, in this process (where every registry call of the pipeline is made): MLflow store
    calls (outermost public method of the tracking and registry SQLAlchemy stores: one request each
    to an MLflow server) and SQL statements on the two registry databases (those calls plus the
    direct reads of ``storage.registry``)."""

    def __init__(self, registry_uris: list[str]):
        import threading

        import sqlalchemy as sa
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

        self.calls = 0
        self.sql = 0
        self._lock = threading.Lock()
        self._depth = threading.local()
        self._databases = {sa.engine.make_url(u).database for u in registry_uris}
        for cls in (TrackingStore, RegistryStore):
            for name, attr in list(vars(cls).items()):
                if callable(attr) and not name.startswith("_") and not isinstance(attr, (staticmethod, classmethod)):
                    setattr(cls, name, self._counted(attr))
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._statement)

    def _counted(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            depth = getattr(self._depth, "n", 0)
            if depth == 0:
                with self._lock:
                    self.calls += 1
            self._depth.n = depth + 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth.n = depth

        return wrapper

    def _statement(self, conn, *_args) -> None:
        if conn.engine.url.database in self._databases:
            with self._lock:
                self.sql += 1


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
    ap.add_argument("--naive-keys", type=int, default=4, help="keys for the naive baseline (0 skips it)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="cProfile the benchmark process during the pipeline and write the stats here (workers not included)",
    )
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
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    home = args.home or Path(tempfile.mkdtemp(prefix="mmp-bench-"))
    os.environ["MMP_HOME"] = str(home)
    if args.store_backend == "postgres":
        os.environ["MMP_CANDIDATE_REGISTRY_URI"] = fresh_postgres_database("mmp_bench_cand")
        os.environ["MMP_PRODUCTION_REGISTRY_URI"] = fresh_postgres_database("mmp_bench_prod")
        os.environ["MMP_WAREHOUSE_URL"] = fresh_postgres_database("mmp_bench_wh")
    os.environ.pop("DAGSTER_HOME", None)
    config = bench_config(Path(tempfile.mkdtemp()) / "bench.yaml", args.workers)
    os.environ["MMP_CONFIG"] = str(config)

    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from many_models_platform.core.spec import load_config
    from many_models_platform.definitions import build_definitions
    from many_models_platform.defs.runner import prepare_instance, run_use_case
    from many_models_platform.storage.lake import Lake
    from many_models_platform.storage.settings import PlatformSettings

    cfg = load_config(config)
    spec = cfg.use_case("retail_demand")
    settings = PlatformSettings.from_env()
    settings.ensure_local_dirs()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as gen:
        gen_s = gen.submit(_generate, str(home), args.keys, args.rows, settings.lake_url).result()
    print(f"generated {args.keys} keys x {args.rows} rows in {gen_s:.1f}s  (home {home})", flush=True)

    # 1. the pipeline through Dagster, as `mmp run` does it (imports and instance set-up excluded)
    if args.dagster_storage == "postgres":
        postgres_instance_yaml(Path(settings.home) / "dagster")
    instance = prepare_instance(settings)
    defs = build_definitions(str(config))
    import mlflow  # noqa: F401 - import cost is start-up, not per-key work

    registry = RegistryCalls([settings.candidate_registry_uri, settings.production_registry_uri])
    metered = StageCPU()
    reset_peaks()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu0 = time.process_time() + workers_cpu_s()
    t = time.perf_counter()
    result = run_use_case(defs, instance, cfg, spec, settings)
    pipeline_s = time.perf_counter() - t
    pipeline_cpu_s = time.process_time() + workers_cpu_s() - cpu0
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    assert result.success, result.errors
    peaks = process_peaks()
    keys = result.keys
    n_keys = len(keys)
    rows = n_keys * args.rows
    events = dagster_events(instance, result.run_ids)

    # 2. bare compute on the same keys, from the per-key files the pipeline's workers read
    reset_peaks()
    lake = Lake(settings.lake_url, settings.lake_storage_options)
    bare_s, bare_pieces = bare_compute(spec, lake, keys, args.workers)
    bare_peaks = process_peaks()

    per_key_ms = 1000 * pipeline_s / n_keys
    out = {
        "keys": n_keys,
        "rows_per_key": args.rows,
        "rows": rows,
        "workers": args.workers,
        "pipeline_s": round(pipeline_s, 2),
        "keys_per_s": round(n_keys / pipeline_s, 1),
        "rows_per_s": round(rows / pipeline_s),
        "pipeline_per_key_ms": round(per_key_ms, 1),
        "stages": {
            stage: {
                "s": round(s, 2),
                "keys_per_s": round(n_keys / s, 1) if s else None,
                "rows_per_s": round(rows / s) if s else None,
                "keys_ok": result.stage_counts.get(stage, {}).get("ok"),
            }
            for stage, s in result.stage_seconds.items()
        },
        "bare_compute_s": round(bare_s, 2),
        "overhead_ratio": round(pipeline_s / bare_s, 2),
        "cost_breakdown": cost_breakdown(metered, bare_pieces, result.stage_seconds, pipeline_s, pipeline_cpu_s),
        "peak_rss_mib": {"pipeline": peaks, "bare_compute": bare_peaks},
        "dagster_events": sum(events.values()),
        "dagster_events_per_key": round(sum(events.values()) / n_keys, 2),
        "dagster_events_by_type": dict(sorted(events.items(), key=lambda kv: -kv[1])),
        "registry_calls": registry.calls,
        "registry_calls_per_key": round(registry.calls / n_keys, 2),
        "registry_sql_per_key": round(registry.sql / n_keys, 2),
        "dagster_storage": type(instance.event_log_storage).__name__,
        "store_backend": args.store_backend,
        # other work on the machine: the lead re-runs final figures on an idle one
        "load_average_at_start": load_at_start,
    }
    print(json.dumps(out, indent=2), flush=True)
    if args.naive_keys > 0:
        naive = naive_per_key(home, keys[: args.naive_keys])
        out["naive_keys"] = min(args.naive_keys, n_keys)
        out["naive_per_key_ms"] = round(1000 * naive, 1)
        out["naive_vs_ours"] = round(naive / (pipeline_s / n_keys), 1)
        print(json.dumps({k: out[k] for k in ("naive_keys", "naive_per_key_ms", "naive_vs_ours")}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
