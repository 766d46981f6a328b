"""Stage 5, ``promoted_model``: the promotion rule, and copies into the production registry."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import replace

from ..core.engine import ByKey, KeyOutcome, SkipKey, map_keys
from ..core.keys import key_label, key_name
from ..core.metrics import higher_is_worse, is_better
from ..core.spec import UNLABELLED_METRICS, UseCaseSpec
from ..storage.lake import Lake
from ..storage.registry import (
    DECISION_REASON_TAG,
    DECISION_TAG,
    EVAL_HASH_TAG,
    HASH_TAG,
    PRODUCTION_ALIAS,
    ModelIntegrityError,
    ModelRef,
    copy_model_dir,
)
from ..storage.settings import PlatformSettings
from .base import (
    StageReport,
    StageRun,
    candidate_models,
    checked_state,
    crash_point,
    finish,
    read_states,
    readable,
    registered_candidate,
    write_state,
)
from .model import lineage_tags
from .records import StageRecord


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

    Only the candidate that was evaluated is ever promoted (:func:`evaluated_candidate`), with
    the hash the candidate registry recorded for it, verified while its files are copied. The
    production registry is read once (two queries) and the candidate registry once (one). Each
    key's records, decision and (when it passes) the copy of its model under the production
    artifact root, so production never points into the candidate store, run in the worker pool
    (:func:`_decide_key`); registrations go out from this process in batches of
    ``REGISTER_BATCH`` while the pool decides the next keys, and each key's record is written
    right after its alias moves.

    Promotion is idempotent: before the registry is written, each promoted key gets an intent
    record (the decision as it will be recorded); it is removed once the key's record is
    written. A run that finds an intent whose production version exists completes that
    promotion (alias, record, as ``promoted`` with its original reason) instead of deciding
    again, so a crash between the registry write and the record never loses the promotion and
    never registers it twice (:func:`_complete_interrupted`). Keys with an intent are handled
    in this process, before the others.
    """
    spec, lake = run.spec, run.lake
    prod = run.production_writer()
    snap = prod.snapshot(spec.name)
    candidates = candidate_models(run, keys)
    intents = pending_intents(lake, spec.name)
    outcomes: dict[str, KeyOutcome] = {}
    to_register: list[tuple[KeyOutcome, tuple[str, str, dict]]] = []
    written: set[str] = set()

    def decided(outcome: KeyOutcome) -> None:
        registration = outcome.info.pop(_REGISTRATION, None)
        outcomes[outcome.key] = outcome
        if registration is not None:
            to_register.append((outcome, tuple(registration)))
        elif outcome.ok:
            written.add(outcome.key)  # recorded already (or its record stands)

    def register() -> None:
        """The decided promotions, registered and aliased in one batch; each key's record
        once its alias has moved (the intent stays for a key whose registration failed)."""
        batch = to_register[:]
        to_register.clear()
        if batch:
            _register(run, prod, batch, written)

    def chunk_done(chunk: list[KeyOutcome]) -> None:
        for outcome in chunk:
            decided(outcome)
        if len(to_register) >= REGISTER_BATCH:
            register()

    # keys an interrupted run left an intent for, in this process (they may move an alias)
    resumed = [key for key in keys if key in intents]
    args = (run, prod, snap, candidates)
    map_keys(_decide_resumed, resumed, args, workers=1, progress=run.progress, on_chunk=chunk_done)
    rest = [key for key in keys if key not in intents]
    rolled = {key: found for key in rest if (found := snap.rolled_back_sources(key))}
    worker_run = replace(run, progress=None)
    map_keys(
        _decide_key,
        rest,
        (worker_run, ByKey(snap.current), ByKey(rolled), ByKey(candidates)),
        workers=run.workers,
        progress=run.progress,
        on_chunk=chunk_done,
    )
    register()
    ordered = [outcomes[key] for key in keys]
    _tag_decisions(run, candidates, ordered)
    decisions = {}
    for o in ordered:
        d = o.info.get("decision", o.status) if o.ok else o.status
        decisions[d] = decisions.get(d, 0) + 1
    return finish(run, "promoted_model", ordered, {"decisions": decisions}, written=written)


# The records a decision reads, per key.
RECORD_STAGES = ("training_set", "model", "evaluation", "promoted_model")
# Promotions registered per batch while the pool decides the next keys: large enough that the
# registry's per-batch reads (the use case's names) stay small, small enough to overlap.
REGISTER_BATCH = 250
_REGISTRATION = "_registration"  # the (key, target, tags) a worker hands back with a promotion


def _register(run: StageRun, prod, batch: list[tuple[KeyOutcome, tuple]], written: set[str]) -> None:
    """Register a batch of promotions (intents already written) and move their alias; a key's
    record goes out once its alias has moved."""
    spec, lake = run.spec, run.lake
    pending = {o.key: o for o, _ in batch}

    def registered(made: list[tuple[str, int]]) -> None:
        """Versions committed, their alias not yet moved (a kill here is completed from the intents)."""
        for _ in made:
            crash_point("promoted_model.registered")

    def go_live(key: str, version: int) -> None:
        """The key's record, once its version is registered and its alias moved."""
        pending[key].info["production_version"] = version
        crash_point("promoted_model")
        write_state(lake, spec.name, "promoted_model", pending[key], run.run_id)
        lake.delete(intent_path(lake, spec.name, key))

    versions = prod.register_many(
        spec.name, [item for _, item in batch], None, after=go_live, alias=PRODUCTION_ALIAS, registered=registered
    )
    for outcome, (key, _, _) in batch:
        result = versions[key]
        if isinstance(result, Exception):
            outcome.status, outcome.reason = "failed", f"promotion failed: {type(result).__name__}: {result}"
            # the intent stays: the next run completes the promotion if the version was registered
        else:
            written.add(key)


def _tag_decisions(run: StageRun, candidates: dict[str, dict], outcomes: list[KeyOutcome]) -> None:
    """Every candidate version promotion decided about, rejected ones included, carries the decision
    and its reason as registry tags a person reads (``decision``, ``decision_reason``): written
    in one batch after the decisions are recorded, and only where they changed (a rerun writes
    nothing). A tag that cannot be written is logged on the key's outcome, never fatal: the
    record and the production registry are what the platform trusts."""
    items = []
    for o in outcomes:
        cand = candidates.get(o.key)
        decision, reason = o.info.get("decision"), str(o.info.get("reason") or "")[:5000]
        if not o.ok or not decision or cand is None or cand["version"] != o.info.get("candidate_version"):
            continue
        if cand.get(DECISION_TAG) == "promoted" and decision == "kept_champion":
            continue  # "already in production": the version's promotion stays what it says
        if (cand.get(DECISION_TAG), cand.get(DECISION_REASON_TAG)) != (decision, reason):
            items.append((o.key, cand["version"], {DECISION_TAG: decision, DECISION_REASON_TAG: reason}))
    if not items:
        return
    failed = run.candidates().tag_many(run.spec.name, items)
    for o in outcomes:
        if o.key in failed:
            o.info["decision_tag_error"] = f"{type(failed[o.key]).__name__}: {failed[o.key]}"[:500]


def _decide_key(key: str, run: StageRun, champions: dict, rolled: dict, candidates: dict) -> dict:
    """One key's decision, in a worker: its records read, the rule applied, and for a promotion
    the model copied (verified) and the intent written; the info of its outcome, with the
    registration for the main process under ``_REGISTRATION``. Outcomes that need no
    registration are recorded here."""
    records = read_states(run.lake, run.spec.name, RECORD_STAGES, [key])[key]
    return _decide(run, key, records, champions.get(key), rolled.get(key, {}), candidates.get(key)).info


def _decide_resumed(key: str, run: StageRun, prod, snap, candidates: dict) -> dict:
    """A key an earlier run left an intent for: its promotion completed when its version was
    registered, else decided again (in this process, with the same rule); the info of its outcome."""
    spec, lake = run.spec, run.lake
    records = read_states(lake, spec.name, RECORD_STAGES, [key])[key]
    previous = readable(records["promoted_model"])
    completed = _complete_interrupted(run, prod, snap, key, previous)
    if completed is not None:
        info, decided_in = completed
        outcome = KeyOutcome(key, "ok", info=info)
        # recorded under the run that decided it, as if that run had not been cut short
        write_state(lake, spec.name, "promoted_model", outcome, decided_in)
        lake.delete(intent_path(lake, spec.name, key))
        return info
    return _decide(run, key, records, snap.current.get(key), snap.rolled_back_sources(key), candidates.get(key)).info


def _decide(
    run: StageRun,
    key: str,
    records: dict,
    champ: ModelRef | None,
    rolled_back_sources: dict[str, ModelRef],
    registered: dict | None,
) -> KeyOutcome:
    """The key's outcome, from its records (stage -> state), its production version and the
    candidate registry's record. Outcomes that need no registration are recorded here; a
    promotion gets its verified copy and its intent (the decision, recorded before the registry
    changes), and carries its registration under ``_REGISTRATION``: it is recorded once its
    alias has moved."""
    spec, lake = run.spec, run.lake
    previous = readable(records["promoted_model"])
    report, cand = evaluated_candidate(records, registered)
    if _promotion_stands(previous, champ, cand, run.run_date):
        # promoted earlier on this run date and nothing changed since: the same record stays, not
        # a second decision ("kept champion") that would hide the promotion before it is published
        return KeyOutcome(key, "ok", info=previous.flat_info())
    rolled_back = rolled_back_sources.get(cand["source"])
    if champ and _same_candidate(champ, cand):
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
        "decided_at": dt.datetime.now(dt.UTC).isoformat(),
        "decided_by": f"dagster run {run.run_id}",
        "production_version": champ.version if champ else None,
        # what this decision relied on: the evaluation, and the candidate it evaluated
        "evaluation_id": report["evaluation_id"],
        "artifact_sha256": cand["artifact_sha256"],
        "data_fingerprint": cand["data_fingerprint"],
        "run_date": run.run_date.isoformat(),
    }
    outcome = KeyOutcome(key, "ok", info=info)
    if decision != "promoted":
        write_state(lake, spec.name, "promoted_model", outcome, run.run_id)
        return outcome
    target = production_artifact_path(run.settings, spec.name, key, cand["version"], cand["artifact_sha256"])
    # verified against the registry's hashes: model.skops and, with refit, model_eval.skops
    copy_model_dir(cand["source"], target, cand["artifact_sha256"], cand[EVAL_HASH_TAG])
    lake.write_json(intent_path(lake, spec.name, key), {"info": info, "run_id": run.run_id})
    outcome.info[_REGISTRATION] = (key, target, _production_tags(run, key, cand, report, info))
    return outcome


INTENTS = "promoted_model_intents"


def intent_path(lake: Lake, use_case: str, key: str):
    """``state/<uc>/promoted_model_intents/<key>.json``: a promotion decided but not yet recorded."""
    return lake.key_path("state", use_case, key, ".json", subdir=INTENTS)


def pending_intents(lake: Lake, use_case: str) -> set[str]:
    """Keys with a promotion intent left by an earlier run: one listing, not one lookup per key."""
    return {p.name.removesuffix(".json") for p in lake.glob(f"state/{use_case}/{INTENTS}/*.json")}


def _complete_interrupted(run: StageRun, prod, snap, key: str, previous: StageRecord | None) -> tuple[dict, str] | None:
    """(the record, the run that decided it) of a promotion an earlier run registered but did
    not record, completed now (the alias moved if it had not); None when there is nothing to
    complete: the intent's version was never registered, or its record was written. The intent
    is then removed."""
    lake, spec = run.lake, run.spec
    intent = lake.read_json(intent_path(lake, spec.name, key))
    info = intent["info"]
    recorded = previous is not None and previous.ok and previous.evaluation_id == info["evaluation_id"]
    made = [r for r in snap.versions.get(key, []) if r.tags.get("evaluation_id") == info["evaluation_id"]]
    if recorded or not made:
        lake.delete(intent_path(lake, spec.name, key))
        return None
    version = made[-1]
    champ = snap.current.get(key)
    if not version.tags.get("rolled_back_at") and (champ is None or champ.version < version.version):
        prod.set_alias(spec.name, key, version.version)  # cut short before its alias moved
    return {**info, "production_version": version.version, "recovered": True}, intent.get("run_id", run.run_id)


def _promotion_stands(previous: StageRecord | None, champ: ModelRef | None, cand: dict, run_date: dt.date) -> bool:
    """True when the key's record is a promotion decided on this run date that put this very
    candidate where it still is: a rerun of the day has nothing new to decide about it."""
    return (
        previous is not None
        and previous.ok
        and previous.info.decision == "promoted"
        and previous.info.run_date == run_date.isoformat()
        and champ is not None
        and previous.production_version == champ.version
        and _same_candidate(champ, cand)
    )


def evaluated_candidate(
    records: dict[str, StageRecord | Exception | None], registered: dict | None
) -> tuple[dict, dict]:
    """(the evaluation report, the candidate as the registry records it), only when the
    evaluation is of the candidate the model record names, on today's training set, and the
    registry agrees with both. ``records`` maps a stage to the key's state. SkipKey says which
    stage to run first; ModelIntegrityError refuses records that disagree with the registry."""
    evaluation = checked_state("evaluation", readable(records["evaluation"]))
    model = checked_state("model", readable(records["model"]))
    data = str(checked_state("training_set", readable(records["training_set"])).data_fingerprint)
    version = model.candidate_version
    report = evaluation.flat_info()  # the report decide() reads
    if not evaluation.evaluation_id:
        raise SkipKey(
            "the evaluation record names no evaluation_id (written before evaluations were pinned): "
            "run evaluation first"
        )
    if evaluation.candidate_version != version:
        raise SkipKey(
            f"candidate v{version} was not evaluated: the evaluation is of v{evaluation.candidate_version}; "
            "run evaluation first"
        )
    if not evaluation.data_fingerprint == model.data_fingerprint == data:
        raise SkipKey(
            f"the evaluation of candidate v{version} was on data {str(evaluation.data_fingerprint)[:16]}, the "
            f"candidate was fitted on {str(model.data_fingerprint)[:16]} and today's training set is "
            f"{data[:16]}: run model and evaluation first"
        )
    cand = registered_candidate(model, registered)
    for tag in (HASH_TAG, EVAL_HASH_TAG):
        if report.get(tag) != cand[tag]:
            raise ModelIntegrityError(
                f"the evaluation record's {tag} is not the registered hash of candidate v{version}: "
                "the lake's record was changed; refusing it"
            )
    return report, cand


def _same_candidate(production: ModelRef, cand: dict) -> bool:
    """A production version copied from this very candidate (same artifact folder and hash)."""
    return (
        production.tags.get("source_candidate_run") == cand["source"]
        and production.tags.get(HASH_TAG) == cand["artifact_sha256"]
    )


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
        DECISION_TAG: info["decision"],
        DECISION_REASON_TAG: info["reason"][:5000],
        # which rows it has seen (with eval_artifact_sha256), as the candidate registry records it
        **lineage_tags(cand),
    }


def production_artifact_path(settings: PlatformSettings, use_case: str, key: str, version: int, sha: str) -> str:
    """Where a promoted model's files live: under the production artifact root, one folder per
    (candidate version, content hash), so promoting the same model twice reuses the folder.
    Both come from the candidate registry's record of the version promoted."""
    root = settings.production_artifact_root.rstrip("/")
    return f"{root}/{use_case}/{key_name(key)}/candidate-v{version}-{sha[:12]}"
