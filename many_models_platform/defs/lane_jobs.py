"""One partitioned job per lane and use case (``<uc>_train``, ``<uc>_promote``, ``<uc>_score``):
what the daily schedule and the rollback sensor launch, over key ranges, with the lane's tags."""

from __future__ import annotations

from collections.abc import Sequence

from dagster import AssetKey, AssetSelection, DynamicPartitionsDefinition, RunRequest, define_asset_job

from ..core.spec import UseCaseSpec
from .factory import RUN_DATE_TAG, partitions_name
from .lanes import LANES, lane_tags
from .runner import RANGE_END, RANGE_START, key_ranges

LAUNCHED_BY_TAG = "mmp/launched_by"


def lane_job_name(use_case: str, lane: str) -> str:
    return f"{use_case}_{lane}"


def build_lane_jobs(spec: UseCaseSpec, lanes: tuple[str, ...] = tuple(LANES)) -> list:
    """The lanes' jobs; where another module defines one already (the landing sensor's
    ``<uc>_train`` in defs/sensors.py on main), leave that lane out: the definitions are equal."""
    return [
        define_asset_job(
            lane_job_name(spec.name, lane),
            selection=AssetSelection.assets(*[AssetKey([spec.name, s]) for s in stages]),
            partitions_def=DynamicPartitionsDefinition(name=partitions_name(spec.name)),
            tags=lane_tags(spec, lane),
            description=f"The {lane} lane of {spec.name} ({', '.join(stages)}) for the selected keys.",
        )
        for lane, stages in LANES.items()
        if lane in lanes
    ]


def ranged_run_requests(
    spec: UseCaseSpec,
    lane: str,
    ordered: Sequence[str],
    selected: Sequence[str],
    max_per_run: int,
    launched_by: str,
    run_key_prefix: str,
    run_date: str | None = None,
) -> list[RunRequest]:
    """One request per contiguous range of ``selected`` keys (partition order), each with the
    lane's tags: a burst of keys becomes ceil(keys / max_per_run) runs when contiguous."""
    out = []
    for start, end in key_ranges(ordered, selected, max_per_run):
        tags = {**lane_tags(spec, lane), RANGE_START: start, RANGE_END: end, LAUNCHED_BY_TAG: launched_by}
        if run_date:
            tags[RUN_DATE_TAG] = run_date
        out.append(
            RunRequest(run_key=f"{run_key_prefix}:{start}:{end}", job_name=lane_job_name(spec.name, lane), tags=tags)
        )
    return out
