"""Stage 5, ``promoted_model``: the promotion rule, and copies into the production registry."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from ..core.engine import KeyOutcome, SkipKey
from ..core.keys import key_label
from ..core.metrics import higher_is_worse, is_better
from ..core.spec import UNLABELLED_METRICS, UseCaseSpec
from ..storage.registry import (
    HASH_TAG,
    ModelIntegrityError,
    ModelRef,
    copy_model_dir,
)
from ..storage.settings import PlatformSettings
from .base import (
    StageReport,
    StageRun,
    candidate_models,
    crash_point,
    finish,
    read_state,
    registered_candidate,
    require_state,
    require_upstream,
    write_state,
)


def _undefined(value: float | None) -> bool:
    return value is None or math.isnan(value)


def decide(spec: UseCaseSpec, report: dict) -> tuple[str, str]:
    """The business rule: (decision, reason). Decisions: promoted, kept_champion, rejected.

    Order: the metric must be defined, the extra conditions (rows, metric bounds) and the
    absolute threshold must hold, and then the candidate must beat the champion by
    ``min_improvement`` on the same holdout.

    Unlabelled metrics (``flag_rate``, ``score_stability``) describe a detector but do not rank
    it: bounds and the threshold apply (``flag_rate`` thresholds are maximums), there is no
    champion comparison, and a candidate that passes is promoted. ``score_stability`` needs a
    champion scored on the same holdout; without one its threshold and bound are skipped.
    """
    metric = spec.metric
    value = report["metrics"][metric]
    rule = spec.promotion
    compared = report.get("champion_metrics") is not None
    skipped: list[str] = []  # conditions that could not apply, said in the reason
    if _undefined(value) and not (metric == "score_stability" and not compared):
        return "rejected", f"{metric} is undefined on the holdout"
    if rule.min_rows and report["rows_train"] < rule.min_rows:
        return "rejected", f"below min_rows: {report['rows_train']} training rows < {rule.min_rows}"
    if rule.min_holdout_rows and report["rows_holdout"] < rule.min_holdout_rows:
        return "rejected", f"below min_holdout_rows: {report['rows_holdout']} holdout rows < {rule.min_holdout_rows}"
    for name, bound in rule.bounds.items():
        v = report["metrics"].get(name)
        if _undefined(v):
            if name == "score_stability" and not compared:
                skipped.append("bound on score_stability skipped: no champion scored on this holdout")
                continue
            return "rejected", f"bound on {name}: {name} is undefined on the holdout"
        if bound.min is not None and v < bound.min:
            return "rejected", f"bound on {name}: {v:.4g} < min {bound.min}"
        if bound.max is not None and v > bound.max:
            return "rejected", f"bound on {name}: {v:.4g} > max {bound.max}"
    at_most = higher_is_worse(metric)
    if rule.threshold is not None:
        if _undefined(value):
            skipped.append(f"threshold on {metric} skipped: no champion scored on this holdout")
        elif not (value <= rule.threshold if at_most else value >= rule.threshold):
            op = "<=" if at_most else ">="
            return "rejected", f"below threshold: {metric} {value:.4g} does not satisfy {op} {rule.threshold}"
    note = f" ({'; '.join(skipped)})" if skipped else ""
    champ = report.get("champion_metrics")
    if metric in UNLABELLED_METRICS:
        values = {m: report["metrics"].get(m) for m in sorted(UNLABELLED_METRICS)}
        shown = ", ".join(f"{m} {v:.4g}" for m, v in values.items() if not _undefined(v))
        if report.get("champion_version") is None:
            return "promoted", f"first model for this key{note}"
        return "promoted", (
            f"no labels: champion v{report['champion_version']} not ranked; candidate passes the rule"
            + (f" ({shown})" if shown else "")
            + note
        )
    if champ is None:
        if report.get("champion_version") is not None:
            return "promoted", "champion could not be compared on this holdout; candidate passes the threshold" + note
        return "promoted", "first model for this key" + note
    champ_value = champ[metric]
    if _undefined(champ_value):
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

    Only the candidate that was evaluated is ever promoted (:func:`evaluated_candidate`), with
    the hash the candidate registry recorded for it, verified while its files are copied. The
    production registry is read once (two queries) and the candidate registry once (one); the
    passing models' artifacts are copied under the production artifact root, so production
    never points into the candidate store; registrations go out in one batch (parallel on a
    server store), and each key's record is written right after its alias moves. A rerun after
    a crash between the two finds the version made from this evaluation and records the
    promotion then, once (:func:`_interrupted_promotion`).
    """
    spec, lake = run.spec, run.lake
    prod = run.production_writer()
    snap = prod.snapshot(spec.name)
    candidates = candidate_models(run, keys)
    outcomes, to_register, written = [], [], set()
    for key in keys:
        try:
            report, cand = evaluated_candidate(spec, lake, key, candidates)
            champ = snap.current.get(key)
            done = _interrupted_promotion(snap, key, report, read_state(lake, spec.name, "promoted_model", key))
            rolled_back = snap.rolled_back_sources(key).get(cand["source"])
            decided_at, decided_by = dt.datetime.now(dt.UTC).isoformat(), f"dagster run {run.run_id}"
            if done is not None:
                decision, reason = "promoted", done.tags.get("promotion_reason", "")
                decided_at, decided_by = done.tags.get("promoted_at", decided_at), done.tags.get("promoted_by", "")
                if champ is None or champ.version != done.version:  # cut short before the alias moved
                    prod.set_alias(spec.name, key, done.version)
            elif champ and _same_candidate(champ, cand):
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
                "candidate_version": cand["version"],
                "candidate_value": report["metrics"][spec.metric],
                "champion_version": report.get("champion_version"),
                "champion_value": (report.get("champion_metrics") or {}).get(spec.metric),
                "decided_at": decided_at,
                "decided_by": decided_by,
                "production_version": done.version if done else (champ.version if champ else None),
                # what this decision relied on: the evaluation, and the candidate it evaluated
                "evaluation_id": report["evaluation_id"],
                "artifact_sha256": cand["artifact_sha256"],
                "data_fingerprint": cand["data_fingerprint"],
            }
            if done is not None:
                info["recovered"] = True  # registered by a run that stopped before recording it
            outcome = KeyOutcome(key, "ok", info=info)
            if decision == "promoted" and done is None:
                target = production_artifact_path(
                    run.settings, spec.name, key, cand["version"], cand["artifact_sha256"]
                )
                copy_model_dir(cand["source"], target, cand["artifact_sha256"])  # verified against the registry
                to_register.append((outcome, (key, target, _production_tags(run, key, cand, report, info))))
            else:
                write_state(lake, spec.name, "promoted_model", outcome, run.run_id)
                written.add(key)
            outcomes.append(outcome)
        except SkipKey as exc:
            outcomes.append(KeyOutcome(key, "skipped", str(exc)))
        except Exception as exc:
            outcomes.append(KeyOutcome(key, "failed", f"{type(exc).__name__}: {exc}"))
        if run.progress:
            run.progress(1)
    if to_register:
        pending = {o.key: o for o, _ in to_register}

        def go_live(key: str, version: int) -> None:
            """Alias, then the key's record, right after its version is registered."""
            crash_point("promoted_model.registered")
            prod.set_alias(spec.name, key, version)
            pending[key].info["production_version"] = version
            crash_point("promoted_model")
            write_state(lake, spec.name, "promoted_model", pending[key], run.run_id)

        versions = prod.register_many(spec.name, [item for _, item in to_register], None, after=go_live)
        for outcome, (key, _, _) in to_register:
            result = versions[key]
            if isinstance(result, Exception):
                outcome.status, outcome.reason = "failed", f"promotion failed: {type(result).__name__}: {result}"
            else:
                written.add(key)
    decisions = {}
    for o in outcomes:
        d = o.info.get("decision", o.status) if o.ok else o.status
        decisions[d] = decisions.get(d, 0) + 1
    return finish(run, "promoted_model", outcomes, {"decisions": decisions}, written=written)


def evaluated_candidate(spec: UseCaseSpec, lake, key: str, candidates: dict[str, dict]) -> tuple[dict, dict]:
    """(the evaluation report, the candidate as the registry records it), only when the
    evaluation is of the candidate the model record names, on today's training set, and the
    registry agrees with both. SkipKey says which stage to run first; ModelIntegrityError
    refuses records that disagree with the registry."""
    report = require_upstream(lake, spec.name, "promoted_model", key)
    model = require_state(lake, spec.name, "model", key)["info"]
    data = require_state(lake, spec.name, "training_set", key)["info"]["data_fingerprint"]
    version = model["version"]
    if not report.get("evaluation_id"):
        raise SkipKey(
            "the evaluation record names no evaluation_id (written before evaluations were pinned): "
            "run evaluation first"
        )
    if report["candidate_version"] != version:
        raise SkipKey(
            f"candidate v{version} was not evaluated: the evaluation is of v{report['candidate_version']}; "
            "run evaluation first"
        )
    if not report.get("data_fingerprint") == model.get("data_fingerprint") == data:
        raise SkipKey(
            f"the evaluation of candidate v{version} was on data {str(report.get('data_fingerprint'))[:16]}, the "
            f"candidate was fitted on {str(model.get('data_fingerprint'))[:16]} and today's training set is "
            f"{data[:16]}: run model and evaluation first"
        )
    cand = registered_candidate(model, candidates.get(key))
    if report.get("artifact_sha256") != cand["artifact_sha256"]:
        raise ModelIntegrityError(
            f"the evaluation record's artifact_sha256 is not the registered hash of candidate v{version}: "
            "the lake's record was changed; refusing it"
        )
    return report, cand


def _same_candidate(production: ModelRef, cand: dict) -> bool:
    """A production version copied from this very candidate (same artifact folder and hash)."""
    return (
        production.tags.get("source_candidate_run") == cand["source"]
        and production.tags.get(HASH_TAG) == cand["artifact_sha256"]
    )


def _interrupted_promotion(snap, key: str, report: dict, previous: dict | None) -> ModelRef | None:
    """The production version made from this very evaluation when its promotion was never
    recorded (a crash between the registry write and the key's record), else None.

    A version that was rolled back since is not brought back."""
    evaluation_id = report["evaluation_id"]
    made = [r for r in snap.versions.get(key, []) if r.tags.get("evaluation_id") == evaluation_id]
    if not made or made[-1].tags.get("rolled_back_at"):
        return None
    info = (previous or {}).get("info") or {}
    recorded = (
        (previous or {}).get("status") == "ok"
        and info.get("evaluation_id") == evaluation_id
        and info.get("decision") == "promoted"
    )
    if recorded:
        return None
    newest = max(r.version for r in snap.versions[key])
    current = snap.current.get(key)
    if current is not None and current.version != made[-1].version and made[-1].version != newest:
        return None  # the alias was moved on by hand since; record nothing new
    return made[-1]


def _production_tags(run: StageRun, key: str, cand: dict, report: dict, info: dict) -> dict[str, str]:
    """A production version's tags: the candidate as the registry records it, and the evaluation."""
    spec = run.spec
    return {
        "use_case": spec.name,
        "key": key,
        "key_label": key_label(spec.keys, key)[:5000],
        "source_candidate_version": str(cand["version"]),
        "source_candidate_run": cand["source"],
        "source_candidate_registry": run.settings.candidate_registry_uri.rsplit("@", 1)[-1][:500],
        "data_fingerprint": cand["data_fingerprint"],
        HASH_TAG: cand["artifact_sha256"],
        "estimator": cand["estimator"] or report.get("estimator", ""),
        "features": ",".join(cand["features"]),
        "evaluation_id": report["evaluation_id"],
        "metric": spec.metric,
        **{f"metric.{k}": repr(v) for k, v in report["metrics"].items()},
        "rows_train": str(report["rows_train"]),
        "rows_holdout": str(report["rows_holdout"]),
        "promoted_at": info["decided_at"],
        "promoted_by": info["decided_by"],
        "promotion_reason": info["reason"][:5000],
    }


def production_artifact_path(settings: PlatformSettings, use_case: str, key: str, version: int, sha: str) -> str:
    """Where a promoted model's files live: under the production artifact root, one folder per
    (candidate version, content hash), so promoting the same model twice reuses the folder.
    Both come from the candidate registry's record of the version promoted."""
    return f"{settings.production_artifact_root.rstrip('/')}/{use_case}/{key}/candidate-v{version}-{sha[:12]}"
