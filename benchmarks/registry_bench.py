"""Registry overhead per key (issue 3's target: <= 15 ms per key on 2 cores with PostgreSQL).
Not a test: run it by hand and put the numbers in your note.

    uv run python benchmarks/registry_bench.py --keys 1000 --backend postgres

With ``--analyze`` the PostgreSQL planner statistics are refreshed between the two days, as
autovacuum does between daily runs; without it day 2 runs on statistics from an empty database.

It measures the registry work the pipeline does for N keys, with real MLflow stores and real
skops model folders, and without the model fitting around it:
1. candidate registration, as the ``model`` stage does it (``ModelRegistry.register_many``);
2. resolving the key -> newest candidate map (``latest_versions``) and the production map
   (``snapshot``): a constant number of paginated searches, whatever N is;
3. the real ``promoted_model`` stage (``stages.promoted_model.promote``) over lake state files that say
   every key passed evaluation (pinned as the trust chain needs them): artifact copy into the
   production root (verified), registration, alias;
4. the model family view (``lifecycle.model_family``);
5. a second day: new candidate versions for existing names, then promotion over a champion.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


@contextlib.contextmanager
def stores(backend: str, server: str, keep: bool = False):
    if backend == "sqlite":
        yield {}
        return
    import psycopg2

    admin = psycopg2.connect(f"{server}/postgres")
    admin.autocommit = True
    names = [f"mmp_bench_{role}_{uuid.uuid4().hex[:8]}" for role in ("cand", "prod")]
    with admin.cursor() as cur:
        for n in names:
            cur.execute(f'CREATE DATABASE "{n}"')
    url = server.replace("postgresql://", "postgresql+psycopg2://", 1)
    try:
        yield {
            "MMP_CANDIDATE_REGISTRY_URI": f"{url}/{names[0]}",
            "MMP_PRODUCTION_REGISTRY_URI": f"{url}/{names[1]}",
        }
    finally:
        with admin.cursor() as cur:
            for n in [] if keep else names:
                cur.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="postgres")
    ap.add_argument("--pg", default=os.environ.get("MMP_TEST_PG", "postgresql://postgres@127.0.0.1:5432"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the PostgreSQL databases (for EXPLAIN)")
    ap.add_argument(
        "--analyze",
        action="store_true",
        help="ANALYZE both PostgreSQL databases between the two days, as autovacuum would between daily runs",
    )
    args = ap.parse_args(argv)

    import numpy as np
    from sklearn.linear_model import Ridge

    from many_models_platform.core.engine import KeyOutcome
    from many_models_platform.core.keys import encode_key
    from many_models_platform.core.spec import load_config
    from many_models_platform.lifecycle import model_family, registries
    from many_models_platform.stages import StageRun
    from many_models_platform.stages.base import production_models, write_state
    from many_models_platform.stages.promoted_model import promote
    from many_models_platform.storage.registry import HASH_TAG, model_template_dir, write_model_dir
    from many_models_platform.storage.settings import PlatformSettings

    home = Path(tempfile.mkdtemp(prefix="mmp-registry-bench-"))
    spec = load_config().use_case("group_regression")
    keys = [encode_key([f"seg-{i:05d}"]) for i in range(args.keys)]
    model = Ridge().fit(np.random.default_rng(0).normal(size=(50, 5)), np.arange(50.0))
    timings: dict[str, float] = {}

    with stores(args.backend, args.pg, args.keep) as env:
        os.environ.update(env)
        settings = PlatformSettings.from_env(home)
        settings.ensure_local_dirs()
        cand, prod = registries(settings)
        cand.writable = True
        cand.client.search_registered_models()  # open both stores (schema creation) outside the timings
        prod.client.search_registered_models()
        template = model_template_dir()

        def day(n: int) -> None:
            run = StageRun(spec, settings.for_stage("promoted_model"), run_id=f"bench-{n}")
            run_id, artifact_uri = cand.start_run(spec.name, f"bench-{n}", {"use_case": spec.name})
            items = []
            for k in keys:  # the workers' part of the model stage: not registry time
                source = f"{artifact_uri}/models/{k}"
                sha = write_model_dir(model, source, template)
                tags = {"use_case": spec.name, "key": k, HASH_TAG: sha, "data_fingerprint": f"d{n}"}
                tags |= {"metric": spec.metric, "metric.rmse": repr(1.0 / n), "features": "x1,x2,x3,x4,x5"}
                items.append((k, source, tags))
            t = time.perf_counter()
            versions = cand.register_many(spec.name, items, run_id)
            timings[f"day{n}_register_candidates"] = time.perf_counter() - t
            failed = [k for k, v in versions.items() if isinstance(v, Exception)]
            assert not failed, versions[failed[0]]
            t = time.perf_counter()
            latest = cand.latest_versions(spec.name)
            champions = production_models(run, keys)
            timings[f"day{n}_resolve_maps"] = time.perf_counter() - t
            assert len(latest) == len(keys)
            for k, src, tags in items:  # what training, model and evaluation leave in the lake for promotion
                data = {"data_fingerprint": tags["data_fingerprint"]}
                write_state(run.lake, spec.name, "training_set", KeyOutcome(k, "ok", info=data), run.run_id)
                info = {"source": src, **data, "estimator": "ridge", "version": versions[k]}
                info |= {"features": tags["features"].split(","), "artifact_sha256": tags[HASH_TAG]}
                write_state(run.lake, spec.name, "model", KeyOutcome(k, "ok", info=info), run.run_id)
                champ = champions.get(k)
                report = {"candidate_version": versions[k], "metrics": {"rmse": 1.0 / n}, "rows_train": 100}
                report |= {"rows_holdout": 30, "champion_version": champ["version"] if champ else None}
                report["champion_metrics"] = {"rmse": 1.0} if champ else None
                report |= {"evaluation_id": f"bench-{n}-{k}", "artifact_sha256": tags[HASH_TAG], **data}
                write_state(run.lake, spec.name, "evaluation", KeyOutcome(k, "ok", info=report), run.run_id)
            t = time.perf_counter()
            report = promote(run, keys)
            timings[f"day{n}_promote_stage"] = time.perf_counter() - t
            assert report.summary["decisions"] == {"promoted": len(keys)}, report.summary
            t = time.perf_counter()
            family = model_family(spec, cand, prod)
            timings[f"day{n}_model_family"] = time.perf_counter() - t
            assert family["status"].to_list() == ["current"] * len(keys)

        day(1)
        if args.analyze and env:
            import sqlalchemy as sa

            for uri in env.values():
                with sa.create_engine(uri, isolation_level="AUTOCOMMIT").connect() as conn:
                    conn.exec_driver_sql("ANALYZE")
        day(2)

    per_key = {k: v / args.keys * 1000 for k, v in timings.items()}
    registry_total = sum(v for k, v in per_key.items() if k.startswith("day2"))
    result = {
        "backend": args.backend,
        "analyzed_between_days": bool(args.analyze),
        "keys": args.keys,
        "threads": prod.parallelism(),
        "cpus": os.cpu_count(),
        "date": dt.date.today().isoformat(),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "ms_per_key": {k: round(v, 2) for k, v in per_key.items()},
        "registry_ms_per_key_day2": round(registry_total, 2),
    }
    if args.keep:
        result["stores"] = env
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.backend}, {args.keys} keys, {result['threads']} registry thread(s)")
        for k, v in per_key.items():
            print(f"  {k:32s} {timings[k]:7.2f} s  {v:6.2f} ms/key")
        print(f"  registry work per key on a later day (register, resolve, promote, family): {registry_total:.2f} ms")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
