"""Registries and promotion against real MLflow stores: SQLite (embedded) and PostgreSQL.

One module fixture per backend runs the pipeline stages (no Dagster) over three days of
hand-made data whose outcomes are known in advance:

* ``better``: day 2's relationship flips, so the champion fails on the new holdout and the
  new candidate is promoted;
* ``worse``: day 2's training rows are noisy while its holdout is clean, so the new candidate
  is worse than the champion on the *same* holdout and the champion stays;
* ``noise``: pure noise, below the r2 threshold every day;
* a hostile key value, unchanged, so its candidate is reused and stays in production.

After day 2 ``better`` is rolled back; day 3 must not promote the rolled-back candidate again.
On PostgreSQL the production registry is read through a role that may only SELECT, and only
promotion holds the write URI: the same split a deployment uses.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest_core import ExplodingRegressor, home_settings, make_spec, regression_body
from pg_helpers import postgres_database, read_only_role, sqlalchemy_url
from sklearn.dummy import DummyRegressor

from many_models_platform.core.engine import KeyOutcome
from many_models_platform.core.keys import encode_key, is_encoded_key
from many_models_platform.lifecycle import model_family, record_rollback, registries, resolve_key, rollback
from many_models_platform.stages import STAGES, StageRun, run_stage
from many_models_platform.stages.evaluation import evaluate_models
from many_models_platform.stages.predictions import score
from many_models_platform.storage.registry import (
    HASH_TAG,
    MODEL_FILE,
    ModelIntegrityError,
    ModelRegistry,
    ReadOnlyRegistryError,
    RegistryError,
    load_model_from_source,
    model_template_dir,
    registered_model_name,
    run_metric_name,
    write_model_dir,
)
from many_models_platform.storage.settings import PlatformSettings
from many_models_platform.storage.warehouse import Warehouse

ROWS = 80
HOSTILE = 'seg/001, "Zürich".. ~%20東京'
BETTER, WORSE, NOISE = encode_key(["better"]), encode_key(["worse"]), encode_key(["noise"])
HOSTILE_KEY = encode_key([HOSTILE])
KEYS = [BETTER, WORSE, NOISE, HOSTILE_KEY]
DAYS = [dt.date(2025, 6, d) for d in (1, 2, 3)]


def use_case():
    body = regression_body(
        keys=["segment"],
        time_column="day",
        calendar_features=False,
        metric="r2",
        candidates=[{"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}],
        promotion={"threshold": 0.5, "min_improvement": 0.0},
        source={"path": "landing/reg/*.csv"},
    )
    return make_spec(body, name="reg")


def frame(segment: str, y: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> pl.DataFrame:
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(len(y))]
    return pl.DataFrame({"segment": segment, "day": days, "x1": x1, "x2": x2, "y": y})


def landing_data(day: int) -> pl.DataFrame:
    rng = np.random.default_rng(7)
    x1, x2 = rng.normal(size=ROWS), rng.normal(size=ROWS)
    clean = 2 * x1 + 0.5 * x2
    n_train = ROWS - round(ROWS * 0.25)
    better = clean if day == 1 else -2 * x1 + x2
    worse = clean.copy()
    if day >= 2:  # noisy training rows, clean holdout rows
        worse[:n_train] += rng.normal(scale=1.5, size=n_train)
    noise = rng.normal(size=ROWS)
    return pl.concat(
        [
            frame("better", better, x1, x2),
            frame("worse", worse, x1, x2),
            frame("noise", noise, x1, x2),
            frame(HOSTILE, clean, x1, x2),
        ]
    )


@dataclass
class World:
    backend: str
    spec: object
    settings: PlatformSettings
    days: list[dict[str, dict[str, KeyOutcome]]]
    rollback_done: object
    scored_after_rollback: dict[str, KeyOutcome]
    read_only_url: str | None = None

    def decisions(self, day: int) -> dict[str, str]:
        return {k: o.info.get("decision", o.status) for k, o in self.days[day]["promoted_model"].items()}

    def run(self, run_id: str, day: dt.date = DAYS[-1]) -> StageRun:
        return StageRun(self.spec, self.settings, run_id=run_id, run_date=day)


def run_day(spec, settings, day: dt.date) -> dict[str, dict[str, KeyOutcome]]:
    run = StageRun(spec, settings, run_id=f"run-{day.isoformat()}", run_date=day)
    return {stage: {o.key: o for o in run_stage(stage, run, KEYS).outcomes} for stage in STAGES}


def build_world(backend: str, home: Path, env: dict[str, str]) -> World:
    settings = home_settings(home, env)
    spec = use_case()
    landing = Path(settings.lake_url) / "landing" / "reg"
    landing.mkdir(parents=True)
    days = []
    world = World(backend, spec, settings, days, None, {})
    for i, day in enumerate(DAYS[:2], start=1):
        landing_data(i).write_csv(landing / "data.csv")
        days.append(run_day(spec, settings, day))
    _, prod = registries(settings, write_production=True)
    world.rollback_done = rollback(spec, prod, BETTER, by="test")
    record_rollback(settings, spec, world.rollback_done)
    run = StageRun(spec, settings.for_stage("predictions"), run_id="run-after-rollback", run_date=DAYS[1])
    world.scored_after_rollback = {o.key: o for o in score(run, KEYS).outcomes}
    days.append(run_day(spec, settings, DAYS[2]))  # same data as day 2
    return world


@contextlib.contextmanager
def postgres_registries():
    with postgres_database("mmp_reg_cand") as cand, postgres_database("mmp_reg_prod") as prod:
        write_url = sqlalchemy_url(prod)
        ModelRegistry(write_url, "/tmp", "production").client.search_registered_models()  # creates MLflow's schema
        with read_only_role(prod) as role:
            yield {
                "MMP_CANDIDATE_REGISTRY_URI": sqlalchemy_url(cand),
                "MMP_PRODUCTION_REGISTRY_URI": sqlalchemy_url(prod, user=role),
                "MMP_PRODUCTION_REGISTRY_WRITE_URI": write_url,
            }


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory) -> World:
    home = tmp_path_factory.mktemp(f"mmp_{request.param}")
    if request.param == "sqlite":
        yield build_world("sqlite", home, {})
        return
    with postgres_registries() as env:
        w = build_world("postgresql", home, env)
        w.read_only_url = env["MMP_PRODUCTION_REGISTRY_URI"]
        yield w


def test_day1_first_models_promoted_and_noise_rejected_below_threshold(world):
    assert world.decisions(0) == {
        BETTER: "promoted",
        WORSE: "promoted",
        NOISE: "rejected",
        HOSTILE_KEY: "promoted",
    }
    noise = world.days[0]["promoted_model"][NOISE]
    assert noise.info["reason"].startswith("below threshold: r2")
    assert noise.info["production_version"] is None


def test_day2_better_candidate_promoted_and_worse_keeps_champion(world):
    decisions = world.decisions(1)
    assert decisions[BETTER] == "promoted"
    assert decisions[WORSE] == "kept_champion"
    assert decisions[NOISE] == "rejected"
    assert decisions[HOSTILE_KEY] == "kept_champion"
    better = world.days[1]["promoted_model"][BETTER].info
    assert better["reason"].startswith("beats champion v1")
    assert better["champion_value"] < better["candidate_value"]
    assert better["production_version"] == 2
    worse = world.days[1]["promoted_model"][WORSE].info
    # measured on the same holdout: the champion scores better than the new candidate
    assert worse["champion_value"] > worse["candidate_value"] > 0.5
    assert worse["production_version"] == 1 and "stays" in worse["reason"]
    hostile = world.days[1]["promoted_model"][HOSTILE_KEY].info
    assert hostile["reason"] == "this candidate is already in production"
    assert world.days[1]["model"][HOSTILE_KEY].info.get("reused") is True


def test_production_entries_carry_alias_tags_and_their_own_artifacts(world):
    _, prod = registries(world.settings)
    snap = prod.snapshot("reg")
    assert set(snap.current) == {WORSE, HOSTILE_KEY, BETTER}
    ref = snap.current[WORSE]
    for tag in ("use_case", "key", "source_candidate_version", "data_fingerprint", HASH_TAG, "promoted_at"):
        assert ref.tags.get(tag), tag
    assert ref.tags["metric.r2"] and ref.tags["promoted_by"] == "dagster run run-2025-06-01"
    # production's copy lives under the production artifact root, not in the candidate store
    assert ref.source.startswith(world.settings.production_artifact_root)
    assert ref.tags["source_candidate_run"].startswith(world.settings.artifact_root)
    mv = prod.client.get_model_version_by_alias(registered_model_name("reg", WORSE), "production")
    assert int(mv.version) == ref.version == 1


def test_rollback_restores_previous_version_and_is_recorded(world):
    done = world.rollback_done
    assert (done.from_version, done.to_version) == (2, 1)
    _, prod = registries(world.settings)
    snap = prod.snapshot("reg")
    assert snap.current[BETTER].version == 1
    v2 = next(r for r in snap.versions[BETTER] if r.version == 2)
    assert v2.tags["rolled_back_to"] == "1" and v2.tags["rolled_back_by"] == "test"
    # scoring right after the rollback used v1
    scored = world.scored_after_rollback[BETTER]
    assert scored.ok and scored.info["model_version"] == 1
    wh = Warehouse(world.settings.warehouse_url, read_only=True)
    try:
        rows = wh.query(
            "SELECT decision, champion_version, production_version, decided_by, dagster_run_id "
            "FROM promotion_history WHERE use_case = 'reg' AND key = :k AND decision = 'rolled_back'",
            k=BETTER,
        )
    finally:
        wh.dispose()
    assert rows.height == 1
    row = rows.row(0, named=True)
    assert (row["champion_version"], row["production_version"], row["decided_by"]) == (2, 1, "test")
    assert row["dagster_run_id"].startswith("rollback-")


def test_rolled_back_candidate_is_not_promoted_again(world):
    day3 = world.days[2]["promoted_model"][BETTER].info
    assert day3["decision"] == "rejected"
    assert "rolled back" in day3["reason"]
    _, prod = registries(world.settings)
    assert prod.snapshot("reg").current[BETTER].version == 1


def test_rollback_without_an_earlier_version_is_refused(world):
    _, prod = registries(world.settings, write_production=True)
    with pytest.raises(RegistryError, match="first production version"):
        rollback(world.spec, prod, WORSE)
    with pytest.raises(RegistryError, match="no production model"):
        rollback(world.spec, prod, NOISE)


def test_model_family_view_uses_a_constant_number_of_registry_queries(world):
    import sqlalchemy as sa

    cand, prod = registries(world.settings)
    statements = []
    for reg in (cand, prod):
        sa.event.listen(reg._sql(), "before_cursor_execute", lambda *a, **kw: statements.append(a[2]))
    family = model_family(world.spec, cand, prod)
    assert len(statements) == 3  # newest candidates, production aliases, production versions
    status = dict(zip(family["key"], family["status"], strict=True))
    assert status == {BETTER: "behind", WORSE: "behind", NOISE: "unpromoted", HOSTILE_KEY: "current"}
    row = family.filter(pl.col("key") == BETTER).row(0, named=True)
    assert row["candidate_version"] == 2 and row["production_version"] == 1
    assert row["production_source_version"] == 1
    assert row["production_value"] > 0.99  # v1 was fit on day 1's clean data


def test_training_stages_cannot_write_production(world):
    for stage in ("model", "evaluation", "predictions", "published"):
        run = StageRun(world.spec, world.settings.for_stage(stage), run_id="x")
        with pytest.raises(ReadOnlyRegistryError, match="only the promotion stage"):
            run.production_writer()
        with pytest.raises(ReadOnlyRegistryError, match="read-only"):
            run.production().set_alias("reg", WORSE, 1)
    promotion = StageRun(world.spec, world.settings.for_stage("promoted_model"), run_id="x")
    assert promotion.production_writer().writable


@pytest.mark.parametrize("world", ["postgresql"], indirect=True)
def test_read_only_credentials_are_refused_by_the_store_itself(world):
    """SQLite has no users: there the read-only registry object above is the guard."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=world.read_only_url, registry_uri=world.read_only_url)
    assert client.get_registered_model(registered_model_name("reg", WORSE)).aliases["production"] == 1
    with pytest.raises(Exception, match=r"(?i)permission denied"):
        client.set_registered_model_alias(registered_model_name("reg", WORSE), "intruder", "1")
    with pytest.raises(Exception, match=r"(?i)permission denied"):
        client.create_registered_model("reg.intruder")


def test_tampered_artifact_fails_to_load_with_a_clear_error(world):
    _, prod = registries(world.settings)
    ref = prod.snapshot("reg").current[HOSTILE_KEY]
    path = Path(ref.source) / MODEL_FILE
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ModelIntegrityError, match="modified after registration"):
            load_model_from_source(ref.source, ref.tags[HASH_TAG])
        outcomes = {o.key: o for o in score(world.run("tamper"), KEYS).outcomes}
        assert outcomes[HOSTILE_KEY].status == "failed"
        assert "modified after registration" in outcomes[HOSTILE_KEY].reason
        assert outcomes[WORSE].ok  # one bad artifact never sinks the other keys
        # evaluation does not fail the key: the unloadable champion is just not compared
        evaluated = evaluate_models(world.run("tamper"), [HOSTILE_KEY]).outcomes[0]
        assert evaluated.ok and evaluated.info["champion_metrics"] is None
        assert "champion cannot be loaded" in evaluated.info["champion_note"]
    finally:
        path.write_bytes(original)
    assert load_model_from_source(ref.source, ref.tags[HASH_TAG]) is not None


def test_hostile_keys_map_to_valid_distinct_registry_names(world):
    cand, _ = registries(world.settings)
    names = cand.existing_names("reg")
    assert registered_model_name("reg", HOSTILE_KEY) in names
    assert resolve_key(world.spec, HOSTILE, list(names)) == HOSTILE_KEY
    assert resolve_key(world.spec, f"segment={HOSTILE}") == HOSTILE_KEY


def test_a_key_of_two_columns_reads_with_or_without_a_space_after_the_comma():
    from conftest_core import forecast_body, make_spec

    spec = make_spec(forecast_body())  # keys store, brand
    for text in ("store=CON, brand=z y", "store=CON,brand=z y", "store=CON,   brand=z y"):
        assert resolve_key(spec, text) == "CON.z%20y", text


def test_models_load_with_mlflow_itself(world):
    """The directories we write are real MLflow skops models: MLflow loads them with the
    trusted types recorded in MLmodel."""
    import mlflow.sklearn

    _, prod = registries(world.settings)
    ref = prod.snapshot("reg").current[WORSE]
    model = mlflow.sklearn.load_model(ref.source)
    assert model.predict(np.zeros((1, 2))).shape == (1,)


# --- without a registry ---------------------------------------------------------------


def test_distinct_hostile_values_give_distinct_valid_names():
    values = ["a.b", "a%2Eb", "a/b", "a b", "a_b", "", "~", "..", "Zürich", "東京", "x'y", 'x"y', "a,b"]
    names = {registered_model_name("uc", encode_key([v])) for v in values}
    assert len(names) == len(values)
    for name in names:
        use_case, _, key = name.partition(".")
        assert use_case == "uc" and is_encoded_key(key)
        assert "/" not in name and "'" not in name and " " not in name


def test_untrusted_types_are_refused_at_save_time(tmp_path):
    with pytest.raises(ModelIntegrityError, match="ExplodingRegressor"):
        write_model_dir(ExplodingRegressor(), str(tmp_path / "m"), model_template_dir())
    trusted = ["conftest_core.ExplodingRegressor"]
    sha = write_model_dir(ExplodingRegressor(), str(tmp_path / "ok"), model_template_dir(), [*trusted, "numpy"])
    with pytest.raises(ModelIntegrityError, match="untrusted types"):
        load_model_from_source(str(tmp_path / "ok"), sha)  # the default trust list does not include it
    assert load_model_from_source(str(tmp_path / "ok"), sha, trusted).message == "boom"


def test_a_model_without_a_recorded_hash_is_refused(tmp_path):
    from sklearn.linear_model import Ridge

    write_model_dir(Ridge(), str(tmp_path / "m"), model_template_dir())
    with pytest.raises(ModelIntegrityError, match="no artifact_sha256"):
        load_model_from_source(str(tmp_path / "m"), None)


def test_direct_table_reads_match_mlflows_search_api(world):
    """The fast read path (MLflow's tables, one query) and MLflow's own search API agree."""
    for reg in registries(world.settings):
        every = reg.all_versions("reg")
        # each key's oldest version, a version that does not exist, and a key that does not
        wanted = {key: min(versions) for key, versions in every.items()} | {"no-such-key": 1}
        wanted[next(iter(every))] = 99
        expected = {k: every[k][v] for k, v in wanted.items() if v in every.get(k, {})}
        assert len(expected) == len(every) - 1

        def reads(reg=reg, wanted=wanted):
            return (
                reg.latest_versions("reg"),
                reg.snapshot("reg"),
                reg.existing_names("reg"),
                reg.aliased_versions("reg"),
                reg.versions_at("reg", wanted),
            )

        fast = reads()
        assert reg._sql() is not None
        reg._reader = False  # force the search API
        slow = reads()
        assert fast[0] == slow[0]
        assert fast[1].current == slow[1].current and fast[1].versions == slow[1].versions
        assert fast[2] == slow[2] and len(fast[2]) == (4 if reg.role == "candidate" else 3)
        # the aliased versions alone, and exactly the versions asked for: what the whole history says
        assert fast[3] == slow[3] == fast[1].current
        assert fast[4] == slow[4] == expected
        if reg.role == "production":
            assert fast[3]


def test_roll_forward_then_back_again(world):
    """Undoing a rollback with --to-version trusts the restored version again, so the next
    plain rollback goes back one step instead of skipping it (runs last: it ends where it began)."""
    _, prod = registries(world.settings, write_production=True)
    forward = rollback(world.spec, prod, BETTER, by="test", to_version=2)
    assert (forward.from_version, forward.to_version) == (1, 2)
    assert forward.history_row["reason"] == "rolled forward from v1 to v2"
    snap = prod.snapshot("reg")
    assert snap.current[BETTER].version == 2 and "rolled_back_at" not in snap.current[BETTER].tags
    assert not any(r.tags.get("rolled_back_at") for r in snap.versions[BETTER])
    back = rollback(world.spec, prod, BETTER, by="test")
    assert (back.from_version, back.to_version) == (2, 1)
    assert prod.snapshot("reg").current[BETTER].version == 1


# --- registry records a person can read, and scoring's re-check (docs/registry.md) ---------------


def test_registry_records_say_what_was_decided_and_why_with_metrics_as_numbers(world):
    """Descriptions name the use case, the key, the metric, the decision and its reason; every
    candidate promotion decided about carries ``decision`` / ``decision_reason`` tags (rejected
    ones too); the training run holds each key's metrics as numbers; MLmodel has a signature."""
    import mlflow.models

    cand, prod = registries(world.settings)
    writer = cand.writer
    name = registered_model_name("reg", NOISE)
    assert "Use case **reg**, key **segment=noise**" in writer.get_registered_model(name).description
    assert "Metric: r2" in writer.get_registered_model(name).description
    # noise is rejected every day, and its newest candidate says so
    noise = writer.get_model_version(name, str(cand.latest_versions("reg")[NOISE].version))
    assert noise.tags["decision"] == "rejected" and noise.tags["decision_reason"].startswith("below threshold: r2")
    assert "key **segment=noise**" in noise.description and "r2 on the holdout" in noise.description
    # better's v2 was promoted on day 2, rolled back, and refused on day 3: its tag says the last decision
    expected = {(BETTER, 1): "promoted", (BETTER, 2): "rejected", (WORSE, 1): "promoted", (WORSE, 2): "kept_champion"}
    for (key, version), decision in expected.items():
        tags = writer.get_model_version(registered_model_name("reg", key), str(version)).tags
        assert tags["decision"] == decision, (key, version)
    # the hostile key's reused candidate stays "promoted", not "kept_champion: already in production"
    hostile = writer.get_model_version(registered_model_name("reg", HOSTILE_KEY), "1").tags
    assert (hostile["decision"], hostile["decision_reason"]) == ("promoted", "first model for this key")
    # a production version says where it came from and why it is there
    ref = prod.snapshot("reg").current[WORSE]
    mv = prod.writer.get_model_version(ref.name, str(ref.version))
    assert mv.tags["decision"] == "promoted" and mv.tags["decision_reason"] == "first model for this key"
    assert "Copied from candidate v1" in mv.description and "Decision: **promoted**" in mv.description
    # the training run: each fitted key's metrics as numbers the MLflow UI sorts and charts
    for key in (WORSE, HOSTILE_KEY):
        version = writer.get_model_version(registered_model_name("reg", key), "1")
        metrics = cand.client.get_run(version.run_id).data.metrics
        assert metrics[run_metric_name("r2", key)] == pytest.approx(float(version.tags["metric.r2"]))
    assert run_metric_name("r2", HOSTILE_KEY) == "r2/" + HOSTILE_KEY.replace("%", "_").replace("~", "_")
    # the MLmodel signature: the features by name, a number out
    signature = mlflow.models.Model.load(ref.source).signature
    assert signature.inputs.input_names() == ref.tags["features"].split(",") == ["x1", "x2"]
    assert signature.outputs.to_dict() == [{"type": "double", "required": True}]


def test_scoring_rechecks_production_hashes_against_the_candidate_registry(world):
    """Someone who can write the production registry and its artifacts swaps a model and its
    hash tag: scoring compares the tag with the candidate registry's record and refuses that key;
    the others score."""
    _, prod = registries(world.settings, write_production=True)
    ref = prod.snapshot("reg").current[WORSE]
    path = Path(ref.source) / MODEL_FILE
    original = path.read_bytes()
    evil = Path(ref.source).parent / "evil"
    constant = DummyRegressor(strategy="constant", constant=1e6).fit(np.zeros((2, 2)), [0.0, 0.0])
    evil_sha = write_model_dir(constant, str(evil), model_template_dir())
    try:
        path.write_bytes((evil / MODEL_FILE).read_bytes())
        prod.set_version_tags("reg", WORSE, ref.version, {HASH_TAG: evil_sha})
        outcomes = {o.key: o for o in score(world.run("tamper-production"), KEYS).outcomes}
        assert outcomes[WORSE].status == "failed"
        assert f"production v{ref.version}'s artifact_sha256 differ" in outcomes[WORSE].reason
        assert "candidate registry recorded for candidate v1" in outcomes[WORSE].reason
        assert outcomes[BETTER].ok and outcomes[HOSTILE_KEY].ok  # the others score
        assert outcomes[HOSTILE_KEY].info["candidate_version"] == 1
    finally:
        path.write_bytes(original)
        prod.set_version_tags("reg", WORSE, ref.version, {HASH_TAG: ref.tags[HASH_TAG]})
    assert score(world.run("restored"), [WORSE]).outcomes[0].ok


def _open_registry(uri: str, root: str, barrier) -> str:
    from many_models_platform.storage.registry import ModelRegistry

    barrier.wait(60)
    registry = ModelRegistry(uri, root, role="production")
    return str(sorted(registry.snapshot("uc").current))


def test_processes_opening_a_new_embedded_registry_at_once_all_succeed(tmp_path):
    """A ranged run's stage and a sensor (or two ranged runs) may be the first to open an
    embedded registry at the same moment; MLflow creating its tables twice failed one of them
    ("index ... already exists"). Four processes released together must all read it."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import mlflow  # noqa: F401 - imported once here, before the fork, so the children race on the store

    ctx = mp.get_context("fork")
    barrier = ctx.Manager().Barrier(4)
    uri = f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}"
    with ProcessPoolExecutor(4, mp_context=ctx) as pool:
        futures = [pool.submit(_open_registry, uri, str(tmp_path / "artifacts"), barrier) for _ in range(4)]
        assert [f.result(timeout=300) for f in futures] == ["[]"] * 4


@contextlib.contextmanager
def _fresh_registry_uri(tmp_path: Path, backend: str):
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'batch.db'}"
        return
    with postgres_database("mmp_reg_batch") as db:
        yield sqlalchemy_url(db)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_batched_names_and_tags_match_mlflows_own_calls_in_a_few_transactions(tmp_path, backend):
    """New registered models (register_many) and decision tags (tag_many) are written many per
    transaction on an SQL store: the rows are those MLflow's one-call-per-write path makes, a
    write that fails (here a version that does not exist) fails alone, and the commits do not
    grow with the number of keys."""
    import sqlalchemy as sa

    with _fresh_registry_uri(tmp_path, backend) as uri:
        reg = ModelRegistry(uri, str(tmp_path / "artifacts"), "candidate")
        keys = [f"k{i:02d}" for i in range(30)]

        def items(uc):
            return [(k, f"/src/{uc}/{k}", {"use_case": uc, "key": k, "metric": "r2", "metric.r2": "0.5"}) for k in keys]

        commits: list[int] = []
        engine = reg.writer.store.engine
        sa.event.listen(engine, "commit", lambda conn: commits.append(1))
        batched = reg.register_many("uc", items("uc"), None)
        commits_batched = len(commits)
        existing: set[str] = set()
        single = {k: reg.register("vc", k, s, None, t, existing) for k, s, t in items("vc")}  # one call per write
        assert len(commits) - commits_batched == 2 * len(keys)  # MLflow's path: name, then version
        assert commits_batched <= len(keys) + 2  # the versions, plus one transaction for every new name
        assert batched == single == dict.fromkeys(keys, 1)
        for k in keys:
            a, b = reg.client.get_registered_model(f"uc.{k}"), reg.client.get_registered_model(f"vc.{k}")
            assert a.tags == {"use_case": "uc", "key": k} and b.tags == {"use_case": "vc", "key": k}
            assert a.description == b.description.replace("vc", "uc")
        # versions of existing names: the rows MLflow's create_model_version writes, numbered
        # after each name's latest, 30 of them in one transaction
        before = {k: reg.client.get_registered_model(f"uc.{k}").last_updated_timestamp for k in keys}
        commits.clear()
        assert reg.register_many("uc", items("uc"), "run-2") == dict.fromkeys(keys, 2)
        assert len(commits) == 1
        for k in keys:
            a, b = reg.client.get_model_version(f"uc.{k}", "2"), reg.client.get_model_version(f"vc.{k}", "1")
            assert (a.source, a.run_id, a.status) == (f"/src/uc/{k}", "run-2", b.status)
            assert a.description == b.description.replace("vc", "uc")
            assert a.tags == {t: v.replace("vc", "uc") for t, v in b.tags.items()}
            assert reg.client.get_registered_model(f"uc.{k}").last_updated_timestamp >= before[k]
        # the tables' own rows, every column (the batch inserts the tables with their defaults)
        with engine.connect() as conn:

            def table_rows(table: str, name: str, version: int) -> list[dict]:
                query = sa.text(f"SELECT * FROM {table} WHERE name = :n AND version = :v")
                rows = [dict(r._mapping) for r in conn.execute(query, {"n": name, "v": version})]
                differ = {"name", "version", "creation_time", "last_updated_time", "source", "storage_location"}
                differ.add("run_id")
                shown = ({c: str(v).replace("vc", "uc") for c, v in r.items() if c not in differ} for r in rows)
                return sorted(shown, key=str)

            for table in ("model_versions", "model_version_tags"):
                batched_rows, single_rows = table_rows(table, "uc.k07", 2), table_rows(table, "vc.k07", 1)
                assert batched_rows and batched_rows == single_rows

        decision = {"decision": "rejected", "decision_reason": "below threshold"}
        # the batch is rolled back on the missing version, then written item by item
        failed = reg.tag_many("uc", [*((k, 1, decision) for k in keys), ("missing", 1, decision)])
        assert set(failed) == {"missing"} and "not found" in str(failed["missing"]).lower()
        for k in keys:
            reg.set_version_tags("vc", k, 1, decision)
        for k in keys:
            a, b = reg.client.get_model_version(f"uc.{k}", "1"), reg.client.get_model_version(f"vc.{k}", "1")
            assert {t: a.tags[t] for t in decision} == decision == {t: b.tags[t] for t in decision}
            assert set(a.tags) == set(b.tags)
        commits.clear()
        assert reg.tag_many("uc", [(k, 1, decision) for k in keys]) == {}
        assert len(commits) == 1  # 30 keys, 60 tags: one transaction
        changed = {"decision": "promoted", "decision_reason": "beats champion v1"}
        assert reg.tag_many("uc", [(k, 1, changed) for k in keys]) == {}
        for k in keys:  # replaced in place, as set_model_version_tag does
            tags = reg.client.get_model_version(f"uc.{k}", "1").tags
            assert {t: tags[t] for t in changed} == changed and set(tags) == set(a.tags)

        # aliases: set on the new versions in one more transaction, then moved by the next ones
        commits.clear()
        assert reg.register_many("uc", items("uc"), None, alias="production") == dict.fromkeys(keys, 3)
        assert len(commits) == 2
        assert reg.register_many("uc", items("uc")[:5], None, alias="production") == dict.fromkeys(keys[:5], 4)
        for i, k in enumerate(keys):
            aliased = reg.client.get_model_version_by_alias(f"uc.{k}", "production")
            assert int(aliased.version) == (4 if i < 5 else 3)
            assert reg.client.get_registered_model(f"uc.{k}").aliases == {"production": aliased.version}


def _skops_layout(data: bytes) -> tuple[str, list[bytes]]:
    """A skops archive's parsed schema and entries, with what differs between any two saves of
    one model (entry file names and ``__id__`` values, both memory addresses) numbered in order."""
    import io
    import json
    import re
    import zipfile

    archive = zipfile.ZipFile(io.BytesIO(data))
    names = [n for n in archive.namelist() if n != "schema.json"]
    schema = json.dumps(json.loads(archive.read("schema.json")))
    for i, name in enumerate(names):
        schema = schema.replace(f'"{name}"', f'"entry{i}"')
    ids: dict[str, str] = {}
    schema = re.sub(r'"__id__": (\d+)', lambda m: f'"__id__": {ids.setdefault(m.group(1), str(len(ids)))}', schema)
    return schema, [archive.read(n) for n in names]


def test_compact_skops_files_are_skops_own_archive_and_load_the_same_model(monkeypatch):
    """skops_bytes writes skops' archive with a compact schema.json: the same entries and the
    same schema as skops.io.dumps once parsed (skops' own, from a fresh interpreter: this
    process may have registered skops_bytes' Booster state function), loadable by skops,
    predicting the same, with LightGBM's model text written once, not twice."""
    import pickle
    import subprocess
    import sys

    import lightgbm.basic
    import skops.io as sio
    from lightgbm import LGBMRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from many_models_platform.storage.registry import skops_bytes

    x = np.random.default_rng(0).normal(size=(500, 4))
    y = x @ np.arange(4.0)
    model = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
            ("model", LGBMRegressor(n_estimators=5, verbose=-1)),
        ]
    ).fit(x, y)
    texts = []
    to_string = lightgbm.basic.Booster.model_to_string
    counted = lambda b, **kw: texts.append(1) or to_string(b, **kw)  # noqa: E731
    monkeypatch.setattr(lightgbm.basic.Booster, "model_to_string", counted)
    ours = skops_bytes(model)
    assert len(texts) == 1  # skops' generic state function serializes a Booster twice
    monkeypatch.undo()
    # skops' own archive and ours of one object, in a fresh interpreter where skops_bytes has
    # not registered its Booster state function yet (the memo ids follow object identity)
    both = (
        "import pickle, sys, skops.io\n"
        "from many_models_platform.storage.registry import skops_bytes\n"
        "m = pickle.load(sys.stdin.buffer)\n"
        "theirs = skops.io.dumps(m)\n"
        "sys.stdout.buffer.write(pickle.dumps((theirs, skops_bytes(m))))\n"
    )
    out = subprocess.run([sys.executable, "-c", both], input=pickle.dumps(model), capture_output=True, check=True)
    theirs, fresh = pickle.loads(out.stdout)
    assert len(fresh) < len(theirs)  # no indentation
    assert _skops_layout(fresh) == _skops_layout(theirs)
    loaded = sio.loads(ours, trusted=sio.get_untrusted_types(data=ours))
    assert np.array_equal(loaded.predict(x), model.predict(x))


def test_loading_a_trusted_model_builds_skops_tree_once(tmp_path, monkeypatch):
    """A model whose types are all trusted by exact name is audited by skops while it loads:
    one tree, not a get_untrusted_types pass and then a second one for loading."""
    import skops.io._persist as persist

    from many_models_platform.storage.registry import load_model_from_source, model_template_dir, write_model_dir

    x = np.arange(20.0).reshape(-1, 1)
    sha = write_model_dir(DummyRegressor().fit(x, x[:, 0]), str(tmp_path / "m"), model_template_dir())
    built = []
    real = persist.get_tree
    monkeypatch.setattr(persist, "get_tree", lambda *a, **kw: built.append(1) or real(*a, **kw))
    model = load_model_from_source(str(tmp_path / "m"), sha)
    assert isinstance(model, DummyRegressor) and len(built) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_aliased_registrations_match_mlflows_own_calls_in_a_few_transactions(tmp_path, backend):
    """Promotion's versions, then their alias (register_many with ``alias``), are written many per
    transaction on an SQL store: the same versions, tags, descriptions and aliases as MLflow's
    one-call-per-write path (register, then set_alias); ``registered`` sees the versions committed
    before their alias moves, ``after`` each key once done; an item that fails fails alone."""
    import sqlalchemy as sa

    with _fresh_registry_uri(tmp_path, backend) as uri:
        reg = ModelRegistry(uri, str(tmp_path / "artifacts"), "production")
        keys = [f"k{i:02d}" for i in range(30)]

        def items(uc, day):
            return [(k, f"/src/{uc}/{k}/{day}", {"use_case": uc, "key": k, "day": str(day)}) for k in keys]

        reg.register_many("uc", items("uc", 1), None)  # day 1: the names exist, version 1 each
        existing: set[str] = set()
        for k, s, t in items("vc", 1):
            reg.register("vc", k, s, None, t, existing)
        commits: list[int] = []
        sa.event.listen(reg.writer.store.engine, "commit", lambda conn: commits.append(1))
        seen: dict[str, int] = {}
        before_alias: list[dict] = []

        def registered(made):
            before_alias.append({"made": dict(made), "aliased": dict(reg.snapshot("uc").current)})

        batched = reg.register_many(
            "uc",
            items("uc", 2),
            None,
            after=lambda k, v: seen.setdefault(k, v),
            alias="production",
            registered=registered,
        )
        assert len(commits) <= 2  # 30 versions, then 30 aliases: two transactions (MLflow: 60 commits)
        assert before_alias == [{"made": dict.fromkeys(keys, 2), "aliased": {}}]  # committed, alias not moved
        single = {}
        for k, s, t in items("vc", 2):
            single[k] = reg.register("vc", k, s, None, t, existing)
            reg.set_alias("vc", k, single[k], "production")
        assert batched == single == seen == dict.fromkeys(keys, 2)
        for k in keys:
            a = reg.client.get_model_version_by_alias(f"uc.{k}", "production")
            b = reg.client.get_model_version_by_alias(f"vc.{k}", "production")
            assert (a.version, a.source, a.tags, a.status, a.current_stage, a.aliases) == (
                b.version,
                b.source.replace("vc", "uc"),
                {**b.tags, "use_case": "uc"},
                b.status,
                b.current_stage,
                b.aliases,
            )
            assert a.description == b.description.replace("vc", "uc")
            aliases = reg.client.get_registered_model(f"uc.{k}").aliases
            assert aliases == reg.client.get_registered_model(f"vc.{k}").aliases and len(aliases) == 1

        # a key whose name cannot be created fails alone; the others are registered and aliased
        bad = ("bad", "/src/bad", {"use_case": "uc", "key": "bad", "x" * 300: "too long a tag key"})
        results = reg.register_many("uc", [*items("uc", 3), bad], None, alias="production")
        assert isinstance(results.pop("bad"), Exception)
        assert results == dict.fromkeys(keys, 3)
        assert reg.snapshot("uc").current["k00"].version == 3
