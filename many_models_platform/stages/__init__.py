"""The seven pipeline stages as plain functions over a batch of keys. No Dagster here.

One module per stage, named like its asset: ``stages/<asset>.py``. Each stage reads its
inputs from the lake, does its per-key work through :func:`core.engine.map_keys` (so one
bad key never sinks the others), writes its outputs back and records per-key state
(:mod:`.base`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from .base import STAGES, UPSTREAM, StageReport, StageRun
from .evaluation import evaluate_models
from .model import train
from .predictions import score
from .promoted_model import promote
from .published import publish
from .raw import ingest
from .training_set import build_training_sets

__all__ = ["STAGES", "STAGE_FUNCTIONS", "UPSTREAM", "StageReport", "StageRun", "run_stage"]


def run_stage(stage: str, run: StageRun, keys: Sequence[str]) -> StageReport:
    """Run one stage with the credentials that stage may hold (settings.for_stage)."""
    return STAGE_FUNCTIONS[stage](replace(run, settings=run.settings.for_stage(stage)), keys)


STAGE_FUNCTIONS: dict[str, Callable[[StageRun, Sequence[str]], StageReport]] = {
    "raw": ingest,
    "training_set": build_training_sets,
    "model": train,
    "evaluation": evaluate_models,
    "promoted_model": promote,
    "predictions": score,
    "published": publish,
}
