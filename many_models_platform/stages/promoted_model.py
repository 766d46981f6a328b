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
    copy_model_dir,
)
from ..storage.settings import PlatformSettings
from .base import (
    StageReport,
    StageRun,
    finish,
    read_state,
    require_upstream,
)
from .model import lineage_tags


def _undefined(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _why(report: dict, metric: str) -> str:
    """``: <reason>`` when the report says why a metric is undefined (evaluation's ``undefined``)."""
    reason = (report.get("undefined") or {}).get(metric)
    return f": {reason}" if reason else ""


def decide(spec: UseCaseSpec, report: dict) -> tuple[str, str]:
    """The business rule: (decision, reason). Decisions: promoted, kept_champion, rejected.

    Order: the metric must be defined (an undefined metric cannot pass the rule: rejected,
    with why it is undefined), the extra conditions (rows, metric bounds) and the absolute
    threshold must hold, the candidate must not be worse than its naive baseline
    (``beat_baseline``), and then it must beat the champion by ``min_improvement`` on the
    holdout rows neither was fitted on. When there are no such rows (``comparison`` starts
    with ``not comparable``) the candidate is promoted on the rule alone, and the reason says
    so: keeping the champion instead would freeze keys whose champion can never be compared
    (one registered before lineage was recorded, or one refitted on the very rows of today's
    holdout after a configuration change).

    Unlabelled metrics (``flag_rate``, ``score_stability``) describe a detector but do not rank
    it: bounds and the threshold apply (``flag_rate`` thresholds are maximums), there is no
    baseline and no champion comparison, and a candidate that passes is promoted.
    ``score_stability`` needs a champion scored on the same rows; without one its threshold and
    bound are skipped.
    """
    metric = spec.metric
    value = report["metrics"][metric]
    rule = spec.promotion
    compared = report.get("champion_metrics") is not None
    skipped: list[str] = []  # conditions that could not apply, said in the reason
    if _undefined(value) and not (metric == "score_stability" and not compared):
        return "rejected", f"{metric} is undefined on the holdout{_why(report, metric)}"
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
            return "rejected", f"bound on {name}: {name} is undefined on the holdout{_why(report, name)}"
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
    baseline = (report.get("baseline_metrics") or {}).get(metric)
    if rule.beat_baseline and metric not in UNLABELLED_METRICS and report.get("baseline_name"):
        name = report["baseline_name"]
        if _undefined(baseline):
            skipped.append(f"baseline check skipped: {metric} of {name} is undefined on the holdout")
        elif is_better(baseline, value, metric):  # a tie passes: a seasonal-naive candidate *is* the baseline
            return "rejected", f"does not beat the baseline: {metric} {value:.4g} vs {name} {baseline:.4g}"
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
    comparison = report.get("comparison") or ""
    if champ is None:
        if report.get("champion_version") is None:
            return "promoted", "first model for this key" + note
        if comparison.startswith("not comparable"):
            return "promoted", f"{comparison}; promoted on the rule alone{note}"
        return "promoted", "champion could not be compared on this holdout; candidate passes the threshold" + note
    champ_value = champ[metric]
    if _undefined(champ_value):
        return "promoted", f"champion v{report['champion_version']} has no {metric} on the compared rows{note}"
    # the candidate on the same rows as the champion (all of the holdout, or the rows after its cutoff)
    ours = (report.get("comparison_metrics") or report["metrics"]).get(metric, value)
    if _undefined(ours):
        return "promoted", f"{metric} is undefined on the rows compared with the champion; candidate passes the rule"
    margin = abs(champ_value) * rule.min_improvement
    target = champ_value - margin if spec.lower_is_better else champ_value + margin
    versus = f"{metric} {ours:.4g} vs {champ_value:.4g}"
    versus += f" on {report['comparison_rows']} rows" if report.get("comparison_rows") else ""
    if is_better(ours, target, metric):
        return "promoted", f"beats champion v{report['champion_version']}: {versus}"
    return "kept_champion", (
        f"champion v{report['champion_version']} stays: {versus}"
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
                    **lineage_tags(model_state),  # which rows it has seen, for later comparisons
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
    return finish(run, "promoted_model", outcomes, {"decisions": decisions})


def production_artifact_path(settings: PlatformSettings, use_case: str, key: str, version: int, sha: str) -> str:
    """Where a promoted model's files live: under the production artifact root, one folder per
    (candidate version, content hash), so promoting the same model twice reuses the folder."""
    return f"{settings.production_artifact_root.rstrip('/')}/{use_case}/{key}/candidate-v{version}-{sha[:12]}"
