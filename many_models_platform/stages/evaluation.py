"""Stage 4, ``evaluation``: the candidate and the production champion on the same holdout."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence

from ..core import features as F
from ..core.engine import KeyOutcome, SkipKey, map_keys
from ..core.keys import key_label
from ..core.metrics import higher_is_worse
from ..core.modeling import evaluate, stability
from ..core.spec import UseCaseSpec
from ..storage.lake import Lake
from ..storage.registry import (
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
    cand, data = model["info"], training["info"]["data_fingerprint"]
    if cand.get("data_fingerprint") != data:
        raise SkipKey(
            f"candidate v{cand['version']} was fitted on other data (data_fingerprint "
            f"{str(cand.get('data_fingerprint'))[:16]}) than today's training set ({data[:16]}): run model first"
        )
    registered = registered_candidate(cand, candidates.get(key))
    champ = champions.get(key)
    crash_point("evaluation")
    return cand, {
        "evaluation_id": uuid.uuid4().hex,
        "candidate_version": registered["version"],
        "candidate_source": registered["source"],
        "artifact_sha256": registered["artifact_sha256"],  # from the registry, never the lake
        "data_fingerprint": data,
        "training_set_run_id": training["dagster_run_id"],
        "model_run_id": model["dagster_run_id"],
        "champion_artifact_sha256": champ["artifact_sha256"] if champ else None,
    }


def _evaluate_one(
    key: str, spec: UseCaseSpec, lake: Lake, champions: dict[str, dict], trusted, candidates: dict[str, dict]
) -> dict:
    cand, pins = _pinned_candidate(key, spec, lake, candidates, champions)
    ts = lake.read_parquet(lake.key_path("training", spec.name, key, ".parquet"))
    holdout = F.add_calendar(F.split(ts)[F.HOLDOUT], spec.time_column, cand["features"])
    model = load_model_from_source(pins["candidate_source"], pins["artifact_sha256"], trusted)
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
        # a champion fitted with an older calendar set (cal_week) gets its columns back
        rows = F.add_calendar(holdout, spec.time_column, features)
        if all(c in rows.columns for c in features):
            try:
                champ_model = load_model_from_source(champ["source"], champ["artifact_sha256"], trusted)
            except ModelIntegrityError as exc:  # a tampered or pre-skops champion: let a candidate replace it
                report["champion_note"] = f"champion cannot be loaded, not compared: {exc}"
            else:
                _score_champion(spec, report, model, cand["features"], champ_model, features, holdout, rows)
        else:
            report["champion_note"] = "champion features differ from this training set; not compared"
    return report | pins


def _score_champion(spec: UseCaseSpec, report: dict, model, features, champ_model, champ_features, holdout, rows):
    """The champion on the candidate's holdout; for detectors also how alike both rank the rows.
    A champion that cannot read today's rows (say a column became categorical) is noted, not fatal."""
    try:
        champ_metrics = evaluate(spec, champ_model, champ_features, rows)
        if spec.task == "anomaly":
            champ_metrics.pop("score_stability", None)  # a property of the pair, reported on the candidate
            pair = stability(model, features, champ_model, champ_features, holdout, rows)
            report["metrics"]["score_stability"] = pair
    except Exception as exc:
        report["champion_note"] = f"champion cannot score this holdout, not compared: {type(exc).__name__}: {exc}"
        return
    report["champion_metrics"] = champ_metrics


def evaluate_models(run: StageRun, keys: Sequence[str]) -> StageReport:
    spec = run.spec
    champions = production_models(run, keys)
    candidates = candidate_models(run, keys)
    outcomes = map_keys(
        _evaluate_one,
        keys,
        (spec, run.lake, champions, run.trusted, candidates),
        workers=run.workers,
        progress=run.progress,
    )
    values = [o.info["metrics"][spec.metric] for o in outcomes if o.ok]
    summary = {"metric": spec.metric, **quantiles(spec.metric, values)}
    summary["worst"] = _worst(spec, outcomes)
    return finish(run, "evaluation", outcomes, summary)


def _worst(spec: UseCaseSpec, outcomes: list[KeyOutcome], n: int = 10) -> list[dict]:
    ok = [o for o in outcomes if o.ok and not math.isnan(o.info["metrics"][spec.metric])]
    ok.sort(key=lambda o: o.info["metrics"][spec.metric], reverse=higher_is_worse(spec.metric))
    return [{"key": key_label(spec.keys, o.key), "value": o.info["metrics"][spec.metric]} for o in ok[:n]]
