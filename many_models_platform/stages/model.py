"""Stage 3, ``model``: fit every candidate per key; register the winner as a candidate."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence

from ..core import features as F
from ..core.engine import KeyOutcome, map_keys
from ..core.keys import key_label, key_name
from ..core.modeling import fit_key
from ..core.spec import UseCaseSpec
from ..storage.lake import Lake
from ..storage.registry import (
    EVAL_HASH_TAG,
    EVAL_MODEL_FILE,
    HASH_TAG,
    ModelRegistry,
    local_path,
    model_template_dir,
    registered_model_name,
    run_metric_name,
    write_model_dir,
    write_model_file,
)
from .base import (
    LINEAGE_TAGS,
    UPSTREAM,
    StageReport,
    StageRun,
    crash_point,
    finish,
    quantiles,
    read_state_or_error,
    require_state,
    write_state,
)
from .records import StageRecord


def _train_one(key: str, spec: UseCaseSpec, lake: Lake, models_dir: str, template: str, trusted) -> dict:
    ts_state = require_state(lake, spec.name, UPSTREAM["model"], key)
    ts = lake.read_parquet(lake.key_path("training", spec.name, key, ".parquet"))
    fitted = fit_key(spec, ts, ts_state.info.features)
    folder = f"{models_dir}/{key_name(key)}"
    # model.skops is what production serves: the refit on every row when the use case refits
    signature = model_signature(spec, ts, fitted.feature_columns)
    sha256 = write_model_dir(fitted.production_model or fitted.model, folder, template, trusted, signature)
    eval_sha256 = None
    if fitted.production_model is not None:  # the evaluated model, fitted without the holdout
        eval_sha256 = write_model_file(fitted.model, folder, EVAL_MODEL_FILE, trusted)
    return {
        "artifact_sha256": sha256,
        EVAL_HASH_TAG: eval_sha256,
        "estimator": fitted.candidate,
        "metric": spec.metric,
        "value": fitted.metrics[spec.metric],
        "metrics": fitted.metrics,
        "undefined": fitted.undefined,
        "candidate_scores": fitted.candidate_scores,
        "selection": fitted.selection,
        "candidate_errors": fitted.candidate_errors,
        "rows_train": fitted.rows_train,
        "rows_holdout": fitted.rows_holdout,
        "rows_validation": fitted.rows_validation,
        "validation_windows": fitted.validation_windows,
        "train_end": F.time_text(fitted.train_end),
        "fitted_through": F.time_text(fitted.fitted_through),
        "refit": fitted.production_model is not None,
        "split": F.split_descriptor(spec),
        "features": fitted.feature_columns,
        "data_fingerprint": ts_state.data_fingerprint,
        "training_set_run_id": ts_state.dagster_run_id,  # the training set it was fitted on
    }


def per_key_metrics(outcomes) -> dict[str, float]:
    """Every fitted key's holdout metrics as numbers, named ``<metric>/<key>`` (``run_metric_name``),
    so the MLflow UI can sort and chart keys on the training run; undefined values are left out."""
    out = {}
    for o in outcomes:
        for metric, value in o.info["metrics"].items():
            if value is not None and value == value:
                out[run_metric_name(metric, o.key)] = float(value)
    return out


def model_signature(spec: UseCaseSpec, ts, features: list[str]) -> dict[str, str | None]:
    """The MLmodel ``signature`` of a key's model, as MLflow writes it (``ModelSignature.to_dict``):
    the feature columns by name (text for categorical features, numbers otherwise, as
    ``core.modeling.model_input`` feeds them) and the prediction's type."""
    categorical = set(spec.categorical_features)
    inputs = [{"type": "string" if c in categorical else "double", "name": c, "required": True} for c in features]
    if spec.task in ("forecast", "regression"):
        output = "double"
    elif spec.task == "anomaly":
        output = "long"  # -1 anomaly, 1 normal
    else:
        output = _MLFLOW_TYPES.get(ts.schema.get(spec.target).__class__.__name__, "string")
    return {"inputs": json.dumps(inputs), "outputs": json.dumps([{"type": output, "required": True}]), "params": None}


_MLFLOW_TYPES = {
    "Int8": "integer",
    "Int16": "integer",
    "Int32": "integer",
    "Int64": "long",
    "UInt8": "integer",
    "UInt16": "integer",
    "UInt32": "long",
    "UInt64": "long",
    "Float32": "float",
    "Float64": "double",
    "Boolean": "boolean",
    "String": "string",
}


def lineage_tags(info: dict) -> dict[str, str]:
    """What a model version was fitted on, as registry tags (``base.LINEAGE_TAGS``); promotion
    copies them to production so a later evaluation knows which rows the champion has seen."""
    return {tag: str(info[tag]) for tag in LINEAGE_TAGS if info.get(tag) is not None}


def train(run: StageRun, keys: Sequence[str]) -> StageReport:
    """Fit every candidate per key in a process pool; register each winner as a candidate."""
    spec = run.spec
    registry = run.candidates()
    mlflow_run_id, artifact_uri = registry.start_run(
        spec.name, f"train-{run.run_id[:8]}", {"use_case": spec.name, "dagster_run_id": run.run_id}
    )
    try:
        return _train_in_run(run, registry, keys, mlflow_run_id, artifact_uri)
    except BaseException as exc:  # the MLflow run must not stay RUNNING after a crash
        registry.abandon_run(mlflow_run_id, killed=not isinstance(exc, Exception))
        raise


def _train_in_run(
    run: StageRun, registry: ModelRegistry, keys: Sequence[str], mlflow_run_id: str, artifact_uri: str
) -> StageReport:
    spec = run.spec
    target = local_path(artifact_uri)
    staging = None if target else tempfile.mkdtemp(prefix="mmp-models-")
    models_dir = f"{target or staging}/models"
    reused = reusable_candidates(run, registry, keys)
    to_fit = [k for k in keys if k not in reused]
    if run.progress and reused:
        run.progress(len(reused))
    fitted_by_key: dict[str, KeyOutcome] = {}
    registered: dict[str, int | Exception] = {}

    def record(key: str, version: int) -> None:
        """The key's record, right after its version is registered (crash consistency)."""
        o = fitted_by_key[key]
        o.info["version"] = version
        o.info["model_name"] = registered_model_name(spec.name, key)
        o.info["source"] = f"{artifact_uri}/models/{key_name(key)}"
        crash_point("model")
        write_state(run.lake, spec.name, "model", o, run.run_id)

    def register(chunk: list[KeyOutcome]) -> None:
        fitted_by_key.update((o.key, o) for o in chunk)
        items = [(o.key, f"{artifact_uri}/models/{key_name(o.key)}", _candidate_tags(run, o)) for o in chunk if o.ok]
        if items:
            registered.update(registry.register_many(spec.name, items, mlflow_run_id, after=record))

    # With a local artifact store each chunk's models are registered as soon as the workers
    # finish it, while they fit the next ones; a remote store gets every model in one upload
    # first, so no version ever points at files not yet there.
    fitted = map_keys(
        _train_one,
        to_fit,
        (spec, run.lake, models_dir, model_template_dir(), run.trusted),
        workers=run.workers,
        progress=run.progress,
        on_chunk=None if staging else register,
    )
    by_key = {o.key: o for o in fitted} | reused
    outcomes = [by_key[k] for k in keys]
    if staging:  # a remote artifact store: upload every key's model in one call
        try:
            registry.client.log_artifacts(mlflow_run_id, models_dir, "models")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        register(fitted)
    written = set()
    for o in fitted:
        result = registered.get(o.key)
        if isinstance(result, Exception):
            o.status, o.reason = "failed", f"registration failed: {type(result).__name__}: {result}"
        elif result is not None:
            written.add(o.key)
    values = [o.info["value"] for o in outcomes if o.ok]
    n_fitted = sum(1 for o in fitted if o.ok)
    registry.finish_run(
        mlflow_run_id,
        {
            "keys_trained": n_fitted,
            "keys_reused": len(reused),
            "keys_failed": len(outcomes) - len(values),
            **quantiles(spec.metric, values),
            **per_key_metrics(o for o in fitted if o.ok),
        },
    )
    summary = {"mlflow_run_id": mlflow_run_id, "keys_reused": len(reused)}
    return finish(run, "model", outcomes, summary, written=written)


def _candidate_tags(run: StageRun, o: KeyOutcome) -> dict[str, str]:
    """A fitted key's registry tags: what it was fitted on, how it was chosen, its holdout metrics."""
    spec = run.spec
    return {
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
        "selection": o.info["selection"][:5000],
        **{f"validation.{k}": repr(v) for k, v in o.info["candidate_scores"].items()},
        **lineage_tags(o.info),
    }


def reusable_candidates(run: StageRun, registry: ModelRegistry, keys: Sequence[str]) -> dict[str, KeyOutcome]:
    """Keys whose newest candidate was fitted on the same data with the same model config.

    A daily run over unchanged data then fits and registers nothing new for them: one
    registry query for the whole use case, plus the key's training-set state file. With
    ``run.force`` (`mmp run --force`) nothing is reused.
    """
    spec, lake = run.spec, run.lake
    if run.force:
        return {}
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
        state = read_state_or_error(lake, spec.name, "training_set", key)
        if (
            not isinstance(state, StageRecord)  # none, or unreadable: fitting says why
            or not state.ok
            or state.data_fingerprint != ref.tags.get("data_fingerprint")
            # same data and config but other feature columns (say a calendar set that changed)
            or state.info.features != ref.tags.get("features", "").split(",")
        ):
            continue
        metrics = {k.removeprefix("metric."): float(v) for k, v in ref.tags.items() if k.startswith("metric.")}
        scores = {k.removeprefix("validation."): float(v) for k, v in ref.tags.items() if k.startswith("validation.")}
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
            EVAL_HASH_TAG: ref.tags.get(EVAL_HASH_TAG),
            "candidate_scores": scores,
            "selection": ref.tags.get("selection", ""),
            "train_end": ref.tags.get("train_end"),
            "fitted_through": ref.tags.get("fitted_through"),
            "refit": ref.tags.get("refit") == "True",
            "split": ref.tags.get("split"),
            "version": ref.version,
            "model_name": ref.name,
            "source": ref.source,
            "training_set_run_id": state.dagster_run_id,
            "reused": True,
        }
        out[key] = KeyOutcome(key, "ok", info=info)
    return out
