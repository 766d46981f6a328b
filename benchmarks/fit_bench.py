"""The floor under the pipeline: what one key's bare compute costs in CPU, in one process with one
thread per fit, as a pool worker runs it. Not a test: run it by hand on an idle machine.

    uv run python benchmarks/fit_bench.py --home <the --home of a pipeline_bench run> --keys 100

It reads the bronze files that a `pipeline_bench.py` run left in `--home` (the same use case and
data) and reports, per key: the CPU of each piece of the bare compute (`pipeline_bench._bare_one`,
by the stage that does that work), the CPU of one fit of each candidate on the key's training
part, and how often each candidate wins. From those it gives the least wall time any pipeline
could take for `--project-keys` keys on `--cores` cores: the bare CPU per key times the keys,
over the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True, help="the --home of a pipeline_bench.py run")
    ap.add_argument("--keys", type=int, default=100, help="keys to measure (the first, by name)")
    ap.add_argument("--project-keys", type=int, default=10_000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    from many_models_platform.core.engine import WORKER_ENV

    os.environ.update(WORKER_ENV)  # one thread per fit, as in a pool worker; before numpy/LightGBM load
    os.environ["MMP_HOME"] = str(args.home)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pipeline_bench import _bare_one, _training_set, bench_config

    from many_models_platform.core import features as F
    from many_models_platform.core.modeling import _fit, fit_key
    from many_models_platform.core.spec import load_config
    from many_models_platform.storage.lake import Lake
    from many_models_platform.storage.settings import PlatformSettings

    spec = load_config(bench_config(Path(tempfile.mkdtemp()) / "bench.yaml", 1)).use_case("retail_demand")
    settings = PlatformSettings.from_env()
    lake = Lake(settings.lake_url, settings.lake_storage_options)
    files = lake.glob(f"bronze/{spec.name}/*.parquet")[: args.keys]
    if not files:
        sys.exit(f"no bronze files under {args.home}: run benchmarks/pipeline_bench.py --home {args.home} first")
    keys = [f.name.removesuffix(".parquet") for f in files]
    _bare_one(keys[0], spec, lake)  # imports and first-call costs out of the figures

    pieces: Counter = Counter()
    fits: Counter = Counter()
    winners: Counter = Counter()
    rows = 0
    for key in keys:
        pieces.update(_bare_one(key, spec, lake))
        _, ts, features = _training_set(key, spec, lake)
        train = F.split(ts)[F.TRAIN]
        period = F.key_period(spec, ts[spec.time_column])
        categorical = [c for c in features if c in set(spec.categorical_features)]
        rows += train.height
        for cand in spec.candidates:
            t = time.process_time()
            _fit(spec, cand.name, train, features, categorical, period)
            fits[cand.name] += time.process_time() - t
        winners[fit_key(spec, ts, features).candidate] += 1

    n = len(keys)
    bare_ms = 1000 * sum(pieces.values()) / n
    out = {
        "keys": n,
        "features": len(features),
        "training_rows_per_key": round(rows / n),
        "bare_cpu_ms_per_key": round(bare_ms, 1),
        "bare_cpu_ms_per_key_by_stage": {k: round(1000 * v / n, 1) for k, v in pieces.items()},
        "one_fit_cpu_ms_on_the_training_part": {k: round(1000 * v / n, 1) for k, v in fits.items()},
        "winners": dict(winners),
        "projection": {
            "keys": args.project_keys,
            "cores": args.cores,
            "least_wall_s": round(bare_ms / 1000 * args.project_keys / args.cores, 1),
        },
        "load_average_at_start": load_at_start,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
