"""Publishing the mix of outcomes real data gives, and stopping a run that has no key left.

No Dagster and no models here: the stages' state files are written as the stages write them
(``stages.base.finish``), then ``published`` (and the stop logic of ``stages.run_stage``) run
for real on a DuckDB warehouse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from conftest_core import clear_platform_env, make_spec, regression_body
from pg_helpers import postgres_database, sqlalchemy_url

from many_models_platform.core.engine import KeyOutcome, pool_workers
from many_models_platform.core.keys import encode_key, key_label
from many_models_platform.stages import STAGES, StageRun, run_stage
from many_models_platform.stages import published as published_stage
from many_models_platform.stages.base import (
    StageReport,
    finish,
    read_run_record,
    read_state,
    stopped_outcomes,
    write_run_record,
)
from many_models_platform.stages.published import publish
from many_models_platform.storage import warehouse as W
from many_models_platform.storage.settings import PlatformSettings
from many_models_platform.storage.warehouse import Warehouse

DAY = dt.date(2025, 6, 2)
CONSTANT = "constant target: every 'murders' value is 0"
# A registry that cannot exist (a file under /dev/null, even for root): touching it fails the
# test, so a stopped stage must not touch it.
NOWHERE = "sqlite:////dev/null/mmp/registry.db"


@pytest.fixture
def settings(tmp_path, monkeypatch) -> PlatformSettings:
    clear_platform_env(monkeypatch)
    s = PlatformSettings.from_env(tmp_path / "home")
    s.ensure_local_dirs()
    registries = ("candidate_registry_uri", "production_registry_uri", "production_registry_write_uri")
    return s.model_copy(update=dict.fromkeys(registries, NOWHERE))


def spec_for(name: str):
    return make_spec(regression_body(keys=["store", "brand"], metric="mape"), name=name)


def query(settings, sql: str, **params) -> pl.DataFrame:
    wh = Warehouse(settings.warehouse_url)
    try:
        return wh.query(sql, **params)
    finally:
        wh.dispose()


def write(run: StageRun, stage: str, outcomes: list[KeyOutcome]) -> None:
    finish(dataclasses.replace(run, run_id=f"{run.run_id}"), stage, outcomes)


def prediction_file(run: StageRun, key: str, kind: int) -> None:
    """Predictions as the stage writes them, in three shapes: typed, all-NULL labels, and
    integer labels with a Date period (a column type the table does not have)."""
    n = 3
    frame = pl.DataFrame(
        {
            "row_index": pl.Series(range(n), dtype=pl.Int32),
            "period": pl.Series([dt.datetime(2025, 6, 2 + i) for i in range(n)], dtype=pl.Datetime("us")),
            "kind": ["holdout"] * n,
            "prediction": [1.5, math.nan, 2.0],
            "predicted_label": pl.Series([None] * n, dtype=pl.Null) if kind == 1 else ["yes", "no", "yes"],
            "actual": [1.0, 2.0, None],
            "model_name": [f"{run.spec.name}.{key}"] * n,
            "model_version": pl.Series([1] * n, dtype=pl.Int32),
        }
    )
    if kind == 2:
        frame = frame.with_columns(
            pl.Series("predicted_label", [7, 0, 7], dtype=pl.Int64),
            pl.col("period").cast(pl.Date),
            pl.Series("actual", [1, 2, 3], dtype=pl.Int64),
        )
    run.lake.write_parquet(run.lake.key_path("predictions", run.spec.name, key, ".parquet"), frame)


def every_stage_ok(run: StageRun, keys: list[str]) -> None:
    """Every stage before ``published`` ok for ``keys``, each with a predictions file."""
    per_stage: dict[str, list[KeyOutcome]] = {stage: [] for stage in STAGES[:-1]}
    for i, key in enumerate(keys):
        for stage, outcome in ok_states(run, key, i).items():
            per_stage[stage].append(outcome)
        prediction_file(run, key, 0)
    for stage, outcomes in per_stage.items():
        write(run, stage, outcomes)


def ok_states(run: StageRun, key: str, i: int) -> dict[str, KeyOutcome]:
    name = f"{run.spec.name}.{key}"
    return {
        "raw": KeyOutcome(
            key,
            "ok",
            info={
                "rows": 20,
                "rows_in": 23,
                "rows_out": 20,
                "rows_dropped": 2,
                "rows_merged": 1,
                "drops": {"target is null": 2},
            },
        ),
        "training_set": KeyOutcome(
            key,
            "ok",
            info={"rows_in": 20, "rows_out": 18, "rows_dropped": 2, "rows_merged": 0, "drops": {"no lag history": 2}},
        ),
        "model": KeyOutcome(key, "ok", info={"model_name": name, "version": 1, "estimator": "ridge"}),
        "evaluation": KeyOutcome(
            key,
            "ok",
            info={
                "candidate_version": 1,
                "estimator": "ridge",
                "metrics": {"mape": 0.1 + i / 1000, "rmse": 3},
                "champion_version": None,
                "champion_metrics": None,
            },
        ),
        "promoted_model": KeyOutcome(
            key,
            "ok",
            info={
                "decision": "promoted",
                "reason": "first model for this key",
                "metric": "mape",
                "candidate_version": 1,
                "candidate_value": 0.1 + i / 1000,
                "champion_version": None,
                "champion_value": None,
                "decided_at": "2025-06-02T08:00:00+00:00",
                "decided_by": "dagster run r",
                "production_version": 1,
            },
        ),
        "predictions": KeyOutcome(key, "ok", info={"rows": 3}),
    }


@pytest.mark.parametrize(
    ("batch_keys", "keys_per_worker"), [(1_000, 1_000), (64, 1_000), (1_000, 8)], ids=["one", "batches", "pool"]
)
def test_a_mix_of_outcomes_after_the_first_150_keys_publishes(settings, batch_keys, keys_per_worker, monkeypatch):
    """The crash of issue 8, and more: 220 keys, every failure sorted after the first 150 keys,
    text and integer reasons, NULL/NaN/int/float/text metrics, labels of every type. Published
    in one batch and in four (the legacy key alone in its own shape in the last), the rows built
    in this process or in two workers: the same rows."""
    monkeypatch.setattr(published_stage, "PUBLISH_BATCH_KEYS", batch_keys)
    monkeypatch.setattr(published_stage, "PUBLISH_KEYS_PER_WORKER", keys_per_worker)
    pools: list[int] = []
    map_keys = published_stage.map_keys

    def counted(fn, keys, args, *, workers, min_keys_per_worker, progress):
        pools.append(pool_workers(len(keys), workers, min_keys_per_worker))
        return map_keys(fn, keys, args, workers=workers, min_keys_per_worker=min_keys_per_worker, progress=progress)

    monkeypatch.setattr(published_stage, "map_keys", counted)
    spec = spec_for("mix")
    run = StageRun(spec, settings, run_id="run-1", run_date=DAY, workers=2)
    keys = sorted(encode_key([f"{i:04d}", "tropicana" if i % 2 else "minute maid"]) for i in range(220))
    per_stage: dict[str, list[KeyOutcome]] = {stage: [] for stage in STAGES[:-1]}
    for i, key in enumerate(keys):
        states: dict[str, KeyOutcome | None] = ok_states(run, key, i)
        kind = i % 5 if i >= 150 else -1
        if kind == 0:  # constant target: today's chain stops, the champion still serves
            states["training_set"] = KeyOutcome(key, "failed", CONSTANT)
            for stage in ("model", "evaluation", "promoted_model"):
                states[stage] = KeyOutcome(key, "skipped", f"training_set failed: {CONSTANT}")
        elif kind == 1:  # metrics of every type, a decision with NULL values
            # (text such as "n/a" can no longer be recorded: typed records refuse it, test_stage_records)
            states["evaluation"].info["metrics"] = {"mape": math.nan, "rmse": None, "mae": 4, "r2": None}
            states["evaluation"].info["champion_version"] = 1
            states["evaluation"].info["champion_metrics"] = {"mape": math.nan, "rmse": 2.5}
            states["promoted_model"].info.update(decision="kept_champion", candidate_value=None, champion_version=1)
        elif kind == 2:  # nothing landed for this key; the later stages never ran for it
            states = {"raw": KeyOutcome(key, "failed", "no rows for this key in the landing zone")}
        elif kind == 4:  # the predictions state is ok but its file is gone
            pass
        for stage, outcome in states.items():
            per_stage[stage].append(outcome)
        if "predictions" in states and kind != 4:
            prediction_file(run, key, 2 if kind == 3 else (1 if kind == 1 else 0))
    # a key registered when the use case had one key column: it publishes its statuses too
    legacy = encode_key(["legacy"])
    per_stage["raw"].append(KeyOutcome(legacy, "failed", "no rows for this key in the landing zone"))
    for stage, outcomes in per_stage.items():
        write(run, stage, outcomes)
    write_run_record(
        dataclasses.replace(run),
        StageReport(
            "raw",
            per_stage["raw"],
            {
                "landing_rows": 5000,
                "rows_dropped": 40,
                "rows_merged": 10,
                "rejected": [{"file": "bad.csv", "reason": "not a CSV file"}],
            },
        ),
    )

    report = publish(run, [*keys, legacy])
    publish(run, [*keys, legacy])  # a rerun of the same run date replaces, never duplicates
    assert max(pools) == (2 if keys_per_worker == 8 else 1)

    by = {k: i for i, k in enumerate(keys)}
    kind = lambda key: by[key] % 5 if by[key] >= 150 else -1  # noqa: E731
    status = query(settings, "SELECT * FROM key_status WHERE use_case = 'mix'")
    assert status.height == (len(keys) + 1) * 7 and status.select("key", "stage").n_unique() == status.height
    assert set(status.filter(pl.col("key") == legacy)["key_label"]) == {legacy}
    constant = status.filter((pl.col("stage") == "training_set") & (pl.col("reason") == CONSTANT))
    assert sorted(constant["key"]) == [k for k in keys if kind(k) == 0]
    raw = status.filter((pl.col("stage") == "raw") & (pl.col("status") == "ok"))
    assert set(raw.select("rows_in", "rows_out", "rows_dropped", "rows_merged", "drop_detail").rows()) == {
        (23, 20, 2, 1, "target is null: 2")
    }
    missing = status.filter(pl.col("key").is_in([k for k in keys if kind(k) == 2]) & (pl.col("stage") == "model"))
    assert set(missing["status"]) == {"missing"} and missing["rows_in"].null_count() == missing.height
    published = {
        r["key"]: r
        for r in status.filter((pl.col("stage") == "published") & (pl.col("key") != legacy)).iter_rows(named=True)
    }
    for key, row in published.items():
        expected = {-1: "ok", 0: "ok", 1: "ok", 2: "skipped", 3: "ok", 4: "failed"}[kind(key)]
        assert row["status"] == expected, (key, row)
        assert row["key_label"] == key_label(spec.keys, key)
    assert published[next(k for k in keys if kind(k) == 0)]["reason"] == f"training_set failed: {CONSTANT}"
    assert published[next(k for k in keys if kind(k) == 4)]["reason"] == "predictions file missing from the lake"

    metrics = query(settings, "SELECT key, model_role, metric, value FROM key_metrics WHERE use_case = 'mix'")
    odd = {(r[1], r[2]): r[3] for r in metrics.rows() if r[0] == next(k for k in keys if kind(k) == 1)}
    assert odd == {
        ("candidate", "mape"): None,
        ("candidate", "rmse"): None,
        ("candidate", "mae"): 4.0,
        ("candidate", "r2"): None,
        ("champion", "mape"): None,
        ("champion", "rmse"): 2.5,
    }

    preds = query(
        settings, "SELECT key, row_index, period, predicted_label, actual FROM predictions ORDER BY key, row_index"
    )
    served = [k for k in keys if kind(k) in (-1, 0, 1, 3)]
    assert preds.height == 3 * len(served) and sorted(set(preds["key"])) == served
    int_labels = preds.filter(pl.col("key") == next(k for k in keys if kind(k) == 3))
    assert int_labels["predicted_label"].to_list() == ["7", "0", "7"]
    assert int_labels["period"][0] == dt.datetime(2025, 6, 2) and int_labels["actual"].to_list() == [1.0, 2.0, 3.0]
    assert preds.filter(pl.col("key") == next(k for k in keys if kind(k) == 1))["predicted_label"].null_count() == 3

    summary = query(settings, "SELECT * FROM run_summary WHERE use_case = 'mix'").row(0, named=True)
    assert (summary["keys_total"], summary["keys_published"], summary["keys_failed"]) == (
        221,
        len(served),
        221 - len(served),
    )
    assert (summary["rows_landed"], summary["rows_dropped"], summary["rows_merged"], summary["files_rejected"]) == (
        5000,
        40,
        10,
        1,
    )
    assert summary["stopped_at_stage"] is None and summary["stop_reason"] is None
    # counted across every batch: promotions, and the candidates' metric over all keys
    assert summary["keys_promoted"] == len([k for k in keys if kind(k) in (-1, 3, 4)])
    mapes = metrics.filter((pl.col("model_role") == "candidate") & (pl.col("metric") == "mape"))["value"]
    assert summary["metric_p50"] == pytest.approx(mapes.drop_nulls().quantile(0.5, "linear"))
    assert report.summary["rows_written"] == {
        "predictions": preds.height,
        "key_metrics": metrics.height,
        "key_status": status.height,
        "key_columns": 2 * len(keys),
        "promotion_history": len([k for k in keys if kind(k) != 0 and kind(k) != 2]),
        "run_summary": 1,
    }
    assert report.summary["rejected"] == [{"file": "bad.csv", "reason": "not a CSV file"}]

    # key columns, long and wide; zero-padded values stay text as in the source
    long = query(settings, "SELECT key, position, column_name, value FROM key_columns WHERE use_case = 'mix'")
    assert long.height == 2 * len(keys)
    first = sorted(r for r in long.rows() if r[0] == encode_key(["0012", "minute maid"]))
    assert first == [
        (encode_key(["0012", "minute maid"]), 0, "store", "0012"),
        (encode_key(["0012", "minute maid"]), 1, "brand", "minute maid"),
    ]
    wide = query(settings, "SELECT key, key_label, store, brand FROM keys_mix ORDER BY key")
    assert wide.height == len(keys)
    assert wide.row(0) == (keys[0], key_label(spec.keys, keys[0]), "0000", "minute maid")


def test_a_run_with_no_key_left_stops_and_still_publishes_why(settings):
    """Every key fails at raw: the next stages start nothing (no pool, no MLflow, no registry:
    the registries here cannot even be opened), published records the stop."""
    spec = spec_for("empty")
    run = StageRun(spec, settings, run_id="run-stop", run_date=DAY)
    keys = [encode_key(["0001", "a"]), encode_key(["0002", "b"]), encode_key(["0003", "c"])]
    # an earlier run published these keys; its rows must not be what status shows for today
    finish(
        run,
        "raw",
        [KeyOutcome(k, "failed", "no rows for this key in the landing zone") for k in keys],
        {"landing_rows": 0},
    )
    reports = {stage: run_stage(stage, run, keys) for stage in STAGES}
    why = "no key left after raw: no rows for this key in the landing zone (3 keys)"
    for stage in STAGES[1:-1]:
        assert [(o.status, o.reason) for o in reports[stage].outcomes] == [("skipped", f"stopped: {why}")] * 3, stage
        record = read_run_record(run.lake, spec.name, stage, run.run_id)
        assert (record["keys"], record["ok"], record["skipped"], record["stop_reason"]) == (3, 0, 3, why)
    assert not (Path(settings.lake_url) / "training" / "empty").exists()
    assert reports["published"].summary["stopped_at_stage"] == "raw"
    assert "model_family_error" in reports["published"].summary  # the unreachable registry, reported

    summary = query(settings, "SELECT * FROM run_summary WHERE use_case = 'empty'").row(0, named=True)
    assert (summary["stopped_at_stage"], summary["stop_reason"], summary["rows_landed"]) == ("raw", why, 0)
    status = query(
        settings, "SELECT stage, status, reason FROM key_status WHERE use_case = 'empty' AND key = :k", k=keys[0]
    )
    got = {r[0]: r[1:] for r in status.rows()}
    assert got["raw"] == ("failed", "no rows for this key in the landing zone")
    assert got["model"] == ("skipped", f"stopped: {why}")
    assert got["published"] == ("skipped", "raw failed: no rows for this key in the landing zone")


def test_predictions_stop_only_without_todays_data(settings):
    """A failed training chain stops evaluation and promotion, not predictions: the production
    model of a key still serves. Only a raw stage with no ok key stops predictions."""
    spec = spec_for("serve")
    run = StageRun(spec, settings, run_id="run-serve", run_date=DAY)
    keys = [encode_key(["1", "a"]), encode_key(["2", "b"])]
    finish(run, "raw", [KeyOutcome(k, "ok", info={"rows": 5}) for k in keys])
    finish(run, "training_set", [KeyOutcome(keys[0], "failed", CONSTANT), KeyOutcome(keys[1], "failed", "Boom: x")])
    stopped = stopped_outcomes(run, "model", keys)
    assert stopped is not None
    assert stopped[0].reason == f"stopped: no key left after training_set: {CONSTANT} (1 key); Boom: x (1 key)"
    assert stopped_outcomes(run, "predictions", keys) is None  # raw left keys: champions may serve
    # the stop is carried down the chain unchanged, not nested
    finish(run, "model", stopped)
    assert stopped_outcomes(run, "evaluation", keys)[0].reason == stopped[0].reason
    assert read_state(run.lake, spec.name, "model", keys[0]).reason == stopped[0].reason
    # a stage with one ok key upstream runs as usual
    finish(run, "training_set", [KeyOutcome(keys[0], "ok"), KeyOutcome(keys[1], "failed", "Boom: x")])
    assert stopped_outcomes(run, "model", keys) is None


def test_every_table_frame_has_the_tables_schema():
    """The one place frames get their types from covers every warehouse table."""
    for table in W.metadata.sorted_tables:
        schema = W.polars_schema(table)
        assert list(schema) == [c.name for c in table.columns]
        empty = W.records_frame(table, [])
        assert empty.height == 0 and dict(empty.schema) == schema
        for column in table.columns:
            if isinstance(column.type, sa.Integer):
                assert schema[column.name] == pl.Int64


def test_a_key_whose_rows_cannot_be_built_fails_alone(settings, monkeypatch):
    """An error building one key's rows (a bug, not its data: those are caught where they are
    read) fails that key's published row with the reason; the other keys publish."""
    spec = spec_for("one_bad")
    run = StageRun(spec, settings, run_id="run-bad", run_date=DAY)
    keys = [encode_key([f"{i:04d}", "a"]) for i in range(3)]
    every_stage_ok(run, keys)
    metric_rows = published_stage._metric_rows

    def broken(spec, key, states):
        if key == keys[1]:
            raise RuntimeError("no metrics for you")
        return metric_rows(spec, key, states)

    monkeypatch.setattr(published_stage, "_metric_rows", broken)
    report = publish(run, keys)
    sql = "SELECT key, status, reason FROM key_status WHERE use_case = 'one_bad' AND stage = 'published'"
    rows = query(settings, sql)
    by_key = {r[0]: r[1:] for r in rows.rows()}
    assert by_key[keys[0]] == by_key[keys[2]] == ("ok", None)
    assert by_key[keys[1]][0] == "failed"
    assert by_key[keys[1]][1].startswith("its rows could not be built: RuntimeError: no metrics for you")
    preds = query(settings, "SELECT DISTINCT key FROM predictions WHERE use_case = 'one_bad'")
    assert sorted(preds["key"]) == [keys[0], keys[2]]
    assert report.summary["keys_failed"] == 1
    assert [o.info["published"] for o in report.outcomes] == [True, False, True]


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_a_key_too_long_for_the_warehouse_fails_alone_and_the_others_publish(settings, backend):
    """PostgreSQL and SQL Server refuse a key longer than its column: loading it would fail the
    one transaction of every key, so it fails alone, with what to do. DuckDB takes it."""
    spec = spec_for("too_long")
    run = StageRun(spec, settings, run_id="run-long", run_date=DAY)
    keys = [encode_key(["0001", "a"]), encode_key(["0002", "長" * 60])]
    assert len(keys[1]) > W.KEY_LENGTH
    every_stage_ok(run, keys)
    with contextlib.ExitStack() as stack:
        url = settings.warehouse_url
        if backend == "postgres":
            url = sqlalchemy_url(stack.enter_context(postgres_database("mmp_long_keys")))
        wh = Warehouse(url)
        stack.callback(wh.dispose)
        report = publish(run, keys, warehouse=wh)
        by_key = {o.key: o for o in report.outcomes}
        published = sorted(wh.query("SELECT DISTINCT key FROM key_status WHERE use_case = 'too_long'")["key"])
        summary = wh.query("SELECT keys_total, keys_failed FROM run_summary WHERE use_case = 'too_long'").rows()
    assert by_key[keys[0]].ok and by_key[keys[0]].info["published"]
    if backend == "duckdb":
        assert by_key[keys[1]].ok and published == sorted(keys) and summary == [(2, 0)]
        return
    assert by_key[keys[1]].status == "failed" and "longer than the warehouse's key column" in by_key[keys[1]].reason
    assert published == [keys[0]] and summary == [(2, 1)]


def test_reasons_that_differ_only_in_their_numbers_are_counted_as_one():
    from collections import Counter

    from many_models_platform.stages.base import grouped_reasons, stop_reason

    reasons = Counter({f"too few rows: {n} < min_rows 20": 1 for n in range(3, 16)})
    reasons["constant target: every 'y' value is 0.0"] = 2
    assert grouped_reasons(reasons) == {
        "too few rows: … < min_rows 20": 13,
        "constant target: every 'y' value is 0.0": 2,
    }
    assert stop_reason("training_set", reasons) == (
        "no key left after training_set: too few rows: … < min_rows 20 (13 keys); "
        "constant target: every 'y' value is 0.0 (2 keys)"
    )
    same = Counter({"too few rows: 40 < min_rows 500": 3})  # one wording: its numbers stay
    assert (
        stop_reason("training_set", same) == "no key left after training_set: too few rows: 40 < min_rows 500 (3 keys)"
    )
    # a long reason is cut at a word and marked, never mid-word ('withou')
    long = Counter({"time column 't': 600 of 600 values are not in time_format; " + "fix it or remove it " * 20: 3})
    said = stop_reason("raw", long)
    assert said.endswith("it… (3 keys)") and len(said) < 360, said
