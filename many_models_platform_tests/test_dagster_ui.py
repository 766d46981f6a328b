"""The Dagster UI loads this code location through workspace.yaml, on the instance `mmp run`
writes to, and shows every key's materialization."""

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

import pytest
from dagster import AssetKey
from dagster_helpers import land_generated, run_pipeline
from pg_helpers import IN_CI

ROOT = Path(__file__).resolve().parents[1]
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
    env = {**os.environ, "DAGSTER_HOME": os.environ["DAGSTER_HOME"], "MMP_HOME": settings.home}
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


def check_key_page_in_browser(port: int, settings, tmp_path: Path) -> None:
    """A data engineer opens one key of the model asset and reads its own metadata."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    key = sorted(p.stem for p in (Path(settings.lake_url) / "bronze" / "group_regression").iterdir())[0]
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=flags)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/assets/group_regression/model?view=partitions&partition={key}")
            skip = page.get_by_role("button", name="Skip")  # Dagster's one-time community dialog
            with contextlib.suppress(PlaywrightTimeout):  # absent once dismissed
                skip.click(timeout=10_000)
            page.get_by_text("segment_id=seg-001").wait_for(timeout=60_000)
            body = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "model_key.png"))
        finally:
            browser.close()
    for expected in (
        "Materialized",
        "status",
        "estimator",
        "metric_rmse",
        "data_fingerprint",
        "group_regression.seg-001",
    ):
        assert expected in body, f"{expected!r} not on the key's page"


def test_webserver_shows_each_key_of_the_pipeline(platform, tmp_path):
    settings, instance = platform
    land_generated(settings, "group_regression", keys=6, rows=60)
    assert run_pipeline(settings, instance, None, "group_regression").success

    port = free_port()
    with serving(
        [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-w",
            str(ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        port,
        settings,
    ):
        node = wait_for_code_location(port)
        assert node["groupName"] == "group_regression"
        assert node["partitionStats"] == {"numMaterialized": 6, "numPartitions": 6, "numFailed": 0}
        assert node["dependencyKeys"] == [{"path": ["group_regression", "predictions"]}]
        check_key_page_in_browser(port, settings, tmp_path)


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


def test_a_ui_backfill_of_some_keys_runs_every_stage_through_the_daemon(platform):
    """What a data engineer does in the UI: pick some keys, backfill all seven assets. Runs go
    through the daemon, the run coordinator and the run launcher of `dagster dev`."""
    from many_models_platform.core.spec import load_config
    from many_models_platform.defs.discovery import register_new_keys
    from many_models_platform.stages import STAGES
    from many_models_platform.storage.lake import Lake

    settings, instance = platform
    land_generated(settings, "group_regression", keys=5, rows=60)
    keys, _ = register_new_keys(instance, load_config().use_case("group_regression"), Lake(settings.lake_url))
    chosen = keys[1:4]
    port = free_port()
    with serving(
        [sys.executable, "-m", "dagster", "dev", "-w", str(ROOT / "workspace.yaml"), "-p", str(port)], port, settings
    ):
        wait_for_code_location(port)
        params = {
            "partitionNames": chosen,
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
        assert status["status"] == "COMPLETED_SUCCESS", status
        assert status["runs"] and all(r["status"] == "SUCCESS" for r in status["runs"])
    for stage in STAGES:
        assert set(instance.get_materialized_partitions(AssetKey(["group_regression", stage]))) == set(chosen)
    import duckdb

    con = duckdb.connect(settings.warehouse_url.removeprefix("duckdb:///"), read_only=True)
    published = {r[0] for r in con.execute("SELECT DISTINCT key FROM predictions").fetchall()}
    con.close()
    assert published == set(chosen)
