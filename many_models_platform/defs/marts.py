"""Every asset tells the truth in the UI: the ``warehouse/<table>`` assets get a materialization
(rows written, rows in the table, freshness) whenever ``published`` writes them, and `mmp bi` /
`mmp demo` build the dbt marts through the ``bi_marts`` job, so the ``bi`` assets are
materialized by Dagster rather than "Never materialized" next to tables that exist."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from dagster import AssetExecutionContext, AssetKey, AssetMaterialization, DagsterInstance, Definitions, MetadataValue

from ..bi import BI_JOB, SOURCE_NAME, WAREHOUSE_TABLES, BiBuildResult, dbt_target_for, node_results
from ..core.spec import UseCaseSpec
from ..storage.redaction import redact
from ..storage.settings import PlatformSettings
from ..storage.warehouse import Warehouse


def table_row_counts(settings: PlatformSettings, tables: Sequence[str]) -> dict[str, int | None]:
    """Rows per table now (one COUNT per table); None for a table that cannot be read."""
    out: dict[str, int | None] = {}
    wh = Warehouse(settings.warehouse_url, read_only=True)
    try:
        for table in tables:
            try:
                out[table] = int(wh.query(f"SELECT COUNT(*) AS n FROM {table}")["n"][0])
            except Exception:
                out[table] = None
    finally:
        wh.dispose()
    return out


def log_warehouse_tables(
    context: AssetExecutionContext, spec: UseCaseSpec, settings: PlatformSettings, summary: Mapping[str, Any]
) -> int:
    """One ``warehouse/<table>`` materialization per table this publish wrote; returns how many.

    Only tables that are dbt sources are reported (``bi.WAREHOUSE_TABLES``); ``model_family``
    is rewritten by every publish."""
    written = dict(summary.get("rows_written") or {})
    if "model_family_rows" in summary:
        written["model_family"] = summary["model_family_rows"]
    tables = [t for t in WAREHOUSE_TABLES if t in written]
    if not tables:
        return 0
    try:
        totals = table_row_counts(settings, tables)
    except Exception as exc:  # the counts are a courtesy: the tables are written
        context.log.warning(f"could not count warehouse rows: {redact(exc, settings.secrets())}")
        totals = dict.fromkeys(tables)
    for table in tables:
        md: dict[str, Any] = {
            "use_case": spec.name,
            "rows_written": int(written[table]),
            "written_at": MetadataValue.timestamp(time.time()),
        }
        if totals.get(table) is not None:
            md["dagster/row_count"] = totals[table]
        context.log_event(
            AssetMaterialization(
                asset_key=AssetKey([SOURCE_NAME, table]), metadata=md, description=f"written by {spec.name}/published"
            )
        )
    return len(tables)


def build_marts_in_dagster(defs: Definitions, instance: DagsterInstance, settings: PlatformSettings) -> BiBuildResult:
    """`dbt build` of every mart through the ``bi_marts`` job in process, on ``instance``: the
    ``bi`` assets and their checks are materialized in Dagster. The node results come from the
    run's ``run_results.json``, as `mmp bi` shows them."""
    target = dbt_target_for(settings.warehouse_url)
    target_path = settings_home(settings) / "dbt" / "target"
    target_path.mkdir(parents=True, exist_ok=True)
    (target_path / "run_results.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    job = defs.resolve_job_def(BI_JOB)
    from .runner import QUIET_LOGGERS  # the summary below is what `mmp` prints; the events stay in Dagster

    res = job.execute_in_process(
        instance=instance,
        run_config=QUIET_LOGGERS,
        raise_on_error=False,
        tags={"mmp/lane": "bi", "mmp/launched_by": "mmp bi"},
    )
    output = ""
    if not res.success:
        errors = [e.event_specific_data.error for e in res.all_events if e.is_step_failure]
        output = "\n".join(redact(err.message, settings.secrets()) for err in errors if err is not None)
    result = BiBuildResult(target.name, 0 if res.success else 1, time.perf_counter() - t0, target_path, output=output)
    results_file = target_path / "run_results.json"
    if results_file.exists():
        import json

        result.nodes = node_results(json.loads(results_file.read_text()))
    return result


def settings_home(settings: PlatformSettings):
    from pathlib import Path

    return Path(settings.home)
