"""Rollback re-scoring: a production alias moved outside Dagster (`mmp promote --rollback`)
re-scores that key. Dagster cannot see a registry change, so a sensor keeps every key's
production version and compares it with the registry on each tick: two queries per tick
(``ModelRegistry.snapshot``), however many keys there are.

The versions are kept in the lake, ``sensors/<use case>/production_<digest>.json``, and the
sensor's Dagster cursor is only the digest: Dagster stores a sensor's cursor with every tick,
and a map of 10,000 keys would be some 170 KB a tick, one tick every ``interval_seconds``."""

from __future__ import annotations

import hashlib
import json

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from ..core.spec import PlatformConfig, UseCaseSpec
from ..storage.lake import Lake
from ..storage.registry import ModelRef, production_registry
from .factory import partitions_name
from .lane_jobs import lane_job_name, ranged_run_requests
from .resources import PlatformResource


def rollback_sensor_name(use_case: str) -> str:
    return f"{use_case}_rollback_rescore"


def changed_outside(previous: dict[str, int], current: dict[str, ModelRef]) -> list[str]:
    """Keys whose production alias moved to a version that a promotion did not just create:
    back to a lower version, to one marked ``restored_at`` (rollback or roll-forward), or to
    a version that no pipeline evaluation made. A promotion by the pipeline (a new, higher
    version with an ``evaluation_id``) is the score automation's business, not ours."""
    out = []
    for key, ref in sorted(current.items()):
        before = previous.get(key)
        if before is None or before == ref.version:
            continue
        if ref.version < before or ref.tags.get("restored_at") or not ref.tags.get("evaluation_id"):
            out.append(key)
    return out


def _versions_path(lake: Lake, use_case: str, digest: str):
    return lake.path("sensors", use_case, f"production_{digest}.json")


def remember_versions(lake: Lake, use_case: str, versions: dict[str, int], previous: str | None) -> str:
    """Store ``versions`` (key -> production version) in the lake; returns its digest, the cursor.
    Older maps go, except the one the stored cursor names (Dagster stores the new cursor only
    after the tick returns)."""
    body = json.dumps(versions, sort_keys=True)
    digest = hashlib.sha256(body.encode()).hexdigest()[:24]
    if digest != previous:
        lake.write_bytes(_versions_path(lake, use_case, digest), body.encode())
        for f in lake.listing(f"sensors/{use_case}/production_*.json"):
            name = f.name.rsplit("/", 1)[-1].removeprefix("production_").removesuffix(".json")
            if name not in (digest, previous):
                lake.delete(lake.path(*f.name.split("/")))
    return digest


def recall_versions(lake: Lake, use_case: str, cursor: str) -> dict[str, int] | None:
    """The map the cursor names; None when the lake no longer holds it."""
    if cursor.startswith("{"):  # a cursor of an earlier release: the map itself
        return json.loads(cursor)
    try:
        return json.loads(lake.read_bytes(_versions_path(lake, use_case, cursor)))
    except FileNotFoundError:
        return None


def build_rollback_sensor(spec: UseCaseSpec, config: PlatformConfig):
    name = rollback_sensor_name(spec.name)

    @sensor(
        name=name,
        job_name=lane_job_name(spec.name, "score"),
        minimum_interval_seconds=spec.automation.interval_seconds,
        default_status=DefaultSensorStatus.RUNNING if spec.automation.enabled else DefaultSensorStatus.STOPPED,
        description=f"{spec.name}: re-scores keys whose production model was changed outside Dagster "
        "(mmp promote --rollback); cursor = digest of every key's production version (kept in the lake).",
    )
    def _rollback(context: SensorEvaluationContext, platform: PlatformResource):
        settings = platform.settings()
        lake = Lake(settings.lake_url, settings.lake_storage_options)
        current = production_registry(settings).snapshot(spec.name).current
        now = {k: r.version for k, r in current.items()}
        previous = recall_versions(lake, spec.name, context.cursor) if context.cursor else None
        cursor = remember_versions(lake, spec.name, now, context.cursor)
        if previous is None:  # first tick (or the map was lost): today's registry is the baseline
            if context.cursor:
                context.log.warning("the production versions named by the cursor are gone from the lake")
            return SensorResult(skip_reason=SkipReason(f"baseline: {len(now)} production models"), cursor=cursor)
        changed = changed_outside(previous, current)
        known = list(context.instance.get_dynamic_partitions(partitions_name(spec.name)))
        partitions = set(known)
        wanted = [k for k in changed if k in partitions]
        if not wanted:
            return SensorResult(skip_reason=SkipReason("no production model changed outside Dagster"), cursor=cursor)
        stamp = ",".join(f"{k}@{now[k]}" for k in wanted)
        requests = ranged_run_requests(
            spec,
            "score",
            known,
            wanted,
            config.run.max_keys_per_run,
            name,
            "rollback:" + hashlib.sha1(stamp.encode()).hexdigest()[:12],
        )
        context.log.info(f"{len(wanted)} key(s) changed outside Dagster: {wanted[:10]}")
        return SensorResult(run_requests=requests, cursor=cursor)

    return _rollback
