"""The seven pipeline stages as plain functions over a batch of keys. No Dagster here.

Each stage reads its inputs from the lake, does its per-key work through
:func:`core.engine.map_keys` (so one bad key never sinks the others), writes its outputs
back, and records a small per-key state file ``state/<use case>/<stage>/<key>.json``
holding the status, the reason and a few facts. Downstream stages read that state to skip
keys whose upstream failed, and the ``published`` stage turns it into the status table.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from .core import features as F
from .core.engine import KeyOutcome, SkipKey, map_keys
from .core.keys import encode_key, key_label
from .core.metrics import is_better
from .core.modeling import anomaly_score, evaluate, fit_key, predict
from .core.spec import UseCaseSpec
from .lifecycle import publish_model_family
from .storage.lake import Lake
from .storage.registry import (
    HASH_TAG,
    TRUSTED_MODULES,
    ModelIntegrityError,
    ModelRegistry,
    candidate_registry,
    copy_model_dir,
    load_model_from_source,
    local_path,
    model_template_dir,
    production_registry,
    registered_model_name,
    write_model_dir,
)
from .storage.settings import PlatformSettings
from .storage.warehouse import Warehouse

STAGES = ("raw", "training_set", "model", "evaluation", "promoted_model", "predictions", "published")
UPSTREAM = dict(zip(STAGES[1:], STAGES[:-1], strict=True))


@dataclass
class StageRun:
    """What a stage needs besides its keys: the use case, the stores, and who is running."""

    spec: UseCaseSpec
    settings: PlatformSettings
    run_id: str
    run_date: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())
    workers: int | None = None
    progress: Callable[[int], None] | None = None

    @property
    def lake(self) -> Lake:
        return Lake(self.settings.lake_url, self.settings.lake_storage_options)

    def candidates(self) -> ModelRegistry:
        return candidate_registry(self.settings)

    def production(self) -> ModelRegistry:
        """The production registry, read-only: evaluation and scoring only look things up."""
        return production_registry(self.settings)

    def production_writer(self) -> ModelRegistry:
        """The production registry with write access; only promotion's settings carry it."""
        return production_registry(self.settings, write=True)

    @property
    def trusted(self) -> list[str]:
        """Type-name prefixes this use case's saved models may hold."""
        return [*TRUSTED_MODULES, *self.spec.trusted_types]


@dataclass
class StageReport:
    stage: str
    outcomes: list[KeyOutcome]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[KeyOutcome]:
        return [o for o in self.outcomes if not o.ok]


# --- state ------------------------------------------------------------------------------
def state_path(lake: Lake, use_case: str, stage: str, key: str):
    return lake.key_path("state", use_case, key, ".json", subdir=stage)


def write_state(lake: Lake, use_case: str, stage: str, outcome: KeyOutcome, run_id: str) -> None:
    lake.write_json(
        state_path(lake, use_case, stage, outcome.key),
        {
            "status": outcome.status,
            "reason": outcome.reason,
            "info": outcome.info,
            "dagster_run_id": run_id,
            "updated_at": dt.datetime.now(dt.UTC).isoformat(),
        },
    )


def read_state(lake: Lake, use_case: str, stage: str, key: str) -> dict[str, Any] | None:
    path = state_path(lake, use_case, stage, key)
    return lake.read_json(path) if path.exists() else None


def require_upstream(lake: Lake, use_case: str, stage: str, key: str) -> dict[str, Any]:
    """The upstream stage's info for this key, or SkipKey naming why it is missing."""
    up = UPSTREAM[stage]
    state = read_state(lake, use_case, up, key)
    if state is None:
        raise SkipKey(f"{up} has not run for this key")
    if state["status"] != "ok":
        raise SkipKey(f"{up} {state['status']}: {state['reason']}")
    return state["info"]


def _finish(run: StageRun, stage: str, outcomes: list[KeyOutcome], summary: dict | None = None) -> StageReport:
    for o in outcomes:
        write_state(run.lake, run.spec.name, stage, o, run.run_id)
    return StageReport(stage, outcomes, summary or {})


# --- 1. raw: landing -> per-key bronze -------------------------------------------------------
def read_landing(spec: UseCaseSpec, lake: Lake, scoring: bool = False) -> tuple[pl.DataFrame, list[dict]]:
    """Read every landing file of a source; malformed files are moved to quarantine, not dropped."""
    source = spec.scoring_source if scoring else spec.source
    required = [c for c in spec.input_columns if not (scoring and c == spec.target)]
    frames, quarantined = [], []
    for i, path in enumerate(lake.glob(source.path)):
        try:
            frame = lake.read_table(path, source.file_format)
            missing = [c for c in required if c not in frame.columns]
            if missing:
                raise ValueError(f"missing required column(s) {missing}")
            frame = frame.select(required).with_columns(
                [pl.col(k).cast(pl.Utf8) for k in spec.keys] + [pl.lit(i).alias("__file")]
            )
            if spec.time_column and not frame.schema[spec.time_column].is_temporal():
                raise ValueError(f"time column {spec.time_column!r} is not a date or datetime")
        except Exception as exc:
            quarantined.append(quarantine_file(lake, spec.name, path, f"{type(exc).__name__}: {exc}"))
            continue
        frames.append(frame)
    if not frames:
        return pl.DataFrame(), quarantined
    data = pl.concat(frames, how="diagonal_relaxed")
    null_keys = data.filter(pl.any_horizontal([pl.col(k).is_null() for k in spec.keys]))
    if null_keys.height:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        lake.write_parquet(
            lake.path("quarantine", spec.name, f"rows_null_key_{stamp}.parquet"),
            null_keys.with_columns(pl.lit("null key value").alias("quarantine_reason")),
        )
        quarantined.append(
            {"file": f"rows_null_key_{stamp}.parquet", "reason": f"{null_keys.height} rows with a null key"}
        )
        data = data.filter(~pl.any_horizontal([pl.col(k).is_null() for k in spec.keys]))
    # For a repeated (key, period) the last file in name order wins, so a correction landed
    # later (with a later-sorting name) replaces a row instead of duplicating it.
    if spec.time_column:
        data = data.sort("__file", maintain_order=True).unique(
            subset=[*spec.keys, spec.time_column], keep="last", maintain_order=True
        )
    return data.drop("__file"), quarantined


def quarantine_file(lake: Lake, use_case: str, path, reason: str) -> dict:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    name = f"{stamp}_{path.name}"
    lake.move(path, lake.path("quarantine", use_case, name))
    lake.write_json(lake.path("quarantine", use_case, f"{name}.reason.json"), {"source": str(path), "reason": reason})
    return {"file": name, "reason": reason}


def partition_by_key(spec: UseCaseSpec, data: pl.DataFrame) -> dict[str, pl.DataFrame]:
    if data.is_empty():
        return {}
    parts = data.partition_by(spec.keys, as_dict=True, maintain_order=True)
    return {encode_key(k): frame for k, frame in parts.items()}


def discover_keys(spec: UseCaseSpec, lake: Lake) -> list[str]:
    """Every key present in the landing zone, in a stable order (reads key columns only)."""
    keys: set[str] = set()
    for path in lake.glob(spec.source.path):
        try:
            frame = lake.read_table(path, spec.source.file_format, columns=spec.keys)
            values = frame.select([pl.col(k).cast(pl.Utf8) for k in spec.keys]).unique().drop_nulls()
        except Exception:
            continue  # the raw stage quarantines it with a reason
        keys.update(encode_key(row) for row in values.iter_rows())
    return sorted(keys)


def ingest(run: StageRun, keys: Sequence[str]) -> StageReport:
    spec, lake = run.spec, run.lake
    data, quarantined = read_landing(spec, lake)
    by_key = partition_by_key(spec, data)
    future = {}
    if spec.scoring_source:
        future_data, q = read_landing(spec, lake, scoring=True)
        quarantined += q
        future = partition_by_key(spec, future_data)
    outcomes = []
    for key in keys:
        frame = by_key.get(key)
        if frame is None:
            outcomes.append(KeyOutcome(key, "failed", "no rows for this key in the landing zone"))
        else:
            lake.write_parquet(lake.key_path("bronze", spec.name, key, ".parquet"), frame)
            fut = future.get(key)
            if fut is not None:
                lake.write_parquet(lake.key_path("bronze_scoring", spec.name, key, ".parquet"), fut)
            info = {"rows": frame.height, "scoring_rows": 0 if fut is None else fut.height}
            outcomes.append(KeyOutcome(key, "ok", info=info))
        if run.progress:
            run.progress(1)
    return _finish(run, "raw", outcomes, {"landing_rows": data.height, "quarantined": quarantined})


# --- 2. training sets ------------------------------------------------------------------------
def _training_set_one(key: str, spec: UseCaseSpec, lake: Lake) -> dict:
    require_upstream(lake, spec.name, "training_set", key)
    bronze = lake.read_parquet(lake.key_path("bronze", spec.name, key, ".parquet"))
    ts = F.build_training_set(spec, bronze)
    lake.write_parquet(lake.key_path("training", spec.name, key, ".parquet"), ts)
    n_holdout = int((ts[F.SPLIT] == F.HOLDOUT).sum())
    return {
        "rows": ts.height,
        "rows_train": ts.height - n_holdout,
        "rows_holdout": n_holdout,
        "features": [c for c in ts.columns if c not in (spec.time_column, spec.target, F.SPLIT)],
        "data_fingerprint": F.fingerprint(bronze),
    }


def build_training_sets(run: StageRun, keys: Sequence[str]) -> StageReport:
    outcomes = map_keys(_training_set_one, keys, (run.spec, run.lake), workers=run.workers, progress=run.progress)
    return _finish(run, "training_set", outcomes)


# --- 3. models --------------------------------------------------------------------------------
def _train_one(key: str, spec: UseCaseSpec, lake: Lake, models_dir: str, template: str, trusted: list) -> dict:
    upstream = require_upstream(lake, spec.name, "model", key)
    ts = lake.read_parquet(lake.key_path("training", spec.name, key, ".parquet"))
    fitted = fit_key(spec, ts, upstream["features"])
    sha256 = write_model_dir(fitted.model, f"{models_dir}/{key}", template, trusted)
    return {
        "artifact_sha256": sha256,
        "estimator": fitted.candidate,
        "metric": spec.metric,
        "value": fitted.metrics[spec.metric],
        "metrics": fitted.metrics,
        "candidate_scores": fitted.candidate_scores,
        "rows_train": fitted.rows_train,
        "rows_holdout": fitted.rows_holdout,
        "features": fitted.feature_columns,
        "data_fingerprint": upstream["data_fingerprint"],
    }


def train(run: StageRun, keys: Sequence[str]) -> StageReport:
    """Fit every candidate per key in a process pool; register each winner as a candidate."""
    spec = run.spec
    registry = run.candidates()
    mlflow_run_id, artifact_uri = registry.start_run(
        spec.name, f"train-{run.run_id[:8]}", {"use_case": spec.name, "dagster_run_id": run.run_id}
    )
    target = local_path(artifact_uri)
    staging = None if target else tempfile.mkdtemp(prefix="mmp-models-")
    models_dir = f"{target or staging}/models"
    reused = reusable_candidates(run, registry, keys)
    to_fit = [k for k in keys if k not in reused]
    if run.progress and reused:
        run.progress(len(reused))
    fitted = map_keys(
        _train_one,
        to_fit,
        (spec, run.lake, models_dir, model_template_dir(), run.trusted),
        workers=run.workers,
        progress=run.progress,
    )
    by_key = {o.key: o for o in fitted} | reused
    outcomes = [by_key[k] for k in keys]
    if staging:  # a remote artifact store: upload every key's model in one call
        try:
            registry.client.log_artifacts(mlflow_run_id, models_dir, "models")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    items = []
    for o in fitted:
        if o.ok:
            tags = {
                "use_case": spec.name,
                "key": o.key,
                "key_label": key_label(spec.keys, o.key)[:5000],
                "data_fingerprint": o.info["data_fingerprint"],
                HASH_TAG: o.info["artifact_sha256"],
                "estimator": o.info["estimator"],
                "dagster_run_id": run.run_id,
                "metric": spec.metric,
                **{f"metric.{k}": repr(v) for k, v in o.info["metrics"].items()},
                "model_hash": spec.model_hash,
                "features": ",".join(o.info["features"]),
                "rows_train": str(o.info["rows_train"]),
                "rows_holdout": str(o.info["rows_holdout"]),
            }
            items.append((o.key, f"{artifact_uri}/models/{o.key}", tags))
    registered = registry.register_many(spec.name, items, mlflow_run_id)
    for o in fitted:
        result = registered.get(o.key)
        if isinstance(result, Exception):
            o.status, o.reason = "failed", f"registration failed: {type(result).__name__}: {result}"
        elif result is not None:
            o.info["version"] = result
            o.info["model_name"] = registered_model_name(spec.name, o.key)
            o.info["source"] = f"{artifact_uri}/models/{o.key}"
    values = [o.info["value"] for o in outcomes if o.ok]
    n_fitted = sum(1 for o in fitted if o.ok)
    registry.finish_run(
        mlflow_run_id,
        {
            "keys_trained": n_fitted,
            "keys_reused": len(reused),
            "keys_failed": len(outcomes) - len(values),
            **_quantiles(spec.metric, values),
        },
    )
    return _finish(run, "model", outcomes, {"mlflow_run_id": mlflow_run_id, "keys_reused": len(reused)})


def reusable_candidates(run: StageRun, registry: ModelRegistry, keys: Sequence[str]) -> dict[str, KeyOutcome]:
    """Keys whose newest candidate was fitted on the same data with the same model config.

    A daily run over unchanged data then fits and registers nothing new for them: one
    registry query for the whole use case, plus the key's training-set state file.
    """
    spec, lake = run.spec, run.lake
    latest = {
        k: ref
        for k, ref in registry.latest_versions(spec.name).items()
        if ref.tags.get("model_hash") == spec.model_hash
    }
    out = {}
    for key in keys:
        ref = latest.get(key)
        if ref is None or not ref.tags.get(HASH_TAG):
            continue
        state = read_state(lake, spec.name, "training_set", key)
        if (
            not state
            or state["status"] != "ok"
            or state["info"]["data_fingerprint"] != ref.tags.get("data_fingerprint")
        ):
            continue
        metrics = {k.removeprefix("metric."): float(v) for k, v in ref.tags.items() if k.startswith("metric.")}
        info = {
            "estimator": ref.tags["estimator"],
            "metric": spec.metric,
            "value": metrics[spec.metric],
            "metrics": metrics,
            "rows_train": int(ref.tags["rows_train"]),
            "rows_holdout": int(ref.tags["rows_holdout"]),
            "features": ref.tags["features"].split(","),
            "data_fingerprint": ref.tags["data_fingerprint"],
            "artifact_sha256": ref.tags[HASH_TAG],
            "version": ref.version,
            "model_name": ref.name,
            "source": ref.source,
            "reused": True,
        }
        out[key] = KeyOutcome(key, "ok", info=info)
    return out


# --- 4. evaluation ----------------------------------------------------------------------------
def _evaluate_one(key: str, spec: UseCaseSpec, lake: Lake, champions: dict[str, dict], trusted: list) -> dict:
    cand = require_upstream(lake, spec.name, "evaluation", key)
    ts = lake.read_parquet(lake.key_path("training", spec.name, key, ".parquet"))
    holdout = F.split(ts)[F.HOLDOUT]
    model = load_model_from_source(cand["source"], cand.get("artifact_sha256"), trusted)
    report = {
        "candidate_version": cand["version"],
        "estimator": cand["estimator"],
        "metric": spec.metric,
        "metrics": evaluate(spec, model, cand["features"], holdout),
        "rows_holdout": holdout.height,
        "rows_train": cand["rows_train"],
        "champion_version": None,
        "champion_metrics": None,
    }
    champ = champions.get(key)
    if champ:
        report["champion_version"] = champ["version"]
        report["champion_source_version"] = champ.get("source_version")
        features = champ["features"]
        if all(c in holdout.columns for c in features):
            try:
                champ_model = load_model_from_source(champ["source"], champ["artifact_sha256"], trusted)
            except ModelIntegrityError as exc:  # a tampered or pre-skops champion: let a candidate replace it
                report["champion_note"] = f"champion cannot be loaded, not compared: {exc}"
            else:
                report["champion_metrics"] = evaluate(spec, champ_model, features, holdout)
        else:
            report["champion_note"] = "champion features differ from this training set; not compared"
    return report


def production_models(run: StageRun, keys: Sequence[str]) -> dict[str, dict]:
    """key -> its production model (name, version, artifact source, feature columns), for these
    keys, from one registry lookup for the whole use case; plain data, so workers get it."""
    wanted = set(keys)
    return {
        key: {
            "name": ref.name,
            "version": ref.version,
            "source": ref.source,
            "features": ref.tags["features"].split(",") if ref.tags.get("features") else [],
            "source_version": ref.tags.get("source_candidate_version"),
            "artifact_sha256": ref.tags.get(HASH_TAG),
        }
        for key, ref in run.production().aliased_versions(run.spec.name).items()
        if key in wanted
    }


def evaluate_models(run: StageRun, keys: Sequence[str]) -> StageReport:
    spec = run.spec
    champions = production_models(run, keys)
    outcomes = map_keys(
        _evaluate_one, keys, (spec, run.lake, champions, run.trusted), workers=run.workers, progress=run.progress
    )
    values = [o.info["metrics"][spec.metric] for o in outcomes if o.ok]
    summary = {"metric": spec.metric, **_quantiles(spec.metric, values)}
    summary["worst"] = _worst(spec, outcomes)
    return _finish(run, "evaluation", outcomes, summary)


def _worst(spec: UseCaseSpec, outcomes: list[KeyOutcome], n: int = 10) -> list[dict]:
    ok = [o for o in outcomes if o.ok and not math.isnan(o.info["metrics"][spec.metric])]
    ok.sort(key=lambda o: o.info["metrics"][spec.metric], reverse=spec.lower_is_better)
    return [{"key": key_label(spec.keys, o.key), "value": o.info["metrics"][spec.metric]} for o in ok[:n]]


def _quantiles(metric: str, values: list[float]) -> dict[str, float]:
    vals = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if not len(vals):
        return {}
    p10, p50, p90 = np.quantile(vals, [0.1, 0.5, 0.9])
    return {f"{metric}_p10": float(p10), f"{metric}_p50": float(p50), f"{metric}_p90": float(p90)}


# --- 5. promotion -----------------------------------------------------------------------------
def decide(spec: UseCaseSpec, report: dict) -> tuple[str, str]:
    """The business rule: (decision, reason). Decisions: promoted, kept_champion, rejected.

    Order: the metric must be defined, the extra conditions (rows, metric bounds) and the
    absolute threshold must hold, and then the candidate must beat the champion by
    ``min_improvement`` on the same holdout.
    """
    metric = spec.metric
    value = report["metrics"][metric]
    rule = spec.promotion
    if value is None or math.isnan(value):
        return "rejected", f"{metric} is undefined on the holdout"
    if rule.min_rows and report["rows_train"] < rule.min_rows:
        return "rejected", f"below min_rows: {report['rows_train']} training rows < {rule.min_rows}"
    if rule.min_holdout_rows and report["rows_holdout"] < rule.min_holdout_rows:
        return "rejected", f"below min_holdout_rows: {report['rows_holdout']} holdout rows < {rule.min_holdout_rows}"
    for name, bound in rule.bounds.items():
        v = report["metrics"].get(name)
        if v is None or math.isnan(v):
            return "rejected", f"bound on {name}: {name} is undefined on the holdout"
        if bound.min is not None and v < bound.min:
            return "rejected", f"bound on {name}: {v:.4g} < min {bound.min}"
        if bound.max is not None and v > bound.max:
            return "rejected", f"bound on {name}: {v:.4g} > max {bound.max}"
    if rule.threshold is not None:
        passes = value <= rule.threshold if spec.lower_is_better else value >= rule.threshold
        if not passes:
            op = "<=" if spec.lower_is_better else ">="
            return "rejected", f"below threshold: {metric} {value:.4g} does not satisfy {op} {rule.threshold}"
    champ = report.get("champion_metrics")
    if champ is None:
        if report.get("champion_version") is not None:
            return "promoted", "champion could not be compared on this holdout; candidate passes the threshold"
        return "promoted", "first model for this key"
    champ_value = champ[metric]
    if champ_value is None or math.isnan(champ_value):
        return "promoted", f"champion v{report['champion_version']} has no {metric} on this holdout"
    margin = abs(champ_value) * rule.min_improvement
    target = champ_value - margin if spec.lower_is_better else champ_value + margin
    if is_better(value, target, metric):
        return "promoted", f"beats champion v{report['champion_version']}: {metric} {value:.4g} vs {champ_value:.4g}"
    return "kept_champion", (
        f"champion v{report['champion_version']} stays: {metric} {value:.4g} vs {champ_value:.4g}"
        + (f" (needs {rule.min_improvement:.0%} improvement)" if rule.min_improvement else "")
    )


def promote(run: StageRun, keys: Sequence[str]) -> StageReport:
    """Apply the rule per key; copy passing candidates into the production registry.

    The production registry is read once (two queries); the passing models'
    artifacts are copied under the production artifact root, so production never points into
    the candidate store; registrations go out in one batch (parallel on a server store).
    """
    spec, lake = run.spec, run.lake
    prod = run.production_writer()
    snap = prod.snapshot(spec.name)
    outcomes, to_register = [], []
    for key in keys:
        try:
            report = require_upstream(lake, spec.name, "promoted_model", key)
            model_state = read_state(lake, spec.name, "model", key)["info"]
            champ = snap.current.get(key)
            rolled_back = snap.rolled_back_sources(key).get(model_state["source"])
            if champ and champ.tags.get("source_candidate_run") == model_state["source"]:
                decision, reason = "kept_champion", "this candidate is already in production"
            elif rolled_back is not None:
                decision, reason = (
                    "rejected",
                    (
                        f"this candidate was rolled back from production v{rolled_back.version} "
                        f"({rolled_back.tags.get('rolled_back_by', '?')}); it is not promoted again automatically"
                    ),
                )
            else:
                decision, reason = decide(spec, report)
            info = {
                "decision": decision,
                "reason": reason,
                "metric": spec.metric,
                "candidate_version": report["candidate_version"],
                "candidate_value": report["metrics"][spec.metric],
                "champion_version": report.get("champion_version"),
                "champion_value": (report.get("champion_metrics") or {}).get(spec.metric),
                "decided_at": dt.datetime.now(dt.UTC).isoformat(),
                "decided_by": f"dagster run {run.run_id}",
                "production_version": champ.version if champ else None,
            }
            outcome = KeyOutcome(key, "ok", info=info)
            if decision == "promoted":
                sha = model_state["artifact_sha256"]
                target = production_artifact_path(run.settings, spec.name, key, report["candidate_version"], sha)
                copy_model_dir(model_state["source"], target)
                tags = {
                    "use_case": spec.name,
                    "key": key,
                    "key_label": key_label(spec.keys, key)[:5000],
                    "source_candidate_version": str(report["candidate_version"]),
                    "source_candidate_run": model_state["source"],
                    "source_candidate_registry": run.settings.candidate_registry_uri.rsplit("@", 1)[-1][:500],
                    "data_fingerprint": model_state["data_fingerprint"],
                    HASH_TAG: sha,
                    "estimator": model_state["estimator"],
                    "features": ",".join(model_state["features"]),
                    "metric": spec.metric,
                    **{f"metric.{k}": repr(v) for k, v in report["metrics"].items()},
                    "rows_train": str(report["rows_train"]),
                    "rows_holdout": str(report["rows_holdout"]),
                    "promoted_at": info["decided_at"],
                    "promoted_by": info["decided_by"],
                    "promotion_reason": reason[:5000],
                }
                to_register.append((outcome, (key, target, tags)))
            outcomes.append(outcome)
        except SkipKey as exc:
            outcomes.append(KeyOutcome(key, "skipped", str(exc)))
        except Exception as exc:
            outcomes.append(KeyOutcome(key, "failed", f"{type(exc).__name__}: {exc}"))
        if run.progress:
            run.progress(1)
    if to_register:
        versions = prod.register_many(
            spec.name, [item for _, item in to_register], None, after=lambda key, v: prod.set_alias(spec.name, key, v)
        )
        for outcome, (key, _, _) in to_register:
            result = versions[key]
            if isinstance(result, Exception):
                outcome.status, outcome.reason = "failed", f"promotion failed: {type(result).__name__}: {result}"
            else:
                outcome.info["production_version"] = result
    decisions = {}
    for o in outcomes:
        d = o.info.get("decision", o.status) if o.ok else o.status
        decisions[d] = decisions.get(d, 0) + 1
    return _finish(run, "promoted_model", outcomes, {"decisions": decisions})


def production_artifact_path(settings: PlatformSettings, use_case: str, key: str, version: int, sha: str) -> str:
    """Where a promoted model's files live: under the production artifact root, one folder per
    (candidate version, content hash), so promoting the same model twice reuses the folder."""
    return f"{settings.production_artifact_root.rstrip('/')}/{use_case}/{key}/candidate-v{version}-{sha[:12]}"


# --- 6. batch predictions ---------------------------------------------------------------------
def _score_one(key: str, spec: UseCaseSpec, lake: Lake, production: dict[str, dict], trusted: list) -> dict:
    promo = read_state(lake, spec.name, "promoted_model", key)
    prod = production.get(key)
    if prod is None:
        why = promo["info"].get("reason") if promo and promo["status"] == "ok" else (promo or {}).get("reason")
        raise SkipKey(f"no production model for this key ({why or 'never promoted'})")
    model = load_model_from_source(prod["source"], prod["artifact_sha256"], trusted)
    features = prod["features"]
    segments = []  # (feature rows, kind)
    if spec.task == "forecast":
        t = spec.time_column
        bronze = lake.read_parquet(lake.key_path("bronze", spec.name, key, ".parquet"))
        scoring_path = lake.key_path("bronze_scoring", spec.name, key, ".parquet")
        exog = lake.read_parquet(scoring_path) if scoring_path.exists() else None
        origin = bronze.filter(pl.col(spec.target).is_not_null())[t].min()  # as in training
        holdout = _todays_holdout(spec, lake, key)
        if holdout is not None and all(c in holdout.columns for c in features):
            # the production model on today's holdout: forecast accuracy for BI, with actuals
            segments.append((holdout, "holdout"))
        segments.append((F.future_frame(spec, bronze, exog, origin=origin), "forecast"))
    else:
        scoring_path = lake.key_path("bronze_scoring", spec.name, key, ".parquet")
        if spec.scoring_source and scoring_path.exists():
            segments.append((F.make_features(spec, lake.read_parquet(scoring_path)), "scoring"))
        else:
            holdout = _todays_holdout(spec, lake, key)
            if holdout is None:
                ts_state = read_state(lake, spec.name, "training_set", key)
                why = f"{ts_state['status']}: {ts_state['reason']}" if ts_state else "has not run"
                raise SkipKey(f"nothing to score: no scoring_source rows and training_set {why}")
            segments.append((holdout, "holdout"))
    out = pl.concat([_prediction_rows(spec, model, features, rows, kind, prod) for rows, kind in segments])
    out = out.with_columns(pl.int_range(0, pl.len(), dtype=pl.Int32).alias("row_index")).select(
        "row_index", pl.exclude("row_index")
    )
    lake.write_parquet(lake.key_path("predictions", spec.name, key, ".parquet"), out)
    kinds = {kind: rows.height for rows, kind in segments}
    return {
        "rows": out.height,
        "kind": ", ".join(kinds),  # e.g. "holdout, forecast"
        **{f"rows_{kind}": n for kind, n in kinds.items()},
        "model_version": prod["version"],
    }


def _todays_holdout(spec: UseCaseSpec, lake: Lake, key: str) -> pl.DataFrame | None:
    """The key's holdout from today's training set; None when training_set is not ok (never a
    holdout left over from an earlier run)."""
    state = read_state(lake, spec.name, "training_set", key)
    if not state or state["status"] != "ok":
        return None
    return F.split(lake.read_parquet(lake.key_path("training", spec.name, key, ".parquet")))[F.HOLDOUT]


def _prediction_rows(spec: UseCaseSpec, model, features: list[str], rows: pl.DataFrame, kind: str, prod: dict):
    t = spec.time_column
    x = F.to_matrix(rows, features)
    pred = predict(spec.task, model, x)
    period = rows[t] if t else pl.Series([None] * rows.height)
    kinds = pl.Series([kind] * rows.height, dtype=pl.Utf8)
    out = pl.DataFrame({"period": period.cast(pl.Datetime("us")), "kind": kinds})
    if spec.task in ("forecast", "regression"):
        prediction, label = pl.Series(pred, dtype=pl.Float64), pl.Series([None] * rows.height, dtype=pl.Utf8)
    elif spec.task == "anomaly":
        prediction, label = pl.Series(anomaly_score(model, x), dtype=pl.Float64), pl.Series(pred.astype(str))
    else:
        prediction, label = pl.Series([None] * rows.height, dtype=pl.Float64), pl.Series(pred.astype(str))
    has_actual = kind != "forecast" and spec.target and spec.target in rows.columns
    actual = rows[spec.target].cast(pl.Float64, strict=False) if has_actual else pl.Series([None] * rows.height)
    return out.with_columns(
        prediction.alias("prediction"),
        label.cast(pl.Utf8).alias("predicted_label"),
        actual.cast(pl.Float64).alias("actual"),
        pl.lit(prod["name"]).alias("model_name"),
        pl.lit(prod["version"], dtype=pl.Int32).alias("model_version"),
    )


def score(run: StageRun, keys: Sequence[str]) -> StageReport:
    spec = run.spec
    production = production_models(run, keys)
    outcomes = map_keys(
        _score_one, keys, (spec, run.lake, production, run.trusted), workers=run.workers, progress=run.progress
    )
    return _finish(run, "predictions", outcomes)


# --- 7. published tables ----------------------------------------------------------------------
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
    q = _quantiles(spec.metric, values)
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
    return _finish(run, "published", outcomes, {"keys_failed": n_failed, **q})


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


def run_stage(stage: str, run: StageRun, keys: Sequence[str]) -> StageReport:
    """Run one stage with the credentials that stage may hold (settings.for_stage)."""
    return STAGE_FUNCTIONS[stage](replace(run, settings=run.settings.for_stage(stage)), keys)


STAGE_FUNCTIONS: dict[str, Callable[[StageRun, Sequence[str]], StageReport]] = {
    "raw": ingest,
    "training_set": build_training_sets,
    "model": train,
    "evaluation": evaluate_models,
    "promoted_model": promote,
    "predictions": score,
    "published": publish,
}
