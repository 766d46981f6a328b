"""How long one automation tick takes at 10,000 keys (Dagster issue 31990: evaluations timing
out near 15k dynamic partitions). Not a test: run it by hand and copy the figures into
docs/operations.md#tick-timing.

    uv run python benchmarks/automation_bench.py --keys 10000

It builds the real definitions for one use case (the shipped group_regression), adds the keys
as dynamic partitions on a fresh SQLite instance, and times ``evaluate_automation_conditions``
over the whole graph (7 stage assets x keys, plus the BI models) for: the first tick (sets the
cursor), a tick with nothing new, a tick after a burst of ``--burst`` new candidates
(``evaluation`` events), and a tick after as many promotions. It also times the rollback sensor's registry
read (``ModelRegistry.snapshot``) with one production version per key.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--burst", type=int, default=1000, help="keys that get a new candidate, then a promotion")
    ap.add_argument("--registry", action="store_true", help="also time the rollback sensor's registry read")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mmp-auto-bench-"))
    os.environ["MMP_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    (home / "dagster").mkdir(parents=True)
    from dagster import AssetKey, AssetMaterialization, DagsterInstance, evaluate_automation_conditions

    from many_models_platform.core.spec import DEFAULT_CONFIG
    from many_models_platform.definitions import build_definitions

    uc = "group_regression"
    spec = yaml.safe_load(DEFAULT_CONFIG.read_text())["use_cases"][uc]
    spec["automation"] = {"enabled": True}
    config = home / "use_cases.yaml"
    config.write_text(yaml.safe_dump({"use_cases": {uc: spec}}))
    defs = build_definitions(str(config))
    instance = DagsterInstance.get()
    keys = [f"seg-{i:06d}" for i in range(args.keys)]
    instance.add_dynamic_partitions(f"{uc}_keys", keys)

    def tick(label: str, cursor):
        t0 = time.perf_counter()
        result = evaluate_automation_conditions(defs, instance, cursor=cursor)
        print(f"{label:<44} {time.perf_counter() - t0:7.2f} s   {result.total_requested:>6} requested")
        return result.cursor

    def burst(stage: str, **metadata) -> None:
        t0 = time.perf_counter()
        for key in keys[: args.burst]:
            md = {"status": "ok", "key": key, **metadata}
            instance.report_runless_asset_event(AssetMaterialization(AssetKey([uc, stage]), partition=key, metadata=md))
        print(f"  ({args.burst} {stage} events written in {time.perf_counter() - t0:.1f} s)")

    print(f"{args.keys} keys, SQLite instance under {home}")
    cursor = tick("first tick (sets the cursor)", None)
    cursor = tick("idle tick", cursor)
    burst("evaluation", candidate_reused=False)
    cursor = tick(f"tick after {args.burst} new candidates", cursor)
    burst("promoted_model", decision="promoted")
    cursor = tick(f"tick after {args.burst} promotions", cursor)
    cursor = tick("idle tick", cursor)
    if args.registry:
        from many_models_platform.storage.registry import production_registry
        from many_models_platform.storage.settings import PlatformSettings

        settings = PlatformSettings.from_env()
        settings.ensure_local_dirs()
        prod = production_registry(settings.for_stage("promoted_model"), write=True)
        existing = prod.existing_names(uc)
        t0 = time.perf_counter()
        for key in keys:
            v = prod.register(
                uc, key, f"/nowhere/{key}", None, {"use_case": uc, "key": key, "evaluation_id": "e"}, existing
            )
            prod.set_alias(uc, key, v)
        print(f"  ({len(keys)} production versions registered in {time.perf_counter() - t0:.1f} s)")
        t0 = time.perf_counter()
        current = production_registry(settings).snapshot(uc).current
        print(
            f"{'rollback sensor registry read (2 queries)':<44} {time.perf_counter() - t0:7.2f} s   {len(current)} keys"
        )


if __name__ == "__main__":
    main()
