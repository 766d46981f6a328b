"""Stage 4, ``evaluation``: the candidate and the production champion on the same holdout."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..core import features as F
from ..core.engine import KeyOutcome, map_keys
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
    StageReport,
    StageRun,
    finish,
    production_models,
    quantiles,
    require_upstream,
)


def _evaluate_one(key: str, spec: UseCaseSpec, lake: Lake, champions: dict[str, dict], trusted: list) -> dict:
    cand = require_upstream(lake, spec.name, "evaluation", key)
    ts = lake.read_parquet(lake.key_path("training", spec.name, key, ".parquet"))
    holdout = F.add_calendar(F.split(ts)[F.HOLDOUT], spec.time_column, cand["features"])
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
    return report


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
    outcomes = map_keys(
        _evaluate_one, keys, (spec, run.lake, champions, run.trusted), workers=run.workers, progress=run.progress
    )
    values = [o.info["metrics"][spec.metric] for o in outcomes if o.ok]
    summary = {"metric": spec.metric, **quantiles(spec.metric, values)}
    summary["worst"] = _worst(spec, outcomes)
    return finish(run, "evaluation", outcomes, summary)


def _worst(spec: UseCaseSpec, outcomes: list[KeyOutcome], n: int = 10) -> list[dict]:
    ok = [o for o in outcomes if o.ok and not math.isnan(o.info["metrics"][spec.metric])]
    ok.sort(key=lambda o: o.info["metrics"][spec.metric], reverse=higher_is_worse(spec.metric))
    return [{"key": key_label(spec.keys, o.key), "value": o.info["metrics"][spec.metric]} for o in ok[:n]]
