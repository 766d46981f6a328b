"""Key health in Dagster: a key that is not ok at a stage shows as *failed* in that asset's partitions.

Dagster (open source) marks a partition failed when its newest ``ASSET_MATERIALIZATION_PLANNED``
event has no materialization after it and that run failed. Ranged runs with
``DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=1`` write one planned event per asset and run,
with no partition in it, so no key could ever be marked failed (and without the variable every key
gets one, which is the cost that variable removes). So a stage step:

1. materializes every key of its range, each with its own metadata (``status``, ``reason`` ...),
   so the reason is on the key's latest materialization, one click away in the UI;
2. then writes one planned event per key that is not ok there (failed, skipped or stopped): that
   key's latest attempt at this asset has no materialization after it (:func:`mark_not_ok`);
3. the run's last step raises :func:`keys_not_ok_failure` when any key of the run was not ok, so
   the run fails and Dagster shows exactly those keys as failed; the run's other keys stay
   materialized. ``mmp run`` tells this failure from a real one by :data:`KEYS_NOT_OK`.

The cost is one extra event per key that is not ok, per asset, and nothing per ok key.
A step that fails as a whole (an error outside the per-key code) marks every key of its range.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence

from dagster import AssetExecutionContext, AssetKey, Failure, MetadataValue

from ..core.spec import UseCaseSpec
from ..stages import STAGES
from ..stages.base import read_run_record
from ..storage.lake import Lake
from ..storage.redaction import redact

# Metadata key of the Failure a run ends with when keys were not ok (not an error of the step).
KEYS_NOT_OK = "mmp/keys_not_ok"


def mark_not_ok(context: AssetExecutionContext, keys: Iterable[str]) -> int:
    """One planned event per key, written after the step's materializations: once the run has
    failed, Dagster counts each of these keys as failed for this asset. Returns how many."""
    keys = list(keys)
    if not keys:
        return 0
    try:  # Dagster internals: the public API has no way to plan one partition of a ranged run
        from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent, DagsterEventBatchMetadata
    except ImportError:  # pragma: no cover - a Dagster without these names
        context.log.warning(f"cannot mark {len(keys)} key(s) failed in this Dagster version")
        return 0
    step_key = context.op_execution_context.get_step_execution_context().step.key
    job_name = context.run.job_name
    # one batch, as the step's materializations are (DAGSTER_EVENT_BATCH_SIZE): stored in as few
    # writes as the instance's storage allows (defs/event_log.py for the embedded SQLite one)
    batch = f"mmp-not-ok-{uuid.uuid4().hex}"
    for i, key in enumerate(keys, 1):
        event = DagsterEvent.build_asset_materialization_planned_event(
            job_name, step_key, AssetMaterializationPlannedData(context.asset_key, partition=key)
        )
        end = DagsterEventBatchMetadata(batch, is_end=i == len(keys))
        context.instance.report_dagster_event(event, run_id=context.run_id, batch_metadata=end)
    return len(keys)


def stages_in_run(context: AssetExecutionContext, spec: UseCaseSpec) -> list[str]:
    """The stages of this use case the run materializes, in pipeline order."""
    selected = context.run.asset_selection
    if not selected:  # a job run without a selection (None, or empty in process): every asset of the job
        selected = context.job_def.asset_layer.executable_asset_keys
    return [s for s in STAGES if AssetKey([spec.name, s]) in selected]


def keys_not_ok_failure(
    spec: UseCaseSpec, lake: Lake, run_id: str, stages: Sequence[str], marked: dict[str, int] | None = None
) -> Failure | None:
    """The Failure that ends a run in which some keys were not ok, from the stages' run records
    (``marked``: keys a stage marked failed beyond its record's failed and skipped ones, such as
    keys ``published`` could not publish); None when every key was ok at every stage."""
    not_ok: dict[str, int] = {}
    reasons: Counter[str] = Counter()
    for stage in stages:
        record = read_run_record(lake, spec.name, stage, run_id) or {}
        n = max((record.get("failed") or 0) + (record.get("skipped") or 0), (marked or {}).get(stage, 0))
        if n:
            not_ok[stage] = n
        reasons.update({r: n for r, n in record.get("reasons") or []})
    if not not_ok:
        return None
    lines = [f"- {stage}: {n}" for stage, n in not_ok.items()]
    top = [f"- {redact(r)[:300]} ({n})" for r, n in reasons.most_common(5)]
    description = (
        "Some keys were not ok in this run. Each is marked failed in that asset's partitions, with its "
        "reason in its metadata (Materialize > Missing and failed runs them again); every other key "
        "was materialized.\nkeys not ok per stage:\n" + "\n".join(lines)
    )
    if top:
        description += "\nmost common reasons:\n" + "\n".join(top)
    return Failure(
        description=description,
        metadata={KEYS_NOT_OK: max(not_ok.values()), "keys_not_ok_per_stage": MetadataValue.json(not_ok)},
        allow_retries=False,
    )


def is_keys_not_ok_failure(step_failure_data) -> bool:
    """Whether a STEP_FAILURE's data is :func:`keys_not_ok_failure` rather than an error."""
    user = getattr(step_failure_data, "user_failure_data", None)
    return bool(user is not None and KEYS_NOT_OK in (user.metadata or {}))
