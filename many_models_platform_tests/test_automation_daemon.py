"""The automation driven by a real ``dagster-daemon``: new candidates lead to promotion, then
scoring and publishing, then the dbt marts, with nobody launching anything; a rollback made
outside Dagster re-scores its key. One daemon, three keys, one tiny estimator."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import daemon_pace
import pytest
import yaml
from dagster import AssetKey, DagsterRunStatus, RunsFilter
from test_automation import UC, small_config

from many_models_platform.core.spec import load_config
from many_models_platform.definitions import build_definitions
from many_models_platform.defs.discovery import register_new_keys
from many_models_platform.defs.lane_jobs import LAUNCHED_BY_TAG, lane_job_name
from many_models_platform.defs.lanes import LANE_TAG, USE_CASE_TAG
from many_models_platform.defs.runner import DAGSTER_ENV, RANGE_END, RANGE_START, REPO_ROOT
from many_models_platform.storage.lake import Lake

pytestmark = pytest.mark.slow
TIMEOUT = 900


@pytest.fixture
def daemon(platform, tmp_path, monkeypatch):
    """(settings, instance, config path, daemon process): ``dagster-daemon run`` on the test's
    own DAGSTER_HOME and code location, stopped (its process group) at the end."""
    settings, instance = platform
    config = small_config(tmp_path / "use_cases.yaml", max_keys_per_run=3)
    monkeypatch.setenv("MMP_CONFIG", str(config))
    instance_yaml = Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml"
    dagster_yaml = yaml.safe_load(instance_yaml.read_text())
    limits = dagster_yaml["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert limits[0]["key"] == USE_CASE_TAG  # the repository's limits, on this instance
    # a busy test machine can take minutes to start the code server (Dagster's default wait: 180 s)
    dagster_yaml["code_servers"] = {"local_startup_timeout": 900}
    instance_yaml.write_text(yaml.safe_dump(dagster_yaml))
    # the daemon as deployed, its fixed 30 s backfill loop paced to 2 s (daemon_pace.py)
    env = daemon_pace.env({**os.environ, **DAGSTER_ENV, "MMP_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
    log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield settings, instance, config, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def wait_for(what: str, check, proc, timeout: float = TIMEOUT, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        assert proc.poll() is None, f"dagster-daemon exited while waiting for {what}"
        time.sleep(1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def ticked(instance, name: str) -> bool:
    for state in instance.all_instigator_state():
        if state.name == name and instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1):
            return True
    return False


def materialized(instance, stage: str, keys) -> bool:
    return set(keys) <= set(instance.get_materialized_partitions(AssetKey([UC, stage])))


def lane_runs(instance, lane: str):
    return instance.get_runs(RunsFilter(tags={LANE_TAG: lane}))


def test_the_daemon_promotes_scores_publishes_and_builds_the_marts_then_rescores_a_rollback(daemon, tmp_path):
    from dagster_helpers import land_generated

    from many_models_platform.lifecycle import rollback
    from many_models_platform.storage.registry import production_registry

    settings, instance, config, proc = daemon
    log = tmp_path / "daemon.log"
    cfg = load_config(config)
    spec = cfg.use_case(UC)
    land_generated(settings, UC, keys=3, rows=60, files=1)
    keys, _ = register_new_keys(instance, spec, Lake(settings.lake_url, settings.lake_storage_options))
    keys = sorted(keys)
    # the automation's first evaluation sets its cursor; candidates made after it are new to it
    for name in (f"{UC}_promote_automation", f"{UC}_rollback_rescore"):
        wait_for(f"a first tick of {name}", lambda name=name: ticked(instance, name), proc, log=log)

    defs = build_definitions(str(config))
    train = defs.resolve_job_def(lane_job_name(UC, "train")).execute_in_process(
        instance=instance, tags={RANGE_START: keys[0], RANGE_END: keys[-1]}
    )
    assert train.success

    wait_for("promotion", lambda: materialized(instance, "promoted_model", keys), proc, log=log)
    wait_for("publishing", lambda: materialized(instance, "published", keys), proc, log=log)
    wait_for(
        "the marts",
        lambda: instance.get_latest_materialization_event(AssetKey(["bi", "fct_forecast_vs_actual"])),
        proc,
        log=log,
    )
    promote, score = lane_runs(instance, "promote"), lane_runs(instance, "score")
    # three keys, max_keys_per_run 3: one ranged run per lane, never a run per key
    assert len(promote) == 1 and len(score) == 1
    assert promote[0].status == DagsterRunStatus.SUCCESS and score[0].status == DagsterRunStatus.SUCCESS
    assert promote[0].tags[USE_CASE_TAG] == UC and score[0].tags[USE_CASE_TAG] == UC
    assert set(score[0].asset_selection or ()) == {AssetKey([UC, "predictions"]), AssetKey([UC, "published"])}
    rows = instance.get_latest_materialization_event(AssetKey(["warehouse", "predictions"])).asset_materialization
    assert rows.metadata["dagster/row_count"].value > 0

    # a registry change outside Dagster: key 0's production alias moves to another version
    prod = production_registry(settings.for_stage("promoted_model"), write=True)
    v1 = prod.snapshot(UC).current[keys[0]]
    v2 = prod.register(UC, keys[0], v1.source, None, dict(v1.tags), prod.existing_names(UC))
    rollback(spec, prod, keys[0], to_version=v2, by="test")

    def rescored():
        runs = [r for r in lane_runs(instance, "score") if r.tags.get(LAUNCHED_BY_TAG) == f"{UC}_rollback_rescore"]
        return [r for r in runs if r.status == DagsterRunStatus.SUCCESS]

    (run,) = wait_for("the rollback's re-scoring", rescored, proc, log=log)
    assert (run.tags[RANGE_START], run.tags[RANGE_END]) == (keys[0], keys[0])
    event = instance.get_latest_materialization_event(AssetKey([UC, "predictions"]))
    assert event.run_id == run.run_id and event.asset_materialization.partition == keys[0]
