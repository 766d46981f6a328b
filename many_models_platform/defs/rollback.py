"""Rollback re-scoring: a production alias moved outside Dagster (`mmp promote --rollback`)
re-scores that key. Dagster cannot see a registry change, so a sensor keeps a cursor of
every key's production version and compares it with the registry on each tick: two queries
per tick (``ModelRegistry.snapshot``), however many keys there are."""

from __future__ import annotations

import hashlib
import json

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from ..core.spec import PlatformConfig, UseCaseSpec
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


def build_rollback_sensor(spec: UseCaseSpec, config: PlatformConfig):
    name = rollback_sensor_name(spec.name)

    @sensor(
        name=name,
        job_name=lane_job_name(spec.name, "score"),
        minimum_interval_seconds=spec.automation.interval_seconds,
        default_status=DefaultSensorStatus.RUNNING if spec.automation.enabled else DefaultSensorStatus.STOPPED,
        description=f"{spec.name}: re-scores keys whose production model was changed outside Dagster "
        "(mmp promote --rollback); cursor = every key's production version.",
    )
    def _rollback(context: SensorEvaluationContext, platform: PlatformResource):
        settings = platform.settings()
        current = production_registry(settings).snapshot(spec.name).current
        now = {k: r.version for k, r in current.items()}
        if context.cursor is None:  # first tick: today's registry is the baseline
            return SensorResult(
                skip_reason=SkipReason(f"baseline: {len(now)} production models"), cursor=json.dumps(now)
            )
        previous = json.loads(context.cursor)
        changed = changed_outside(previous, current)
        known = list(context.instance.get_dynamic_partitions(partitions_name(spec.name)))
        wanted = [k for k in changed if k in set(known)]
        if not wanted:
            return SensorResult(
                skip_reason=SkipReason("no production model changed outside Dagster"), cursor=json.dumps(now)
            )
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
        return SensorResult(run_requests=requests, cursor=json.dumps(now))

    return _rollback
