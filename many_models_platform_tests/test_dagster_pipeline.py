"""End-to-end tests through real Dagster, MLflow and DuckDB in a temp directory."""

import datetime as dt
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa
from conftest_core import regression_body
from dagster import (
    AssetKey,
    AssetPartitionStatus,
    DagsterEventType,
    DagsterRunStatus,
    DynamicPartitionsDefinition,
    EventRecordsFilter,
    materialize,
)
from dagster_helpers import land, land_generated, run_pipeline, write_config
from mlflow import MlflowClient

from many_models_platform.core.keys import decode_key
from many_models_platform.core.spec import load_config
from many_models_platform.stages import STAGES
from many_models_platform.storage.registry import PRODUCTION_ALIAS, registered_model_name

pytestmark = pytest.mark.slow


def materialized(instance, use_case: str, stage: str) -> set[str]:
    return set(instance.get_materialized_partitions(AssetKey([use_case, stage])))


def failed_partitions(instance, use_case: str, stage: str, keys) -> set[str]:
    """The keys Dagster shows as failed for this asset (the partitions view's *Failed*)."""
    status = instance.get_status_by_partition(
        AssetKey([use_case, stage]), list(keys), DynamicPartitionsDefinition(name=f"{use_case}_keys")
    )
    return {k for k, s in (status or {}).items() if s == AssetPartitionStatus.FAILED}


def warehouse(settings) -> sa.Engine:
    return sa.create_engine(settings.warehouse_url)


def query(settings, sql: str, **params) -> list[tuple]:
    engine = warehouse(settings)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def materialization_metadata(instance, use_case: str, stage: str) -> dict[str, dict]:
    """partition -> metadata of its latest materialization, as plain values."""
    records = instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION, asset_key=AssetKey([use_case, stage])),
        limit=100_000,
    )
    out = {}
    for rec in reversed(records):  # newest last, so it wins
        mat = rec.asset_materialization
        out[mat.partition] = {k: v.value for k, v in mat.metadata.items()}
    return out


def test_full_asset_graph_for_all_shipped_use_cases(platform):
    settings, instance = platform
    cfg = load_config()
    sizes = {"retail_demand": (6, 110), "sensor_anomaly": (6, 240), "group_regression": (6, 120)}
    for name, (keys, rows) in sizes.items():
        spec = cfg.use_case(name)
        land_generated(settings, name, keys=keys, rows=rows)
        result = run_pipeline(settings, instance, None, name)
        assert result.success, result.errors
        assert len(result.keys) == keys
        for stage in STAGES:
            assert materialized(instance, name, stage) == set(result.keys), f"{name}/{stage}"
        assert set(result.stage_seconds) == set(STAGES)

        # the candidate registry holds one registered model per key, tagged with key and data version
        client = MlflowClient(settings.candidate_registry_uri, settings.candidate_registry_uri)
        versions = client.search_model_versions(f"tags.use_case = '{name}'")
        assert {v.tags["key"] for v in versions} == set(result.keys)
        assert all(v.tags["data_fingerprint"] and v.tags[f"metric.{spec.metric}"] for v in versions)

    # forecasts cover the next `horizon` weeks for every key with a production model
    retail = cfg.use_case("retail_demand")
    prod = MlflowClient(settings.production_registry_uri, settings.production_registry_uri)
    # a key whose candidate was rejected (say it does not beat its naive baseline) has no
    # production model at all, not even a registered name
    names = {m.name for m in prod.search_registered_models()}
    promoted = [
        k
        for k in materialized(instance, "retail_demand", "raw")
        if (name := registered_model_name("retail_demand", k)) in names
        and PRODUCTION_ALIAS in (prod.get_registered_model(name).aliases or {})
    ]
    assert promoted, "the generated retail data should pass the WAPE threshold and the baselines for some keys"
    rows = query(
        settings,
        "SELECT key, count(*), min(period), max(period) FROM predictions "
        "WHERE use_case = 'retail_demand' AND kind = 'forecast' GROUP BY key",
    )
    assert {r[0] for r in rows} == set(promoted)
    for _key, n, first, last in rows:
        assert n == retail.horizon
        assert (last - first) == dt.timedelta(weeks=retail.horizon - 1)
    # forecasts also score today's holdout, with actuals, so BI can measure forecast accuracy
    holdout = query(
        settings,
        "SELECT key, count(*), count(actual), max(period) FROM predictions "
        "WHERE use_case = 'retail_demand' AND kind = 'holdout' GROUP BY key",
    )
    first_forecast = {r[0]: r[2] for r in rows}
    assert {r[0] for r in holdout} == set(promoted)
    for key, n, n_actual, last in holdout:
        assert n == n_actual == retail.holdout.periods
        assert last == first_forecast[key] - dt.timedelta(weeks=1)

    # every stage of every key has a status row, and run summaries exist per use case
    statuses = query(settings, "SELECT use_case, count(DISTINCT key), count(*) FROM key_status GROUP BY use_case")
    assert sorted(statuses) == sorted((n, k, k * len(STAGES)) for n, (k, _) in sizes.items())
    assert {r[0] for r in query(settings, "SELECT use_case FROM run_summary")} == set(sizes)


def test_ranged_run_materializes_each_key_once_with_its_own_metadata(platform):
    settings, instance = platform
    land_generated(settings, "group_regression", keys=64, rows=80)
    result = run_pipeline(settings, instance, None, "group_regression")
    assert result.success
    assert len(result.run_ids) == 1, "64 keys fit in one ranged run"
    run = instance.get_run_by_id(result.run_ids[0])
    assert run.tags["dagster/asset_partition_range_start"] == result.keys[0]
    assert run.tags["dagster/asset_partition_range_end"] == result.keys[-1]

    records = instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION, asset_key=AssetKey(["group_regression", "model"])),
        limit=1000,
    )
    assert sorted(r.asset_materialization.partition for r in records) == sorted(result.keys)
    meta = materialization_metadata(instance, "group_regression", "model")
    assert {m["status"] for m in meta.values()} == {"ok"}
    # per-key metadata, not one value copied onto every key
    rmse = {k: m["metric_rmse"] for k, m in meta.items()}
    assert len(set(rmse.values())) == len(rmse)
    assert {m["estimator"] for m in meta.values()} <= {"linear", "lightgbm"}
    assert all(isinstance(m["version"], int) for m in meta.values())


def test_a_new_dataset_runs_with_configuration_only(platform, tmp_path):
    """Different key columns, a classification target and an estimator no shipped use case uses."""
    settings, instance = platform
    rng = np.random.default_rng(7)
    frames = []
    for country in ("DE", "FR", "NL", "ES"):
        for plan in ("basic", "premium"):
            n = 150
            tenure = rng.uniform(0, 60, n)
            tickets = rng.poisson(2, n).astype(float)
            logit = 1.5 - 0.08 * tenure + 0.6 * tickets + (0.5 if plan == "basic" else -0.5)
            churned = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
            frames.append(
                pl.DataFrame(
                    {
                        "country_code": country,
                        "plan_tier": plan,
                        "tenure_months": tenure,
                        "support_tickets": tickets,
                        "churned": churned,
                    }
                )
            )
    land(settings, "churn", pl.concat(frames))
    config = write_config(
        tmp_path / "churn.yaml",
        {
            "churn": {
                "task": "classification",
                "source": {"path": "landing/churn/*.csv"},
                "keys": ["country_code", "plan_tier"],
                "target": "churned",
                "features": ["tenure_months", "support_tickets"],
                "holdout": {"fraction": 0.25},
                "metric": "accuracy",
                "candidates": [
                    {
                        "name": "forest",
                        "estimator": "sklearn.ensemble.RandomForestClassifier",
                        "params": {"n_estimators": 30, "random_state": 0},
                    },
                    {"name": "logit", "estimator": "sklearn.linear_model.LogisticRegression"},
                ],
                "promotion": {"threshold": 0.5},
            }
        },
    )
    result = run_pipeline(settings, instance, config, "churn")
    assert result.success, result.errors
    assert len(result.keys) == 8
    assert {decode_key(k) for k in result.keys} == {
        (c, p) for c in ("DE", "FR", "NL", "ES") for p in ("basic", "premium")
    }
    assert materialized(instance, "churn", "published") == set(result.keys)
    meta = materialization_metadata(instance, "churn", "evaluation")
    assert all(0.5 < m["metric_accuracy"] <= 1 for m in meta.values())
    labels = query(settings, "SELECT DISTINCT predicted_label FROM predictions WHERE use_case = 'churn'")
    assert {r[0] for r in labels} <= {"0", "1"}
    assert query(settings, "SELECT count(DISTINCT key) FROM predictions WHERE use_case = 'churn'")[0][0] == 8


LINEAR_ONLY = [{"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}]
HOSTILE = [
    "a,b",
    "x/y",
    "O'Brien",
    "..",
    ".",
    "with space",
    "Zürich",
    '"quoted"',
    "東京",
    "semi;colon--",
    "back\\slash",
    "100%",
]


def test_hostile_key_names_round_trip_through_lake_registry_and_sql(platform, tmp_path):
    settings, instance = platform
    rng = np.random.default_rng(3)
    rows = []
    for i, name in enumerate(HOSTILE):
        x = rng.normal(size=60)
        rows.append(pl.DataFrame({"site": name, "x": x, "y": 2.0 * x + i + rng.normal(scale=0.1, size=60)}))
    land(settings, "hostile", pl.concat(rows))
    config = write_config(
        tmp_path / "hostile.yaml",
        {
            "hostile": regression_body(
                source={"path": "landing/hostile/*.csv"},
                keys=["site"],
                features=["x"],
                holdout={"fraction": 0.2},
                min_rows=20,
                candidates=LINEAR_ONLY,
            )
        },
    )
    outside_before = set(Path(settings.home).parent.iterdir())
    result = run_pipeline(settings, instance, config, "hostile")
    assert result.success, result.errors
    assert sorted(decode_key(k)[0] for k in result.keys) == sorted(HOSTILE)
    assert materialized(instance, "hostile", "published") == set(result.keys)

    # lake: one bronze file per key, all inside the lake root
    lake = Path(settings.lake_url).resolve()
    bronze = list((lake / "bronze" / "hostile").iterdir())
    assert len(bronze) == len(HOSTILE)
    assert all(p.resolve().is_relative_to(lake) for p in lake.rglob("*"))
    assert set(Path(settings.home).parent.iterdir()) == outside_before

    # registry: distinct names that decode back to the original values
    client = MlflowClient(settings.production_registry_uri, settings.production_registry_uri)
    models = client.search_registered_models("name LIKE 'hostile.%'")
    assert len({m.name for m in models}) == len(HOSTILE)
    assert sorted(decode_key(m.name.removeprefix("hostile."))[0] for m in models) == sorted(HOSTILE)

    # SQL: values come back exactly, through bound parameters
    for key in result.keys:
        label = query(settings, "SELECT DISTINCT key_label FROM predictions WHERE key = :k", k=key)
        assert label == [(f"site={decode_key(key)[0]}",)]
    assert query(settings, "SELECT count(DISTINCT key) FROM key_status WHERE use_case = 'hostile'")[0][0] == len(
        HOSTILE
    )


def test_bad_keys_fail_with_reasons_while_every_other_key_is_published(platform, tmp_path):
    """3 of 60 keys (5%) are bad: too few rows, a constant target, an all-NaN feature."""
    settings, instance = platform
    rng = np.random.default_rng(11)
    frames = []
    for i in range(60):
        n = 80
        x1, x2 = rng.normal(size=n), rng.normal(size=n)
        y = 1.5 * x1 - x2 + rng.normal(scale=0.2, size=n)
        frame = pl.DataFrame({"shop": f"shop-{i:02d}", "x1": x1, "x2": x2, "sales": y})
        if i == 5:
            frame = frame.head(8)
        elif i == 17:
            frame = frame.with_columns(pl.lit(3.0).alias("sales"))
        elif i == 42:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("x2"))
        frames.append(frame)
    land(settings, "shops", pl.concat(frames))
    config = write_config(
        tmp_path / "shops.yaml",
        {
            "shops": regression_body(
                source={"path": "landing/shops/*.csv"},
                keys=["shop"],
                target="sales",
                holdout={"fraction": 0.2},
                metric="mae",
                min_rows=20,
                candidates=LINEAR_ONLY,
            )
        },
    )
    result = run_pipeline(settings, instance, config, "shops")
    assert result.success, "bad keys must not fail the run"
    bad = {"shop-05": "too few rows", "shop-17": "constant target", "shop-42": "all-NaN features"}

    failed = query(
        settings,
        "SELECT key, reason FROM key_status WHERE use_case = 'shops' AND stage = 'training_set' AND status = 'failed'",
    )
    assert {k: r.split(":")[0] for k, r in failed} == {k: v.split(":")[0] for k, v in bad.items()} or {
        k for k, _ in failed
    } == set(bad)
    for key, reason in failed:
        assert bad[key] in reason
    # downstream stages say why they skipped
    skipped = query(
        settings,
        "SELECT DISTINCT key FROM key_status WHERE use_case = 'shops' AND stage = 'model' AND status = 'skipped'",
    )
    assert {r[0] for r in skipped} == set(bad)
    # the UI shows the reason on the key's materialization
    meta = materialization_metadata(instance, "shops", "training_set")
    assert all(meta[k]["status"] == "failed" and bad[k] in meta[k]["reason"] for k in bad)
    # every other key is published
    published = {r[0] for r in query(settings, "SELECT DISTINCT key FROM predictions WHERE use_case = 'shops'")}
    assert published == set(result.keys) - set(bad)
    assert len(published) == 57
    summary = query(
        settings, "SELECT keys_total, keys_published, keys_failed FROM run_summary WHERE use_case = 'shops'"
    )
    assert summary == [(60, 57, 3)]

    # Dagster shows the bad keys as failed partitions of every stage they did not get through (not
    # as green materializations), so "missing and failed" selects them; the run failed only to say so
    assert failed_partitions(instance, "shops", "raw", result.keys) == set()
    for stage in STAGES[1:]:
        assert failed_partitions(instance, "shops", stage, result.keys) == set(bad), stage
    (run_id,) = result.run_ids
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    failures = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    assert [f.step_key for f in failures] == ["shops__published"]
    user = failures[0].dagster_event.event_specific_data.user_failure_data
    assert user.metadata["keys_not_ok_per_stage"].value["training_set"] == 3
    # the cost: one extra event per key and stage it was not ok at, nothing per ok key
    events = [e.dagster_event for e in instance.all_logs(run_id) if e.dagster_event]
    counts = Counter(e.event_type for e in events)
    # per key and stage, plus one per warehouse table `published` wrote (the warehouse/<table> assets)
    tables = {
        e.asset_key.path[-1]
        for e in events
        if e.event_type == DagsterEventType.ASSET_MATERIALIZATION and e.asset_key.path[0] == "warehouse"
    }
    assert {"predictions", "key_metrics", "key_status", "run_summary"} <= tables
    assert counts[DagsterEventType.ASSET_MATERIALIZATION] == 60 * len(STAGES) + len(tables)
    assert counts[DagsterEventType.ASSET_MATERIALIZATION_PLANNED] == len(STAGES) + 3 * (len(STAGES) - 1)

    # running exactly those keys again once their data is fixed clears them, and touches no other key
    good = [f for i, f in enumerate(frames) if f"shop-{i:02d}" not in bad]
    fixed = [
        pl.DataFrame({"shop": k, "x1": rng.normal(size=80), "x2": rng.normal(size=80), "sales": rng.normal(size=80)})
        for k in sorted(bad)
    ]
    land(settings, "shops", pl.concat(good + fixed))
    again = run_pipeline(settings, instance, config, "shops", keys=sorted(bad))
    assert again.ok and again.keys == sorted(bad)
    assert instance.get_run_by_id(again.run_ids[0]).status == DagsterRunStatus.SUCCESS
    for stage in STAGES:
        assert failed_partitions(instance, "shops", stage, result.keys) == set(), stage
    mats = Counter(
        r.asset_materialization.partition
        for r in instance.get_event_records(
            EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION, asset_key=AssetKey(["shops", "model"])),
            limit=1000,
        )
    )
    assert {k for k, n in mats.items() if n == 2} == set(bad) and len(mats) == 60


def test_rerun_for_the_same_run_date_never_duplicates_rows(platform):
    settings, instance = platform
    # 120 rows: at 60, one key's 12-row holdout made the training mean beat its model (beat_baseline)
    land_generated(settings, "group_regression", keys=10, rows=120)
    tables = ("predictions", "key_metrics", "key_status", "promotion_history")
    counts = []
    for _ in range(3):
        assert run_pipeline(settings, instance, None, "group_regression").success
        counts.append({t: query(settings, f"SELECT count(*) FROM {t}")[0][0] for t in tables})
        counts[-1]["candidate_metrics"] = query(
            settings, "SELECT count(*) FROM key_metrics WHERE model_role = 'candidate'"
        )[0][0]
    # one promotion per key: a rerun for the same run date finds the day's promotion standing (same
    # candidate, still in production) and keeps its record, so history never counts it twice
    assert [c["promotion_history"] for c in counts] == [10, 10, 10]
    # each key's promoted_model materialization carries its decision and reason for the UI
    meta = materialization_metadata(instance, "group_regression", "promoted_model")
    assert len(meta) == 10
    assert {m["decision"] for m in meta.values()} == {"promoted"}
    assert {m["reason"] for m in meta.values()} == {"first model for this key"}
    for c in counts:
        c.pop("promotion_history")
    # the first run has no champion to compare with; from the second on, everything is stable
    assert counts[1] == counts[2]
    for table in ("predictions", "key_status", "candidate_metrics"):
        assert counts[0][table] == counts[1][table] > 0
    assert counts[1]["key_metrics"] > counts[0]["key_metrics"], "champion metrics appear once a champion exists"
    dupes = query(
        settings,
        "SELECT count(*) FROM (SELECT use_case, key, run_date, row_index FROM predictions "
        "GROUP BY use_case, key, run_date, row_index HAVING count(*) > 1) d",
    )
    assert dupes == [(0,)]


def test_republishing_alone_replaces_rows(platform):
    """Materializing only `published` again (as a UI backfill would) leaves every table as it was."""
    from many_models_platform.definitions import build_definitions
    from many_models_platform.defs.factory import RUN_DATE_TAG

    settings, instance = platform
    land_generated(settings, "group_regression", keys=8, rows=60)
    result = run_pipeline(settings, instance, None, "group_regression")
    tables = ("predictions", "key_metrics", "key_status", "promotion_history", "run_summary")
    before = {t: query(settings, f"SELECT count(*) FROM {t}")[0][0] for t in tables}
    defs = build_definitions()
    published = defs.resolve_assets_def(AssetKey(["group_regression", "published"]))
    today = dt.datetime.now(dt.UTC).date().isoformat()
    res = materialize(
        [published],
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": result.keys[0],
            "dagster/asset_partition_range_end": result.keys[-1],
            RUN_DATE_TAG: today,
        },
    )
    assert res.success
    after = {t: query(settings, f"SELECT count(*) FROM {t}")[0][0] for t in tables}
    assert after["run_summary"] == before["run_summary"] + 1  # one summary row per publishing run
    after.pop("run_summary"), before.pop("run_summary")
    assert after == before


def test_unchanged_keys_reuse_their_candidate_and_changed_keys_retrain(platform):
    """A rerun on the same data fits and registers nothing new (the skip in the summary and the
    metadata); new data for one key retrains that key only; `--force` retrains every key."""
    settings, instance = platform
    data = land_generated(settings, "group_regression", keys=6, rows=60, files=1)
    landing = Path(settings.lake_url) / "landing/group_regression"
    first = run_pipeline(settings, instance, None, "group_regression")
    second = run_pipeline(settings, instance, None, "group_regression")
    assert first.success and second.success
    client = MlflowClient(settings.candidate_registry_uri, settings.candidate_registry_uri)

    def versions() -> dict[str, int]:
        out: dict[str, int] = {}
        for v in client.search_model_versions("tags.use_case = 'group_regression'"):
            out[v.tags["key"]] = out.get(v.tags["key"], 0) + 1
        return out

    assert versions() == dict.fromkeys(first.keys, 1)
    meta = materialization_metadata(instance, "group_regression", "model")
    assert all(m.get("reused") is True for m in meta.values())
    # the skip is in the summary `mmp run` prints, and in what the promote automation reads
    assert (first.keys_reused, second.keys_reused) == (0, 6)
    evaluated = materialization_metadata(instance, "group_regression", "evaluation")
    assert {k: m["candidate_reused"] for k, m in evaluated.items()} == dict.fromkeys(first.keys, True)

    # more rows for one key, in a later file: only that key is fitted again
    changed = first.keys[2]
    segment = decode_key(changed)[0]
    extra = data.history.filter(pl.col("segment_id") == segment).head(10).with_columns(pl.col("y") * 1.5)
    extra.write_csv(landing / "group_regression_part-0001.csv")
    third = run_pipeline(settings, instance, None, "group_regression")
    assert third.success
    assert versions() == {k: (2 if k == changed else 1) for k in first.keys}
    meta = materialization_metadata(instance, "group_regression", "model")
    assert meta[changed].get("reused") is None and meta[changed]["version"] == 2
    assert all(meta[k]["reused"] is True for k in first.keys if k != changed)
    assert third.keys_reused == 5

    # `mmp run --force`: every key is fitted and registered again, data and config unchanged
    forced = run_pipeline(settings, instance, None, "group_regression", force=True)
    assert forced.success and forced.keys_reused == 0
    assert versions() == {k: (3 if k == changed else 2) for k in first.keys}
    meta = materialization_metadata(instance, "group_regression", "model")
    assert all(meta[k].get("reused") is None for k in first.keys)
    evaluated = materialization_metadata(instance, "group_regression", "evaluation")
    assert {k: m["candidate_reused"] for k, m in evaluated.items()} == dict.fromkeys(first.keys, False)


def test_a_stage_with_no_key_left_stops_the_run_and_publishing_says_so(platform, tmp_path):
    """Day one publishes 3 keys; on day two every key fails at training_set: model, evaluation and
    promotion start nothing (no MLflow run), published still writes the day's statuses with the
    stop, and `mmp run`'s result is not ok. Day two's two ranged runs (2 keys per run) are summed."""
    settings, instance = platform
    rng = np.random.default_rng(3)
    land(
        settings,
        "tiny",
        pl.DataFrame(
            {
                "shop": [f"shop {i:04d}" for i in range(3) for _ in range(40)],
                "x1": rng.normal(size=120),
                "x2": rng.normal(size=120),
                "sales": rng.normal(size=120),
            }
        ),
    )
    body = regression_body(
        source={"path": "landing/tiny/*.csv"}, keys=["shop"], target="sales", min_rows=20, candidates=LINEAR_ONLY
    )
    config = write_config(tmp_path / "tiny.yaml", {"tiny": body})
    day1 = run_pipeline(settings, instance, config, "tiny")
    assert day1.ok and not day1.stopped and len(day1.run_ids) == 1
    assert day1.ingest["landing_rows"] == 120 and day1.stage_counts["published"]["ok"] == 3
    experiment = MlflowClient(settings.candidate_registry_uri).get_experiment_by_name("mmp/tiny")
    runs_before = len(MlflowClient(settings.candidate_registry_uri).search_runs([experiment.experiment_id]))
    assert runs_before == 1

    config = write_config(tmp_path / "tiny.yaml", {"tiny": {**body, "min_rows": 500}}, run={"max_keys_per_run": 2})
    cfg = load_config(config)
    from many_models_platform.definitions import build_definitions
    from many_models_platform.defs.runner import run_use_case

    day2 = run_use_case(
        build_definitions(str(config)), instance, cfg, cfg.use_case("tiny"), settings, run_date=dt.date(2030, 1, 2)
    )
    assert day2.success and not day2.ok  # every Dagster step succeeded, yet nothing got through
    assert day2.stopped_at_stage == "training_set"
    assert day2.stop_reason == "no key left after training_set: too few rows: 40 < min_rows 500 (3 keys)"
    assert day2.stage_counts["model"] == {"keys": 3, "ok": 0, "failed": 0, "skipped": 3}
    assert len(MlflowClient(settings.candidate_registry_uri).search_runs([experiment.experiment_id])) == runs_before

    meta = materialization_metadata(instance, "tiny", "model")
    assert {m["reason"] for m in meta.values()} == {
        "stopped: no key left after training_set: too few rows: 40 < min_rows 500 (2 keys)",
        "stopped: no key left after training_set: too few rows: 40 < min_rows 500 (1 key)",
    }
    # the warehouse shows day two, not day one: each run's summary names the stop
    summary = query(
        settings,
        "SELECT stopped_at_stage, keys_published, rows_landed FROM run_summary WHERE use_case = 'tiny' "
        "AND run_date = :d",
        d=dt.date(2030, 1, 2),
    )
    assert summary == [("training_set", 0, 120)] * 2
    from many_models_platform.cli import latest_key_status
    from many_models_platform.storage.warehouse import Warehouse

    wh = Warehouse(settings.warehouse_url, read_only=True)
    latest = latest_key_status(wh, "tiny")
    wh.dispose()
    assert set(latest["run_date"]) == {dt.date(2030, 1, 2)} and latest.height == 3 * len(STAGES)
    assert set(latest.filter(pl.col("stage") == "published")["status"]) == {"skipped"}
    keys = query(settings, 'SELECT shop FROM keys_tiny ORDER BY "key"')
    assert keys == [("shop 0000",), ("shop 0001",), ("shop 0002",)]  # the key column, as in the source


def test_key_metadata_shows_row_counts_and_drops():
    from many_models_platform.core.engine import KeyOutcome
    from many_models_platform.defs.factory import key_metadata

    spec = load_config().use_case("group_regression")
    info = {"rows_in": 10, "rows_out": 7, "rows_dropped": 2, "rows_merged": 1, "drops": {"target is null": 2}}
    md = key_metadata(spec, KeyOutcome("seg-001", "ok", info=info))
    assert md["rows_in"] == 10 and md["rows_merged"] == 1
    assert md["dropped: target is null"] == 2 and "drops" not in md
