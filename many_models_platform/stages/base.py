"""What every stage shares: the run context, the report, per-key state files, and lookups.

Each stage records a small per-key state file ``state/<use case>/<stage>/<key>.json``
holding the status, the reason and a few facts, among them what the stage consumed (data
fingerprint, candidate version and hash, the evaluation it relies on). Downstream stages read
that state to skip keys whose upstream failed or does not match, and the ``published`` stage
turns it into the status table.

A key's record and the data it describes change together: a stage that rewrites a key's data
file first removes the key's record, then writes the data, then the new record
(:func:`clear_state`, :func:`write_state`), so after a crash no old record ever describes new
data: the key is either as before, as after, or without a record (and downstream stages treat
it as not run).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import re
import signal
import threading
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from ..core.engine import KeyOutcome, SkipKey
from ..core.spec import UseCaseSpec
from ..storage.lake import Lake
from ..storage.registry import (
    DECISION_REASON_TAG,
    DECISION_TAG,
    EVAL_HASH_TAG,
    HASH_TAG,
    ModelIntegrityError,
    ModelRegistry,
    TrustedTypes,
    candidate_registry,
    production_registry,
    trusted_types,
)
from ..storage.settings import PlatformSettings
from . import records
from .records import RecordVersionError, StageRecord

# Tags that say what a model version was fitted on, carried from the candidate to production:
# ``train_end`` (the last training time of the evaluated model), ``fitted_through`` (the last
# time the production artifact was fitted on: later than train_end when refitted), ``split``
# (how the holdout was drawn, core.features.split_descriptor) and, with refit, the hash of
# the evaluated model's file. Values are text; an absent value is not written.
LINEAGE_TAGS = ("train_end", "fitted_through", "split", "refit", "eval_artifact_sha256")

STAGES = ("raw", "training_set", "model", "evaluation", "promoted_model", "predictions", "published")
UPSTREAM = dict(zip(STAGES[1:], STAGES[:-1], strict=True))
# The stage whose having no ok key stops a stage before it starts (see stopped_outcomes).
# `predictions` only needs today's ingest: a key's production model serves even when today's
# training chain stopped, so it stops only when `raw` left no key. `raw` and `published`
# always run (`published` records the stop in key_status and run_summary).
STOP_GATE = {**UPSTREAM, "predictions": "raw"}
del STOP_GATE["published"]
STOPPED = "stopped: "  # the reason prefix of keys a stopped stage did not run


@dataclass
class StageRun:
    """What a stage needs besides its keys: the use case, the stores, and who is running."""

    spec: UseCaseSpec
    settings: PlatformSettings
    run_id: str
    run_date: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())
    workers: int | None = None
    progress: Callable[[int], None] | None = None
    # refit every key, even one whose data and configuration are unchanged (`mmp run --force`)
    force: bool = False

    @property
    def lake(self) -> Lake:
        return Lake(self.settings.lake_url, self.settings.lake_storage_options)

    def candidates(self) -> ModelRegistry:
        return candidate_registry(self.settings)

    def candidates_reader(self) -> ModelRegistry:
        """The candidate registry for stages that only look versions up (evaluation, promotion)."""
        return candidate_registry(self.settings, writable=False)

    def production(self) -> ModelRegistry:
        """The production registry, read-only: evaluation and scoring only look things up."""
        return production_registry(self.settings)

    def production_writer(self) -> ModelRegistry:
        """The production registry with write access; only promotion's settings carry it."""
        return production_registry(self.settings, write=True)

    @property
    def trusted(self) -> TrustedTypes:
        """The types this use case's saved models may hold: the platform's and the estimator
        classes' exact names, and ``trusted_modules`` as the user wrote them."""
        return trusted_types(self.spec.estimator_types, self.spec.trusted_modules)


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
    """The key's typed record (:mod:`.records`, the current schema version) for this outcome."""
    lake.write_bytes(
        state_path(lake, use_case, stage, outcome.key), records.from_outcome(stage, outcome, run_id).to_json()
    )


def read_state(lake: Lake, use_case: str, stage: str, key: str) -> StageRecord | None:
    """The key's record at ``stage``, upgraded to the current schema (None when there is none).
    RecordVersionError when it was written by a newer platform: the key fails with that reason."""
    path = state_path(lake, use_case, stage, key)
    return records.parse(stage, key, lake.read_json(path)) if path.exists() else None


def clear_state(lake: Lake, use_case: str, stage: str, key: str) -> None:
    """Remove a key's record before its data file is rewritten (see the module's docstring)."""
    lake.delete(state_path(lake, use_case, stage, key))


def require_state(lake: Lake, use_case: str, stage: str, key: str) -> StageRecord:
    """A stage's ok record for this key (info, pins and the run that wrote it), or SkipKey naming
    why there is none."""
    return checked_state(stage, read_state(lake, use_case, stage, key))


def checked_state(stage: str, state: StageRecord | None) -> StageRecord:
    """``state`` if it is ok, else SkipKey naming why (see :func:`require_state`)."""
    if state is None:
        raise SkipKey(f"{stage} has not run for this key")
    if not state.ok:
        raise SkipKey(f"{stage} {state.status}: {state.reason}")
    return state


def read_state_or_error(lake: Lake, use_case: str, stage: str, key: str) -> StageRecord | Exception | None:
    """:func:`read_state`, with an unreadable record returned as its exception, for loops over
    keys where that key alone must fail."""
    try:
        return read_state(lake, use_case, stage, key)
    except RecordVersionError as exc:
        return exc


def read_states(
    lake: Lake, use_case: str, stages: Sequence[str], keys: Sequence[str]
) -> dict[str, dict[str, StageRecord | Exception | None]]:
    """key -> stage -> its record (None when there is none, the RecordVersionError when it cannot
    be read): read in threads on a remote lake, where each read is a request, so one key's
    records (``promoted_model``'s four, in a worker) cost one round trip, not four."""
    pairs = [(key, stage) for key in keys for stage in stages]
    if lake.is_local or len(pairs) < 2:
        found = [read_state_or_error(lake, use_case, stage, key) for key, stage in pairs]
    else:
        with ThreadPoolExecutor(min(16, len(pairs)), thread_name_prefix="mmp-state") as pool:
            found = list(pool.map(lambda pair: read_state_or_error(lake, use_case, pair[1], pair[0]), pairs))
    out: dict[str, dict] = {key: {} for key in keys}
    for (key, stage), state in zip(pairs, found, strict=True):
        out[key][stage] = state
    return out


def readable(state: StageRecord | Exception | None) -> StageRecord | None:
    """A record from :func:`read_states`; raises the error of one that could not be read."""
    if isinstance(state, Exception):
        raise state
    return state


def require_upstream(lake: Lake, use_case: str, stage: str, key: str) -> StageRecord:
    """The upstream stage's ok record for this key, or SkipKey naming why it is missing."""
    return require_state(lake, use_case, UPSTREAM[stage], key)


def finish(
    run: StageRun,
    stage: str,
    outcomes: list[KeyOutcome],
    summary: dict | None = None,
    written: Collection[str] = (),
) -> StageReport:
    """Write the state of every key not already ``written`` by the stage itself (right after its
    data, see the module's docstring), then the run's record of this stage (:func:`write_run_record`)."""
    for o in outcomes:
        if o.key not in written:
            try:
                write_state(run.lake, run.spec.name, stage, o, run.run_id)
            except ValidationError as exc:  # a fact of the wrong type fails its own key, not the stage
                problem = exc.errors()[0]
                o.status = "failed"
                o.reason = f"its {stage} record does not validate: {problem['loc']}: {problem['msg']}"[:2000]
                o.info = {}
                write_state(run.lake, run.spec.name, stage, o, run.run_id)
    report = StageReport(stage, outcomes, summary or {})
    write_run_record(run, report)
    return report


# --- one record per stage and run ---------------------------------------------------------
def run_record_path(lake: Lake, use_case: str, stage: str, run_id: str):
    """``state/<uc>/<stage>/_runs/<run id>.json`` (encoded keys never contain a ``/``)."""
    return lake.path("state", use_case, stage, "_runs", f"{_safe_name(run_id)}.json")


def write_run_record(run: StageRun, report: StageReport) -> None:
    """A small record of what this stage did in this run: key counts, the most common reasons of
    keys that are not ok, why it stopped (if it did) and the stage's summary. The next stages,
    ``published`` and `mmp run` read it (the raw stage's summary is nowhere else)."""
    counts = Counter(o.status for o in report.outcomes)
    reasons = Counter(outcome_not_ok_reason(report.stage, o) for o in report.outcomes if not o.ok)
    record = {
        "stage": report.stage,
        "dagster_run_id": run.run_id,
        "run_date": run.run_date.isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "keys": len(report.outcomes),
        "ok": counts["ok"],
        "failed": counts["failed"],
        "skipped": counts["skipped"],
        "reasons": [[r[:_REASON_CHARS], n] for r, n in grouped_reasons(reasons).most_common(_TOP_REASONS)],
        "stop_reason": stop_reason(report.stage, reasons) if report.outcomes and not counts["ok"] else None,
        "summary": report.summary,
    }
    run.lake.write_json(run_record_path(run.lake, run.spec.name, report.stage, run.run_id), record)


def read_run_record(lake: Lake, use_case: str, stage: str, run_id: str) -> dict[str, Any] | None:
    path = run_record_path(lake, use_case, stage, run_id)
    return lake.read_json(path) if path.exists() else None


def _safe_name(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id).lstrip(".") or "_"


# --- stopping when no key is left -----------------------------------------------------------
_TOP_REASONS = 3
_REASON_CHARS = 300
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def grouped_reasons(reasons: Counter[str]) -> Counter[str]:
    """Reasons that differ only in their numbers as one, their keys summed, a number that
    differs within a group shown as ``…``: 3,000 short keys read ``too few rows: … < min_rows 20``
    once, not as thousands of reasons of which the first three are shown."""
    groups: dict[str, Counter[str]] = {}
    for reason, n in reasons.items():
        groups.setdefault(_NUMBER.sub("#", reason), Counter())[reason] += n
    out: Counter[str] = Counter()
    for members in groups.values():
        if len(members) == 1:
            out.update(members)
            continue
        texts = [_NUMBER.split(r) for r in members]  # the same text between the numbers in a group
        numbers = [_NUMBER.findall(r) for r in members]
        shown = [texts[0][0]]
        for i, between in enumerate(texts[0][1:]):
            shown += [numbers[0][i] if len({ns[i] for ns in numbers}) == 1 else "…", between]
        out["".join(shown)] += members.total()
    return out


def _shortened(reason: str) -> str:
    """At most ``_REASON_CHARS`` characters, cut at a word and marked, never mid-word."""
    if len(reason) <= _REASON_CHARS:
        return reason
    return reason[: _REASON_CHARS - 1].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"


def stop_reason(stage: str, reasons: Counter[str]) -> str:
    """``no key left after <stage>: <reason> (<n> keys); ...``: the most common reasons first.

    Keys that were themselves stopped carry the original stop in their reason: it is kept as
    it is rather than nested one level deeper per stage."""
    if reasons and all(r.startswith(STOPPED) for r in reasons):
        return next(iter(reasons.most_common(1)))[0].removeprefix(STOPPED)
    grouped = grouped_reasons(reasons)
    top = [f"{_shortened(r)} ({n} key{'s' if n != 1 else ''})" for r, n in grouped.most_common(_TOP_REASONS)]
    more = len(grouped) - len(top)
    return f"no key left after {stage}: " + "; ".join(top) + (f"; and {more} other reason(s)" if more > 0 else "")


def stopped_outcomes(run: StageRun, stage: str, keys: Sequence[str]) -> list[KeyOutcome] | None:
    """Every key ``skipped`` with ``stopped: <why>`` when the stage's gate (:data:`STOP_GATE`)
    has no ok key, else None (the stage runs).

    The outcome is what the stage would have found key by key (no upstream state is ok), minus
    its cost: no process pool, no MLflow run, no registry read. Reading stops at the first ok key,
    so a healthy run reads one state file here."""
    gate = STOP_GATE.get(stage)
    if gate is None or not keys:
        return None
    reasons: Counter[str] = Counter()
    for key in keys:
        state = read_state_or_error(run.lake, run.spec.name, gate, key)
        if isinstance(state, StageRecord) and state.ok:
            return None
        reasons[not_ok_reason(gate, state)] += 1
    why = STOPPED + stop_reason(gate, reasons)
    return [KeyOutcome(key, "skipped", why) for key in keys]


def not_ok_reason(stage: str, state: StageRecord | Exception | None) -> str:
    """A key's reason at a stage that is not ok for it, as a stop reason lists it (an unreadable
    record, see :func:`read_states`, counts as failed with its error)."""
    if state is None:
        return f"{stage} has not run for this key"
    if isinstance(state, Exception):
        return f"{type(state).__name__}: {state}"
    return _reason_of(state.status, state.reason)


def outcome_not_ok_reason(stage: str, outcome: KeyOutcome) -> str:
    """:func:`not_ok_reason` of an outcome not yet written."""
    return _reason_of(outcome.status, outcome.reason)


def _reason_of(status: str, reason: str | None) -> str:
    reason = reason or ""
    if status == "failed" or reason.startswith(STOPPED):
        return reason
    return f"{status}: {reason}"


def crash_point(name: str) -> None:
    """A test hook for crash consistency: ``MMP_CRASH_AT=<name>[:<n>]`` kills this process with
    SIGKILL the n-th time (default the first) it reaches the point ``name``. Unset, it costs
    one dictionary lookup."""
    wanted = os.environ.get("MMP_CRASH_AT")
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    with _crash_lock:  # reached from threads too (raw's bronze writers)
        _crash_counts[name] = count = _crash_counts.get(name, 0) + 1
    if count >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_crash_counts: dict[str, int] = {}
_crash_lock = threading.Lock()


# --- the trust chain: candidates as the registry knows them -------------------------------
def candidate_models(run: StageRun, keys: Sequence[str]) -> dict[str, dict]:
    """key -> its newest candidate version as the candidate registry records it (version,
    artifact source, ``artifact_sha256``, ``eval_artifact_sha256``, ``data_fingerprint``): one registry query for the
    whole use case, plain data for the workers. Evaluation and promotion take a candidate's
    hash from here, never from the lake's records."""
    wanted = set(keys)
    return {
        key: {
            **_ref_record(ref),
            # with refit, the evaluated model_eval.skops: pinned from the registry like model.skops
            "eval_artifact_sha256": ref.tags.get(EVAL_HASH_TAG),
            "data_fingerprint": ref.tags.get("data_fingerprint"),
            "estimator": ref.tags.get("estimator"),
            # what promotion last decided about this version (registry tags a person reads)
            DECISION_TAG: ref.tags.get(DECISION_TAG),
            DECISION_REASON_TAG: ref.tags.get(DECISION_REASON_TAG),
        }
        for key, ref in run.candidates_reader().latest_versions(run.spec.name).items()
        if key in wanted
    }


def _ref_record(ref) -> dict[str, Any]:
    """What both registries' lookups give a stage about a version: name, version, source,
    hash, feature columns and what it was fitted on (LINEAGE_TAGS, copied to production at
    promotion, used for honest comparisons)."""
    return {
        "name": ref.name,
        "version": ref.version,
        "source": ref.source,
        "features": ref.tags["features"].split(",") if ref.tags.get("features") else [],
        "artifact_sha256": ref.tags.get(HASH_TAG),
        **{tag: ref.tags.get(tag) for tag in LINEAGE_TAGS},
    }


def registered_candidate(model: StageRecord, registered: dict[str, Any] | None) -> dict[str, Any]:
    """The candidate the ``model`` record names, as the candidate registry records it.

    SkipKey when the registry holds a newer version than the record (a ``model`` run was cut
    short after registering it: run model again); ModelIntegrityError when the record and the
    registry disagree about the same version (the lake's record was changed).
    """
    version = model.candidate_version
    if registered is None:
        raise ModelIntegrityError(f"candidate v{version} of this key is not in the candidate registry; refusing it")
    if registered["version"] != version:
        raise SkipKey(
            f"the model record names candidate v{version} but the candidate registry's newest version of this key "
            f"is v{registered['version']}: run model again"
        )
    recorded = {
        "source": model.info.source,
        "artifact_sha256": model.artifact_sha256,
        EVAL_HASH_TAG: model.eval_artifact_sha256,
        "data_fingerprint": model.data_fingerprint,
    }
    differ = [f for f, value in recorded.items() if value != registered.get(f)]
    if differ:
        raise ModelIntegrityError(
            f"the model record does not match candidate v{version} in the candidate registry ({', '.join(differ)} "
            "differ): the lake's record was changed; refusing it"
        )
    return registered


def production_models(run: StageRun, keys: Sequence[str]) -> dict[str, dict]:
    """key -> its production model (name, version, artifact source, feature columns, lineage), for
    these keys, from one registry lookup for the whole use case; plain data, so workers get it."""
    wanted = set(keys)
    return {
        key: {**_ref_record(ref), "source_version": ref.tags.get("source_candidate_version")}
        for key, ref in run.production().aliased_versions(run.spec.name).items()
        if key in wanted
    }


def registered_sources(run: StageRun, production: dict[str, dict]) -> dict[str, dict]:
    """key -> the candidate version each production model was copied from, as the candidate
    registry records it (version and both hashes): those versions alone, one candidate registry
    query per 500 keys, plain data for the workers (:func:`check_production_hashes`)."""
    wanted = {}
    for key, prod in production.items():
        with contextlib.suppress(TypeError, ValueError):  # a mangled tag finds no source: refused
            wanted[key] = int(prod.get("source_version") or 0)
    if not wanted:
        return {}
    out = {}
    for key, ref in run.candidates_reader().versions_at(run.spec.name, wanted).items():
        out[key] = {
            "version": ref.version,
            HASH_TAG: ref.tags.get(HASH_TAG),
            EVAL_HASH_TAG: ref.tags.get(EVAL_HASH_TAG),
        }
    return out


def check_production_hashes(prod: dict[str, Any], source: dict[str, Any] | None) -> None:
    """ModelIntegrityError unless the production version's hashes (``artifact_sha256`` and, with
    refit, ``eval_artifact_sha256``) are the ones the candidate registry recorded for the candidate
    it was copied from: the production tag alone is not trusted at scoring time."""
    name = f"production v{prod['version']}"
    if source is None:
        raise ModelIntegrityError(
            f"{name} names candidate v{prod.get('source_version')} as its source, which the candidate registry "
            "does not hold; refusing to score with it"
        )
    differ = [tag for tag in (HASH_TAG, EVAL_HASH_TAG) if prod.get(tag) != source.get(tag)]
    if differ:
        raise ModelIntegrityError(
            f"{name}'s {' and '.join(differ)} differ from what the candidate registry recorded for candidate "
            f"v{source['version']} it was copied from: the production registry's record was changed; refusing "
            "to score with it"
        )


def quantiles(metric: str, values: list[float]) -> dict[str, float]:
    vals = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if not len(vals):
        return {}
    p10, p50, p90 = np.quantile(vals, [0.1, 0.5, 0.9])
    return {f"{metric}_p10": float(p10), f"{metric}_p50": float(p50), f"{metric}_p90": float(p90)}
