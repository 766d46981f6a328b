"""Stage 2, ``training_set``: features and the holdout split per key."""

from __future__ import annotations

from collections.abc import Sequence

from ..core import features as F
from ..core.engine import map_keys
from ..core.spec import UseCaseSpec
from ..storage.lake import Lake
from .base import (
    StageReport,
    StageRun,
    finish,
    require_upstream,
)


def _training_set_one(key: str, spec: UseCaseSpec, lake: Lake) -> dict:
    require_upstream(lake, spec.name, "training_set", key)
    bronze = lake.read_parquet(lake.key_path("bronze", spec.name, key, ".parquet"))
    prepared = F.prepare_training_set(spec, bronze)
    ts = prepared.frame
    lake.write_parquet(lake.key_path("training", spec.name, key, ".parquet"), ts)
    n_holdout = int((ts[F.SPLIT] == F.HOLDOUT).sum())
    return {
        "rows": ts.height,
        "rows_train": ts.height - n_holdout,
        "rows_holdout": n_holdout,
        "features": [c for c in ts.columns if c not in (spec.time_column, spec.target, *F.SPLIT_COLUMNS)],
        "data_fingerprint": F.fingerprint(bronze),
        # rows_in/rows_out/rows_dropped/rows_merged/drops, frequency and irregular_gaps
        **prepared.info(),
    }


def build_training_sets(run: StageRun, keys: Sequence[str]) -> StageReport:
    outcomes = map_keys(_training_set_one, keys, (run.spec, run.lake), workers=run.workers, progress=run.progress)
    return finish(run, "training_set", outcomes)
