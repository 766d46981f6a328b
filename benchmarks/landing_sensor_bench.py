"""How long one landing-sensor tick takes with 10,000 landed files (Dagster's tick limit: 60 s).
Not a test: run it by hand and put the numbers in docs/benchmarks.md.

    uv run python benchmarks/landing_sensor_bench.py --files 10000 --lake local
    uv run python benchmarks/landing_sensor_bench.py --files 10000 --lake azurite

It lands ``--files`` files (``--format`` csv or parquet, one key each, ``--rows`` rows) in a
fresh lake (a local folder, or a container in an Azurite started for the run), then evaluates
the real sensor (``defs.sensors.build_landing_sensor``) with ``build_sensor_context`` on a real
Dagster instance (SQLite), applying its partition requests as the daemon does, and times:

1. the first ticks, all files new, until every file is handled (each tick reads what it can in
   ``max_tick_seconds`` and at most ``max_files_per_tick`` files; the rest is its backlog);
2. one tick with nothing new among the files (the common case: one listing, one read);
3. one tick after ``--changed`` new files (new keys) landed;
4. one tick after ``--changed`` files were rewritten;
5. one more tick with nothing new.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "many_models_platform_tests"))


def csv_bytes(key: str, rows: int, shift: int = 0) -> bytes:
    lines = ["segment,x1,x2,y"] + [f"{key},{i % 7 + shift},{i % 5},{2 * (i % 7) + i % 5}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def parquet_bytes(key: str, rows: int, shift: int = 0) -> bytes:
    import io

    import polars as pl

    frame = pl.read_csv(io.BytesIO(csv_bytes(key, rows, shift)), schema_overrides={"segment": pl.Utf8})
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


@contextlib.contextmanager
def lake_env(kind: str):
    if kind == "local":
        yield {}
        return
    from azurite import run_azurite

    with run_azurite() as server:
        container = server.create_container("bench")
        yield {"MMP_LAKE_URL": f"abfs://{container}/lake", "AZURE_STORAGE_CONNECTION_STRING": server.connection_string}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--format", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--max-files-per-tick", type=int, default=10_000)
    parser.add_argument("--max-tick-seconds", type=float, default=30.0)
    parser.add_argument("--max-keys-per-run", type=int, default=2000)
    parser.add_argument("--lake", choices=["local", "azurite"], default="local")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home, lake_env(args.lake) as env:
        os.environ.update({"MMP_HOME": home, "DAGSTER_HOME": f"{home}/dagster", **env})
        import yaml
        from dagster import DagsterInstance, SensorResult, build_sensor_context

        from many_models_platform.core.spec import load_config
        from many_models_platform.defs.resources import PlatformResource
        from many_models_platform.defs.sensors import build_landing_sensor
        from many_models_platform.storage.lake import Lake
        from many_models_platform.storage.settings import PlatformSettings

        body = {
            "task": "regression",
            "source": {"path": f"landing/bench/*.{args.format}"},
            "keys": ["segment"],
            "target": "y",
            "features": ["x1", "x2"],
            "holdout": {"fraction": 0.25},
            "metric": "rmse",
            "candidates": [{"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}],
            "landing_sensor": {
                "enabled": True,
                "max_files_per_tick": args.max_files_per_tick,
                "max_tick_seconds": args.max_tick_seconds,
            },
        }
        path = Path(home) / "uc.yaml"
        path.write_text(
            yaml.safe_dump({"use_cases": {"bench": body}, "run": {"max_keys_per_run": args.max_keys_per_run}})
        )
        config = load_config(path)
        settings = PlatformSettings.from_env()
        settings.ensure_local_dirs()
        lake = Lake(settings.lake_url, settings.lake_storage_options)
        Path(home, "dagster").mkdir()
        instance = DagsterInstance.local_temp(f"{home}/dagster")
        sensor = build_landing_sensor(config.use_case("bench"), config)

        encode = parquet_bytes if args.format == "parquet" else csv_bytes

        def land(numbers, shift: int = 0) -> None:
            """Upload in bulk: adlfs sends many objects at once from its event loop."""
            blobs = {
                lake.path("landing", "bench", f"part-{i:06d}.{args.format}"): encode(f"k{i:06d}", args.rows, shift)
                for i in numbers
            }
            if lake.is_local:
                for path, data in blobs.items():
                    lake.write_bytes(path, data)
            else:
                fs = lake.root.fs
                for start in range(0, len(blobs), 1000):
                    fs.pipe({p.path: d for p, d in list(blobs.items())[start : start + 1000]})

        t = time.perf_counter()
        land(range(args.files))
        print(f"lake={args.lake} files={args.files} format={args.format}: landed in {time.perf_counter() - t:.1f} s")

        cursor = None

        def tick(label: str) -> None:
            nonlocal cursor
            t0 = time.perf_counter()
            with build_sensor_context(
                instance=instance, cursor=cursor, resources={"platform": PlatformResource()}
            ) as ctx:
                result = sensor(ctx)
            seconds = time.perf_counter() - t0
            runs = new = 0
            if isinstance(result, SensorResult):
                cursor = result.cursor or cursor
                runs = len(result.run_requests or [])
                for req in result.dynamic_partitions_requests or []:
                    new += len(req.partition_keys)
                    instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
            print(f"  {label:<34} {seconds:6.2f} s   new keys {new:>6}   runs requested {runs}", flush=True)
            return new

        n = 0
        while tick(f"first ticks ({n + 1})") and n < 50:
            n += 1
        tick("nothing changed")
        land(range(args.files, args.files + args.changed))
        tick(f"{args.changed} new files (new keys)")
        land(range(0, args.files, max(1, args.files // args.changed)), shift=1)
        tick(f"{args.changed} files rewritten")
        tick("nothing changed again")
        instance.dispose()


if __name__ == "__main__":
    main()
