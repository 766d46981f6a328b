"""Stage 7, ``published``: predictions, metrics, statuses and decisions to the warehouse."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

import polars as pl

from ..core.engine import KeyOutcome
from ..core.keys import key_label
from ..lifecycle import publish_model_family
from ..storage.registry import (
    registered_model_name,
)
from ..storage.warehouse import Warehouse
from .base import (
    STAGES,
    StageReport,
    StageRun,
    finish,
    quantiles,
    read_state,
)


def publish(run: StageRun, keys: Sequence[str], warehouse: Warehouse | None = None) -> StageReport:
    """Write predictions, metrics, statuses, decisions and a run summary to the warehouse."""
    spec, lake = run.spec, run.lake
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    preds, metrics, statuses, decisions = [], [], [], []
    outcomes = []
    for key in keys:
        label = key_label(spec.keys, key)
        states = {stage: read_state(lake, spec.name, stage, key) for stage in STAGES[:-1]}
        for stage, st in states.items():
            statuses.append(
                {
                    "stage": stage,
                    "key": key,
                    "key_label": label,
                    "status": st["status"] if st else "missing",
                    "reason": (st or {}).get("reason") or None,
                    "dagster_run_id": (st or {}).get("dagster_run_id"),
                    "updated_at": _ts((st or {}).get("updated_at")),
                }
            )
        missing = {"status": "missing", "reason": "has not run for this key"}
        failed = next(((s, st or missing) for s, st in states.items() if not st or st["status"] != "ok"), None)
        ev = states["evaluation"]
        if ev and ev["status"] == "ok":
            info, model = ev["info"], states["model"]["info"]
            for m, v in info["metrics"].items():
                metrics.append(
                    _metric_row(
                        key, "candidate", m, v, model["model_name"], info["candidate_version"], info["estimator"]
                    )
                )
            for m, v in (info.get("champion_metrics") or {}).items():
                name = registered_model_name(spec.name, key)
                metrics.append(_metric_row(key, "champion", m, v, name, info["champion_version"], None))
        pm = states["promoted_model"]
        if pm and pm["status"] == "ok":
            i = pm["info"]
            decisions.append(
                {
                    "key": key,
                    "decided_at": _ts(i["decided_at"]),
                    **{
                        k: i.get(k)
                        for k in (
                            "decision",
                            "reason",
                            "metric",
                            "candidate_version",
                            "candidate_value",
                            "champion_version",
                            "champion_value",
                            "production_version",
                            "decided_by",
                        )
                    },
                    "dagster_run_id": pm["dagster_run_id"],
                }
            )
        path = lake.key_path("predictions", spec.name, key, ".parquet")
        pr = states["predictions"]
        served = bool(pr and pr["status"] == "ok" and path.exists())
        n_rows = 0
        if served:
            frame = lake.read_parquet(path)
            n_rows = frame.height
            preds.append(frame.with_columns(pl.lit(key).alias("key"), pl.lit(label).alias("key_label")))
        issue = f"{failed[0]} {failed[1]['status']}: {failed[1]['reason']}" if failed else None
        # The published row itself, written in the same transaction: ok when this key's
        # predictions are published (maybe by the champion while today's candidate failed).
        statuses.append(
            {
                "stage": "published",
                "key": key,
                "key_label": label,
                "status": "ok" if served else "skipped",
                "reason": issue,
                "dagster_run_id": run.run_id,
                "updated_at": now,
            }
        )
        outcomes.append(
            KeyOutcome(key, "ok", info={"key_status": issue or "ok", "published": served, "prediction_rows": n_rows})
        )
        if run.progress:
            run.progress(1)

    common = {"use_case": spec.name, "run_date": run.run_date}
    frames = {
        "predictions": _frame(preds, common, {"dagster_run_id": run.run_id, "published_at": now}),
        "key_metrics": _frame([pl.DataFrame(metrics)] if metrics else [], common, {"dagster_run_id": run.run_id}),
        "key_status": _frame([pl.DataFrame(statuses)], common, {}),
    }
    values = [r["value"] for r in metrics if r["model_role"] == "candidate" and r["metric"] == spec.metric]
    q = quantiles(spec.metric, values)
    n_failed = sum(1 for o in outcomes if not o.info["published"])
    summary_row = pl.DataFrame(
        [
            {
                "use_case": spec.name,
                "run_date": run.run_date,
                "dagster_run_id": run.run_id,
                "keys_total": len(keys),
                "keys_published": len(keys) - n_failed,
                "keys_failed": n_failed,
                "keys_promoted": sum(1 for d in decisions if d["decision"] == "promoted"),
                "metric": spec.metric,
                "metric_p10": q.get(f"{spec.metric}_p10"),
                "metric_p50": q.get(f"{spec.metric}_p50"),
                "metric_p90": q.get(f"{spec.metric}_p90"),
                "published_at": now,
            }
        ]
    )
    append = {"run_summary": summary_row}
    if decisions:
        append["promotion_history"] = _frame([pl.DataFrame(decisions)], common, {})
    wh = warehouse or Warehouse(run.settings.warehouse_url)
    try:
        wh.ensure_schema()
        wh.replace_keys(spec.name, run.run_date, list(keys), frames, append)
        try:  # the family view is a convenience for BI; it never fails the publish
            q["model_family_rows"] = publish_model_family(run.settings, spec, warehouse=wh).height
        except Exception as exc:
            q["model_family_error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if warehouse is None:
            wh.dispose()
    return finish(run, "published", outcomes, {"keys_failed": n_failed, **q})


def _metric_row(key, role, metric, value, name, version, estimator) -> dict:
    return {
        "key": key,
        "model_role": role,
        "metric": metric,
        "value": None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value),
        "model_name": name,
        "model_version": int(version),
        "estimator": estimator,
    }


def _frame(parts: list[pl.DataFrame], common: dict, extra: dict) -> pl.DataFrame:
    if not parts:
        return pl.DataFrame()
    frame = pl.concat(parts, how="diagonal_relaxed")
    return frame.with_columns([pl.lit(v).alias(k) for k, v in {**common, **extra}.items()])


def _ts(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value).replace(tzinfo=None) if value else None
