"""Typed, versioned per-key records between stages (``state/<uc>/<stage>/<key>.json``).

Every stage writes a key's record through :func:`from_outcome` and reads upstream records
through :func:`parse` (``base.read_state``), never as free dictionaries. A record is an
envelope (:class:`StageRecord`: schema ``version``, stage, key, status, reason, the run that
wrote it, and the *pins* of the trust chain: what the stage consumed) around one ``...Info``
model per stage holding the stage's own facts.

Versions:

* **1**: the plain dicts written before this module (``status``, ``reason``, ``info``,
  ``dagster_run_id``, ``updated_at``; the pins inside ``info``, the model's candidate version as
  ``version``, the predictions' production version as ``model_version``). Upgraded on read, so
  existing lakes keep working.
* **2**: this layout. The pins are top-level fields of the envelope.

A record whose version is newer than :data:`RECORD_VERSION` (written by a newer platform) is
refused with :class:`RecordVersionError`, which fails that key with a reason saying so; other
keys go on.

In memory, a stage still hands its per-key facts around as ``KeyOutcome.info`` (a flat dict,
also the key's Dagster metadata); :func:`from_outcome` splits it into pins and info, and
:meth:`StageRecord.flat_info` gives it back.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..core.engine import KeyOutcome

RECORD_VERSION = 2
Status = Literal["ok", "failed", "skipped", "rejected"]

# The trust chain's pins: envelope fields, each the same-named field of a stage's flat info,
# except where ALIASES says otherwise (the names stages used before records were typed).
PINS = (
    "candidate_version",
    "production_version",
    "artifact_sha256",
    "eval_artifact_sha256",
    "evaluation_id",
    "data_fingerprint",
    "raw_run_id",
    "training_set_run_id",
    "model_run_id",
)
ALIASES = {("model", "candidate_version"): "version", ("predictions", "production_version"): "model_version"}

Metrics = dict[str, float | None]


class RecordVersionError(ValueError):
    """A record written by a newer platform than this one: its fields cannot be trusted to mean
    what this code thinks, so the key fails (with this reason) instead of being misread."""


class Info(BaseModel):
    """A stage's own facts about one key. Every field is optional: a failed or skipped key has
    few or none. Undeclared fields are kept (``model_extra``), never dropped; the stage tests
    assert that the stages write none."""

    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")


class RowCounts(Info):
    """Row accounting: ``rows_in == rows_out + rows_dropped + rows_merged``; ``drops`` by reason."""

    rows_in: int | None = None
    rows_out: int | None = None
    rows_dropped: int | None = None
    rows_merged: int | None = None
    drops: dict[str, int] = {}


class RawInfo(RowCounts):
    rows: int | None = None
    scoring_rows: int | None = None
    scoring_drops: dict[str, int] | None = None
    scoring_note: str | None = None  # why it has no scoring rows: their duplicates, or rejected scoring files


class TrainingSetInfo(RowCounts):
    rows: int | None = None
    rows_train: int | None = None
    rows_holdout: int | None = None
    features: list[str] = []
    frequency: str | None = None
    irregular_gaps: int | None = None


class ModelInfo(Info):
    estimator: str | None = None
    model_name: str | None = None
    source: str | None = None  # the candidate's artifact folder, as registered
    metric: str | None = None
    value: float | None = None
    metrics: Metrics = {}
    undefined: dict[str, str] = {}
    candidate_scores: Metrics = {}
    selection: str = ""
    candidate_errors: dict[str, str] = {}
    rows_train: int | None = None
    rows_holdout: int | None = None
    rows_validation: int | None = None
    validation_windows: int | None = None
    train_end: str | None = None
    fitted_through: str | None = None
    refit: bool = False
    split: str | None = None
    features: list[str] = []
    reused: bool = False


class EvaluationInfo(Info):
    """The evaluation report; :func:`..promoted_model.decide` reads it (as ``flat_info()``)."""

    candidate_source: str | None = None
    # the model stage reused the candidate (unchanged data and configuration): the automation
    # requests no promotion for it (defs/automation.py)
    candidate_reused: bool = False
    estimator: str | None = None
    metric: str | None = None
    metrics: Metrics = {}
    undefined: dict[str, str] = {}
    rows_holdout: int | None = None
    rows_train: int | None = None
    baseline_name: str | None = None
    baseline_metrics: Metrics = {}
    baselines: dict[str, Metrics] = {}
    skill: float | None = None
    champion_version: int | None = None
    champion_source_version: str | None = None
    champion_artifact_sha256: str | None = None
    champion_metrics: Metrics | None = None
    champion_note: str | None = None
    comparison: str | None = None
    comparison_metrics: Metrics | None = None
    comparison_rows: int = 0


class PromotedModelInfo(Info):
    decision: str | None = None
    reason: str | None = None
    metric: str | None = None
    candidate_value: float | None = None
    champion_version: int | None = None
    champion_value: float | None = None
    decided_at: str | None = None
    decided_by: str | None = None
    run_date: str | None = None
    recovered: bool = False
    decision_tag_error: str | None = None  # the candidate's decision tags could not be written


class PredictionsInfo(RowCounts):
    """Row counts are of a forecast's scoring_source rows: those on no forecast period are unused."""

    rows: int | None = None
    kind: str | None = None
    rows_holdout: int | None = None
    rows_forecast: int | None = None
    rows_scoring: int | None = None


class PublishedInfo(Info):
    key_status: str | None = None
    published: bool | None = None
    prediction_rows: int | None = None


class StageRecord(BaseModel):
    """One key's record at one stage (the envelope); subclasses fix ``stage`` and type ``info``."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")
    STAGE: ClassVar[str] = ""

    version: int = RECORD_VERSION
    stage: str
    key: str
    status: Status
    reason: str = ""
    dagster_run_id: str | None = None
    updated_at: str | None = None
    # the pins: what this stage consumed or produced, checked by the stages after it
    candidate_version: int | None = None
    production_version: int | None = None
    artifact_sha256: str | None = None
    eval_artifact_sha256: str | None = None
    evaluation_id: str | None = None
    data_fingerprint: str | None = None
    raw_run_id: str | None = None
    training_set_run_id: str | None = None
    model_run_id: str | None = None
    info: Info = Info()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def flat_info(self) -> dict[str, Any]:
        """The stage's facts as the stage produced them (``KeyOutcome.info``): info and pins in
        one dict, under their original names."""
        out = self.info.model_dump(exclude_unset=True)
        for pin in PINS:
            if pin in self.model_fields_set:
                out[ALIASES.get((self.stage, pin), pin)] = getattr(self, pin)
        return out

    def to_json(self) -> bytes:
        """The record as written: the fields that were given (``version`` and ``stage`` always)."""
        return self.model_dump_json(exclude_unset=True).encode()


class RawRecord(StageRecord):
    STAGE: ClassVar[str] = "raw"
    stage: Literal["raw"] = "raw"
    info: RawInfo = RawInfo()


class TrainingSetRecord(StageRecord):
    STAGE: ClassVar[str] = "training_set"
    stage: Literal["training_set"] = "training_set"
    info: TrainingSetInfo = TrainingSetInfo()


class ModelRecord(StageRecord):
    STAGE: ClassVar[str] = "model"
    stage: Literal["model"] = "model"
    info: ModelInfo = ModelInfo()


class EvaluationRecord(StageRecord):
    STAGE: ClassVar[str] = "evaluation"
    stage: Literal["evaluation"] = "evaluation"
    info: EvaluationInfo = EvaluationInfo()


class PromotedModelRecord(StageRecord):
    STAGE: ClassVar[str] = "promoted_model"
    stage: Literal["promoted_model"] = "promoted_model"
    info: PromotedModelInfo = PromotedModelInfo()


class PredictionsRecord(StageRecord):
    STAGE: ClassVar[str] = "predictions"
    stage: Literal["predictions"] = "predictions"
    info: PredictionsInfo = PredictionsInfo()


class PublishedRecord(StageRecord):
    STAGE: ClassVar[str] = "published"
    stage: Literal["published"] = "published"
    info: PublishedInfo = PublishedInfo()


RECORD_TYPES: dict[str, type[StageRecord]] = {
    cls.STAGE: cls
    for cls in (
        RawRecord,
        TrainingSetRecord,
        ModelRecord,
        EvaluationRecord,
        PromotedModelRecord,
        PredictionsRecord,
        PublishedRecord,
    )
}


def _split(stage: str, flat: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pins, info) from a stage's flat info dict."""
    info = dict(flat)
    pins = {}
    for pin in PINS:
        name = ALIASES.get((stage, pin), pin)
        if name in info:
            pins[pin] = info.pop(name)
    return pins, info


def from_outcome(stage: str, outcome: KeyOutcome, run_id: str) -> StageRecord:
    """The record a stage writes for one key's outcome."""
    pins, info = _split(stage, outcome.info)
    return RECORD_TYPES[stage](
        version=RECORD_VERSION,
        stage=stage,
        key=outcome.key,
        status=outcome.status,
        reason=outcome.reason or "",
        dagster_run_id=run_id,
        updated_at=dt.datetime.now(dt.UTC).isoformat(),
        info=info,
        **pins,
    )


def upgrade_v1(stage: str, key: str, data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 record (the plain dict stages wrote before records were typed) in the
    version-2 layout: the pins move from ``info`` to the envelope, under their new names."""
    pins, info = _split(stage, data.get("info") or {})
    return {
        "version": RECORD_VERSION,
        "stage": stage,
        "key": key,
        "status": data["status"],
        "reason": data.get("reason") or "",
        "dagster_run_id": data.get("dagster_run_id"),
        "updated_at": data.get("updated_at"),
        "info": info,
        **pins,
    }


def parse(stage: str, key: str, data: dict[str, Any]) -> StageRecord:
    """A record as read from the lake, upgraded to this version; RecordVersionError when it was
    written by a newer platform, or is not a record this code can read."""
    version = data.get("version", 1) if isinstance(data, dict) else None
    if not isinstance(version, int) or version < 1:
        raise RecordVersionError(f"the {stage} record of this key is not a stage record (version {version!r})")
    if version > RECORD_VERSION:
        raise RecordVersionError(
            f"the {stage} record of this key has schema version {version}, newer than this platform reads "
            f"(up to {RECORD_VERSION}): it was written by a newer release; upgrade, or rerun {stage} for this key"
        )
    if version == 1:
        data = upgrade_v1(stage, key, data)
    try:
        return RECORD_TYPES[stage].model_validate(data)
    except ValidationError as exc:
        raise RecordVersionError(
            f"the {stage} record of this key (version {version}) does not read as one: "
            f"{exc.error_count()} invalid field(s), first {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
        ) from None
