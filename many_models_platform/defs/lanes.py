"""Lanes: which stages run together in one run, and the tags every such run carries.

Promotion is a lane of its own so that only its runs (and, on Kubernetes, only its pods)
receive the production registry's write credentials; training and scoring never do. Every
launcher of runs (``mmp run --submit``, the landing sensor, the automation sensors, the daily
schedule) takes its run tags from :func:`lane_tags`, so concurrency limits per use case
(``mmp/use_case``) and per-lane pod resources apply whoever launched the run.
"""

from __future__ import annotations

from ..core.spec import UseCaseSpec

USE_CASE_TAG = "mmp/use_case"
LANE_TAG = "mmp/lane"

LANES: dict[str, tuple[str, ...]] = {
    "train": ("raw", "training_set", "model", "evaluation"),
    "promote": ("promoted_model",),
    "score": ("predictions", "published"),
}


def lane_of(stage: str) -> str:
    for lane, stages in LANES.items():
        if stage in stages:
            return lane
    raise KeyError(f"no lane runs stage {stage!r}")


def lane_tags(spec: UseCaseSpec, lane: str) -> dict[str, str]:
    """Run tags for a run of ``lane`` of ``spec`` (the deployment adds pod resources and secrets)."""
    if lane not in LANES:
        raise KeyError(f"unknown lane {lane!r}; lanes are {', '.join(LANES)}")
    return {USE_CASE_TAG: spec.name, LANE_TAG: lane}
