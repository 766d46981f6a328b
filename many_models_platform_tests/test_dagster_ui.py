"""The Dagster UI loads this code location through workspace.yaml, on the instance `mmp run`
writes to, shows every key's materialization, shows a key that is not ok as failed, and shows
the run the landing sensor launched through the daemon when a file landed."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import daemon_pace
import pytest
from dagster import AssetKey
from dagster_helpers import land_generated, run_pipeline
from pg_helpers import IN_CI

ROOT = Path(__file__).resolve().parents[1]
# Screenshots, kept as test artefacts: pytest's tmp dirs keep only the last three runs (and other
# sessions' runs rotate them away); a CI job can collect this folder (MMP_TEST_ARTEFACTS).
ARTEFACTS = Path(os.environ.get("MMP_TEST_ARTEFACTS", ROOT / ".test-artefacts")) / "dagster_ui"
pytestmark = pytest.mark.slow

QUERY = """
query ($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      groupName
      partitionStats { numMaterialized numPartitions numFailed }
      dependencyKeys { path }
    }
  }
}
"""
# What the partitions view and the "Missing and failed" selection of the launch dialog read.
STATUSES = """
query ($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions unmaterializedPartitions }
      }
    }
  }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["data"]


@contextlib.contextmanager
def serving(cmd: list[str], port: int, settings):
    """Run a Dagster server process group on this instance until the block ends."""
    # `dagster dev` starts the daemon with this environment: its 30 s backfill loop paced to 2 s
    env = daemon_pace.env({**os.environ, "DAGSTER_HOME": os.environ["DAGSTER_HOME"], "MMP_HOME": settings.home})
    server = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
        yield server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def wait_for_code_location(port: int, timeout: float = 120) -> dict:
    """The code location loads in the background after the server answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = graphql(port, QUERY, {"path": ["group_regression", "published"]})["assetNodeOrError"]
        if node:
            return node
        time.sleep(1)
    raise AssertionError("code location did not load")


def chromium_path() -> str | None:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if IN_CI:
            pytest.fail("chromium is missing: scripts/install-test-services.sh installs it")
        pytest.skip("chromium not installed (run scripts/install-test-services.sh)")
    return path


def statuses(port: int, use_case: str, stage: str) -> dict[str, list[str]]:
    node = graphql(port, STATUSES, {"path": [use_case, stage]})["assetNodeOrError"]
    return node["assetPartitionStatuses"]


def check_key_pages_in_browser(port: int, settings, shots: Path, bad: str) -> None:
    """A data engineer opens the model asset's partitions: the bad key is red, counted under
    Failed, and its reason is one click away; a good key shows its own metadata and links to its
    MLflow version. The Automation page lists the use case's sensors (landing, the automation
    condition sensors, rollback) and its daily schedule. Screenshots go to ``shots``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    key = "seg-001"
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    base = f"http://127.0.0.1:{port}/assets/group_regression/model?view=partitions"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=flags)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            page.goto(f"{base}&partition={key}")
            skip = page.get_by_role("button", name="Skip")  # Dagster's one-time community dialog
            with contextlib.suppress(PlaywrightTimeout):  # absent once dismissed
                skip.click(timeout=10_000)
            page.get_by_text("segment_id=seg-001").wait_for(timeout=60_000)
            good = page.inner_text("body")
            link = page.get_by_role("link", name=f"http://localhost:5000/#/models/group_regression.{key}/versions/1")
            href = link.get_attribute("href", timeout=10_000)
            page.screenshot(path=str(shots / "model_key.png"))
            page.goto(f"{base}&partition={bad}")
            page.get_by_text("too few rows").first.wait_for(timeout=60_000)
            failed = page.inner_text("body")
            page.screenshot(path=str(shots / "model_failed_key.png"))
            # the Automation page lists the use case's sensors and schedule, not "No automations"
            page.goto(f"http://127.0.0.1:{port}/automation")
            page.get_by_text("group_regression_landing").first.wait_for(timeout=60_000)
            page.get_by_text("Automation condition sensor").first.wait_for(timeout=60_000)  # its kind, once loaded
            automation = page.inner_text("body")
            page.screenshot(path=str(shots / "automation.png"))
        finally:
            browser.close()
    assert "No automations" not in automation and "There are no automations" not in automation
    for name in ("promote_automation", "score_automation", "rollback_rescore", "daily_train"):
        assert f"group_regression_{name}" in automation, (name, automation[:1500])
    assert "bi_marts_automation" in automation
    for expected in ("Materialized", "status", "estimator", "metric_rmse", "data_fingerprint", "mlflow_model"):
        assert expected in good, f"{expected!r} not on the key's page"
    assert href == f"http://localhost:5000/#/models/group_regression.{key}/versions/1"
    for count in ("Failed (1)", "Materialized (3)", "Missing (2)"):  # the partitions view's filters
        assert count in failed, (count, failed[:600])
    assert "training_set failed: too few rows" in failed and "skipped" in failed


def land_with_a_bad_key(settings, keys: int, bad: str) -> Path:
    """Generated data for group_regression in one file, ``bad`` cut to 5 rows (min_rows is 30)."""
    import polars as pl

    land_generated(settings, "group_regression", keys=keys, rows=60, files=1)
    (path,) = (Path(settings.lake_url) / "landing" / "group_regression").iterdir()
    frame = pl.read_csv(path)
    cut = frame.filter(pl.col("segment_id") == bad).head(5)  # segment ids are their own partition keys
    pl.concat([frame.filter(pl.col("segment_id") != bad), cut]).write_csv(path)
    return path


BACKFILL = """
mutation ($p: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $p) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
BACKFILL_STATUS = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status runs(limit: 50) { status } } }
}
"""


def backfill(port: int, keys: list[str]) -> dict:
    """Launch a backfill of ``keys`` over all seven assets, as the UI's Materialize dialog does,
    and wait for the daemon to finish it."""
    from many_models_platform.stages import STAGES

    params = {
        "partitionNames": keys,
        "assetSelection": [{"path": ["group_regression", s]} for s in STAGES],
        "fromFailure": False,
    }
    launched = graphql(port, BACKFILL, {"p": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    deadline = time.monotonic() + 400
    status = None
    while time.monotonic() < deadline:
        status = graphql(port, BACKFILL_STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]
        if status["status"] not in ("REQUESTED",):
            break
        time.sleep(3)
    return status


START_SENSOR = """
mutation ($s: SensorSelector!) {
  startSensor(sensorSelector: $s) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}
"""
SENSOR_RUNS = """
query ($sensor: String!) {
  runsOrError(filter: {tags: [{key: "dagster/sensor_name", value: $sensor}]}) {
    ... on Runs { results { runId status jobName tags { key value } } }
  }
}
"""
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def land_new_key_and_start_the_landing_sensor(port: int, settings, key: str) -> dict:
    """A file with a new key lands; the landing sensor is turned on the way the Automation page's
    toggle does it (the same GraphQL mutation), and the daemon ticks it and launches the run.
    Returns the run, once finished."""
    import polars as pl

    from many_models_platform.core.generators import GENERATORS

    data = GENERATORS["group_regression"](keys=int(key.removeprefix("seg-")), rows=60).history
    landing = Path(settings.lake_url) / "landing" / "group_regression"
    data.filter(pl.col("segment_id") == key).write_csv(landing / f"delivery_{key}.csv")
    sensor = "group_regression_landing"
    selector = {"repositoryLocationName": "many_models_platform", "repositoryName": "__repository__"}
    started = graphql(port, START_SENSOR, {"s": {**selector, "sensorName": sensor}})["startSensor"]
    assert started == {"__typename": "Sensor", "sensorState": {"status": "RUNNING"}}, started
    deadline = time.monotonic() + 400
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = graphql(port, SENSOR_RUNS, {"sensor": sensor})["runsOrError"]["results"]
        if runs and all(r["status"] in FINISHED for r in runs):
            break
        time.sleep(3)
    assert len(runs) == 1, runs  # the first tick: one training run (key ranges, never a run per key)
    return runs[0]


def check_sensor_run_in_browser(port: int, shots: Path, run: dict) -> str:
    """The text of the run's row on the Runs page, where a data engineer sees who launched it
    (the sensor), its job, tags and status. Screenshot ``sensor_run.png`` beside the others."""
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=flags)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/runs")
            # the runs feed is a virtualized grid of divs, not a <table>
            row = page.locator("[class*='RunsFeedRow_rowGrid']", has_text=run["runId"][:8]).first
            row.get_by_text("group_regression_landing").first.wait_for(timeout=60_000)  # "launched by", once loaded
            page.screenshot(path=str(shots / "sensor_run.png"))
            return row.inner_text()
        finally:
            browser.close()


def test_the_ui_shows_failed_keys_and_backfills_the_missing_and_failed_ones(platform):
    """The demo-like `mmp run` over four of six keys, one of them too short. In the UI (`dagster dev`:
    webserver, daemon, run coordinator and launcher), that key is failed at every stage it did not
    get through, with its reason one click away, and the other keys are materialized. After its data
    is fixed, a backfill of what the *Missing and failed* selection picks runs exactly that key and
    the two keys never run, through all seven stages, and nothing else. Then a file with a new key
    lands and the landing sensor is turned on: the daemon ticks it and runs the training it
    requests, and the Runs page lists that run as launched by the sensor, succeeded."""
    from many_models_platform.core.spec import load_config
    from many_models_platform.defs.discovery import register_new_keys
    from many_models_platform.defs.runner import RANGE_END, RANGE_START
    from many_models_platform.stages import STAGES
    from many_models_platform.storage.lake import Lake

    settings, instance = platform
    bad = "seg-004"
    path = land_with_a_bad_key(settings, keys=6, bad=bad)
    keys, _ = register_new_keys(instance, load_config().use_case("group_regression"), Lake(settings.lake_url))
    assert keys == [f"seg-00{i}" for i in range(1, 7)]  # insertion order; segment ids are their partition keys
    result = run_pipeline(settings, instance, None, "group_regression", keys=keys[:4])
    assert result.success and result.ok  # some keys failing is not a failed `mmp run`

    port = free_port()
    with serving(
        [sys.executable, "-m", "dagster", "dev", "-w", str(ROOT / "workspace.yaml"), "-p", str(port)], port, settings
    ):
        node = wait_for_code_location(port)
        assert node["groupName"] == "group_regression"
        assert node["partitionStats"] == {"numMaterialized": 3, "numPartitions": 6, "numFailed": 1}
        assert node["dependencyKeys"] == [{"path": ["group_regression", "predictions"]}]
        assert statuses(port, "group_regression", "raw")["failedPartitions"] == []
        wanted = set()
        for stage in STAGES[1:]:
            now = statuses(port, "group_regression", stage)
            assert now["failedPartitions"] == [bad], stage
            assert set(now["unmaterializedPartitions"]) == {"seg-005", "seg-006"}, stage
            wanted |= set(now["failedPartitions"]) | set(now["unmaterializedPartitions"])
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        check_key_pages_in_browser(port, settings, ARTEFACTS, bad)

        # the data is fixed; the backfill of the missing and failed keys runs exactly those again
        land_generated(settings, "group_regression", keys=6, rows=60, files=1)
        assert [p.name for p in path.parent.iterdir()] == [path.name]
        before = materializations(instance)
        done = backfill(port, sorted(wanted))
        assert done["status"] == "COMPLETED_SUCCESS", done
        assert done["runs"] and all(r["status"] == "SUCCESS" for r in done["runs"])
        after = materializations(instance)
        assert {k for k in after if after[k] > before.get(k, 0)} == wanted == {bad, "seg-005", "seg-006"}
        for stage in STAGES:
            assert set(instance.get_materialized_partitions(AssetKey(["group_regression", stage]))) == set(keys)
            assert statuses(port, "group_regression", stage)["failedPartitions"] == [], stage

        # a file with a new key lands; the landing sensor, turned on, makes the daemon train it
        run = land_new_key_and_start_the_landing_sensor(port, settings, "seg-007")
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert run["status"] == "SUCCESS" and run["jobName"] == "group_regression_train", run
        assert tags["mmp/launched_by"] == "landing sensor" and tags["mmp/lane"] == "train", tags
        # its first tick takes every landed file as new: all seven keys, in one range
        assert (tags[RANGE_START], tags[RANGE_END]) == ("seg-001", "seg-007"), tags
        assert "seg-007" in instance.get_dynamic_partitions("group_regression_keys"), "no new partition"
        trained = instance.get_materialized_partitions(AssetKey(["group_regression", "model"]))
        assert "seg-007" in trained, trained
        row = check_sensor_run_in_browser(port, ARTEFACTS, run)
        for expected in ("group_regression_landing", "group_regression_train", "Success", "mmp/launched_by: landing"):
            assert expected in row, (expected, row)
    import duckdb

    con = duckdb.connect(settings.warehouse_url.removeprefix("duckdb:///"), read_only=True)
    published = {r[0] for r in con.execute("SELECT DISTINCT key FROM predictions").fetchall()}
    con.close()
    assert published == set(keys)


def materializations(instance) -> dict[str, int]:
    """Key -> number of materializations of group_regression/model so far."""
    from collections import Counter

    from dagster import DagsterEventType, EventRecordsFilter

    records = instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION, asset_key=AssetKey(["group_regression", "model"])),
        limit=1000,
    )
    return dict(Counter(r.asset_materialization.partition for r in records))
