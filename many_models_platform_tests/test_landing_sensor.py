"""The landing sensor, evaluated directly (``build_sensor_context``) with a real Dagster instance,
on a lake in Azurite and on a local folder."""

from __future__ import annotations

import time

import polars as pl
import pytest
from conftest_core import regression_body
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context
from dagster_helpers import write_config

from many_models_platform.core.keys import encode_key
from many_models_platform.core.spec import load_config
from many_models_platform.defs import sensors as landing_sensors
from many_models_platform.defs.factory import partitions_name
from many_models_platform.defs.lanes import LANE_TAG, USE_CASE_TAG
from many_models_platform.defs.resources import PlatformResource
from many_models_platform.defs.runner import RANGE_END, RANGE_START
from many_models_platform.defs.sensors import build_landing_sensor, plan_ranges, train_job_name
from many_models_platform.stages.landing import scan_landing
from many_models_platform.storage.lake import Lake
from many_models_platform.storage.settings import PlatformSettings


def csv(keys: list[str], rows: int = 24, shift: float = 0.0) -> bytes:
    n = len(keys) * rows
    frame = pl.DataFrame(
        {
            "segment": [k for k in keys for _ in range(rows)],
            "x1": [float(i % 7) + shift for i in range(n)],
            "x2": [float(i % 5) for i in range(n)],
            "y": [2.0 * (i % 7) + (i % 5) + shift for i in range(n)],
        }
    )
    return frame.write_csv().encode()


def keys_of(*segments: str) -> list[str]:
    return [encode_key([s]) for s in segments]


@pytest.fixture
def demo(mmp_home, tmp_path, monkeypatch):
    """(config, lake, instance) for a small regression use case ``demo``; the lake is local unless
    the test points MMP_LAKE_URL elsewhere first."""

    def make(env: dict[str, str] | None = None, max_keys_per_run: int = 4):
        for var, value in (env or {}).items():
            monkeypatch.setenv(var, value)
        path = write_config(
            tmp_path / "uc.yaml", {"demo": regression_body()}, run={"max_keys_per_run": max_keys_per_run}
        )
        monkeypatch.setenv("MMP_CONFIG", str(path))
        settings = PlatformSettings.from_env()
        settings.ensure_local_dirs()
        monkeypatch.setenv("DAGSTER_HOME", str(mmp_home / "dagster"))
        (mmp_home / "dagster").mkdir(parents=True, exist_ok=True)
        instances.append(DagsterInstance.local_temp(str(mmp_home / "dagster")))
        return load_config(path), Lake(settings.lake_url, settings.lake_storage_options), instances[-1]

    instances: list[DagsterInstance] = []
    yield make
    for instance in instances:
        instance.dispose()


def tick(config, instance, cursor):
    """One evaluation of a freshly built sensor (as after a restart), applying its partition
    requests to the instance the way the sensor daemon does."""
    sensor = build_landing_sensor(config.use_case("demo"), config)
    with build_sensor_context(instance=instance, cursor=cursor, resources={"platform": PlatformResource()}) as ctx:
        result = sensor(ctx)
    if isinstance(result, SensorResult):
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def ranges(result) -> list[tuple[str, str]]:
    return [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in result.run_requests]


def test_landing_sensor_on_azurite(demo, azurite_lake, monkeypatch):
    monkeypatch.setattr(landing_sensors, "PARTITION_BATCH", 3)
    config, lake, instance = demo(azurite_lake.env())
    land = lambda name, data: lake.write_bytes(lake.path("landing", "demo", name), data)  # noqa: E731
    land("a.csv", csv(["s1", "s2", "s3", "s4"]))
    land("b.csv", csv(["s5", "s6"]))
    land("broken.csv", b"segment,x1,x2,y\n\xff\xfe,1,2,3\n")  # unreadable: not UTF-8
    land("nokey.csv", b"x1,x2,y\n1,2,3\n")  # readable, but without the key column

    first = tick(config, instance, None)
    # new keys become partitions in sorted batches, then ranged runs of the train lane
    assert [list(r.partition_keys) for r in first.dynamic_partitions_requests] == [
        keys_of("s1", "s2", "s3"),
        keys_of("s4", "s5", "s6"),
    ]
    assert list(instance.get_dynamic_partitions(partitions_name("demo"))) == keys_of("s1", "s2", "s3", "s4", "s5", "s6")
    assert ranges(first) == [(encode_key(["s1"]), encode_key(["s4"])), (encode_key(["s5"]), encode_key(["s6"]))]
    for request in first.run_requests:
        assert request.tags[USE_CASE_TAG] == "demo" and request.tags[LANE_TAG] == "train"
        assert request.job_name in (None, train_job_name("demo"))
    # the unreadable files are recorded as ingest records rejects, with a reason; they stay in landing
    rejected = {f.name for f in lake.listing("rejected/demo/*.json")}
    assert len(rejected) == 2
    reasons = [lake.read_json(lake.path(*name.split("/")))["reason"] for name in sorted(rejected)]
    assert any("missing required column(s) ['segment']" in r for r in reasons)
    assert any("the file is not UTF-8 text" in r and "encoding" in r for r in reasons)
    assert {f.name for f in lake.listing("landing/demo/*.csv")} >= {"landing/demo/broken.csv", "landing/demo/nokey.csv"}
    cursor = first.cursor
    assert cursor and len(cursor) < 64  # the cursor is a digest; the file list is in the lake
    assert [f.name for f in lake.listing("sensors/demo/*.json")] == [f"sensors/demo/landing_{cursor}.json"]

    # exactly once: a second tick (a restarted sensor from the stored cursor) requests nothing
    second = tick(config, instance, cursor)
    assert isinstance(second, SensorResult) and not second.run_requests and second.skip_reason
    assert second.cursor == cursor

    # b.csv changes (s5 new rows, s6 gone, s7 new): only those keys run; a, and s1..s4, do not
    land("b.csv", csv(["s5", "s7"], shift=1.0))
    third = tick(config, instance, cursor)
    assert [list(r.partition_keys) for r in third.dynamic_partitions_requests] == [keys_of("s7")]
    assert ranges(third) == [(encode_key(["s5"]), encode_key(["s7"]))]  # s5, s6, s7: contiguous
    assert third.cursor != cursor
    # the older list stays until Dagster has stored the new cursor, then goes on the next change
    assert len(lake.listing("sensors/demo/*.json")) == 2

    fourth = tick(config, instance, third.cursor)
    assert not fourth.run_requests and fourth.cursor == third.cursor


def test_scan_limits_files_per_tick_and_survives_a_lost_list(demo, monkeypatch):
    config, lake, _instance = demo()
    spec = config.use_case("demo")
    for i in range(5):
        lake.write_bytes(lake.path("landing", "demo", f"p{i}.csv"), csv([f"k{i}"], rows=3))
    # out of time before the first read: one file is read all the same (the sensor moves on),
    # the other four wait for the next tick, which takes them up from the cursor
    hurried = scan_landing(spec, lake, None, set(), deadline=time.monotonic())
    assert hurried.new_keys == keys_of("k0") and hurried.counts["files_deferred"] == 4
    later = scan_landing(spec, lake, hurried.cursor, set(hurried.new_keys))
    assert later.new_keys == keys_of("k1", "k2", "k3", "k4") and later.counts["files_deferred"] == 0
    first = scan_landing(spec, lake, None, set(), max_files=3)
    assert first.new_keys == keys_of("k0", "k1", "k2") and first.counts["files_deferred"] == 2
    rest = scan_landing(spec, lake, first.cursor, set(first.new_keys), max_files=3)
    assert rest.new_keys == keys_of("k3", "k4") and rest.counts["files_deferred"] == 0
    assert scan_landing(spec, lake, rest.cursor, set(keys_of(*[f"k{i}" for i in range(5)]))).changed is False
    # a removed landing file changes its keys' data (they lose rows)
    lake.delete(lake.path("landing", "demo", "p1.csv"))
    gone = scan_landing(spec, lake, rest.cursor, set(keys_of(*[f"k{i}" for i in range(5)])))
    assert gone.changed_keys == keys_of("k1") and gone.new_keys == []
    # the list named by the cursor lost (a wiped lake): everything is handled again, and said so
    lost = scan_landing(spec, lake, "0" * 24, set(keys_of(*[f"k{i}" for i in range(5)])))
    assert lost.lost_history and lost.changed_keys == keys_of("k0", "k2", "k3", "k4")
    # a corrupt file fixed in place is read again; an unchanged one never is
    lake.write_bytes(lake.path("landing", "demo", "p9.csv"), b"segment,x1,x2,y\n\xff\xfe,1,2,3\n")
    bad = scan_landing(spec, lake, lost.cursor, set(lost.changed_keys))
    assert bad.counts["files_rejected"] == 1 and not bad.changed
    again = scan_landing(spec, lake, bad.cursor, set(lost.changed_keys))
    assert again.cursor == bad.cursor and again.counts["files_rejected"] == 0
    lake.write_bytes(lake.path("landing", "demo", "p9.csv"), csv(["k9"], rows=3))
    assert scan_landing(spec, lake, bad.cursor, set(lost.changed_keys)).new_keys == keys_of("k9")


def test_nothing_landed_is_a_skip_with_a_reason(demo):
    config, _, instance = demo()
    result = tick(config, instance, None)
    assert isinstance(result, SkipReason | SensorResult)
    assert not getattr(result, "run_requests", None)


def test_ranges_are_exact_until_the_run_budget_then_merged():
    ordered = [f"k{i:02d}" for i in range(20)]
    # contiguous changes: exact ranges of at most max_per_run keys
    assert plan_ranges(ordered, ordered[:7], 3, 10) == ([("k00", "k02"), ("k03", "k05"), ("k06", "k06")], 0)
    scattered = ordered[::2]  # every other key: 10 exact runs of one key each
    assert len(plan_ranges(ordered, scattered, 4, 10)[0]) == 10
    merged, extra = plan_ranges(ordered, scattered, 4, 5)
    assert merged == [("k00", "k02"), ("k04", "k06"), ("k08", "k10"), ("k12", "k14"), ("k16", "k18")]
    assert extra == 5  # the unchanged keys between, k01 k05 k09 k13 k17
