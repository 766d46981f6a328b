"""The seven pipeline stages as plain functions over a batch of keys. No Dagster here.

One module per stage, named like its asset: ``stages/<asset>.py``. Each stage reads its
inputs from the lake, does its per-key work through :func:`core.engine.map_keys` (so one
bad key never sinks the others), writes its outputs back and records per-key state
(:mod:`.base`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from ..core.engine import WORKER_MODULES, pool_workers, warm_pool
from .base import STAGES, UPSTREAM, StageReport, StageRun, finish, stopped_outcomes
from .evaluation import evaluate_models
from .model import train
from .predictions import score
from .promoted_model import promote
from .published import publish
from .raw import ingest
from .training_set import build_training_sets

__all__ = ["STAGES", "STAGE_FUNCTIONS", "UPSTREAM", "StageReport", "StageRun", "run_stage"]


def run_stage(stage: str, run: StageRun, keys: Sequence[str]) -> StageReport:
    """Run one stage with the credentials that stage may hold (settings.for_stage).

    A stage whose input left no ok key does not start: every key is ``skipped`` with
    ``stopped: no key left after <stage>: <top reasons>`` (``base.stopped_outcomes``).
    """
    run = replace(run, settings=run.settings.for_stage(stage))
    stopped = stopped_outcomes(run, stage, keys)
    if stopped is not None:
        if run.progress:
            run.progress(len(stopped))
        return finish(run, stage, stopped, {"stopped": stopped[0].reason})
    if stage == "raw":
        # raw reads the landing zone in this process; the pool's workers start and import what
        # the next stages need meanwhile, instead of at the start of training_set
        estimators = (c.estimator.rpartition(".")[0] for c in run.spec.candidates)
        warm_pool(pool_workers(len(keys), run.workers), (*WORKER_MODULES, *estimators))
    return STAGE_FUNCTIONS[stage](run, keys)


STAGE_FUNCTIONS: dict[str, Callable[[StageRun, Sequence[str]], StageReport]] = {
    "raw": ingest,
    "training_set": build_training_sets,
    "model": train,
    "evaluation": evaluate_models,
    "promoted_model": promote,
    "predictions": score,
    "published": publish,
}
