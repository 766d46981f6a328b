"""The Dagster UI loads this code location through workspace.yaml, on the instance `mmp run`
writes to, and shows every key's materialization."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dagster_helpers import run_pipeline

from many_models_platform.core.generators import GENERATORS, write_landing

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


def chromium_path() -> str | None:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
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
    write_landing(
        GENERATORS["group_regression"](keys=6, rows=60),
        Path(settings.lake_url) / "landing/group_regression",
        "group_regression",
    )
    assert run_pipeline(settings, instance, None, "group_regression").success

    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": os.environ["DAGSTER_HOME"], "MMP_HOME": settings.home}
    server = subprocess.Popen(
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
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
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
            assert time.monotonic() < deadline, "webserver did not start"
            time.sleep(0.5)
        node = {}
        while time.monotonic() < deadline:  # the code location loads in the background
            node = graphql(port, QUERY, {"path": ["group_regression", "published"]})["assetNodeOrError"]
            if node:
                break
            time.sleep(1)
        assert node["groupName"] == "group_regression"
        assert node["partitionStats"] == {"numMaterialized": 6, "numPartitions": 6, "numFailed": 0}
        assert node["dependencyKeys"] == [{"path": ["group_regression", "predictions"]}]
        check_key_page_in_browser(port, settings, tmp_path)
    finally:
        server.terminate()
        server.wait(timeout=30)
