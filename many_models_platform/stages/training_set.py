"""Stage 2, ``training_set``: features and the holdout split per key."""

from __future__ import annotations

from collections.abc import Sequence

from ..core import features as F
from ..core.engine import KeyOutcome, map_keys
from ..core.spec import UseCaseSpec
from ..storage.lake import Lake
from .base import (
    UPSTREAM,
    StageReport,
    StageRun,
    clear_state,
    crash_point,
    finish,
    require_state,
    write_state,
)


def _training_set_one(key: str, spec: UseCaseSpec, lake: Lake, run_id: str) -> dict:
    raw = require_state(lake, spec.name, UPSTREAM["training_set"], key)
    bronze = lake.read_parquet(lake.key_path("bronze", spec.name, key, ".parquet"))
    prepared = F.prepare_training_set(spec, bronze)
    ts = prepared.frame
    n_holdout = int((ts[F.SPLIT] == F.HOLDOUT).sum())
    info = {
        "rows": ts.height,
        "rows_train": ts.height - n_holdout,
        "rows_holdout": n_holdout,
        "features": [c for c in ts.columns if c not in (spec.time_column, spec.target, *F.SPLIT_COLUMNS)],
        "data_fingerprint": F.fingerprint(bronze),
        "raw_run_id": raw.dagster_run_id,  # the bronze it was built from
        # rows_in/rows_out/rows_dropped/rows_merged/drops, frequency and irregular_gaps
        **prepared.info(),
    }
    # the record goes first and comes back last, so no old record describes the new file
    clear_state(lake, spec.name, "training_set", key)
    lake.write_parquet(lake.key_path("training", spec.name, key, ".parquet"), ts)
    crash_point("training_set")
    write_state(lake, spec.name, "training_set", KeyOutcome(key, "ok", info=info), run_id)
    return info


def build_training_sets(run: StageRun, keys: Sequence[str]) -> StageReport:
    outcomes = map_keys(
        _training_set_one, keys, (run.spec, run.lake, run.run_id), workers=run.workers, progress=run.progress
    )
    return finish(run, "training_set", outcomes, written={o.key for o in outcomes if o.ok})
