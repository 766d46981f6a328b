"""The `mmp` command line, through its real entry point in a subprocess."""

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from many_models_platform.core.keys import key_label

pytestmark = pytest.mark.slow


def mmp(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMP_", "DAGSTER_HOME"))}
    env.update({"MMP_HOME": str(home), "COLUMNS": "200"})
    proc = subprocess.run(
        [sys.executable, "-m", "many_models_platform.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_generate_run_and_status(tmp_path):
    home = tmp_path / "home"
    # 120 rows: at 60, one key's 12-row holdout made the training mean beat its model (beat_baseline)
    out = mmp("generate", "group_regression", "--keys", "12", "--rows", "120", home=home).stdout
    assert "12 keys x 120 rows" in out
    run = mmp("run", "--use-case", "group_regression", home=home).stdout
    assert "group_regression: 12 keys (12 new), 1 run(s)" in run
    assert "keys published" in run and "rmse p10 / p50 / p90" in run
    assert re.search(r"keys published\s+│\s+12\s", run), run
    assert re.search(r"keys not published\s+│\s+0\s", run), run
    assert "Dagster UI" in run and "warehouse.duckdb" in run
    # nothing lands in the source tree; everything is under the data directory
    con = duckdb.connect(str(home / "warehouse" / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT count(DISTINCT key) FROM predictions").fetchone()[0] == 12
    con.close()
    status = mmp("status", "--use-case", "group_regression", home=home).stdout
    assert "12 keys registered" in status
    assert "published" in status and "training_set" in status

    # the model family: every key's candidate next to its production model, also in the warehouse
    models = mmp("models", "group_regression", "--limit", "3", home=home).stdout
    assert "group_regression: 12 keys (current 12); metric rmse" in models
    assert "… 9 more" in models and "from candidate v1" in models
    con = duckdb.connect(str(home / "warehouse" / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), min(status), max(production_version) FROM model_family").fetchone() == (
        12,
        "current",
        1,
    )
    con.close()
    first = sorted(p.stem for p in (home / "lake" / "bronze" / "group_regression").iterdir())[0]
    proc = mmp("promote", "group_regression", first, "--rollback", home=home, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "rollback refused" in proc.stdout and "first production version" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr

    # a subset of keys reruns only those keys
    keys = sorted(p.stem for p in (home / "lake" / "bronze" / "group_regression").iterdir())[:2]
    label = key_label(["segment_id"], keys[1])  # a readable label works as well as the partition key
    rerun = mmp("run", "-u", "group_regression", "--keys", keys[0], "--keys", label, home=home).stdout
    assert "group_regression: 2 keys (0 new)" in rerun


def test_bad_config_and_unknown_key_give_clear_errors(tmp_path):
    home = tmp_path / "home"
    bad = tmp_path / "bad.yaml"
    bad.write_text("use_cases:\n  x:\n    task: forecast\n    source: {path: 'landing/x/*.csv'}\n    keys: [k]\n")
    proc = mmp("run", "--config", str(bad), home=home, check=False)
    assert proc.returncode == 2
    assert str(bad) in proc.stdout and "use case 'x'" in proc.stdout and "holdout" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr

    mmp("generate", "group_regression", "--keys", "3", "--rows", "40", home=home)
    proc = mmp("run", "-u", "group_regression", "--keys", "no-such-key", home=home, check=False)
    assert proc.returncode == 1
    assert "unknown key" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
