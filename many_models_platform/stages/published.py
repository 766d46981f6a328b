"""Stage 7, ``published``: predictions, metrics, statuses, decisions and key columns to the warehouse.

Every frame is built with the warehouse table's own schema (``warehouse.records_frame``), so
publishing never depends on what the first rows of a batch happen to hold: a NULL reason or a
NaN metric on the first keys and text or integers on later ones publish alike.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ..core.engine import KeyOutcome, map_keys
from ..core.keys import decode_key, key_label
from ..core.spec import UseCaseSpec
from ..lifecycle import publish_model_family
from ..storage import warehouse as W
from ..storage.lake import Lake
from ..storage.registry import registered_model_name
from ..storage.warehouse import Warehouse
from .base import (
    STAGES,
    StageReport,
    StageRun,
    finish,
    not_ok_reason,
    quantiles,
    read_run_record,
    read_state_or_error,
    stop_reason,
)
from .records import StageRecord

ROW_COUNTS = ("rows_in", "rows_out", "rows_dropped", "rows_merged")
DECISION_FIELDS = (
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


# Keys whose rows are built and loaded at a time: the stage's memory is one batch's rows,
# whatever the number of keys (the warehouse commits every batch together).
PUBLISH_BATCH_KEYS = 1_000
# A batch's rows are built in the worker pool once it has this many keys per worker.
PUBLISH_KEYS_PER_WORKER = 200


@dataclass
class _Tally:
    """What the run summary needs from every batch: counts, not rows."""

    outcomes: list[KeyOutcome] = field(default_factory=list)
    not_ok: dict[str, Counter[str]] = field(default_factory=lambda: {stage: Counter() for stage in STAGES[:-1]})
    ok_keys: Counter[str] = field(default_factory=Counter)
    raw_runs: Counter[str] = field(default_factory=Counter)
    metric_values: list[float] = field(default_factory=list)
    promoted: int = 0
    # every per-key table is reported, with 0 rows when no key had any
    rows_written: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(("predictions", "key_metrics", "key_status", "key_columns"), 0))
    )


def publish(run: StageRun, keys: Sequence[str], warehouse: Warehouse | None = None) -> StageReport:
    """Write predictions, metrics, statuses, decisions, key columns and a run summary to the
    warehouse: every key's rows and the summary in one transaction, built and loaded
    ``PUBLISH_BATCH_KEYS`` keys at a time."""
    spec = run.spec
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    keys = list(dict.fromkeys(keys))
    common = {"use_case": spec.name, "run_date": run.run_date}
    tally = _Tally()
    wh = warehouse or Warehouse(run.settings.warehouse_url)
    loadable = keys
    if wh.enforces_lengths:  # a key longer than its column fails alone, not the transaction of every key
        for key in (k for k in keys if len(k) > W.KEY_LENGTH):
            reason = (
                f"the encoded key is {len(key)} characters, longer than the warehouse's key column holds "
                f"({W.KEY_LENGTH}): shorten the key values or use fewer key columns"
            )
            tally.outcomes.append(KeyOutcome(key, "failed", reason, {"published": False, "prediction_rows": 0}))
        loadable = [k for k in keys if len(k) <= W.KEY_LENGTH]
    try:
        wh.ensure_schema()
        with wh.replacing(spec.name, run.run_date) as load:
            for start in range(0, len(loadable), PUBLISH_BATCH_KEYS):
                batch = loadable[start : start + PUBLISH_BATCH_KEYS]
                frames, append = _batch_frames(run, batch, now, tally)
                load(batch, frames, append)
                tally.rows_written.update({name: frame.height for name, frame in {**frames, **append}.items()})
            q = quantiles(spec.metric, tally.metric_values)
            n_failed = sum(1 for o in tally.outcomes if not o.info["published"])
            stopped_at = next((s for s in STAGES[:-1] if keys and not tally.ok_keys[s]), None)
            why = stop_reason(stopped_at, tally.not_ok[stopped_at]) if stopped_at else None
            ingest = ingest_counts(run, tally.raw_runs)
            summary_row = {
                "dagster_run_id": run.run_id,
                "keys_total": len(keys),
                "keys_published": len(keys) - n_failed,
                "keys_failed": n_failed,
                "keys_promoted": tally.promoted,
                "metric": spec.metric,
                "metric_p10": q.get(f"{spec.metric}_p10"),
                "metric_p50": q.get(f"{spec.metric}_p50"),
                "metric_p90": q.get(f"{spec.metric}_p90"),
                "published_at": now,
                **{k: v for k, v in ingest.items() if k != "rejected"},
                "stopped_at_stage": stopped_at,
                "stop_reason": why,
            }
            summary = {"run_summary": W.records_frame(W.run_summary, [summary_row], **common)}
            load([], None, summary)
        tally.rows_written.update({"run_summary": 1})
        try:  # the family view is a convenience for BI; it never fails the publish
            q["model_family_rows"] = publish_model_family(run.settings, spec, warehouse=wh).height
        except Exception as exc:
            q["model_family_error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if warehouse is None:
            wh.dispose()
    report_summary = {
        "rows_written": dict(tally.rows_written),  # per table: the warehouse/<table> assets' events (defs/marts.py)
        "keys_failed": n_failed,
        **q,
        **ingest,
        "stopped_at_stage": stopped_at,
        "stop_reason": why,
    }
    return finish(run, "published", tally.outcomes, report_summary)


def _batch_frames(
    run: StageRun, keys: Sequence[str], now: dt.datetime, tally: _Tally
) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
    """(per-key frames, history frames) of a batch of keys, in the tables' types; counts go to
    ``tally``. Each key's rows are built by :func:`_key_rows` in the run's worker pool (in this
    process for fewer than ``2 * PUBLISH_KEYS_PER_WORKER`` keys, where starting workers costs more)."""
    spec = run.spec
    preds, metrics, statuses, decisions, key_values = [], [], [], [], []
    built = map_keys(
        _key_rows,
        keys,
        (spec, run.lake, run.run_id, now),
        workers=run.workers,
        min_keys_per_worker=PUBLISH_KEYS_PER_WORKER,
        progress=run.progress,
    )
    for outcome in built:
        rows = outcome.info if outcome.ok else _unbuilt(spec, outcome, run.run_id, now)
        key_values += rows["key_values"]
        statuses += rows["statuses"]
        metrics += rows["metrics"]
        for stage in STAGES[:-1]:
            if stage in rows["not_ok"]:
                tally.not_ok[stage][rows["not_ok"][stage]] += 1
            else:
                tally.ok_keys[stage] += 1
        if rows["raw_run"] is not None:
            tally.raw_runs[rows["raw_run"]] += 1
        tally.metric_values += rows["metric_values"]
        if rows["decision"] is not None:
            decisions.append(rows["decision"])
            tally.promoted += rows["decision"]["decision"] == "promoted"
        if rows["predictions"] is not None:
            preds.append(rows["predictions"])
        tally.outcomes.append(KeyOutcome(outcome.key, "ok", info=rows["outcome"]))

    common = {"use_case": spec.name, "run_date": run.run_date}
    frames = {
        "predictions": _predictions_frame(preds, common, run.run_id, now),
        "key_metrics": W.records_frame(W.key_metrics, metrics, **common, dagster_run_id=run.run_id),
        "key_status": W.records_frame(W.key_status, statuses, **common),
        "key_columns": W.records_frame(W.key_columns, key_values, use_case=spec.name),
    }
    append = {"promotion_history": W.records_frame(W.promotion_history, decisions, **common)} if decisions else {}
    return frames, append


def _unbuilt(spec: UseCaseSpec, outcome: KeyOutcome, run_id: str, now: dt.datetime) -> dict[str, Any]:
    """The rows of a key whose rows could not be built (:func:`_key_rows` raised): its own
    ``published`` status, failed with the reason; the other keys publish."""
    reason = f"its rows could not be built: {outcome.reason}"
    label = decoded(spec.keys, outcome.key)[0]
    return {
        "key_values": [],
        "statuses": [_published_status(outcome.key, label, "failed", reason, run_id, now)],
        "metrics": [],
        "not_ok": dict.fromkeys(STAGES[:-1], reason),
        "raw_run": None,
        "metric_values": [],
        "decision": None,
        "predictions": None,
        "outcome": {"key_status": reason, "published": False, "prediction_rows": 0},
    }


def _published_status(
    key: str, label: str, status: str, reason: str | None, run_id: str, now: dt.datetime, rows: int | None = None
) -> dict[str, Any]:
    """A key's own ``published`` row of ``key_status``; with ``rows`` (its predictions published)
    the row counts."""
    counts = {"rows_in": rows, "rows_out": rows, "rows_dropped": 0, "rows_merged": 0} if rows is not None else {}
    return {
        "stage": "published",
        "key": key,
        "key_label": label,
        "status": status,
        "reason": reason,
        "dagster_run_id": run_id,
        "updated_at": now,
        **counts,
    }


def _key_rows(key: str, spec: UseCaseSpec, lake: Lake, run_id: str, now: dt.datetime) -> dict[str, Any]:
    """One key's rows for every table (its key columns, a status row per stage, metrics, its
    promotion decision, its predictions frame) and what the run's tally needs of it. Reading six
    records and a predictions file per key was most of the stage's time, on one core."""
    label, values = decoded(spec.keys, key)
    key_values = [  # none for a key registered under other key columns (decoded)
        {"key": key, "position": i, "column_name": column, "value": value}
        for i, (column, value) in enumerate(zip(spec.keys, values, strict=True) if values else ())
    ]
    found = {stage: read_state_or_error(lake, spec.name, stage, key) for stage in STAGES[:-1]}
    # a record this platform cannot read (a newer schema) is this key's failure at its stage
    states = {stage: st if isinstance(st, StageRecord) else None for stage, st in found.items()}
    statuses, not_ok = [], {}
    for stage, st in found.items():
        unreadable = isinstance(st, Exception)
        statuses.append(
            {
                "stage": stage,
                "key": key,
                "key_label": label,
                "status": "failed" if unreadable else (st.status if st else "missing"),
                "reason": not_ok_reason(stage, st) if unreadable else ((st.reason if st else None) or None),
                "dagster_run_id": st.dagster_run_id if isinstance(st, StageRecord) else None,
                "updated_at": st.updated_at if isinstance(st, StageRecord) else None,
                **row_counts(st.info.model_dump() if isinstance(st, StageRecord) else {}),
            }
        )
        if not (isinstance(st, StageRecord) and st.ok):
            not_ok[stage] = not_ok_reason(stage, st)
    failed = next(
        (
            (s, not_ok_reason(s, st) if isinstance(st, Exception) else (st.status, st.reason) if st else None)
            for s, st in found.items()
            if not (isinstance(st, StageRecord) and st.ok)
        ),
        None,
    )
    key_metrics = _metric_rows(spec, key, states)
    decision = None
    pm = states["promoted_model"]
    if pm and pm.ok:
        info = pm.flat_info()
        decision = {
            "key": key,
            "decided_at": info.get("decided_at"),
            **{k: info.get(k) for k in DECISION_FIELDS},
            "dagster_run_id": pm.dagster_run_id,
        }
    frame, problem = _predictions(spec, lake, key, label, states["predictions"])
    served = frame is not None
    n_rows = frame.height if served else 0
    issue = problem or (_issue(*failed) if failed else None)
    # The published row itself, written in the same transaction: ok when this key's
    # predictions are published (maybe by the champion while today's candidate failed),
    # failed when its predictions file cannot be published, else skipped.
    status = "ok" if served else ("failed" if problem else "skipped")
    statuses.append(_published_status(key, label, status, issue, run_id, now, n_rows if served else None))
    return {
        "key_values": key_values,
        "statuses": statuses,
        "metrics": key_metrics,
        "not_ok": not_ok,
        "raw_run": states["raw"].dagster_run_id if states["raw"] else None,
        "metric_values": [
            r["value"]
            for r in key_metrics
            if r["model_role"] == "candidate" and r["metric"] == spec.metric and r["value"] is not None
        ],
        "decision": decision,
        "predictions": frame,
        "outcome": {"key_status": issue or "ok", "published": served, "prediction_rows": n_rows},
    }


def decoded(columns: Sequence[str], key: str) -> tuple[str, tuple[str, ...]]:
    """(label, key column values) of a key. A key registered under other key columns than the
    use case has today (its ``keys`` changed) is labelled by its encoded form and has no
    values: it still publishes its statuses instead of failing the batch."""
    try:
        values = decode_key(key)
    except ValueError:
        return key, ()
    if len(values) != len(columns):
        return key, ()
    return key_label(columns, key), values


def row_counts(info: dict[str, Any]) -> dict[str, Any]:
    """A stage's per-key row accounting (``rows_in`` ... ``drops``) as key_status columns; absent
    fields stay NULL."""
    out: dict[str, Any] = {name: info.get(name) for name in ROW_COUNTS}
    drops = info.get("drops")
    if isinstance(drops, dict) and drops:
        out["drop_detail"] = drop_detail(drops)
    return out


def drop_detail(drops: dict[str, Any]) -> str:
    """``reason: n; reason: n``, the largest count first."""
    items = sorted(drops.items(), key=lambda item: (-_count(item[1]), str(item[0])))
    return "; ".join(f"{reason}: {_count(n)}" for reason, n in items)


def _count(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def publish_no_keys(run: StageRun, ingest: dict[str, Any]) -> None:
    """A run_summary row for a run that found no key at all (every landing file rejected, or no
    rows): keys_total 0, stopped at raw, and why, so the warehouse records the run that
    published nothing instead of holding no trace of it."""
    spec, now = run.spec, dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rejected = ingest.get("rejected") or []
    why = f"no keys: the landing zone has no readable rows for it ({spec.source.path})"
    if rejected:
        first = rejected[0]
        why += f"; {len(rejected)} file(s) rejected, e.g. {first.get('file')}: {first.get('reason')}"
    row = {
        "dagster_run_id": run.run_id,
        "keys_total": 0,
        "keys_published": 0,
        "keys_failed": 0,
        "keys_promoted": 0,
        "metric": spec.metric,
        "metric_p10": None,
        "metric_p50": None,
        "metric_p90": None,
        "published_at": now,
        "rows_landed": ingest.get("landing_rows"),
        "rows_dropped": ingest.get("rows_dropped"),
        "rows_merged": ingest.get("rows_merged"),
        "files_rejected": len(rejected),
        "stopped_at_stage": "raw",
        "stop_reason": why[:4000],
    }
    wh = Warehouse(run.settings.warehouse_url)
    try:
        wh.ensure_schema()
        with wh.replacing(spec.name, run.run_date) as load:
            load(
                [],
                None,
                {"run_summary": W.records_frame(W.run_summary, [row], use_case=spec.name, run_date=run.run_date)},
            )
    finally:
        wh.dispose()


def ingest_counts(run: StageRun, raw_runs: Counter[str]) -> dict[str, Any]:
    """What ingest saw, from the raw stage's record of this run (or, when raw ran in another run,
    of the run that ingested most of these keys): landing rows, rows dropped and merged, and the
    files it could not read."""
    record = read_run_record(run.lake, run.spec.name, "raw", run.run_id)
    if record is None and raw_runs:
        record = read_run_record(run.lake, run.spec.name, "raw", raw_runs.most_common(1)[0][0])
    summary = (record or {}).get("summary") or {}
    rejected = summary.get("rejected")
    if rejected is None and "quarantined" in summary:  # ingest before the rejected-file list
        rejected = summary["quarantined"]
    return {
        "rows_landed": summary.get("landing_rows"),
        "rows_dropped": summary.get("rows_dropped"),
        "rows_merged": summary.get("rows_merged"),
        "files_rejected": None if rejected is None else len(rejected),
        "rejected": rejected or [],
    }


def _issue(stage: str, state: tuple[str, str] | str | None) -> str:
    """``<stage> <status>: <reason>`` of the first stage that is not ok for a key."""
    if state is None:
        return f"{stage} missing: has not run for this key"
    if isinstance(state, str):  # an unreadable record
        return f"{stage} failed: {state}"
    return f"{stage} {state[0]}: {state[1]}"


def _metric_rows(spec, key: str, states: dict[str, StageRecord | None]) -> list[dict]:
    ev = states["evaluation"]
    if not ev or not ev.ok:
        return []
    info, model = ev.flat_info(), (states["model"].flat_info() if states["model"] else {})
    rows = [
        _metric_row(
            key, "candidate", m, v, model.get("model_name"), info.get("candidate_version"), info.get("estimator")
        )
        for m, v in (info.get("metrics") or {}).items()
    ]
    if info.get("baseline_name"):
        # the best naive baseline on the same holdout, and the candidate's skill over it
        # (docs/evaluation.md#baselines-and-skill); the version is the candidate's it was scored beside
        baseline = info["baseline_name"]
        rows += [
            _metric_row(key, "baseline", m, v, f"baseline:{baseline}", info.get("candidate_version"), baseline)
            for m, v in (info.get("baseline_metrics") or {}).items()
        ]
        rows.append(
            _metric_row(
                key,
                "candidate",
                "skill",
                info.get("skill"),
                model.get("model_name"),
                info.get("candidate_version"),
                info.get("estimator"),
            )
        )
    name = registered_model_name(spec.name, key)
    rows += [
        _metric_row(key, "champion", m, v, name, info.get("champion_version"), None)
        for m, v in (info.get("champion_metrics") or {}).items()
    ]
    return rows


def _metric_row(key, role, metric, value, name, version, estimator) -> dict:
    return {
        "key": key,
        "model_role": role,
        "metric": metric,
        "value": _defined(value),
        "model_name": name,
        "model_version": version,
        "estimator": estimator,
    }


def _defined(value: Any) -> float | None:
    """A metric value as a float; None when undefined (None, NaN, or not a number at all)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _predictions(
    spec: UseCaseSpec, lake: Lake, key: str, label: str, state: StageRecord | None
) -> tuple[pl.DataFrame | None, str | None]:
    """(this key's prediction rows in the table's types, None), or (None, why they cannot be
    published): one unreadable file fails its own key, never the batch."""
    if not state or not state.ok:
        return None, None
    path = lake.key_path("predictions", spec.name, key, ".parquet")
    if not path.exists():
        return None, "predictions file missing from the lake"
    schema = W.polars_schema(W.predictions)
    try:
        frame = lake.read_parquet(path)
        frame = frame.with_columns(pl.lit(key).alias("key"), pl.lit(label).alias("key_label"))
        return frame.select([pl.col(c).cast(schema[c]) for c in frame.columns if c in schema]), None
    except Exception as exc:
        return None, f"predictions file cannot be published: {type(exc).__name__}: {exc}"[:2000]


def _predictions_frame(parts: list[pl.DataFrame], common: dict, run_id: str, now: dt.datetime) -> pl.DataFrame:
    schema = W.polars_schema(W.predictions)
    if not parts:
        return pl.DataFrame(schema=schema)
    frame = pl.concat(parts, how="diagonal_relaxed")
    fixed = {**common, "dagster_run_id": run_id, "published_at": now}
    return frame.with_columns([pl.lit(v, dtype=schema[k]).alias(k) for k, v in fixed.items()])
