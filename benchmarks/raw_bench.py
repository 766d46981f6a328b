"""The ``raw`` stage alone: peak RSS and wall time of landing -> bronze, and a dump to compare
bronze and counts before and after a change of the reader. Not a test: run it by hand.

    uv run python benchmarks/raw_bench.py --home /tmp/rawb --generate --keys 1000 --rows 4000
    uv run python benchmarks/raw_bench.py --home /tmp/rawb --dump /tmp/before   # then compare

Data is generated in a child process, so the measured process never holds the generated frame.
Peak RSS is ``ru_maxrss`` of this process, which runs the stage (keys are discovered in a child
unless ``--discover-here``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

UNALIGNED = (  # each week_start moved by a random second of its week: about one distinct time per row
    "import dataclasses, numpy as np, polars as pl;"
    "late = pl.Series(np.random.default_rng(0).integers(0, 7 * 86400, d.history.height));"
    "t = pl.col('week_start').cast(pl.Datetime('us')) + pl.duration(seconds=late);"
    "d = dataclasses.replace(d, history=d.history.with_columns(t.dt.strftime('%Y-%m-%dT%H:%M:%S')));"
)


def _generate(home: Path, keys: int, rows: int, files: int, unaligned: bool) -> None:
    code = (
        "import sys; from pathlib import Path;"
        "from many_models_platform.core.generators import generate_retail_demand, write_landing;"
        f"d = generate_retail_demand(keys={keys}, rows={rows});"
        + (UNALIGNED if unaligned else "")
        + f"write_landing(d, Path(sys.argv[1]) / 'landing/retail_demand', 'retail_demand', files={files}, fmt='csv')"
    )
    subprocess.run([sys.executable, "-c", code, str(home / "lake")], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--generate", action="store_true", help="write a retail landing zone first")
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--files", type=int, default=4)
    p.add_argument(
        "--unaligned-times", action="store_true", help="generate: ISO datetimes at random seconds, not week starts"
    )
    p.add_argument("--subset", type=int, default=0, help="run only the first N discovered keys (a ranged run)")
    p.add_argument("--rows-per-bucket", type=int, help="override raw.ROWS_PER_BUCKET (when the stage has one)")
    p.add_argument(
        "--batched-file-mib", type=float, help="override raw.BATCHED_FILE_BYTES: larger files are read in batches"
    )
    p.add_argument("--discover-here", action="store_true", help="discover keys in this process (counted in its peak)")
    p.add_argument("--workers", type=int, default=2, help="the worker pool's size (1: in this process)")
    p.add_argument("--dump", type=Path, help="write all bronze rows and the stage summary here")
    args = p.parse_args()
    os.environ["MMP_HOME"] = str(args.home.resolve())
    if args.generate:
        t = time.perf_counter()
        _generate(args.home, args.keys, args.rows, args.files, args.unaligned_times)
        print(f"generated in {time.perf_counter() - t:.1f}s", flush=True)

    import polars as pl
    import psutil

    from many_models_platform.core.spec import load_config
    from many_models_platform.stages import raw, run_stage
    from many_models_platform.stages.base import StageRun
    from many_models_platform.stages.raw import discover_keys
    from many_models_platform.storage.settings import PlatformSettings

    if args.rows_per_bucket:
        raw.ROWS_PER_BUCKET = args.rows_per_bucket
    if args.batched_file_mib is not None:
        raw.BATCHED_FILE_BYTES = int(args.batched_file_mib * 2**20)
    settings = PlatformSettings.from_env()
    settings.ensure_local_dirs()
    spec = load_config().use_cases["retail_demand"]
    lake = StageRun(spec, settings, run_id="bench").lake
    if args.discover_here:
        keys = discover_keys(spec, lake)
    else:  # in a child, so this process's peak is the stage's own
        code = (
            "import json; from many_models_platform.core.spec import load_config;"
            "from many_models_platform.stages.raw import discover_keys;"
            "from many_models_platform.storage.settings import PlatformSettings;"
            "from many_models_platform.storage.lake import Lake; s = PlatformSettings.from_env();"
            "print(json.dumps(discover_keys(load_config().use_cases['retail_demand'], Lake(s.lake_url))))"
        )
        keys = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout)
    if args.subset:
        keys = keys[: args.subset]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, cpu = time.perf_counter(), time.process_time()
    # as the pipeline runs it: the worker pool starts (and imports) while the landing zone is read
    report = run_stage("raw", StageRun(spec, settings, run_id="bench", workers=args.workers), keys)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ok = sum(o.ok for o in report.outcomes)
    out = {"keys": len(keys), "ok": ok, "wall_s": round(wall, 1), "main_cpu_s": round(cpu, 1)}
    workers = psutil.Process().children(recursive=True)
    out["workers_cpu_s"] = round(sum(w.cpu_times().user + w.cpu_times().system for w in workers), 1)
    out |= {
        "peak_rss_mib": round(peak / 1024),
        "workers_rss_mib": [round(w.memory_info().rss / 2**20) for w in workers],
    }
    out["rss_before_mib"] = round(rss0 / 1024)
    print(json.dumps(out), flush=True)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        frames = []
        for o in report.outcomes:
            path = lake.key_path("bronze", spec.name, o.key, ".parquet")
            if o.ok:
                frames.append(pl.read_parquet(path.path).with_columns(pl.lit(o.key).alias("__key")))
        pl.concat(frames).write_parquet(args.dump / "bronze.parquet")
        outcomes = {o.key: {"status": o.status, "reason": o.reason, "info": o.info} for o in report.outcomes}
        doc = {"summary": report.summary, "outcomes": outcomes}
        (args.dump / "report.json").write_text(json.dumps(doc, sort_keys=True, default=str, indent=1))


if __name__ == "__main__":
    main()
