"""Automation at the definitions level: conditions evaluated against a real instance with
``evaluate_automation_conditions`` (exactly which keys are requested), the rollback sensor over
a real production registry, the lane jobs' ranged requests and the spec's new fields."""

import datetime as dt
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, AssetMaterialization, DagsterInstance, build_schedule_context, build_sensor_context
from dagster import evaluate_automation_conditions as evaluate

from many_models_platform.core.spec import DEFAULT_CONFIG, ConfigError, load_config, parse_config
from many_models_platform.definitions import build_definitions
from many_models_platform.defs.lane_jobs import ranged_run_requests
from many_models_platform.defs.lanes import LANE_TAG, USE_CASE_TAG
from many_models_platform.defs.resources import PlatformResource
from many_models_platform.defs.rollback import changed_outside
from many_models_platform.defs.runner import RANGE_END, RANGE_START
from many_models_platform.storage.registry import ModelRef

UC = "group_regression"


def small_config(path: Path, max_keys_per_run: int = 2, enabled: bool = True) -> Path:
    """The shipped group_regression with one tiny estimator and automation on."""
    spec = yaml.safe_load(DEFAULT_CONFIG.read_text())["use_cases"][UC]
    spec["candidates"] = [{"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}]
    spec["automation"] = {"enabled": enabled, "interval_seconds": 1}
    path.write_text(yaml.safe_dump({"use_cases": {UC: spec}, "run": {"max_keys_per_run": max_keys_per_run}}))
    return path


def materialize(instance: DagsterInstance, stage: str, keys, **metadata) -> None:
    """What a stage's run leaves in the event log for ``keys``: one materialization per key with
    the metadata the conditions read (the stages themselves are the daemon test's business)."""
    for key in keys:
        md = {"status": "ok", "key": key, **metadata}
        instance.report_runless_asset_event(AssetMaterialization(AssetKey([UC, stage]), partition=key, metadata=md))


def requested(result, stage: str) -> set[str]:
    return set(result.get_requested_partitions(AssetKey([UC, stage])))


@pytest.fixture
def setup(platform, tmp_path, monkeypatch):
    settings, instance = platform
    config = small_config(tmp_path / "use_cases.yaml")
    monkeypatch.setenv("MMP_CONFIG", str(config))
    cfg = load_config(config)
    keys = [f"seg-{i:03d}" for i in range(1, 6)]
    instance.add_dynamic_partitions(f"{UC}_keys", keys)
    return settings, instance, build_definitions(str(config)), cfg, keys


def test_conditions_request_exactly_the_keys_with_new_candidates_then_new_production_versions(setup):
    _, instance, defs, _, keys = setup
    first = evaluate(defs, instance)  # the first tick only sets the cursor
    assert first.total_requested == 0
    materialize(instance, "evaluation", keys[:3], candidate_reused=False)  # three new candidates
    materialize(instance, "evaluation", keys[3:4], candidate_reused=True)  # unchanged: reused
    materialize(instance, "evaluation", keys[4:], candidate_reused=False, status="skipped")

    after_train = evaluate(defs, instance, cursor=first.cursor)
    assert requested(after_train, "promoted_model") == set(keys[:3])
    assert requested(after_train, "predictions") == set() and requested(after_train, "published") == set()

    # 34094: a key that is only added (no parent materialization) is never requested
    instance.add_dynamic_partitions(f"{UC}_keys", ["zz-added-only"])
    materialize(instance, "promoted_model", keys[:2], decision="promoted")
    materialize(instance, "promoted_model", keys[2:3], decision="rejected")
    promoted = evaluate(defs, instance, cursor=after_train.cursor)
    assert requested(promoted, "promoted_model") == set()  # handled: not requested again
    assert requested(promoted, "predictions") == set(keys[:2])
    assert requested(promoted, "published") == set(keys[:2])  # with predictions, in one request
    assert promoted.get_num_requested(AssetKey(["bi", "stg_predictions"])) == 0

    materialize(instance, "predictions", keys[:2])
    materialize(instance, "published", keys[:2])
    # the published stage reports the warehouse tables (defs/marts.py), which triggers the marts
    instance.report_runless_asset_event(AssetMaterialization(AssetKey(["warehouse", "predictions"])))
    scored = evaluate(defs, instance, cursor=promoted.cursor)
    assert requested(scored, "predictions") == set() and requested(scored, "published") == set()
    assert scored.get_num_requested(AssetKey(["bi", "stg_predictions"])) == 1
    assert scored.get_num_requested(AssetKey(["bi", "fct_forecast_vs_actual"])) == 1  # downstream, same request
    assert scored.get_num_requested(AssetKey(["bi", "stg_key_status"])) == 0  # its table did not change

    # incremental: a rerun over unchanged data reuses every candidate, so nothing is requested
    materialize(instance, "evaluation", keys, candidate_reused=True)
    unchanged = evaluate(defs, instance, cursor=scored.cursor)
    assert unchanged.total_requested == 0


def test_the_automation_sensors_emit_backfills_with_their_lane_tags(setup):
    _, instance, defs, _, keys = setup
    sensor = defs.get_sensor_def(f"{UC}_promote_automation")
    assert sensor.default_status.value == "RUNNING"  # automation.enabled in the spec
    assert sensor.minimum_interval_seconds == 1

    def tick(cursor):
        with build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as ctx:
            return sensor.evaluate_tick(ctx)

    baseline = tick(None)
    materialize(instance, "evaluation", keys, candidate_reused=False)
    result = tick(baseline.cursor)
    assert len(result.run_requests) == 1  # one backfill for the burst, cut into ranges by BackfillPolicy
    req = result.run_requests[0]
    assert req.requires_backfill_daemon()
    subset = req.asset_graph_subset
    assert set(subset.partitions_subsets_by_asset_key) == {AssetKey([UC, "promoted_model"])}
    assert set(subset.partitions_subsets_by_asset_key[AssetKey([UC, "promoted_model"])].get_partition_keys()) == set(
        keys
    )
    assert req.tags[LANE_TAG] == "promote" and req.tags[USE_CASE_TAG] == UC
    defaults = build_definitions(str(DEFAULT_CONFIG))  # the shipped use cases: nothing starts by surprise
    assert {s.default_status.value for s in defaults.sensors} == {"STOPPED"}
    assert {s.default_status.value for s in defaults.schedules} == {"STOPPED"}


def test_rollback_sensor_requests_a_score_run_for_a_key_changed_outside_dagster(setup):
    from many_models_platform.lifecycle import rollback
    from many_models_platform.storage.registry import production_registry

    settings, instance, defs, cfg, keys = setup
    spec = cfg.use_case(UC)
    prod = production_registry(settings.for_stage("promoted_model"), write=True)

    def promote(key: str) -> int:  # a version as promotion registers it (the registry does not open it)
        tags = {"use_case": UC, "key": key, "evaluation_id": f"e-{key}"}
        version = prod.register(UC, key, f"/tmp/models/{key}", None, tags, prod.existing_names(UC))
        prod.set_alias(UC, key, version)
        return version

    promote(keys[0])
    promote(keys[1])
    sensor = defs.get_sensor_def(f"{UC}_rollback_rescore")

    def tick(cursor):
        with build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs, resources={"platform": PlatformResource()}
        ) as ctx:
            return sensor(ctx)

    baseline = tick(None)
    assert not baseline.run_requests and baseline.cursor
    assert len(baseline.cursor) == 24  # a digest: the versions are in the lake, not in every stored tick
    promote(keys[0])  # the pipeline promotes a second version: the score automation's business
    again = tick(baseline.cursor)
    assert not again.run_requests
    rollback(spec, prod, keys[0])  # what `mmp promote --rollback` does
    after = tick(again.cursor)
    assert len(after.run_requests) == 1
    req = after.run_requests[0]
    assert req.job_name == f"{UC}_score"
    assert (req.tags[RANGE_START], req.tags[RANGE_END]) == (keys[0], keys[0])
    assert req.tags[LANE_TAG] == "score" and req.tags[USE_CASE_TAG] == UC
    assert not tick(after.cursor).run_requests  # handled once
    from many_models_platform.storage.lake import Lake

    # older maps go; the one before stays until the next change (Dagster may not have stored the new cursor)
    kept = {f.name for f in Lake(settings.lake_url).listing(f"sensors/{UC}/production_*.json")}
    assert kept == {f"sensors/{UC}/production_{c}.json" for c in (again.cursor, after.cursor)}


def test_force_reuses_nothing():
    from many_models_platform.stages.base import StageRun
    from many_models_platform.stages.model import reusable_candidates
    from many_models_platform.storage.settings import PlatformSettings

    run = StageRun(load_config().use_case(UC), PlatformSettings.from_env(), run_id="r", force=True)
    assert reusable_candidates(run, registry=None, keys=["a", "b"]) == {}  # the registry is not even read


def test_changed_outside_tells_a_rollback_from_a_promotion():
    def ref(version, **tags):
        return ModelRef("k", "uc.k", version, "src", tags)

    assert changed_outside({"k": 1}, {"k": ref(2, evaluation_id="e")}) == []  # the pipeline promoted
    assert changed_outside({"k": 2}, {"k": ref(1, evaluation_id="e")}) == ["k"]  # back to v1
    assert changed_outside({"k": 1}, {"k": ref(2, evaluation_id="e", restored_at="t")}) == ["k"]  # rolled forward
    assert changed_outside({"k": 1}, {"k": ref(3)}) == ["k"]  # made by hand
    assert changed_outside({}, {"k": ref(1, evaluation_id="e")}) == []  # new key: the score automation's


def test_a_burst_of_keys_becomes_bounded_ranged_requests():
    spec = load_config().use_case(UC)
    ordered = [f"k{i:05d}" for i in range(10_000)]
    reqs = ranged_run_requests(spec, "score", ordered, ordered, 2000, "test", "burst")
    assert len(reqs) == 5
    assert (reqs[0].tags[RANGE_START], reqs[0].tags[RANGE_END]) == ("k00000", "k01999")
    gaps = ranged_run_requests(spec, "score", ordered, ordered[:10] + ordered[20:30], 2000, "test", "gaps")
    assert len(gaps) == 2  # never a key outside the selection inside a range


def test_daily_schedule_requests_the_train_lane_in_ranges(setup):
    _, instance, defs, _, _ = setup
    schedule = defs.get_schedule_def(f"{UC}_daily_train")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.execution_timezone == "UTC"
    when = dt.datetime(2026, 12, 5, 3, 0, tzinfo=dt.UTC)
    with build_schedule_context(
        instance=instance, resources={"platform": PlatformResource()}, scheduled_execution_time=when
    ) as ctx:
        reqs = list(schedule.evaluate_tick(ctx).run_requests or [])
    assert len(reqs) == 3  # 5 keys, 2 per run
    assert {r.tags["mmp/run_date"] for r in reqs} == {"2026-12-05"}
    assert all(r.job_name == f"{UC}_train" and r.tags[LANE_TAG] == "train" for r in reqs)


def test_schedule_and_automation_fields_are_validated():
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    spec = raw["use_cases"][UC]
    assert load_config().use_case(UC).automation.enabled is False
    assert load_config().use_case(UC).schedule.enabled is False
    ok = parse_config({"use_cases": {UC: {**spec, "schedule": {"cron": "30 2 * * 1-5", "timezone": "Europe/Paris"}}}})
    assert ok.use_case(UC).schedule.timezone == "Europe/Paris"
    for bad, word in (
        ({"schedule": {"cron": "every day"}}, "cron"),
        ({"schedule": {"timezone": "Mars/Olympus"}}, "time zone"),
        ({"automation": {"enabled": True, "interval_seconds": 0}}, "interval_seconds"),
        ({"automation": {"enabeld": True}}, "enabeld"),
    ):
        with pytest.raises(ConfigError, match=word):
            parse_config({"use_cases": {UC: {**spec, **bad}}})


def test_automation_on_and_off_are_stored_on_the_instance(setup):
    from many_models_platform.defs.instigators import set_running, status

    _, instance, _, cfg, _ = setup
    spec = cfg.use_case(UC)
    # the code location loads as `dagster dev` does: the shipped use cases, whose automation is off
    before = {s.name: s.running for s in status(instance, spec)}
    assert before == dict.fromkeys(
        [
            f"{UC}_promote_automation",
            f"{UC}_score_automation",
            f"{UC}_rollback_rescore",
            "bi_marts_automation",
            f"{UC}_daily_train",
        ],
        False,
    )
    set_running(instance, spec, True)
    assert all(s.running for s in status(instance, spec))
    set_running(instance, spec, False)
    assert not any(s.running for s in status(instance, spec))
