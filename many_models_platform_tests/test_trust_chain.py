"""The trust chain from training to production, and crash consistency (docs/registry.md#the-trust-chain).

Real MLflow (SQLite) registries and a local lake in temporary homes; the stages are called
directly (no Dagster) except in the one test that materializes ``promoted_model`` alone through
Dagster. Four keys over two days, with outcomes known in advance:

* ``better`` and ``flip``: day 2's relationship flips, so the day-2 candidate beats the champion;
* ``worse``: day 2's training rows are noisy and its holdout clean, so the champion stays;
* ``steady``: unchanged, so its candidate is reused and is already in production.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import skops.io as sio
from conftest_core import clear_platform_env, make_spec, regression_body, write_config
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from many_models_platform.core.features import FREQUENCY_PERIODS, frame_input, to_matrix
from many_models_platform.core.keys import encode_key
from many_models_platform.core.modeling import _fit_params, build_pipeline, model_input
from many_models_platform.core.spec import load_config
from many_models_platform.lifecycle import registries
from many_models_platform.stages import STAGES, StageRun, run_stage
from many_models_platform.stages.base import read_state, state_path
from many_models_platform.stages.promoted_model import pending_intents
from many_models_platform.stages.records import PINS, StageRecord
from many_models_platform.storage.lake import Lake
from many_models_platform.storage.registry import (
    EVAL_MODEL_FILE,
    HASH_TAG,
    MODEL_FILE,
    PLATFORM_TYPES,
    ModelIntegrityError,
    ModelRegistry,
    TrustedTypes,
    copy_model_dir,
    load_model_from_source,
    model_template_dir,
    trusted_types,
    write_model_dir,
    write_model_file,
)
from many_models_platform.storage.settings import PlatformSettings

UC = "reg"
BETTER, FLIP, STEADY, WORSE = (encode_key([s]) for s in ("better", "flip", "steady", "worse"))
KEYS = sorted([BETTER, FLIP, STEADY, WORSE])  # better, flip, steady, worse
CHANGED = [BETTER, FLIP, WORSE]
PIPELINE = [s for s in STAGES if s != "published"]  # the warehouse is another stage's business
DAYS = {1: dt.date(2025, 6, 1), 2: dt.date(2025, 6, 2), 3: dt.date(2025, 6, 3)}


def body() -> dict:
    return regression_body(
        keys=["segment"],
        time_column="day",
        calendar_features=False,
        metric="r2",
        candidates=[{"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}],
        promotion={"threshold": 0.5, "min_improvement": 0.0},
        source={"path": "landing/reg/*.csv"},
    )


def use_case():
    return make_spec(body(), name=UC)


def landing_data(day: int) -> pl.DataFrame:
    """Day 1: 60 clean rows per key. Day 2: 72 rows for the changed keys (so an old record and a
    new file never have the same row count), the same 60 for ``steady``."""
    rng = np.random.default_rng(7)
    x1, x2 = rng.normal(size=72), rng.normal(size=72)
    noise = rng.normal(scale=1.5, size=72)
    clean = 2 * x1 + 0.5 * x2
    frames = []
    for key in KEYS:
        segment = {BETTER: "better", FLIP: "flip", STEADY: "steady", WORSE: "worse"}[key]
        n, y = 60, clean.copy()
        if day == 2 and key != STEADY:
            n = 72
            if key == WORSE:
                y[:54] += noise[:54]  # noisy training rows, clean holdout rows (the last 18)
            else:
                y = -2 * x1 + x2 + (0.5 if key == FLIP else 0.0)
        days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n)]
        frames.append(pl.DataFrame({"segment": segment, "day": days, "x1": x1[:n], "x2": x2[:n], "y": y[:n]}))
    return pl.concat(frames)


@pytest.fixture(scope="module")
def empty_registry(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema created, copied into each home: creating the schema
    (MLflow's migrations) costs about a second per store, twice per home."""
    path = tmp_path_factory.mktemp("mlflow_template") / "empty.db"
    ModelRegistry(f"sqlite:///{path}", str(path.parent), "candidate").client.search_registered_models()
    return path


def with_registries(home: Path, empty: Path) -> None:
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    for name in ("candidate.db", "production.db"):
        shutil.copyfile(empty, home / "mlflow" / name)


def settings_for(home: Path, empty: Path | None = None) -> PlatformSettings:
    if empty is not None:
        with_registries(home, empty)
    with pytest.MonkeyPatch.context() as mp:
        clear_platform_env(mp)
        settings = PlatformSettings.from_env(home)
    settings.ensure_local_dirs()
    return settings


def land(settings: PlatformSettings, day: int) -> None:
    folder = Path(settings.lake_url) / "landing" / UC
    folder.mkdir(parents=True, exist_ok=True)
    landing_data(day).write_csv(folder / "data.csv")


def run_stages(settings, day: int, stages=PIPELINE, run_id: str | None = None) -> dict[str, dict]:
    run = StageRun(use_case(), settings, run_id=run_id or f"day{day}", run_date=DAYS[day], workers=1)
    return {stage: {o.key: o for o in run_stage(stage, run, KEYS).outcomes} for stage in stages}


def state(settings, stage: str, key: str) -> StageRecord | None:
    return read_state(Lake(settings.lake_url), UC, stage, key)


def registry_view(settings) -> dict:
    """Both registries as comparable plain data: every version of every key, and the alias."""
    cand, prod = registries(settings)
    candidates = cand.snapshot(UC).versions
    snap = prod.snapshot(UC)
    return {
        "candidates": {k: [r.version for r in v] for k, v in candidates.items()},
        "production": {
            k: [(r.version, r.tags["source_candidate_version"]) for r in v] for k, v in snap.versions.items()
        },
        "alias": {k: r.version for k, r in snap.current.items()},
    }


def candidate_ref(settings, key: str, version: int):
    cand, _ = registries(settings)
    return next(r for r in cand.snapshot(UC).versions[key] if r.version == version)


# --- skops: exact trusted types ------------------------------------------------------------------


def _fitted_pipelines(spec, rng) -> list[tuple[str, object]]:
    """Every candidate of a use case fitted with and without a text column, as the platform fits them."""
    n, out = 80, []
    frame = pl.DataFrame(
        {"a": rng.normal(size=n), "b": rng.normal(size=n), "c": [("x", "y", None)[i % 3] for i in range(n)]}
    )
    y = rng.normal(size=n)
    for cand in spec.candidates:
        if cand.statistical:  # a series model: placed by time, it takes no feature columns
            t = spec.time_column
            times = pl.date_range(
                dt.date(2021, 1, 4), dt.date(2021, 1, 4) + dt.timedelta(weeks=n - 1), "1w", eager=True
            )
            model = build_pipeline(spec, cand.name, [], [], FREQUENCY_PERIODS["weekly"])
            model.fit(model_input(model, pl.DataFrame({t: times}), [t]), 100 + y)
            out.append((f"{spec.name}/{cand.name}/series", model))
            continue
        for categorical in ([], ["c"]):
            columns = ["a", "b", *categorical]
            model = build_pipeline(spec, cand.name, columns, categorical)
            x = frame_input(frame, columns, categorical) if categorical else to_matrix(frame, columns)
            params = _fit_params(model, categorical)
            if spec.task == "anomaly":
                model.fit(x, **params)
            else:
                model.fit(x, (y > 0).astype(int) if spec.task == "classification" else y, **params)
            out.append((f"{spec.name}/{cand.name}/{'categorical' if categorical else 'numeric'}", model))
    return out


def test_platform_types_are_exactly_what_shipped_models_hold(tmp_path):
    """PLATFORM_TYPES is the union of what skops does not trust by default in every shipped
    candidate, numeric and categorical (OneHotEncoder; OrdinalEncoder for LightGBM), except the
    statsforecast adapter, which a use case trusts through its estimator types; each such
    model saves and loads with its use case's trust, and with no package prefix at all."""
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for spec in load_config().use_cases.values():
        trust = trusted_types(spec.estimator_types, spec.trusted_modules)
        assert not trust.prefixes, f"{spec.name} ships with a package prefix in trusted_modules"
        for name, model in _fitted_pipelines(spec, rng):
            seen |= set(sio.get_untrusted_types(data=sio.dumps(model)))
            folder = tmp_path / name.replace("/", "_")
            sha = write_model_dir(model, str(folder), model_template_dir(), trust)
            assert type(load_model_from_source(str(folder), sha, trust)) is type(model), name
    # the statsforecast adapter is trusted only where a use case lists a statistical candidate
    # (spec.estimator_types), not by the platform's defaults
    adapter = "many_models_platform.core.statistical.StatisticalForecaster"
    assert adapter in seen
    assert seen - {adapter} == set(PLATFORM_TYPES)


class _Dumps:
    """Plain holder for a callable, as a tampered model could carry one."""

    def __init__(self, fn):
        self.fn = fn


@pytest.mark.parametrize("callable_", [np.save, os.system], ids=["numpy.save", "os.system"])
def test_a_model_holding_a_flagged_callable_is_refused_at_save_and_at_load(tmp_path, callable_):
    model = Pipeline([("leak", FunctionTransformer(callable_)), ("model", Ridge())])
    flagged = sio.get_untrusted_types(data=sio.dumps(model))
    assert flagged, "skops flags the callable"
    spec = use_case()
    trust = trusted_types(spec.estimator_types, spec.trusted_modules)
    with pytest.raises(ModelIntegrityError, match="outside the trusted types") as refused:
        write_model_dir(model, str(tmp_path / "saved"), model_template_dir(), trust)
    assert all(t in str(refused.value) for t in flagged)
    assert not (tmp_path / "saved" / MODEL_FILE).exists()
    # written behind the platform's back (with a matching hash): refused when loaded
    folder = tmp_path / "forged"
    folder.mkdir()
    data = sio.dumps(model)
    (folder / MODEL_FILE).write_bytes(data)
    import hashlib

    with pytest.raises(ModelIntegrityError, match="untrusted types"):
        load_model_from_source(str(folder), hashlib.sha256(data).hexdigest(), trust)
    # the old package-prefix allow-list would have let numpy.save through; a prefix is now only
    # ever the user's explicit choice in trusted_modules
    assert TrustedTypes(prefixes=("numpy", "posix", "nt")).refused(flagged) == []


# --- promotion promotes only what was evaluated -------------------------------------------------


def test_a_model_that_was_not_evaluated_never_reaches_production(tmp_path, empty_registry):
    settings = settings_for(tmp_path / "home", empty_registry)
    land(settings, 1)
    day1 = run_stages(settings, 1)
    assert {k: o.info["decision"] for k, o in day1["promoted_model"].items()} == dict.fromkeys(KEYS, "promoted")
    before = registry_view(settings)

    # day 2: new data; raw, training_set and model only (v2 for the changed keys), then promotion alone
    land(settings, 2)
    day2 = run_stages(settings, 2, ["raw", "training_set", "model"])
    assert {k: o.info["version"] for k, o in day2["model"].items()} == {BETTER: 2, FLIP: 2, STEADY: 1, WORSE: 2}
    alone = run_stages(settings, 2, ["promoted_model"], run_id="day2-promote-alone")["promoted_model"]
    for key in CHANGED:
        assert alone[key].status == "skipped"
        assert alone[key].reason == "candidate v2 was not evaluated: the evaluation is of v1; run evaluation first"
        assert state(settings, "promoted_model", key).reason == alone[key].reason  # recorded for the UI
    assert alone[STEADY].info["decision"] == "kept_champion"  # its reused v1 was evaluated on this very data
    after_alone = registry_view(settings)
    assert (after_alone["production"], after_alone["alias"]) == (before["production"], before["alias"])
    folders = {p.name for p in (Path(settings.production_artifact_root) / UC).glob("*/*")}
    assert not any(name.startswith("candidate-v2-") for name in folders)

    # evaluated, the same candidates are promoted under their own version, hash and evaluation
    evaluated = run_stages(settings, 2, ["evaluation", "promoted_model"], run_id="day2-evaluated")
    decisions = {k: o.info["decision"] for k, o in evaluated["promoted_model"].items()}
    assert decisions == {BETTER: "promoted", FLIP: "promoted", STEADY: "kept_champion", WORSE: "kept_champion"}
    _, prod = registries(settings)
    current = prod.snapshot(UC).current
    for key in (BETTER, FLIP):
        info = evaluated["promoted_model"][key].info
        assert info["reason"].startswith("beats champion v1")
        ref, cand = current[key], candidate_ref(settings, key, 2)
        assert (ref.version, info["production_version"]) == (2, 2)
        assert ref.tags["source_candidate_version"] == "2"
        assert ref.tags[HASH_TAG] == cand.tags[HASH_TAG] == info["artifact_sha256"]
        assert ref.tags["source_candidate_run"] == cand.source
        assert ref.tags["evaluation_id"] == info["evaluation_id"] == evaluated["evaluation"][key].info["evaluation_id"]
        assert Path(ref.source).name == f"candidate-v2-{cand.tags[HASH_TAG][:12]}"
        assert load_model_from_source(ref.source, ref.tags[HASH_TAG], use_case().trusted_types) is not None

    # day 3: new data again, but only raw and training_set ran: evaluation refuses the stale
    # candidate, and promotion then has nothing it may promote
    land(settings, 1)
    run_stages(settings, 3, ["raw", "training_set"])
    after = run_stages(settings, 3, ["evaluation", "promoted_model"], run_id="day3-alone")
    for key in CHANGED:
        assert after["evaluation"][key].status == "skipped"
        assert "than today's training set" in after["evaluation"][key].reason
        assert after["evaluation"][key].reason.endswith("run model first")
        assert after["promoted_model"][key].status == "skipped"
        assert after["promoted_model"][key].reason.startswith("evaluation skipped: candidate v2 was fitted on other")
    assert prod.snapshot(UC).current[BETTER].version == 2


def test_promotion_through_the_worker_pool_decides_as_one_process(tmp_path, empty_registry, monkeypatch):
    """From 16 keys up, promoted_model reads each key's records, decides and copies the model in
    the worker pool, and registers from this process in batches while the pool goes on: the
    decisions, records and production versions are those of one process, and a key whose
    candidate file was altered, or whose candidate was never evaluated, fails alone there too."""
    from many_models_platform.core.engine import pool_workers
    from many_models_platform.stages import promoted_model

    monkeypatch.setattr(promoted_model, "REGISTER_BATCH", 10)  # 17 promotions: one batch in the pool, the rest after
    batches, register = [], promoted_model._register
    monkeypatch.setattr(
        promoted_model, "_register", lambda run, prod, b, w: (batches.append(len(b)), register(run, prod, b, w))
    )
    frame = pl.concat([landing_data(1).with_columns(pl.col("segment") + f"-{i}") for i in range(5)])
    keys = sorted(encode_key([s]) for s in frame["segment"].unique())
    altered, unevaluated, weak = keys[0], keys[5], keys[10]
    assert pool_workers(len(keys), 2) == 2, "the pooled path needs at least 16 keys"
    seen = {}
    for workers in (1, 2):
        batches.clear()
        settings = settings_for(tmp_path / f"workers{workers}", empty_registry)
        (Path(settings.lake_url) / "landing" / UC).mkdir(parents=True)
        frame.write_csv(Path(settings.lake_url) / "landing" / UC / "data.csv")
        run = StageRun(use_case(), settings, run_id="day1", run_date=DAYS[1], workers=1)
        for stage in ("raw", "training_set", "model", "evaluation"):
            assert all(o.ok for o in run_stage(stage, run, keys).outcomes)
        model_file = Path(candidate_ref(settings, altered, 1).source) / MODEL_FILE
        original = model_file.read_bytes()
        model_file.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        _edit_state(settings, "evaluation", unevaluated, candidate_version=7)
        _edit_state(settings, "evaluation", weak, metrics={"r2": 0.1})  # below the 0.5 threshold
        outcomes = run_stage("promoted_model", StageRun(use_case(), settings, "promote", DAYS[1], workers), keys)
        by_key = {o.key: o for o in outcomes.outcomes}
        assert by_key[altered].status == "failed" and "was modified after registration" in by_key[altered].reason
        assert by_key[unevaluated].status == "skipped" and "was not evaluated" in by_key[unevaluated].reason
        assert by_key[weak].info["decision"] == "rejected"
        assert by_key[weak].info["reason"].startswith("below threshold: r2 0.1")
        promoted = set(keys) - {altered, unevaluated, weak}
        assert {k for k, o in by_key.items() if o.ok and o.info["decision"] == "promoted"} == promoted
        view = registry_view(settings)
        assert view["alias"] == dict.fromkeys(promoted, 1)
        for key in promoted:
            record = state(settings, "promoted_model", key)
            assert record.ok and record.production_version == 1 and record.info.decision == "promoted"
        assert state(settings, "promoted_model", weak).info.decision == "rejected"
        assert state(settings, "promoted_model", altered).status == "failed"
        assert not pending_intents(Lake(settings.lake_url), UC)
        landed = {p.parent.name for p in (Path(settings.production_artifact_root) / UC).glob("*/*")}
        assert landed == promoted
        # in one process every key is decided before the one batch; in the pool a batch goes out
        # while the workers go on, and the rest after them
        if workers == 1:
            assert batches == [17]
        else:
            assert len(batches) == 2 and sum(batches) == 17 and batches[0] >= 10
        # (the altered key's reason names its home's paths and hashes: checked above)
        seen[workers] = {
            k: (o.status, o.reason if k != altered else "", o.info.get("reason")) for k, o in by_key.items()
        }
    assert seen[1] == seen[2]


@pytest.mark.slow
def test_promoted_model_alone_through_dagster_promotes_nothing_unevaluated(platform, tmp_path, empty_registry):
    """Day 1 through the stage functions; day 2 as a data engineer would click it in the UI:
    materialize raw, training_set and model, then promoted_model alone, for the keys."""
    from dagster import AssetKey, DagsterEventType, EventRecordsFilter, materialize

    from many_models_platform.definitions import build_definitions
    from many_models_platform.defs.factory import RUN_DATE_TAG, partitions_name

    settings, instance = platform
    with_registries(Path(settings.home), empty_registry)
    config = write_config(tmp_path, {UC: body()})
    land(settings, 1)
    run_stages(settings, 1)
    before = registry_view(settings)
    assert before["alias"] == dict.fromkeys(KEYS, 1)

    instance.add_dynamic_partitions(partitions_name(UC), KEYS)
    land(settings, 2)
    defs = build_definitions(str(config))
    assets = {stage: defs.resolve_assets_def(AssetKey([UC, stage])) for stage in STAGES}
    tags = {
        "dagster/asset_partition_range_start": KEYS[0],
        "dagster/asset_partition_range_end": KEYS[-1],
        RUN_DATE_TAG: DAYS[2].isoformat(),
    }
    trained = materialize([assets["raw"], assets["training_set"], assets["model"]], instance=instance, tags=tags)
    assert trained.success
    assert {k: state(settings, "model", k).candidate_version for k in KEYS} == {
        BETTER: 2,
        FLIP: 2,
        STEADY: 1,
        WORSE: 2,
    }
    # each key's model materialization links to the very candidate version it registered
    model_events = instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION, asset_key=AssetKey([UC, "model"])), limit=100
    )
    links = {
        r.asset_materialization.partition: r.asset_materialization.metadata["mlflow_model"].value
        for r in model_events
        if r.run_id == trained.run_id
    }
    newest = registries(settings)[0].latest_versions(UC)
    assert links == {
        key: f"{settings.mlflow_ui_url}/#/models/{UC}.{key}/versions/{newest[key].version}" for key in KEYS
    }
    assert links[BETTER].endswith(f"/#/models/{UC}.{BETTER}/versions/2")
    alone = materialize([assets["promoted_model"]], instance=instance, tags=tags, raise_on_error=False)
    # the run fails only to mark the keys that were not ok as failed partitions (defs/health.py)
    assert not alone.success
    after = registry_view(settings)
    assert (after["production"], after["alias"]) == (before["production"], before["alias"])
    records = instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION, asset_key=AssetKey([UC, "promoted_model"])),
        limit=100,
    )
    meta = {
        r.asset_materialization.partition: {k: v.value for k, v in r.asset_materialization.metadata.items()}
        for r in records
        if r.run_id == alone.run_id
    }
    assert set(meta) == set(KEYS)
    for key in CHANGED:
        assert meta[key]["status"] == "skipped"
        assert meta[key]["reason"] == "candidate v2 was not evaluated: the evaluation is of v1; run evaluation first"
        assert state(settings, "promoted_model", key).status == "skipped"
    assert meta[STEADY]["decision"] == "kept_champion"


def test_evaluation_and_promotion_read_each_registry_a_constant_number_of_times(tmp_path, empty_registry, monkeypatch):
    """One bulk read per map (DESIGN.md, "MLflow cost"): as many reads for one key as for three."""
    settings = settings_for(tmp_path / "home", empty_registry)
    land(settings, 1)
    run_stages(settings, 1, ["raw", "training_set", "model"])
    reads: list[str] = []
    read = ModelRegistry._read

    def counted(self, direct, search_api):
        reads.append(self.role)
        return read(self, direct, search_api)

    monkeypatch.setattr(ModelRegistry, "_read", counted)
    per_batch = []
    for batch in (KEYS[:1], KEYS[1:]):
        for stage in ("evaluation", "promoted_model", "predictions"):
            reads.clear()
            outcomes = run_stage(stage, StageRun(use_case(), settings, run_id=f"r{len(batch)}", workers=1), batch)
            assert all(o.ok for o in outcomes.outcomes)
            per_batch.append((stage, sorted(reads)))
    one, three = per_batch[:3], per_batch[3:]
    assert one == three
    # evaluation: the versions holding the production alias and the newest candidates; promotion
    # the production snapshot (aliases, versions), the newest candidates and the existing model
    # names before registering (its decision tags are writes); scoring: the aliased production
    # versions and the candidate versions they were copied from, to re-check production's hashes
    assert one == [
        ("evaluation", ["candidate", "production"]),
        ("promoted_model", ["candidate", "production", "production", "production"]),
        ("predictions", ["candidate", "production"]),
    ]


# --- the lake is not the integrity anchor -------------------------------------------------------


def _edit_state(settings, stage: str, key: str, **changes) -> None:
    lake = Lake(settings.lake_url)
    path = state_path(lake, UC, stage, key)
    record = lake.read_json(path)
    for name, value in changes.items():  # the pins are the envelope's, the rest the stage's info
        (record if name in PINS else record["info"])[name] = value
    lake.write_json(path, record)


def test_tampered_lake_records_and_artifacts_are_refused_at_evaluation_and_promotion(tmp_path, empty_registry):
    settings = settings_for(tmp_path / "home", empty_registry)
    land(settings, 1)
    run_stages(settings, 1, ["raw", "training_set", "model", "evaluation"])
    # an attacker with write access to the lake, not to the registries
    evil = tmp_path / "evil"
    evil_sha = write_model_dir(
        DummyRegressor(constant=1e6, strategy="constant").fit([[0, 0]], [0]), str(evil), model_template_dir()
    )
    _edit_state(settings, "model", BETTER, source=str(evil), artifact_sha256=evil_sha)
    _edit_state(settings, "evaluation", WORSE, artifact_sha256=evil_sha, candidate_source=str(evil))
    flipped = Path(candidate_ref(settings, FLIP, 1).source) / MODEL_FILE
    original = flipped.read_bytes()
    flipped.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))

    promoted = run_stages(settings, 1, ["promoted_model"], run_id="tampered")["promoted_model"]
    assert promoted[BETTER].status == "failed"
    assert "does not match candidate v1 in the candidate registry (source, artifact_sha256 differ)" in (
        promoted[BETTER].reason
    )
    assert promoted[FLIP].status == "failed"
    assert "was modified after registration" in promoted[FLIP].reason and "refusing to promote it" in (
        promoted[FLIP].reason
    )
    assert promoted[WORSE].status == "failed"
    assert "the evaluation record's artifact_sha256 is not the registered hash" in promoted[WORSE].reason
    assert promoted[STEADY].info["decision"] == "promoted"  # one bad key never sinks the others
    assert registry_view(settings)["alias"] == {STEADY: 1}
    landed = sorted(p.parent.name for p in (Path(settings.production_artifact_root) / UC).glob("*/*"))
    assert landed == [STEADY], "nothing of a refused model lands in production, not even a partial copy"

    evaluated = run_stages(settings, 1, ["evaluation"], run_id="tampered-eval")["evaluation"]
    assert evaluated[BETTER].status == "failed" and "does not match candidate v1" in evaluated[BETTER].reason
    assert evaluated[FLIP].status == "failed" and "refusing to load it" in evaluated[FLIP].reason
    assert evaluated[WORSE].ok and evaluated[STEADY].ok

    # the registry is the truth: the file restored and `model` rerun (it rebuilds its record from
    # the registry), every key goes through
    flipped.write_bytes(original)
    repaired = run_stages(settings, 1, ["model", "evaluation", "promoted_model"], run_id="repaired")
    assert repaired["model"][BETTER].info["reused"] is True
    assert {k: o.info["decision"] for k, o in repaired["promoted_model"].items()} == dict.fromkeys(KEYS, "promoted")
    # steady's promotion of the same run date stands as it was recorded, not decided twice
    assert repaired["promoted_model"][STEADY].info == promoted[STEADY].info
    current = registries(settings)[1].snapshot(UC).current
    for key in KEYS:
        assert current[key].tags[HASH_TAG] == candidate_ref(settings, key, 1).tags[HASH_TAG] != evil_sha


# --- crash consistency ------------------------------------------------------------------------------

# (crash point, the key it kills on): keys run in KEYS order; on day 2, model registers better,
# flip and worse (steady is reused) and promotion promotes better and flip
CRASH_POINTS = [
    "raw:2",
    "training_set:2",
    "model:2",
    "evaluation:2",
    "promoted_model.registered:2",
    "promoted_model:2",
    "predictions:2",
]
DATA_FILES = {"raw": "bronze", "training_set": "training", "predictions": "predictions"}


def killed_on_day_two(home: str, crash_at: str) -> None:
    """In a child process, on a copy of day 1: day 2 until MMP_CRASH_AT kills the process."""
    for var in [v for v in os.environ if v.startswith("MMP_")]:
        del os.environ[var]
    settings = PlatformSettings.from_env(home)
    land(settings, 2)
    os.environ["MMP_CRASH_AT"] = crash_at
    run_stages(settings, 2)


def copy_home(settings: PlatformSettings, home: Path) -> None:
    """A copy of a home's lake and registries (SQLite's backup API: a consistent copy while the
    stores are open). Artifacts stay where they are: the registries point at them by path."""
    shutil.copytree(settings.lake_url, home / "lake")
    (home / "mlflow").mkdir(parents=True)
    for name in ("candidate.db", "production.db"):
        src, dst = sqlite3.connect(Path(settings.home) / "mlflow" / name), sqlite3.connect(home / "mlflow" / name)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()


def records_describe_their_data(settings) -> None:
    """Right after a kill: every record that exists describes the file beside it (its row count
    differs between the days for the changed keys), so no old record describes new data."""
    lake = Lake(settings.lake_url)
    for stage, area in DATA_FILES.items():
        for key in KEYS:
            record = read_state(lake, UC, stage, key)
            if record is None or not record.ok:
                continue
            rows = lake.read_parquet(lake.key_path(area, UC, key, ".parquet")).height
            assert record.info.rows == rows, (stage, key, record.info.rows, rows)


def lake_view(settings) -> dict:
    """Every stage's record per key, without what differs between runs (ids, times)."""
    out = {}
    for stage in PIPELINE:
        for key in KEYS:
            record = state(settings, stage, key)
            info = record.flat_info()
            out[(stage, key)] = (record.status, record.reason)
            if stage == "promoted_model":
                out[(stage, key)] += tuple(
                    info[k] for k in ("decision", "reason", "candidate_version", "production_version")
                )
            elif stage == "predictions":
                out[(stage, key)] += (info["rows"], info["model_version"])
    return out


def test_a_kill_anywhere_then_a_rerun_converges_to_a_clean_run(tmp_path, empty_registry, monkeypatch):
    ctx = multiprocessing.get_context("forkserver")
    # the children fork from a server that has imported the platform once (a cold start costs
    # seconds); Python 3.11's fork server does not take sys.path from its parent, so PYTHONPATH
    # lets it import this module and forkserver_warmup
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
    ctx.set_forkserver_preload([__name__, "forkserver_warmup"])
    threading.Thread(target=multiprocessing.forkserver.ensure_running, daemon=True).start()
    reference = settings_for(tmp_path / "reference", empty_registry)  # the clean run, and day 1 for all
    land(reference, 1)
    run_stages(reference, 1)
    homes = {point: tmp_path / point.replace(":", "_").replace(".", "_") for point in CRASH_POINTS}
    for home in homes.values():
        copy_home(reference, home)
    children = [ctx.Process(target=killed_on_day_two, args=(str(home), point)) for point, home in homes.items()]

    def run_children(at_once: int = 3) -> None:
        for i in range(0, len(children), at_once):
            batch = children[i : i + at_once]
            for child in batch:
                child.start()
            for child in batch:
                child.join(timeout=120)

    launcher = threading.Thread(target=run_children)
    launcher.start()
    try:
        land(reference, 2)
        clean = run_stages(reference, 2)
    finally:
        launcher.join()
        for child in children:
            if child.is_alive():  # a child that hangs instead of dying fails the test, never the session
                child.kill()
                child.join()
    assert {k: o.info["decision"] for k, o in clean["promoted_model"].items()} == {
        BETTER: "promoted",
        FLIP: "promoted",
        STEADY: "kept_champion",
        WORSE: "kept_champion",
    }
    expected_registries, expected_lake = registry_view(reference), lake_view(reference)

    for (point, home), child in zip(homes.items(), children, strict=True):
        assert child.exitcode == -9, f"{point}: the child was not killed (exit code {child.exitcode})"
        settings = settings_for(home)
        records_describe_their_data(settings)
        view = registry_view(settings)
        if point == "model:2":  # flip's v2 is registered, its record still names v1: evaluation refuses it
            assert view["candidates"][FLIP] == [1, 2] and state(settings, "model", FLIP).candidate_version == 1
            refused = run_stages(settings, 2, ["evaluation"], run_id="after-kill")["evaluation"][FLIP]
            assert refused.status == "skipped" and refused.reason.endswith("run model first")
        if point.startswith("promoted_model"):  # flip's v2 is in production, its decision is not recorded
            assert view["production"][FLIP] == [(1, "1"), (2, "2")]
            assert view["alias"][FLIP] == (2 if point == "promoted_model:2" else 1)
            assert state(settings, "promoted_model", FLIP).dagster_run_id == "day1"
            # versions are committed a batch at a time, then aliases, then records key by key:
            # killed before any alias moved, both of the day's promotions are pending
            pending = {BETTER, FLIP} if point == "promoted_model.registered:2" else {FLIP}
            assert pending_intents(Lake(settings.lake_url), UC) == pending

        rerun = run_stages(settings, 2, run_id="day2-rerun")
        assert registry_view(settings) == expected_registries, point
        assert lake_view(settings) == expected_lake, point
        assert not pending_intents(Lake(settings.lake_url), UC)
        # one promotion per production version: each day-2 version is named by exactly one record
        _, prod = registries(settings)
        for key in (BETTER, FLIP):
            evaluation_id = state(settings, "promoted_model", key).evaluation_id
            made = [r for r in prod.snapshot(UC).versions[key] if r.tags.get("evaluation_id") == evaluation_id]
            assert [r.version for r in made] == [2], point
        if point.startswith("promoted_model"):
            assert rerun["promoted_model"][FLIP].info["recovered"] is True
            assert rerun["promoted_model"][FLIP].info["decided_by"] == "dagster run day2"


def test_a_refit_model_folder_reaches_production_only_with_both_registered_hashes(tmp_path):
    """With refit the folder holds the served model.skops and the evaluated model_eval.skops:
    copying it into production checks each against its registered hash, and an altered or
    unpinned model_eval.skops leaves nothing at the destination."""
    x, y = np.arange(20.0).reshape(-1, 1), np.arange(20.0)
    src = tmp_path / "candidate"
    sha = write_model_dir(Ridge().fit(x, y), str(src), model_template_dir())
    eval_sha = write_model_file(Ridge().fit(x[:15], y[:15]), str(src), EVAL_MODEL_FILE)
    copy_model_dir(str(src), str(tmp_path / "ok"), sha, eval_sha)
    served = load_model_from_source(str(tmp_path / "ok"), sha)
    evaluated = load_model_from_source(str(tmp_path / "ok"), eval_sha, file=EVAL_MODEL_FILE)
    assert isinstance(served, Ridge) and isinstance(evaluated, Ridge)
    with pytest.raises(ModelIntegrityError, match="eval_artifact_sha256"):
        copy_model_dir(str(src), str(tmp_path / "unpinned"), sha)  # the eval file's hash is not pinned
    assert not (tmp_path / "unpinned").exists()
    data = (src / EVAL_MODEL_FILE).read_bytes()
    (src / EVAL_MODEL_FILE).write_bytes(sio.dumps(Ridge().fit(x, -y)))  # swapped behind the registry's back
    with pytest.raises(ModelIntegrityError, match=r"model_eval\.skops was modified"):
        copy_model_dir(str(src), str(tmp_path / "altered"), sha, eval_sha)
    assert not (tmp_path / "altered").exists()
    (src / EVAL_MODEL_FILE).write_bytes(data)
    copy_model_dir(str(src), str(tmp_path / "altered"), sha, eval_sha)
    assert (tmp_path / "altered" / EVAL_MODEL_FILE).read_bytes() == data
