"""Stage 6, ``predictions``: batch predictions from each key's production model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from ..core import features as F
from ..core.engine import ByKey, KeyOutcome, SkipKey, map_keys
from ..core.modeling import anomaly_score, clip_predictions, model_input, predict
from ..core.spec import UseCaseSpec
from ..storage.lake import Lake
from ..storage.registry import (
    EVAL_MODEL_FILE,
    load_model_from_source,
)
from .base import (
    StageReport,
    StageRun,
    check_production_hashes,
    clear_state,
    crash_point,
    finish,
    production_models,
    read_state,
    registered_sources,
    require_state,
    write_state,
)
from .records import StageRecord

UNUSED_SCORING = "scoring row on no forecast period"  # its features reach no forecast: dated off the grid


def _score_one(
    key: str, spec: UseCaseSpec, lake: Lake, production: dict[str, dict], trusted, run_id: str, sources: dict
) -> dict:
    promo = read_state(lake, spec.name, "promoted_model", key)
    prod = production.get(key)
    if prod is None:
        why = (promo.info.reason if promo.ok else promo.reason) if promo else None
        raise SkipKey(f"no production model for this key ({why or 'never promoted'})")
    check_production_hashes(prod, sources.get(key))  # the candidate registry's hashes, not the tag alone
    ingested = None  # the key's raw record, where scoring reads its bronze
    if spec.task == "forecast" or spec.scoring_source:
        ingested = _require_fresh_bronze(lake, spec, key)
    model = load_model_from_source(prod["source"], prod["artifact_sha256"], trusted)
    features = prod["features"]
    segments = []  # (feature rows, kind)
    # A version refitted on every row has seen its holdout: the holdout rows are scored by its
    # evaluated twin (fitted without them), so BI reads honest holdout errors, not in-sample fits.
    holdout_model = model
    if prod.get("eval_artifact_sha256"):
        holdout_model = load_model_from_source(prod["source"], prod["eval_artifact_sha256"], trusted, EVAL_MODEL_FILE)
    counts: dict[str, object] = {}  # a forecast's scoring_source rows, used or not
    note = ""  # why an ok key's predictions are not what its scoring_source would have given
    if spec.task == "forecast":
        t = spec.time_column
        bronze = lake.read_parquet(lake.key_path("bronze", spec.name, key, ".parquet"))
        scoring_path = lake.key_path("bronze_scoring", spec.name, key, ".parquet")
        exog = lake.read_parquet(scoring_path) if scoring_path.exists() else None
        origin = bronze.filter(pl.col(spec.target).is_not_null())[t].min()  # as in training
        holdout = _todays_holdout(spec, lake, key)
        if holdout is not None:
            holdout = F.add_calendar(holdout, t, features)
        if holdout is not None and all(c in holdout.columns for c in features):
            # the production model on today's holdout: forecast accuracy for BI, with actuals
            segments.append((holdout, "holdout"))
        calendar = F.calendar_of(features)  # the model's calendar features, whatever today's defaults
        forecast = F.future_frame(spec, bronze, exog, origin=origin, calendar=calendar)
        segments.append((forecast, "forecast"))
        if spec.scoring_source and spec.all_features and (exog is None or not exog.height):
            note = _without_scoring_rows(ingested, "its future features are its last observed values")
        if exog is not None and exog.height:  # rows off the forecast periods give no feature: counted
            on_period = exog[t].cast(forecast.schema[t]).is_in(forecast[t].implode())
            unused = exog.height - int(on_period.sum())
            counts = {"rows_in": exog.height, "rows_out": exog.height - unused, "rows_dropped": unused}
            counts |= {"rows_merged": 0, "drops": {UNUSED_SCORING: unused} if unused else {}}
            note = _carried_forward(spec, exog, forecast[t], counts)
            segments[-1] = (_with_row_ids(spec, forecast, exog), "forecast")
            note = _joined(note, _removed_at_ingest(ingested))
    else:
        scoring_path = lake.key_path("bronze_scoring", spec.name, key, ".parquet")
        if spec.scoring_source and scoring_path.exists():
            rows = F.make_features(spec, lake.read_parquet(scoring_path), calendar=F.calendar_of(features))
            segments.append((rows, "scoring"))
            note = _removed_at_ingest(ingested)
        else:
            holdout = _todays_holdout(spec, lake, key)
            if holdout is None:
                ts_state = read_state(lake, spec.name, "training_set", key)
                why = f"{ts_state.status}: {ts_state.reason}" if ts_state else "has not run"
                raise SkipKey(f"nothing to score: no scoring_source rows and training_set {why}")
            segments.append((F.add_calendar(holdout, spec.time_column, features), "holdout"))
            if spec.scoring_source:
                note = _without_scoring_rows(ingested, "its holdout is scored instead")
    out = pl.concat(
        [
            _prediction_rows(spec, holdout_model if kind == "holdout" else model, features, rows, kind, prod)
            for rows, kind in segments
        ]
    )
    out = out.with_columns(pl.int_range(0, pl.len(), dtype=pl.Int32).alias("row_index")).select(
        "row_index", pl.exclude("row_index")
    )
    kinds = {kind: rows.height for rows, kind in segments}
    info = {
        **counts,
        "rows": out.height,
        "kind": ", ".join(kinds),  # e.g. "holdout, forecast"
        **{f"rows_{kind}": n for kind, n in kinds.items()},
        "model_version": prod["version"],
        "candidate_version": sources[key]["version"],  # the candidate it was copied from
        "artifact_sha256": prod["artifact_sha256"],  # the production model that scored them
        "eval_artifact_sha256": prod.get("eval_artifact_sha256"),  # and the one that scored the holdout
    }
    # the record goes first and comes back last, so no old record describes new predictions
    clear_state(lake, spec.name, "predictions", key)
    lake.write_parquet(lake.key_path("predictions", spec.name, key, ".parquet"), out)
    crash_point("predictions")
    write_state(lake, spec.name, "predictions", KeyOutcome(key, "ok", note, info=info), run_id)
    return info


def _with_row_ids(spec: UseCaseSpec, forecast: pl.DataFrame, exog: pl.DataFrame) -> pl.DataFrame:
    """The forecast rows with the row id of the scoring row each period's features came from
    (the last of a period's rows, as ``future_frame`` takes them); none where a period has no
    scoring row."""
    if not spec.row_id or spec.row_id not in exog.columns:
        return forecast
    t = spec.time_column
    ids = exog.select(pl.col(t).cast(forecast.schema[t]), spec.row_id).unique(subset=[t], keep="last")
    return forecast.join(ids, on=t, how="left", maintain_order="left")


def _carried_forward(spec: UseCaseSpec, exog: pl.DataFrame, times: pl.Series, counts: dict) -> str:
    """The note on a forecast whose scoring rows leave periods or feature values out (the last
    observed values stand in), with both counted in ``counts``; empty when nothing is left out."""
    periods, values = F.carried_forward(spec, exog, times)
    counts |= {"periods_without_scoring_row": periods, "scoring_values_missing": values}
    said = []
    if periods:
        said.append(f"{periods} of {times.len()} forecast periods have no scoring_source row")
    if values:
        said.append(f"{values} feature value(s) are missing in its scoring_source rows")
    return f"{' and '.join(said)}: the key's last observed values stand in for them" if said else ""


def _removed_at_ingest(raw: StageRecord | None) -> str:
    """The note on a key whose scoring rows ``raw`` removed some of (counted there, by reason):
    the rows sent that have no prediction, said where its predictions are looked at."""
    drops = (raw.info.model_dump().get("scoring_drops") or {}) if raw else {}
    if not drops:
        return ""
    detail = "; ".join(f"{reason}: {n}" for reason, n in drops.items())
    n = sum(drops.values())
    return f"{n} scoring_source row(s) of this key are not scored: removed or merged at ingest ({detail})"


def _joined(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _without_scoring_rows(raw: StageRecord | None, instead: str) -> str:
    """The note on a key of a use case with a scoring_source that has no scoring rows today:
    what was scored instead and, from its ``raw`` record, why: its scoring rows failed the
    duplicates policy, or scoring files were rejected (its rows may be there)."""
    why = raw.info.model_dump().get("scoring_note") if raw else None
    return f"no scoring_source rows for this key: {instead}" + (f"; {why}" if why else "")


def _require_fresh_bronze(lake: Lake, spec: UseCaseSpec, key: str) -> StageRecord:
    """The key's raw record, or SkipKey unless its latest ingest is ok: a key whose rows failed
    ``raw`` today keeps yesterday's bronze, and a forecast from it would reach BI looking like today's."""
    try:
        return require_state(lake, spec.name, "raw", key)
    except SkipKey as exc:
        raise SkipKey(f"nothing fresh to score: {exc}") from None


def _todays_holdout(spec: UseCaseSpec, lake: Lake, key: str) -> pl.DataFrame | None:
    """The key's holdout from today's training set; None when training_set is not ok (never a
    holdout left over from an earlier run)."""
    state = read_state(lake, spec.name, "training_set", key)
    if not state or not state.ok:
        return None
    return F.split(lake.read_parquet(lake.key_path("training", spec.name, key, ".parquet")))[F.HOLDOUT]


def _prediction_rows(spec: UseCaseSpec, model, features: list[str], rows: pl.DataFrame, kind: str, prod: dict):
    t = spec.time_column
    x = model_input(model, rows, features)
    pred = predict(spec.task, model, x)
    period = rows[t] if t else pl.Series([None] * rows.height)
    index = pl.Series([None] * rows.height, dtype=pl.Int64)
    if period.dtype.is_integer():  # a period index is no time: published as a number, not as microseconds
        period, index = pl.Series([None] * rows.height), period.cast(pl.Int64)
    kinds = pl.Series([kind] * rows.height, dtype=pl.Utf8)
    # the scoring row's own id, as the user wrote it (holdout rows and periods without a scoring row: none)
    ids = rows[spec.row_id] if spec.row_id in rows.columns else pl.Series([None] * rows.height, dtype=pl.Utf8)
    out = pl.DataFrame(
        {"row_id": ids.cast(pl.Utf8), "period": period.cast(pl.Datetime("us")), "period_index": index, "kind": kinds}
    )
    nothing = pl.Series([None] * rows.height, dtype=pl.Utf8)
    if spec.task in ("forecast", "regression"):
        prediction = pl.Series(clip_predictions(spec, pred.astype(float)), dtype=pl.Float64)
        label = nothing
    elif spec.task == "anomaly":
        prediction, label = pl.Series(anomaly_score(model, x), dtype=pl.Float64), F.label_text(pl.Series(pred))
    else:  # classification: the probability the model gives the class it predicts, when it gives any
        label = F.label_text(pl.Series(pred))
        prediction = pl.Series([None] * rows.height, dtype=pl.Float64)
        if rows.height and hasattr(model, "predict_proba"):
            prediction = pl.Series(np.asarray(model.predict_proba(x)).max(axis=1), dtype=pl.Float64)
    has_actual = kind != "forecast" and spec.target and spec.target in rows.columns
    truth = rows[spec.target] if has_actual else pl.Series(spec.target or "actual", [None] * rows.height)
    if spec.task == "anomaly":  # 1 (an anomaly) or 0, as the predicted label
        truth = F.anomaly_truth(truth)
        truth = truth.cast(pl.Int8) if truth.dtype == pl.Boolean else truth
    actual = truth.cast(pl.Float64, strict=False)
    actual_label = F.label_text(truth) if spec.task in ("anomaly", "classification") else nothing
    return out.with_columns(
        prediction.alias("prediction"),
        label.cast(pl.Utf8).alias("predicted_label"),
        actual.cast(pl.Float64).alias("actual"),
        actual_label.cast(pl.Utf8).alias("actual_label"),
        pl.lit(prod["name"]).alias("model_name"),
        pl.lit(prod["version"], dtype=pl.Int32).alias("model_version"),
    )


def score(run: StageRun, keys: Sequence[str]) -> StageReport:
    spec = run.spec
    production = production_models(run, keys)
    sources = registered_sources(run, production)
    outcomes = map_keys(
        _score_one,
        keys,
        (spec, run.lake, ByKey(production), run.trusted, run.run_id, ByKey(sources)),
        workers=run.workers,
        progress=run.progress,
    )
    return finish(run, "predictions", outcomes, written={o.key for o in outcomes if o.ok})
