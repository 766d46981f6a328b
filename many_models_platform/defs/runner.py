"""Drive Dagster from the command line: register keys, then execute each use case's asset
job in process over contiguous key ranges (one run per range, never one run per key)."""

import datetime as dt
import os
import sys
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import DagsterEventType, DagsterInstance, Definitions

from ..core.spec import PlatformConfig, UseCaseSpec
from ..stages import STAGES, StageRun, run_stage
from ..stages.base import read_run_record, stop_reason
from ..stages.published import publish_no_keys
from ..storage.lake import Lake
from ..storage.redaction import redact
from ..storage.settings import PlatformSettings
from .discovery import register_new_keys
from .event_log import INSTANCE_STORAGE_YAML
from .factory import FORCE_TAG, RUN_DATE_TAG, partitions_name, pipeline_job_name
from .health import is_keys_not_ok_failure

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
# See DESIGN.md: subset planned events and batched event writes make ranged runs ~10x cheaper.
DAGSTER_ENV = {"DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "1", "DAGSTER_EVENT_BATCH_SIZE": "1000"}
REPO_ROOT = Path(__file__).resolve().parents[2]
# `mmp run` prints its own summary and every step error (redacted); the console logger would print
# each failed run's stack, including the run failure that only says some keys were not ok.
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def prepare_instance(settings: PlatformSettings) -> DagsterInstance:
    """The Dagster instance under ``$MMP_HOME/dagster`` (or ``$DAGSTER_HOME`` when set),
    seeded with :func:`instance_yaml` so `dagster dev` sees the same runs."""
    for k, v in DAGSTER_ENV.items():
        os.environ.setdefault(k, v)
    home = Path(os.environ.get("DAGSTER_HOME") or Path(settings.home) / "dagster")
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(instance_yaml())
    return DagsterInstance.get()


def instance_yaml() -> str:
    """The dagster.yaml of an instance ``mmp`` creates: the repository's, and the embedded
    storage that writes event batches (``defs.event_log.INSTANCE_STORAGE_YAML``)."""
    template = REPO_ROOT / "dagster.yaml"  # absent when the package is installed without the repository
    base = template.read_text().rstrip("\n") + "\n" if template.exists() else ""
    return base + INSTANCE_STORAGE_YAML


def key_ranges(ordered: Sequence[str], selected: Sequence[str], max_per_run: int) -> list[tuple[str, str]]:
    """Contiguous runs of ``selected`` in partition (insertion) order, at most ``max_per_run`` each."""
    wanted = set(selected)
    ranges, current = [], []
    for key in ordered:
        if key in wanted and len(current) < max_per_run:
            current.append(key)
            continue
        if current:
            ranges.append((current[0], current[-1]))
        current = [key] if key in wanted else []
    if current:
        ranges.append((current[0], current[-1]))
    return ranges


@dataclass
class UseCaseRun:
    """What `mmp run` did for one use case, over all its ranged runs."""

    use_case: str
    keys: list[str]
    new_keys: list[str]
    run_ids: list[str] = field(default_factory=list)
    # no Dagster step failed (a key that is not ok fails its run only to mark it, defs/health.py)
    success: bool = True
    stage_seconds: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # per stage, over the runs: keys, ok, failed, skipped (from the stages' run records)
    stage_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # per stage, over the runs: the most common reasons of keys not ok (from the same records)
    not_ok_reasons: dict[str, Counter[str]] = field(default_factory=dict)
    stopped_at_stage: str | None = None  # the first stage no key of the use case got through
    stop_reason: str | None = None
    # ingest, from the raw stage's summary: landing_rows, rows_dropped, rows_merged, rejected, files
    ingest: dict[str, Any] = field(default_factory=dict)
    # keys the model stage did not refit: data fingerprint and configuration unchanged
    keys_reused: int = 0

    @property
    def stopped(self) -> bool:
        return self.stopped_at_stage is not None

    @property
    def ingested_nothing(self) -> bool:
        return not self.keys or self.ingest.get("landing_rows") == 0

    @property
    def ok(self) -> bool:
        """What `mmp run`'s exit code says: every run succeeded, something was ingested, and no
        stage was left without a key. Some keys failing while others publish is ok."""
        return self.success and not self.stopped and not self.ingested_nothing


def run_use_case(
    defs: Definitions,
    instance: DagsterInstance,
    config: PlatformConfig,
    spec: UseCaseSpec,
    settings: PlatformSettings,
    keys: Sequence[str] | None = None,
    run_date: dt.date | None = None,
    new_keys: list[str] | None = None,
    force: bool = False,
) -> UseCaseRun:
    """Register landing keys (unless the caller just did and passes ``new_keys``), then run."""
    if new_keys is None:
        _, new_keys = register_new_keys(instance, spec, Lake(settings.lake_url, settings.lake_storage_options))
    ordered = list(instance.get_dynamic_partitions(partitions_name(spec.name)))
    if keys:
        unknown = sorted(set(keys) - set(ordered))
        if unknown:
            raise ValueError(f"unknown key(s) for {spec.name}: {unknown[:5]} (see `mmp status`)")
    selected = list(keys) if keys else ordered
    chosen = set(selected)
    result = UseCaseRun(spec.name, [k for k in ordered if k in chosen], new_keys)
    job = defs.resolve_job_def(pipeline_job_name(spec.name))
    run_date = run_date or dt.datetime.now(dt.UTC).date()
    lake = Lake(settings.lake_url, settings.lake_storage_options)
    secrets = settings.secrets()
    if not selected:  # nothing to partition on: read the landing zone once, to say why
        run = StageRun(spec, settings, run_id=f"mmp-no-keys-{uuid.uuid4().hex[:12]}", run_date=run_date)
        result.ingest = ingest_summary(run_stage("raw", run, []).summary)
        publish_no_keys(run, result.ingest)  # the warehouse, where BI and `mmp status` look, says so too
        return result
    for start, end in key_ranges(ordered, selected, config.run.max_keys_per_run):
        res = job.execute_in_process(
            instance=instance,
            run_config=QUIET_LOGGERS,
            tags={
                RANGE_START: start,
                RANGE_END: end,
                RUN_DATE_TAG: run_date.isoformat(),
                "mmp/launched_by": "mmp run",
                **({FORCE_TAG: "true"} if force else {}),
            },
            raise_on_error=False,
        )
        result.run_ids.append(res.run_id)
        started: dict[str, float] = {}
        marked = step_failed = False  # the run failed to mark keys that were not ok / because a step failed
        steps = {DagsterEventType.STEP_START, DagsterEventType.STEP_FAILURE}
        for entry in instance.all_logs(res.run_id, of_type=steps):
            event = entry.dagster_event
            if event.event_type == DagsterEventType.STEP_START:
                started[event.step_key] = entry.timestamp
            elif is_keys_not_ok_failure(event.event_specific_data):
                # the run failed only to mark its keys that were not ok (defs/health.py): the step itself did its work
                _add_seconds(result, event.step_key, entry.timestamp - started.get(event.step_key, entry.timestamp))
                marked = True
            else:
                step_failed = True
                result.success = False
                error = step_error(event.event_specific_data.error)
                result.errors.append(redact(f"{event.step_key}: {error}", secrets))
        if not res.success and not marked and not step_failed:
            result.success = False
            result.errors.append(f"run {res.run_id} failed before any step did (see the Dagster UI)")
        for event in res.all_events:
            if event.event_type == DagsterEventType.STEP_SUCCESS:
                _add_seconds(result, event.step_key, event.event_specific_data.duration_ms / 1000)
    collect_records(result, lake, spec)
    return result


def step_error(err) -> str:
    """What failed in a step, in one line: the user code's own exception rather than Dagster's
    wrapper ("Error occurred while executing op ...")."""
    if err is None:
        return "failed"
    wrappers = ("DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError")
    while err.cause is not None and err.cls_name in wrappers:
        err = err.cause
    return " ".join(err.message.split())


def _add_seconds(result: UseCaseRun, step_key: str, seconds: float) -> None:
    stage = step_key.split("__")[-1]
    result.stage_seconds[stage] = result.stage_seconds.get(stage, 0.0) + seconds


def collect_records(result: UseCaseRun, lake: Lake, spec: UseCaseSpec) -> None:
    """Key counts per stage, where the use case stopped and what ingest saw, from the run records
    the stages wrote (``stages.base.write_run_record``) for each of ``result.run_ids``."""
    reasons: dict[str, Counter[str]] = {}
    stops: dict[str, list[str]] = {}
    for run_id in result.run_ids:
        for stage in STAGES:
            record = read_run_record(lake, spec.name, stage, run_id)
            if record is None:
                continue
            counts = result.stage_counts.setdefault(stage, {"keys": 0, "ok": 0, "failed": 0, "skipped": 0})
            for name in counts:
                counts[name] += record.get(name) or 0
            reasons.setdefault(stage, Counter()).update({r: n for r, n in record.get("reasons") or []})
            if record.get("stop_reason"):
                stops.setdefault(stage, []).append(record["stop_reason"])
            if stage == "model":
                result.keys_reused += (record.get("summary") or {}).get("keys_reused") or 0
            if stage == "raw":
                result.ingest = ingest_summary(record.get("summary") or {})  # each range reads all landing
    result.not_ok_reasons = reasons
    for stage in STAGES[:-1]:
        counts = result.stage_counts.get(stage)
        if counts and counts["keys"] and not counts["ok"]:
            result.stopped_at_stage = stage
            found = stops.get(stage) or []
            # one run: its own reason; several ranges: their most common reasons together
            result.stop_reason = found[0] if len(found) == 1 else stop_reason(stage, reasons[stage])
            break


def ingest_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The raw stage's summary as the CLI shows it; ``rejected`` falls back to the older
    ``quarantined`` list."""
    rejected = summary.get("rejected")
    if rejected is None:
        rejected = summary.get("quarantined") or []
    return {
        "landing_rows": summary.get("landing_rows"),
        "rows_dropped": summary.get("rows_dropped"),
        "rows_merged": summary.get("rows_merged"),
        "rejected": rejected,
        "files": summary.get("files") or [],
        **{
            k: v
            for k, v in summary.items()
            if k.startswith(("scoring_rows", "keys_ending_early", "label_sets_apart")) or "_differing_in_" in k
        },
    }


# --- `mmp run --submit`: ranged runs through the instance's run coordinator (docs/deploy.md) ---
CODE_LOCATION = "many_models_platform"  # as in workspace.yaml and the Helm user deployment
DEFINITIONS_MODULE = "many_models_platform.definitions"


@dataclass
class SubmittedRuns:
    """What `mmp run --submit` queued for one use case and lane: one run per key range."""

    use_case: str
    lane: str
    keys: list[str]
    new_keys: list[str]
    ranges: list[tuple[str, str]] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)


def submit_use_case(
    instance: DagsterInstance,
    config: PlatformConfig,
    spec: UseCaseSpec,
    settings: PlatformSettings,
    lane: str,
    keys: Sequence[str] | None = None,
    run_date: dt.date | None = None,
    new_keys: list[str] | None = None,
) -> SubmittedRuns:
    """Queue one run of ``lane``'s assets per key range through the instance's run coordinator,
    instead of executing in this process: the daemon launches them with the instance's run
    launcher (a local process, or a pod per run with ``K8sRunLauncher``), under the same queue,
    concurrency limits, monitoring and retries as UI backfills and automation."""
    from dagster import AssetKey
    from dagster._core.definitions.selector import JobSubsetSelector
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    from .lanes import LANES, lane_tags

    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}; lanes are {', '.join(LANES)}")
    if new_keys is None:
        _, new_keys = register_new_keys(instance, spec, Lake(settings.lake_url, settings.lake_storage_options))
    ordered = list(instance.get_dynamic_partitions(partitions_name(spec.name)))
    if keys:
        unknown = sorted(set(keys) - set(ordered))
        if unknown:
            raise ValueError(f"unknown key(s) for {spec.name}: {unknown[:5]} (see `mmp status`)")
    selected = list(keys) if keys else ordered
    chosen = set(selected)
    result = SubmittedRuns(spec.name, lane, [k for k in ordered if k in chosen], new_keys)
    result.ranges = key_ranges(ordered, selected, config.run.max_keys_per_run)
    if not result.ranges:
        return result
    run_date = run_date or dt.datetime.now(dt.UTC).date()
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=DEFINITIONS_MODULE),
        # the run image on Kubernetes: the code location's own (the chart sets DAGSTER_CURRENT_IMAGE)
        container_image=os.environ.get("DAGSTER_CURRENT_IMAGE"),
        location_name=CODE_LOCATION,
    )
    assets = frozenset(AssetKey([spec.name, stage]) for stage in LANES[lane])
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
        workspace = context.create_request_context()
        location = workspace.get_code_location(CODE_LOCATION)
        (repo,) = location.get_repositories().values()
        job = location.get_job(
            JobSubsetSelector(
                location_name=CODE_LOCATION,
                repository_name=repo.name,
                job_name=pipeline_job_name(spec.name),
                op_selection=None,
                asset_selection=assets,
            )
        )
        plan = location.get_execution_plan(job, {}, step_keys_to_execute=None, known_state=None, instance=instance)
        for start, end in result.ranges:
            tags = {
                **job.tags,
                **lane_tags(spec, lane, (start, end)),
                RANGE_START: start,
                RANGE_END: end,
                RUN_DATE_TAG: run_date.isoformat(),
                "mmp/launched_by": "mmp run --submit",
            }
            run = instance.create_run(
                job_name=job.name,
                run_id=None,
                run_config={},
                resolved_op_selection=None,
                step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
                op_selection=None,
                status=None,
                root_run_id=None,
                parent_run_id=None,
                tags=tags,
                job_snapshot=job.job_snapshot,
                execution_plan_snapshot=plan.execution_plan_snapshot,
                parent_job_snapshot=job.parent_job_snapshot,
                remote_job_origin=job.get_remote_origin(),
                job_code_origin=job.get_python_origin(),
                asset_selection=assets,
                asset_check_selection=None,
                asset_graph=repo.asset_graph,
            )
            instance.submit_run(run.run_id, workspace)
            result.run_ids.append(run.run_id)
    return result


# --- end of `mmp run --submit` --------------------------------------------------------------
