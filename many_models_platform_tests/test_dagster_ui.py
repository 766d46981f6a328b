"""The Dagster UI loads this code location through workspace.yaml, on the instance `mmp run`
writes to, and shows every key's materialization."""

import json
import os
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


def test_webserver_shows_each_key_of_the_pipeline(platform):
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
    finally:
        server.terminate()
        server.wait(timeout=30)
