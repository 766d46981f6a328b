"""The embedded instance's event log (defs/event_log.py): a ranged run's asset events written in
batches leave the instance exactly as Dagster's own SQLite storage, writing them one by one, does."""

import shutil
import sqlite3
from pathlib import Path

import yaml
from dagster import (
    AssetKey,
    BackfillPolicy,
    DagsterInstance,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    asset,
    materialize,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._serdes import deserialize_value

from many_models_platform.defs.event_log import BatchedSqliteEventLogStorage
from many_models_platform.defs.health import mark_not_ok
from many_models_platform.defs.runner import DAGSTER_ENV, instance_yaml

REPO = Path(__file__).resolve().parents[1]
KEYS = [f"k{i:03d}" for i in range(40)]
NOT_OK = KEYS[3:9]
PARTS = DynamicPartitionsDefinition(name="keys")


@asset(partitions_def=PARTS, backfill_policy=BackfillPolicy.single_run())
def stage(context):
    """A stage as the asset factory writes one: each key's own metadata, one materialization per
    key, then the keys that were not ok marked failed and the run failed."""
    for i, key in enumerate(context.partition_keys):
        status = "failed" if key in NOT_OK else "ok"
        context.add_asset_metadata({"status": status, "i": i, "reason": f"reason {i}"}, partition_key=key)
    yield MaterializeResult()
    mark_not_ok(context, [k for k in context.partition_keys if k in NOT_OK])
    raise Failure("keys not ok")


def _instance(home: Path, storage: str, monkeypatch) -> DagsterInstance:
    home.mkdir()
    if storage == "batched":  # the instance mmp creates, under $DAGSTER_HOME as mmp sets it
        (home / "dagster.yaml").write_text(instance_yaml())
        monkeypatch.setenv("DAGSTER_HOME", str(home))
    else:  # Dagster's own SQLite storage, one event at a time
        (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
    return DagsterInstance.from_config(str(home))


def _run(instance: DagsterInstance) -> None:
    instance.add_dynamic_partitions("keys", KEYS)
    for first, last in ((KEYS[0], KEYS[24]), (KEYS[25], KEYS[-1])):  # two ranged runs
        tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
        result = materialize([stage], instance=instance, tags=tags, raise_on_error=False)
        assert not result.success  # the keys not ok fail it, as in the pipeline


def _tables(home: Path, folder: str = "history/runs") -> dict[str, list]:
    """What the run databases and the index database hold, without ids, run ids and times."""
    folder = home / folder
    out: dict[str, list] = {}
    for db in sorted(folder.glob("*.db")):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        events = con.execute(
            "SELECT dagster_event_type, asset_key, partition, step_key, event FROM event_logs ORDER BY id"
        ).fetchall()
        rows = [(t, a, p, s, _metadata(e)) for t, a, p, s, e in events]
        if db.stem == "index":
            out["index"] = rows
            tags = con.execute(
                "SELECT e.partition, t.key, t.value, t.asset_key FROM asset_event_tags t "
                "JOIN event_logs e ON e.id = t.event_id ORDER BY t.id"
            ).fetchall()
            versions: dict[str, int] = {}  # data versions derive from the run: compared by first use
            out["tags"] = [
                (p, k, versions.setdefault(v, len(versions)) if k.endswith("version") else v, a) for p, k, v, a in tags
            ]
            out["asset_keys"] = _asset_entries(con)
        else:
            out.setdefault("runs", []).append(rows)
        con.close()
    out.setdefault("runs", []).sort(key=lambda rows: min(r[2] for r in rows if r[2]))  # files named by run id
    return out


def _asset_entries(con: sqlite3.Connection) -> list[tuple]:
    """Each asset's entry: its last materialization (index id, partition), and whether its last
    run and timestamp are those of its last materialization or planned event (the events that
    set them), as run ids and times differ between instances."""
    out = []
    rows = con.execute(
        "SELECT asset_key, last_materialization, last_run_id, last_materialization_timestamp FROM asset_keys"
    )
    for asset_key, last, run_id, timestamp in rows.fetchall():
        record = deserialize_value(last) if last else None
        newest = con.execute(
            "SELECT run_id, timestamp FROM event_logs WHERE asset_key = ? AND dagster_event_type IN "
            "('ASSET_MATERIALIZATION', 'ASSET_MATERIALIZATION_PLANNED') ORDER BY id DESC LIMIT 1",
            (asset_key,),
        ).fetchone()
        materialization = (record.storage_id, record.event_log_entry.dagster_event.partition) if record else None
        out.append((asset_key, materialization, (run_id, timestamp) == tuple(newest)))
    return out


def _metadata(event_json: str) -> dict:
    event = deserialize_value(event_json)
    materialization = event.asset_materialization if event.is_dagster_event else None
    return {k: v.value for k, v in materialization.metadata.items()} if materialization else {}


def test_batched_writes_store_what_one_by_one_writes_store(tmp_path, monkeypatch):
    for name, value in DAGSTER_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "10")  # batches of 10 and a last, shorter one
    one_by_one = []  # asset events that reached the storage one at a time
    original = BatchedSqliteEventLogStorage.store_event

    def store_event(self, event):
        if event.is_dagster_event and event.get_dagster_event().partition:
            one_by_one.append(event)
        return original(self, event)

    monkeypatch.setattr(BatchedSqliteEventLogStorage, "store_event", store_event)
    ours = _instance(tmp_path / "batched", "batched", monkeypatch)
    theirs = _instance(tmp_path / "dagster", "dagster", monkeypatch)
    assert isinstance(ours.event_log_storage, BatchedSqliteEventLogStorage)
    assert type(theirs.event_log_storage) is not BatchedSqliteEventLogStorage
    _run(ours)
    _run(theirs)

    mine, reference = _tables(tmp_path / "batched"), _tables(tmp_path / "dagster")
    materialized = [r for r in reference["index"] if r[0] == "ASSET_MATERIALIZATION"]
    statuses = {partition: metadata["status"] for _, _, partition, _, metadata in materialized}
    assert statuses == {k: "failed" if k in NOT_OK else "ok" for k in KEYS}  # each key's own metadata
    assert mine == reference
    assert [entry[2] for entry in mine["asset_keys"]] == [True]
    # the 40 materializations and 6 planned events went in batches (10, 10, 5, 6; 10, 5)
    assert one_by_one == []

    key = AssetKey("stage")
    for instance in (ours, theirs):
        assert instance.get_materialized_partitions(key) == set(KEYS)
        status = get_and_update_asset_status_cache_value(instance, key, PARTS)
        assert sorted(status.deserialize_failed_partition_subsets(PARTS).get_partition_keys()) == NOT_OK
        latest = instance.get_latest_materialization_event(key)
        last = latest.asset_materialization.partition  # one of the second run's keys, with its metadata
        assert latest.asset_materialization.metadata["i"].value == KEYS[25:].index(last)


def test_a_batch_whose_index_write_fails_is_stored_once(tmp_path, monkeypatch, capfd):
    """Dagster stores a failed batch again one event at a time: the run's rows of the failed
    attempt are taken back first, so no event is there twice."""
    for name, value in DAGSTER_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "10")
    failures = []
    original = BatchedSqliteEventLogStorage._store_asset_event_tags

    def fail_once(self, conn, events, event_ids):
        if not failures and len(events) > 1:  # the first batch
            failures.append(len(events))
            raise sqlite3.OperationalError("disk I/O error")
        return original(self, conn, events, event_ids)

    monkeypatch.setattr(BatchedSqliteEventLogStorage, "_store_asset_event_tags", fail_once)
    instance = _instance(tmp_path / "batched", "batched", monkeypatch)
    _run(instance)
    assert failures == [10]
    assert "Falling back to storing multiple single-event storage requests" in capfd.readouterr().err
    tables = _tables(tmp_path / "batched")
    for rows in (tables["index"], [r for run in tables["runs"] for r in run]):
        partitions = [r[2] for r in rows if r[0] == "ASSET_MATERIALIZATION"]
        assert sorted(partitions) == KEYS  # each key once
    assert len(tables["tags"]) == len({(t[0], t[1]) for t in tables["tags"]})


def test_mmps_instances_and_the_local_deploy_instance_use_batched_writes(tmp_path, monkeypatch):
    deploy = (REPO / "deploy/instance/dagster.local.yaml").read_text()
    # the deploy file is written out in full for people to copy: it must stay mmp's instance
    assert yaml.safe_load(deploy) == yaml.safe_load(instance_yaml())
    for name, text in (("mmp", instance_yaml()), ("deploy", deploy)):
        home = tmp_path / name
        home.mkdir()
        (home / "dagster.yaml").write_text(text)
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        instance = DagsterInstance.get()
        assert isinstance(instance.event_log_storage, BatchedSqliteEventLogStorage)
        assert (home / "history" / "runs.db").exists() and (home / "history" / "runs" / "index.db").exists()
        # a run process gets the instance through its ref: the same storage there
        again = DagsterInstance.from_ref(instance.get_ref())
        assert isinstance(again.event_log_storage, BatchedSqliteEventLogStorage)
        instance.dispose()
        again.dispose()


def test_the_repository_dagster_yaml_needs_no_dagster_home(tmp_path, monkeypatch):
    """Dagster's own commands read ./dagster.yaml when DAGSTER_HOME is unset: the repository's
    file must load there, so the storage section that needs DAGSTER_HOME is only in mmp's copy."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    shutil.copyfile(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = DagsterInstance.from_config(str(tmp_path))
    assert "storage" not in yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert instance.run_coordinator is not None
    instance.dispose()


def test_one_mixed_batch_stores_what_its_events_one_by_one_store(tmp_path, monkeypatch):
    """A run's asset events replayed as one batch (run-wide and per-key planned events and
    materializations, mixed) and one by one: the same index rows, tags and asset entry."""
    for name, value in DAGSTER_ENV.items():
        monkeypatch.setenv(name, value)
    source = _instance(tmp_path / "source", "dagster", monkeypatch)
    _run(source)
    (run,) = [r for r in source.get_runs() if r.tags.get(ASSET_PARTITION_RANGE_START_TAG) == KEYS[0]]
    wanted = ("ASSET_MATERIALIZATION", "ASSET_MATERIALIZATION_PLANNED")
    events = [e for e in source.all_logs(run.run_id) if e.is_dagster_event and e.dagster_event_type in wanted]
    kinds = [e.get_dagster_event().event_type_value for e in events]
    assert kinds[0] == "ASSET_MATERIALIZATION_PLANNED" and kinds[-1] == "ASSET_MATERIALIZATION_PLANNED"
    assert "ASSET_MATERIALIZATION" in kinds  # planned, materializations, then the keys not ok
    batched = BatchedSqliteEventLogStorage(str(tmp_path / "batched"))
    batched.store_event_batch(events)
    one_by_one = SqliteEventLogStorage(str(tmp_path / "one_by_one"))
    for event in events:
        one_by_one.store_event(event)
    mine, reference = _tables(tmp_path / "batched", "."), _tables(tmp_path / "one_by_one", ".")
    assert mine == reference
    assert mine["asset_keys"][0][1][1] in KEYS and mine["asset_keys"][0][2] is True
