"""One asset factory for every use case: seven per-key assets on one dynamic partitions
definition, wired to the pure pipeline stages.

Assets are thin. They resolve the run's partition keys (a whole key range per run, never a
run per key), call the stage, and report one materialization per key with that key's own
metadata. Per-key failures are recorded in that metadata and in the lake's state files
(which the ``published`` stage turns into the ``key_status`` table), because a run over
thousands of keys must never fail as a whole for one bad key.
"""

import base64
import datetime as dt
import io
import math
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    BackfillPolicy,
    DynamicPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
    define_asset_job,
)

from .. import progress
from ..core.engine import KeyOutcome
from ..core.spec import PlatformConfig, UseCaseSpec
from ..stages import STAGES, StageReport, StageRun, run_stage
from ..stages.published import decoded
from ..storage.redaction import redact, redact_exception
from . import health
from .resources import PlatformResource

RUN_DATE_TAG = "mmp/run_date"
FORCE_TAG = "mmp/force"  # "true": refit keys even when their data and configuration are unchanged

DESCRIPTIONS = {
    "raw": "Landing-zone rows of this key, cleaned and counted (time column normalised, bad targets dropped, "
    "duplicates resolved by the use case's policy), as bronze Parquet in the lake. Landing files are never "
    "moved; files this use case cannot read are listed as rejected with a reason.",
    "training_set": "Features (lags, calendar) and the time-aware holdout split for this key.",
    "model": "Every candidate estimator fitted; the best on the holdout is registered in the "
    "candidate MLflow registry with use case, key and data-fingerprint tags.",
    "evaluation": "Holdout metrics of the new candidate, side by side with the current production "
    "model on the same holdout.",
    "promoted_model": "The promotion rule's decision; passing models are copied to the production "
    "registry under the alias 'production'.",
    "predictions": "Batch predictions from this key's production model (the next horizon periods for forecasts).",
    "published": "Predictions, metrics, per-key status and promotion history in the SQL warehouse.",
}
KINDS = {
    "raw": {"parquet"},
    "training_set": {"polars", "parquet"},
    "model": {"mlflow", "scikitlearn"},
    "evaluation": {"python"},
    "promoted_model": {"mlflow"},
    "predictions": {"parquet"},
    "published": {"sql"},
}


def partitions_name(use_case: str) -> str:
    return f"{use_case}_keys"


def key_metadata(spec: UseCaseSpec, outcome: KeyOutcome, mlflow_ui_url: str | None = None) -> dict[str, Any]:
    """Small, flat metadata per key: it is stored once per key per run in the event log.

    Text that may hold a credential (a reason quoting an error, a URI) is redacted. With
    ``mlflow_ui_url``, a key whose info names a registered model version (``model_name`` and
    ``version``, as the ``model`` stage's does) links to that version in the MLflow UI."""
    md: dict[str, Any] = {"status": outcome.status, "key": decoded(spec.keys, outcome.key)[0]}
    if outcome.reason:
        md["reason"] = redact(outcome.reason)
    for name, value in outcome.info.items():
        if name == "metrics":
            md.update({f"metric_{m}": _num(v) for m, v in value.items()})
        elif name == "champion_metrics" and value:
            md[f"champion_{spec.metric}"] = _num(value.get(spec.metric))
        elif name == "drops" and isinstance(value, dict):
            # rows removed per reason, e.g. "dropped: target is null": 3 (rows_in/out/dropped/merged are scalars)
            md.update({f"dropped: {reason}": _num(n) for reason, n in value.items()})
        elif isinstance(value, str):
            md[name] = _shown(value)
        elif isinstance(value, bool | int | float) or value is None:
            md[name] = _num(value) if isinstance(value, float) else value
    name, version = outcome.info.get("model_name"), outcome.info.get("version")
    if mlflow_ui_url and isinstance(name, str) and isinstance(version, int):
        md["mlflow_model"] = MetadataValue.url(mlflow_version_url(mlflow_ui_url, name, version))
    return md


def mlflow_version_url(base: str, model_name: str, version: int) -> str:
    """The MLflow UI's page of one registered model version (names are URL-encoded)."""
    return f"{base.rstrip('/')}/#/models/{quote(model_name, safe='')}/versions/{version}"


def _shown(text: str) -> str:
    """``text`` as metadata may show it: redacted when it could hold a credential. Most values
    (labels, estimator names, paths) cannot, and redact() costs ~14 µs, which adds up over
    thousands of keys and seven stages."""
    return redact(text) if ("://" in text or "=" in text or "@" in text) else text


def _num(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def build_use_case_assets(spec: UseCaseSpec, config: PlatformConfig) -> list[AssetsDefinition]:
    partitions = DynamicPartitionsDefinition(name=partitions_name(spec.name))
    multi_run = BackfillPolicy.multi_run(max_partitions_per_run=config.run.max_keys_per_run)
    assets = []
    for i, stage in enumerate(STAGES):
        assets.append(
            _stage_asset(
                spec,
                stage,
                partitions,
                upstream=AssetKey([spec.name, STAGES[i - 1]]) if i else None,
                # raw reads the whole landing zone once, so it is cheapest as one run
                backfill_policy=BackfillPolicy.single_run() if stage == "raw" else multi_run,
                workers=config.run.workers,
            )
        )
    return assets


def _stage_asset(spec, stage, partitions, upstream, backfill_policy, workers) -> AssetsDefinition:
    asset_key = AssetKey([spec.name, stage])

    @asset(
        name=stage,
        key_prefix=[spec.name],
        group_name=spec.name,
        partitions_def=partitions,
        deps=[upstream] if upstream else None,
        backfill_policy=backfill_policy,
        description=f"{DESCRIPTIONS[stage]} Use case: {spec.description or spec.name}",
        kinds=KINDS[stage],
        metadata={"use_case": spec.name, "key_columns": ", ".join(spec.keys), "task": spec.task},
        check_specs=[AssetCheckSpec(KEYS_OK, asset=asset_key, description=KEYS_OK_DESCRIPTION)],
    )
    def _materialize(context: AssetExecutionContext, platform: PlatformResource) -> Iterator[Any]:
        keys = list(context.partition_keys)
        error = None
        try:
            settings = platform.settings()
            run_date = context.run.tags.get(RUN_DATE_TAG) or dt.datetime.now(dt.UTC).date().isoformat()
            run = StageRun(
                spec,
                settings,
                run_id=context.run_id,
                run_date=dt.date.fromisoformat(run_date),
                workers=workers,
                progress=progress.for_stage(spec.name, stage),
                force=context.run.tags.get(FORCE_TAG, "").lower() == "true",
            )
            report = run_stage(stage, run, keys)
        except Exception as exc:  # the step failed as a whole: every key of its range failed here
            error = exc
        if error is not None:
            health.mark_not_ok(context, keys)
            # the error reaches the run's logs and the UI: never with a store's password in it
            raise redact_exception(error, settings_secrets(platform))
        per_key = {o.key: key_metadata(spec, o, settings.mlflow_ui_url) for o in report.outcomes}
        add_metadata_per_key(context, per_key, set(keys))
        yield MaterializeResult()  # one materialization per key, each with its own metadata
        not_ok = [o for o in report.outcomes if not key_ok(stage, o)]
        health.mark_not_ok(context, [o.key for o in not_ok])  # after the materializations: see defs/health.py
        yield run_report(context, spec, report, run, not_ok)
        if stage == "published":  # the warehouse/<table> assets: materialized with row counts
            from .marts import log_warehouse_tables

            log_warehouse_tables(context, spec, settings, report.summary)
        in_run = health.stages_in_run(context, spec)
        if in_run and in_run[-1] == stage:  # the run's last stage: fail the run if any key was not ok
            failure = health.keys_not_ok_failure(spec, run.lake, context.run_id, in_run, {stage: len(not_ok)})
            if failure is not None:
                raise failure

    return _materialize


def key_ok(stage: str, outcome: KeyOutcome) -> bool:
    """Whether a key is healthy at this stage in Dagster: ok, and at ``published`` also published
    (a key whose predictions could not be published has status ok there, with ``published: false``)."""
    return outcome.ok and not (stage == "published" and outcome.info.get("published") is False)


def settings_secrets(platform: PlatformResource) -> tuple[str, ...]:
    """The passwords of the platform's store URLs, masked wherever they appear in an error."""
    try:
        return platform.settings().secrets()
    except Exception:
        return ()


def add_metadata_per_key(context: AssetExecutionContext, per_key: dict[str, dict], targeted: set[str]) -> None:
    """Give each key's materialization its own metadata, in one step.

    The public ``context.add_asset_metadata(md, partition_key=k)`` re-checks ``k`` against
    every dynamic partition (two instance queries, and a copy of all metadata so far) on each
    call: O(keys^2), 31 of 43 s of a 200-key run on PostgreSQL. Our keys are the run's own
    range, checked once here, so we add them to the step's metadata in one go. Should Dagster's
    internals change, we fall back to the public call: slower, never wrong.
    """
    unknown = set(per_key) - targeted
    if unknown:
        raise ValueError(f"metadata for keys outside this run: {sorted(unknown)[:5]}")
    step = getattr(context, "_step_execution_context", None)
    acc = getattr(step, "_metadata_accumulator", None)
    try:
        from dagster._core.execution.context.metadata_logging import AssetMetadataHandle, OutputMetadataAccumulator
    except ImportError:
        acc = None
    if acc is None or not isinstance(getattr(acc, "per_output_metadata", None), Mapping):
        for key, md in per_key.items():
            context.add_asset_metadata(md, partition_key=key)
        return
    merged = dict(acc.per_output_metadata)
    for key, md in per_key.items():
        handle = AssetMetadataHandle(asset_key=context.asset_key, partition_key=key)
        merged[handle] = {**merged.get(handle, {}), **md}
    step._metadata_accumulator = OutputMetadataAccumulator(per_output_metadata=merged)


KEYS_OK = "keys_ok"
KEYS_OK_DESCRIPTION = (
    "Every key of the run is ok at this stage. Its metadata is the run's report: key counts, the keys "
    "that are not ok with their reasons, the stage's summary (for evaluation the metric's histogram, "
    "quantiles and worst keys). Keys that are not ok are also marked failed in the Partitions tab."
)
_FAILED_ROWS = 25


def run_report(
    context: AssetExecutionContext, spec: UseCaseSpec, report: StageReport, run: StageRun, not_ok: list[KeyOutcome]
) -> AssetCheckResult:
    """The run's report, as the result of the asset's ``keys_ok`` check: one event per asset and run
    that the asset's page shows (Checks tab, and the check's status on Overview), instead of a
    copy on every key's materialization. Numbers are rounded for display; the exact values are in
    the state files and the warehouse."""
    n_failed = sum(1 for o in not_ok if o.status == "failed")
    md: dict[str, Any] = {
        "keys_in_run": len(report.outcomes),
        "keys_ok": len(report.outcomes) - len(not_ok),
        "keys_failed": n_failed,
        "keys_skipped": len(not_ok) - n_failed,
    }
    if not_ok:
        rows = "\n".join(
            f"| {_cell(decoded(spec.keys, o.key)[0])} | {o.status} | {_cell(redact(_why(o))[:200])} |"
            for o in not_ok[:_FAILED_ROWS]
        )
        more = len(not_ok) - _FAILED_ROWS
        tail = f"\n\n… and {more} more (`mmp status --failed`)" if more > 0 else ""
        md["keys_not_ok"] = MetadataValue.md(f"| key | status | reason |\n|---|---|---|\n{rows}{tail}")
    for name, value in report.summary.items():
        if isinstance(value, bool | int):
            md[name] = value
        elif isinstance(value, str):
            md[name] = _shown(value)
        elif isinstance(value, float):
            md[name] = _rounded(value)
        elif isinstance(value, dict) and name != "worst":
            md[name] = MetadataValue.json(value)
    if report.stage == "evaluation":
        values = [o.info["metrics"][spec.metric] for o in report.outcomes if o.ok]
        if values:
            png = metric_histogram(spec.metric, values, not_ok=len(report.outcomes) - len(values))
            md["metric_distribution"] = MetadataValue.md(
                f"![{spec.metric} distribution](data:image/png;base64,{base64.b64encode(png).decode()})"
            )
            path = run.lake.path("reports", spec.name, f"evaluation_{context.run_id}.png")
            run.lake.write_bytes(path, png)
            md["report_path"] = MetadataValue.path(_shown(str(path)))
        worst = report.summary.get("worst") or []
        if worst:
            rows = "\n".join(f"| {_cell(str(w['key']))} | {_fmt(w['value'])} |" for w in worst)
            md["worst_keys"] = MetadataValue.md(f"| key | {spec.metric} |\n|---|---|\n{rows}")
    for name, columns in FILE_TABLES.items():
        if report.summary.get(name):
            md[name] = MetadataValue.md(redact(_file_table(report.summary[name], columns)))
    if not_ok:
        context.log.warning(f"{len(not_ok)} of {len(report.outcomes)} keys not ok at {report.stage}")
    none_ok = len(not_ok) == len(report.outcomes)
    return AssetCheckResult(
        check_name=KEYS_OK,
        passed=not not_ok,
        # some keys not ok: a warning (the others went through); none ok: an error (the stage stopped)
        severity=AssetCheckSeverity.ERROR if not_ok and none_ok else AssetCheckSeverity.WARN,
        metadata=md,
        description=f"{md['keys_ok']} of {md['keys_in_run']} keys ok"
        + (f"; {n_failed} failed, {md['keys_skipped']} skipped: marked failed in Partitions" if not_ok else ""),
    )


def _why(outcome: KeyOutcome) -> str:
    """A key's reason; at ``published``, why it was not published (its first stage not ok)."""
    return outcome.reason or str(outcome.info.get("key_status") or "not published")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rounded(value: float) -> float | None:
    """4 significant digits: what a person compares at a glance (0.05139, 153.7, 1.235e+04)."""
    return None if math.isnan(value) else float(f"{value:.4g}")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# The raw stage's file lists (docs/architecture.md#ranged-runs) as Markdown tables in its run report.
FILE_TABLES = {
    "rejected": ("file", "reason"),
    "files": ("file", "status", "rows", "rows_dropped", "rows_merged", "reason"),
}
_MAX_FILE_ROWS = 50


def _file_table(items: list, columns: tuple[str, ...]) -> str:
    """A Markdown table of the first 50 items (dicts), cells cut to 200 characters."""
    lines = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
    for item in items[:_MAX_FILE_ROWS]:
        values = [item.get(c) for c in columns] if isinstance(item, dict) else [item]
        cells = ["" if v is None else str(v)[:200] for v in values]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    if len(items) > _MAX_FILE_ROWS:
        lines.append(f"\n… and {len(items) - _MAX_FILE_ROWS} more")
    return "\n".join(lines)


def metric_histogram(metric: str, values: list[float], not_ok: int = 0) -> bytes:
    """A small PNG of the metric over the run's ok keys (keys not ok, or with no finite value, are
    counted in the title: one key's infinite error must not stop the chart of the others)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vals = [v for v in values if v is not None and math.isfinite(v)]
    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=80)
    ax.hist(vals, bins=min(30, max(5, len(vals) // 5)), color="#4f46e5")
    ax.set_xlabel(metric)
    ax.set_ylabel("keys")
    missing = not_ok + len(values) - len(vals)
    shown = f" ({missing} not shown: not ok or no finite value)" if missing else ""
    ax.set_title(f"{metric} over {len(vals)} keys{shown}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def pipeline_job_name(use_case: str) -> str:
    return f"{use_case}_pipeline"


def build_pipeline_job(spec: UseCaseSpec):
    """All seven stages of one use case for a key range: what `mmp run` executes."""
    return define_asset_job(
        pipeline_job_name(spec.name),
        selection=AssetSelection.groups(spec.name),
        partitions_def=DynamicPartitionsDefinition(name=partitions_name(spec.name)),
        description=f"Every stage of {spec.name} for the selected keys.",
    )
