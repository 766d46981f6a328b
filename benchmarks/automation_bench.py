"""How long automation ticks take at 10,000 keys (Dagster issue 31990: evaluations timing out
near 15k dynamic partitions). Not a test: run it by hand and copy the figures into
docs/operations.md#tick-timing.

    uv run python benchmarks/automation_bench.py --keys 10000 --registry

It builds the real definitions for one use case (the shipped group_regression), adds the keys
as dynamic partitions on a fresh SQLite instance, and evaluates the real automation sensors
(``<uc>_promote_automation``, ``<uc>_score_automation``, ``bi_marts_automation``: each one
``AutomationConditionSensorDefinition.evaluate_tick``, what the code server runs for a tick,
each with its own cursor) for: the first tick (sets the cursors), a tick with nothing new, a
tick after a burst of ``--burst`` new candidates (``evaluation`` events), a tick after as many
promotions, and an idle tick. With ``--tester`` it also times Dagster's test helper
``evaluate_automation_conditions`` over the whole graph, which the previous version of this
benchmark measured: it serializes its cursor outside the evaluation's partition cache and so
reads all dynamic partitions from the instance once per condition node and subset (about 60
times a tick here), which a sensor tick does not. ``--registry`` also times the rollback
sensor's registry read (``ModelRegistry.snapshot``) with one production version per key, and
one tick of the rollback sensor itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import yaml

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--burst", type=int, default=1000, help="keys that get a new candidate, then a promotion")
    ap.add_argument("--registry", action="store_true", help="also time the rollback sensor's registry read")
    ap.add_argument("--tester", action="store_true", help="also time evaluate_automation_conditions (the old way)")
    args = ap.parse_args()
    logging.disable(logging.INFO)  # the sensors log every requested key
    home = Path(tempfile.mkdtemp(prefix="mmp-auto-bench-"))
    os.environ["MMP_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    (home / "dagster").mkdir(parents=True)
    from dagster import (
        AssetKey,
        AssetMaterialization,
        DagsterInstance,
        build_sensor_context,
        evaluate_automation_conditions,
    )

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

    sensors = [defs.get_sensor_def(f"{uc}_{lane}_automation") for lane in ("promote", "score")]
    sensors.append(defs.get_sensor_def("bi_marts_automation"))
    cursors: dict[str, str | None] = {s.name: None for s in sensors}
    tester_cursor = [None]

    def tick(label: str) -> None:
        parts, total, requested = [], 0.0, 0
        for sensor in sensors:
            t0 = time.perf_counter()
            with build_sensor_context(instance=instance, cursor=cursors[sensor.name], definitions=defs) as ctx:
                result = sensor.evaluate_tick(ctx)
            seconds = time.perf_counter() - t0
            total += seconds
            cursors[sensor.name] = result.cursor
            keys = sum(
                len(list(sub.get_partition_keys())) if hasattr(sub, "get_partition_keys") else 1
                for req in result.run_requests or []
                if req.asset_graph_subset is not None
                for sub in req.asset_graph_subset.partitions_subsets_by_asset_key.values()
            )
            requested += keys
            parts.append(f"{sensor.name.removeprefix(uc + '_')} {seconds:.2f}")
        print(f"{label:<34} {total:6.2f} s ({', '.join(parts)})   {requested:>6} key-assets requested", flush=True)
        if args.tester:
            t0 = time.perf_counter()
            result = evaluate_automation_conditions(defs, instance, cursor=tester_cursor[0])
            tester_cursor[0] = result.cursor
            took = time.perf_counter() - t0
            print(f"{'  tester, whole graph':<34} {took:6.2f} s   {result.total_requested:>6} requested")

    def burst(stage: str, **metadata) -> None:
        t0 = time.perf_counter()
        for key in keys[: args.burst]:
            md = {"status": "ok", "key": key, **metadata}
            instance.report_runless_asset_event(AssetMaterialization(AssetKey([uc, stage]), partition=key, metadata=md))
        print(f"  ({args.burst} {stage} events written in {time.perf_counter() - t0:.1f} s)")

    print(f"{args.keys} keys, SQLite instance under {home}")
    tick("first tick (sets the cursors)")
    tick("idle tick")
    burst("evaluation", candidate_reused=False)
    tick(f"tick after {args.burst} new candidates")
    burst("promoted_model", decision="promoted")
    tick(f"tick after {args.burst} promotions")
    tick("idle tick")
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
        took = time.perf_counter() - t0
        print(f"{'rollback sensor registry read (2 q)':<34} {took:6.2f} s   {len(current)} keys")
        from many_models_platform.defs.resources import PlatformResource

        rollback = defs.get_sensor_def(f"{uc}_rollback_rescore")
        cursor = None
        for label in ("rollback sensor, first tick", "rollback sensor, idle tick"):
            t0 = time.perf_counter()
            with build_sensor_context(
                instance=instance, cursor=cursor, definitions=defs, resources={"platform": PlatformResource()}
            ) as ctx:
                result = rollback(ctx)
            cursor = result.cursor
            print(f"{label:<34} {time.perf_counter() - t0:6.2f} s   {len(result.run_requests or [])} runs")


if __name__ == "__main__":
    main()
