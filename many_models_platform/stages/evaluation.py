"""Stage 4, ``evaluation``: the candidate on its holdout, against its naive baselines, and
against the production champion on the holdout rows neither was fitted on."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence

from ..core import features as F
from ..core.baselines import baselines, best_baseline, comparable_rows
from ..core.engine import ByKey, KeyOutcome, SkipKey, map_keys
from ..core.keys import key_label
from ..core.metrics import higher_is_worse, skill
from ..core.modeling import evaluate, expected_flag_rate, stability, training_scale
from ..core.spec import UseCaseSpec
from ..storage.lake import Lake
from ..storage.registry import (
    EVAL_HASH_TAG,
    EVAL_MODEL_FILE,
    MODEL_FILE,
    ModelIntegrityError,
    load_model_from_source,
)
from .base import (
    UPSTREAM,
    StageReport,
    StageRun,
    candidate_models,
    crash_point,
    finish,
    production_models,
    quantiles,
    registered_candidate,
    require_state,
)


def _pinned_candidate(key: str, spec: UseCaseSpec, lake: Lake, candidates: dict, champions: dict) -> tuple:
    """(the model record's info, the pins of this evaluation): the candidate as the candidate
    registry records it, fitted on today's training set. Skips a candidate that is not today's
    (run model first) and refuses one whose lake record disagrees with the registry."""
    model = require_state(lake, spec.name, UPSTREAM["evaluation"], key)
    training = require_state(lake, spec.name, "training_set", key)
    data = str(training.data_fingerprint)
    if model.data_fingerprint != data:
        raise SkipKey(
            f"candidate v{model.candidate_version} was fitted on other data (data_fingerprint "
            f"{str(model.data_fingerprint)[:16]}) than today's training set ({data[:16]}): run model first"
        )
    registered = registered_candidate(model, candidates.get(key))
    champ = champions.get(key)
    crash_point("evaluation")
    return model.info, {
        "evaluation_id": uuid.uuid4().hex,
        "candidate_version": registered["version"],
        "candidate_source": registered["source"],
        "artifact_sha256": registered["artifact_sha256"],  # from the registry, never the lake
        # with refit, the evaluated model_eval.skops (None without): also from the registry
        EVAL_HASH_TAG: registered[EVAL_HASH_TAG],
        "data_fingerprint": data,
        "training_set_run_id": training.dagster_run_id,
        "model_run_id": model.dagster_run_id,
        "champion_artifact_sha256": champ["artifact_sha256"] if champ else None,
    }


def _evaluate_one(
    key: str, spec: UseCaseSpec, lake: Lake, champions: dict[str, dict], trusted, candidates: dict[str, dict]
) -> dict:
    cand, pins = _pinned_candidate(key, spec, lake, candidates, champions)
    ts = lake.read_parquet(lake.key_path("training", spec.name, key, ".parquet"))
    parts = F.split(ts)
    train = parts[F.TRAIN]
    holdout = F.add_calendar(parts[F.HOLDOUT], spec.time_column, cand.features)
    t = spec.time_column
    period = F.key_period(spec, ts[t]) if t else None
    scale = training_scale(spec, train, period.frequency if period else None)
    # the model fitted without the holdout: with refit, production's model.skops has seen it
    model = _load(pins["candidate_source"], pins, trusted)
    undefined: dict[str, str] = {}
    classes = F.key_classes(spec, ts)
    metrics = evaluate(spec, model, cand.features, holdout, scale, undefined, classes)
    estimator = model.steps[-1][1] if hasattr(model, "steps") else model
    scored = baselines(spec, train, holdout, period, scale, expected_flag_rate(estimator))
    baseline_name, baseline_metrics = best_baseline(spec.metric, scored)
    report = {
        "candidate_version": pins["candidate_version"],
        # the model stage reused this candidate (unchanged data and config): nothing new to promote
        "candidate_reused": bool(cand.reused),
        "estimator": cand.estimator,
        "metric": spec.metric,
        "metrics": metrics,
        "undefined": undefined,
        "rows_holdout": holdout.height,
        "rows_train": cand.rows_train,
        "baseline_name": baseline_name,
        "baseline_metrics": baseline_metrics,
        "baselines": scored,
        "skill": skill(metrics.get(spec.metric), baseline_metrics.get(spec.metric), spec.metric),
        "champion_version": None,
        "champion_metrics": None,
        "comparison": None,
        "comparison_rows": 0,
    }
    champ = champions.get(key)
    if champ:
        report["champion_version"] = champ["version"]
        report["champion_source_version"] = champ.get("source_version")
        _compare(spec, report, model, cand.features, champ, holdout, scale, trusted, classes)
    return report | pins


def _load(source: str, lineage: dict, trusted):
    """The model a report describes: ``model_eval.skops`` when the version was refitted, else
    ``model.skops`` (the same model then)."""
    if lineage.get("eval_artifact_sha256"):
        return load_model_from_source(source, lineage["eval_artifact_sha256"], trusted, file=EVAL_MODEL_FILE)
    return load_model_from_source(source, lineage.get("artifact_sha256"), trusted, file=MODEL_FILE)


def _compare(spec: UseCaseSpec, report: dict, model, features, champ: dict, holdout, scale, trusted, classes) -> None:
    """The champion against the candidate on the holdout rows neither was fitted on. The
    champion's compared model is its evaluated twin (fitted without its own holdout) when it
    was refitted, else its production model; a champion fitted before lineage was recorded,
    or one whose cutoff covers the whole holdout, is ``not comparable``, said in the report.
    A champion that cannot read today's rows is noted (``champion_note``), not fatal."""
    lineage = {
        "version": champ["version"],
        "cutoff": champ.get("train_end") if champ.get("eval_artifact_sha256") else champ.get("fitted_through"),
        "split": champ.get("split"),
    }
    rows, comparison = comparable_rows(spec, holdout, lineage, F.split_descriptor(spec))
    report["comparison"] = comparison
    if rows is None:
        return
    champ_features = champ["features"]
    # a champion fitted with an older calendar set (cal_week) gets its columns back
    champ_rows = F.add_calendar(rows, spec.time_column, champ_features)
    if not all(c in champ_rows.columns for c in champ_features):
        report["champion_note"] = "champion features differ from this training set; not compared"
        return
    try:
        champ_model = _load(champ["source"], champ, trusted)
    except ModelIntegrityError as exc:  # a tampered or pre-skops champion: let a candidate replace it
        report["champion_note"] = f"champion cannot be loaded, not compared: {exc}"
        return
    try:
        champ_metrics = evaluate(spec, champ_model, champ_features, champ_rows, scale, classes=classes)
        ours = evaluate(spec, model, features, rows, scale, classes=classes)
        if spec.task == "anomaly":
            champ_metrics.pop("score_stability", None)  # a property of the pair, reported on the candidate
            pair = stability(model, features, champ_model, champ_features, rows, champ_rows)
            report["metrics"]["score_stability"] = pair
            ours["score_stability"] = pair
    except Exception as exc:
        report["champion_note"] = f"champion cannot score this holdout, not compared: {type(exc).__name__}: {exc}"
        return
    report["champion_metrics"] = champ_metrics
    report["comparison_metrics"] = ours
    report["comparison_rows"] = rows.height


def evaluate_models(run: StageRun, keys: Sequence[str]) -> StageReport:
    spec = run.spec
    champions = production_models(run, keys)
    candidates = candidate_models(run, keys)
    outcomes = map_keys(
        _evaluate_one,
        keys,
        (spec, run.lake, ByKey(champions), run.trusted, ByKey(candidates)),
        workers=run.workers,
        progress=run.progress,
    )
    values = [o.info["metrics"][spec.metric] for o in outcomes if o.ok]
    summary = {"metric": spec.metric, **quantiles(spec.metric, values)}
    skills = [o.info["skill"] for o in outcomes if o.ok and o.info.get("skill") is not None]
    if skills:
        summary["skill_p50"] = quantiles("skill", skills)["skill_p50"]
        summary["keys_beating_baseline"] = sum(1 for s in skills if s > 0)
    summary["worst"] = _worst(spec, outcomes)
    return finish(run, "evaluation", outcomes, summary)


def _worst(spec: UseCaseSpec, outcomes: list[KeyOutcome], n: int = 10) -> list[dict]:
    ok = [o for o in outcomes if o.ok and not math.isnan(o.info["metrics"][spec.metric])]
    ok.sort(key=lambda o: o.info["metrics"][spec.metric], reverse=higher_is_worse(spec.metric))
    return [{"key": key_label(spec.keys, o.key), "value": o.info["metrics"][spec.metric]} for o in ok[:n]]
