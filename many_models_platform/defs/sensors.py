"""Sensors beside the assets they drive: one landing sensor per use case.

The landing sensor lists the use case's landing files, reads the key columns of new and changed
ones (:mod:`..stages.landing`), adds new keys as dynamic partitions in batches, and requests
training runs (the train lane: raw .. evaluation) of exactly the keys whose data changed, as
key ranges of at most ``run.max_keys_per_run`` keys, never a run per key. A tick has a time
budget (``landing_sensor.max_tick_seconds``, from its start); files it does not reach wait for
the next tick, and its log says how many. Its cursor is a digest; the list of files handled is
in the lake. See docs/operations.md#the-landing-sensor.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from dagster import (
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ..core.spec import PlatformConfig, UseCaseSpec
from ..stages.landing import scan_landing
from ..storage.lake import Lake
from ..storage.redaction import redact
from .factory import partitions_name
from .lanes import lane_tags
from .resources import PlatformResource
from .runner import RANGE_END, RANGE_START, key_ranges

# Keys per AddDynamicPartitionsRequest: one bounded insert each, in sorted order, so the new keys
# are contiguous in the partitions' (insertion) order and their ranges stay contiguous too.
PARTITION_BATCH = 1000
LAUNCHED_BY_TAG = "mmp/launched_by"


def train_job_name(use_case: str) -> str:
    return f"{use_case}_train"


def landing_sensor_name(use_case: str) -> str:
    return f"{use_case}_landing"


def build_train_job(spec: UseCaseSpec):
    """The train lane of one use case (raw .. evaluation) for a key range: what the landing
    sensor launches; the same job as the lane jobs' (defs/lane_jobs.py), defined once there."""
    from .lane_jobs import build_lane_jobs

    return build_lane_jobs(spec, lanes=("train",))[0]


def plan_ranges(
    ordered: Sequence[str], changed: Sequence[str], max_per_run: int, max_runs: int
) -> tuple[list[tuple[str, str]], int]:
    """Key ranges covering ``changed`` in partition order: (ranges, unchanged keys taken along).

    Exactly the changed keys (``runner.key_ranges``) while that takes at most ``max_runs`` runs;
    beyond, windows of at most ``max_per_run`` consecutive keys cover them with the fewest runs,
    taking along the unchanged keys between changed ones."""
    exact = key_ranges(ordered, changed, max_per_run)
    if len(exact) <= max_runs:
        return exact, 0
    wanted = set(changed)
    positions = [i for i, k in enumerate(ordered) if k in wanted]
    ranges, included, i = [], 0, 0
    while i < len(positions):
        j = i
        while j + 1 < len(positions) and positions[j + 1] - positions[i] < max_per_run:
            j += 1
        ranges.append((ordered[positions[i]], ordered[positions[j]]))
        included += (positions[j] - positions[i] + 1) - (j - i + 1)
        i = j + 1
    return ranges, included


def batches(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i * size : (i + 1) * size]) for i in range(math.ceil(len(items) / size))]


def build_landing_sensor(spec: UseCaseSpec, config: PlatformConfig):
    options = spec.landing_sensor
    partitions = DynamicPartitionsDefinition(name=partitions_name(spec.name))

    @sensor(
        name=landing_sensor_name(spec.name),
        job_name=train_job_name(spec.name),
        minimum_interval_seconds=options.minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING if options.enabled else DefaultSensorStatus.STOPPED,
        description=f"New and changed landing files of {spec.name} ({spec.source.path}): adds new keys "
        "as partitions and launches training runs of the keys whose data changed, as key ranges.",
    )
    def _landing(context: SensorEvaluationContext, platform: PlatformResource):
        deadline = time.monotonic() + options.max_tick_seconds
        settings = platform.settings()
        lake = Lake(settings.lake_url, settings.lake_storage_options)
        known = list(context.instance.get_dynamic_partitions(partitions_name(spec.name)))
        try:
            scan = scan_landing(
                spec,
                lake,
                context.cursor,
                set(known),
                max_files=options.max_files_per_tick,
                deadline=deadline,
            )
        except Exception as exc:  # e.g. the lake unreachable: the tick fails, with no credential in it
            raise RuntimeError(redact(f"{type(exc).__name__}: {exc}", settings.secrets())) from None
        counts = ", ".join(f"{k.removeprefix('files_')} {v}" for k, v in scan.counts.items() if v)
        context.log.info(f"{spec.name}: files {counts or 'none'}")
        if scan.lost_history:
            context.log.warning(
                f"{spec.name}: the list of handled files named by the cursor is gone from the lake; "
                "every landing file is treated as new"
            )
        for item in scan.rejected:
            context.log.warning(redact(f"{spec.name}: rejected {item['file']}: {item['reason']}", settings.secrets()))
        for item in scan.retry_later:
            context.log.warning(redact(f"{spec.name}: will retry {item['file']}: {item['reason']}", settings.secrets()))
        if scan.counts.get("files_deferred"):
            context.log.info(
                f"{spec.name}: backlog of {scan.counts['files_deferred']} new or changed files, left for the next "
                f"tick (the tick's time, max_tick_seconds {options.max_tick_seconds:g}, or max_files_per_tick "
                f"{options.max_files_per_tick}, ran out)"
            )
        if not scan.changed:
            return SensorResult(
                skip_reason=SkipReason(f"no key's landed data changed ({counts or 'no files'})"), cursor=scan.cursor
            )
        ranges, extra = plan_ranges(
            [*known, *scan.new_keys], scan.changed_keys, config.run.max_keys_per_run, options.max_runs_per_tick
        )
        if extra:
            context.log.info(f"{spec.name}: {extra} unchanged keys ride along to keep {len(ranges)} runs")
        tags = {**lane_tags(spec, "train"), LAUNCHED_BY_TAG: "landing sensor"}
        requests = [
            RunRequest(run_key=f"{scan.cursor}:{start}:{end}", tags={**tags, RANGE_START: start, RANGE_END: end})
            for start, end in ranges
        ]
        context.log.info(
            f"{spec.name}: {len(scan.new_keys)} new keys, {len(scan.changed_keys)} keys changed, {len(requests)} runs"
        )
        return SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[
                partitions.build_add_request(b) for b in batches(scan.new_keys, PARTITION_BATCH)
            ],
            cursor=scan.cursor,
        )

    return _landing
