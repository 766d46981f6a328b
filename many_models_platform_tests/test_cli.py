"""The `mmp` command line, through its real entry point in a subprocess."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from many_models_platform.core.keys import key_label

pytestmark = pytest.mark.slow


def mmp(*args: str, home: Path, check: bool = True, columns: int = 200) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMP_", "DAGSTER_HOME"))}
    env.update({"MMP_HOME": str(home), "COLUMNS": str(columns)})
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
    assert re.search(r"rows landed\s+│\s+1,440\s", run), run
    assert re.search(r"files rejected\s+│\s+0\s", run), run
    assert "stopped" not in run
    assert "Dagster UI" in run and "warehouse.duckdb" in run
    # nothing lands in the source tree; everything is under the data directory
    con = duckdb.connect(str(home / "warehouse" / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT count(DISTINCT key) FROM predictions").fetchone()[0] == 12
    con.close()
    status = mmp("status", "--use-case", "group_regression", home=home).stdout
    assert "12 keys registered" in status
    assert "published" in status and "training_set" in status
    assert re.search(r"published\s+│\s+12\s+│\s+0\s+│\s+0\s+│", status), status

    # the model family: every key's candidate next to its production model; it only reads...
    con = duckdb.connect(str(home / "warehouse" / "warehouse.duckdb"), read_only=True)
    snapshot = con.execute("SELECT max(snapshot_at) FROM model_family").fetchone()
    con.close()
    models = mmp("models", "group_regression", "--limit", "3", home=home).stdout
    assert "group_regression: 12 keys (current 12); metric rmse" in models
    assert "… 9 more" in models and "from candidate v1" in models
    con = duckdb.connect(str(home / "warehouse" / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT max(snapshot_at) FROM model_family").fetchone() == snapshot
    con.close()
    family = json.loads(mmp("models", "group_regression", "--json", home=home).stdout)
    assert sorted(r["key_label"] for r in family) == [f"segment_id=seg-{i:03d}" for i in range(1, 13)]
    assert {(r["status"], r["production_version"]) for r in family} == {("current", 1)}
    # ... writes the view to the warehouse only when asked, and folds labels, never cuts them,
    # even in a narrow terminal
    narrow = mmp("models", "group_regression", "--publish", "--limit", "0", home=home, columns=50).stdout
    assert "…" not in narrow and "written to the warehouse" in narrow
    con = duckdb.connect(str(home / "warehouse" / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), min(status), max(production_version) FROM model_family").fetchone() == (
        12,
        "current",
        1,
    )
    assert con.execute("SELECT max(snapshot_at) FROM model_family").fetchone() > snapshot
    con.close()
    first = sorted(p.stem for p in (home / "lake" / "bronze" / "group_regression").iterdir())[0]
    proc = mmp("promote", "group_regression", first, "--rollback", home=home, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "rollback refused" in proc.stdout and "first production version" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    proc = mmp("promote", "group_regression", "seg-0001", "--rollback", home=home, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown key 'seg-0001' for group_regression (12 key(s) with a production model)" in proc.stdout
    assert "did you mean" in proc.stdout and "segment_id=seg-001   (partition key seg-001)" in proc.stdout

    # a subset of keys reruns only those keys
    keys = sorted(p.stem for p in (home / "lake" / "bronze" / "group_regression").iterdir())[:2]
    label = key_label(["segment_id"], keys[1])  # a readable label works as well as the partition key
    rerun = mmp("run", "-u", "group_regression", "--keys", keys[0], "--keys", label, home=home).stdout
    assert "group_regression: 2 keys (0 new)" in rerun
    assert re.search(r"models reused \(unchanged\)\s+│\s+2\s", rerun), rerun  # same data and config: no refit

    # the landing files are gone today (and an unreadable one came): every key fails at raw, the
    # run stops there and says why, exits 1, and status shows today's run, not yesterday's
    landing = home / "lake" / "landing" / "group_regression"
    for path in landing.iterdir():
        path.rename(tmp_path / path.name)
    (landing / "notes.csv").write_text("hello\n")
    stopped = mmp("run", "-u", "group_regression", "--run-date", "2031-01-02", home=home, check=False)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    out = " ".join(stopped.stdout.split())
    stop = r"stopped at raw: no key left after raw: no rows for this key in the landing zone.*\(12 keys\)"
    assert re.search(stop, out), out
    assert "1 file(s) rejected" in out and "notes.csv" in out
    # beyond the ten keys listed, what the keys not ok have in common, counted once
    assert "... and 2 more" in out and re.search(r"keys not ok, by reason: 12 key\(s\): raw failed: no rows", out), out
    assert re.search(r"rows landed\s+│\s+0\s", stopped.stdout), stopped.stdout
    status = mmp("status", "-u", "group_regression", home=home).stdout
    assert re.search(r"raw\s+│\s+0\s+│\s+12\s+│\s+0\s+│\s+2031-01-02", status), status
    assert "stopped at raw" in " ".join(status.split())
    failed = mmp("status", "-u", "group_regression", "--failed", home=home).stdout
    assert "12 key(s) not ok" in failed
    assert all(f"segment_id=seg-{i:03d}" in failed for i in range(1, 13))
    assert failed.count("no rows for this key in") == 12


def test_user_mistakes_exit_2_with_a_message_and_no_traceback(tmp_path, mmp_home):
    """One mistake through the real entry point; the other commands' in process (typer's runner,
    exceptions not caught: a traceback would fail the test), as each process costs seconds."""
    from typer.testing import CliRunner

    from many_models_platform.cli import app

    proc = mmp("run", "-u", "no_such_case", home=tmp_path / "home", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown use case 'no_such_case'" in proc.stdout and "group_regression" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    runner = CliRunner()
    for args in (
        ("status", "-u", "no_such_case"),
        ("models", "no_such_case"),
        ("generate", "no_such_case"),
        ("promote", "no_such_case", "k", "--rollback"),
    ):
        result = runner.invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})
        assert result.exit_code == 2, (args, result.output)
        assert "unknown use case 'no_such_case'" in result.output and "group_regression" in result.output, args
    date = ["run", "-u", "group_regression", "--run-date", "2025-13-45"]
    result = runner.invoke(app, date, catch_exceptions=False, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "--run-date '2025-13-45' is not a date" in result.output and "YYYY-MM-DD" in result.output
    assert not mmp_home.exists() or not (mmp_home / "lake" / "bronze").exists()  # nothing ran


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
    assert proc.returncode == 2
    assert "unknown key 'no-such-key' for group_regression" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    # a near miss gets the closest keys, as labels and partition keys
    proc = mmp("run", "-u", "group_regression", "--keys", "segment_id=seg-0002", home=home, check=False)
    assert proc.returncode == 2
    assert "did you mean" in proc.stdout and "segment_id=seg-002   (partition key seg-002)" in proc.stdout
    assert not (home / "lake" / "bronze").exists()  # nothing ran


def test_files_left_for_the_next_run_are_listed_with_why():
    """A file that could not be read now (an I/O error, a file changing while it is read) is
    neither rows nor a rejection: the summary says which and why, or it would go unseen."""
    from many_models_platform import cli

    ingest = {
        "landing_rows": 3,
        "scoring_rows": 10,
        "scoring_rows_dropped": 4,
        "scoring_rows_merged": 0,
        "scoring_rows_without_training": 3,
        "keys_differing_in_case": [["store=Store A", "store=STORE A"]],
        "labels_differing_in_case": [["GOLD", "Gold", "gold"]],
        "label_sets_apart": [
            {"file": "landing/g/jan.csv", "labels": ["0", "1"]},
            {"file": "landing/g/feb.csv", "labels": ["no", "yes"]},
        ],
        "keys_ending_early": [f"store=closed{i} (last 2018-12-30)" for i in range(7)],
        "keys_ending_early_count": 7,
        "rejected": [{"file": "landing/g/a.csv", "reason": "missing required column(s) ['y']"}],
        "files": [
            {"file": "landing/g/a.csv", "status": "rejected"},
            {"file": "landing/g/b.csv.gz", "status": "retry_later", "reason": "OSError: unexpected end of file"},
            {"file": "landing/g/c.csv", "status": "ingested"},
            {"file": "landing/g/d.csv", "status": "ingested", "lines_above_header": 3},
            {
                "file": "landing/g/future.csv",
                "source": "scoring_source",
                "status": "ingested",
                "drops": {"scoring row of a key without training rows": 3, "row id longer than 256 characters": 1},
            },
        ],
    }
    with cli.console.capture() as captured:
        cli._print_ingest(ingest)
    out = captured.get()
    assert "1 file(s) rejected" in out and "1 file(s) not read, tried again on the next run" in out
    assert "landing/g/b.csv.gz: OSError: unexpected end of file" in out and "c.csv" not in out
    assert "1 file(s) with title lines above the header (3 line(s) skipped)" in out
    assert (
        "scoring rows landed 10, dropped 4, merged 0 (scoring row of a key without training rows 3, "
        "row id longer than 256 characters 1)" in out
    )
    assert "1 group(s) of keys differ only in case" in out and "store=Store A | store=STORE A" in out
    assert "1 group(s) of class labels differ only in case" in out and "GOLD | Gold | gold" in out
    assert "class labels that share none with each other's" in out and "landing/g/jan.csv: 0, 1" in out
    assert "7 key(s) whose data ends before the others'" in out and "store=closed4 (last 2018-12-30)" in out
    assert "store=closed5" not in out and "... and 2 more" in out
    # what the raw summary holds reaches the CLI's ingest summary
    from many_models_platform.defs.runner import ingest_summary

    assert ingest_summary({"keys_ending_early": ["x"], "keys_ending_early_count": 1})["keys_ending_early_count"] == 1
    assert ingest_summary(ingest)["label_sets_apart"] == ingest["label_sets_apart"]


def test_a_run_that_finds_no_key_leaves_its_trace_in_the_warehouse(tmp_path):
    """Every landing file rejected: no key, no partition, no stage ran; the run still writes a
    run_summary row (0 keys, stopped at raw, why, the rejected-file count), so `mmp status` and
    BI show the run that published nothing."""
    home = tmp_path / "home"
    landing = home / "lake" / "landing" / "group_regression"
    landing.mkdir(parents=True)
    (landing / "export.csv").write_text("segment,x1,x2\nseg-1,1,2\n")  # no key column, no target
    proc = mmp("run", "-u", "group_regression", "--run-date", "2031-01-02", home=home, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no keys" in proc.stdout and "1 file(s) rejected" in proc.stdout
    con = duckdb.connect(str(home / "warehouse" / "warehouse.duckdb"), read_only=True)
    row = con.execute(
        "SELECT keys_total, files_rejected, stopped_at_stage, stop_reason FROM run_summary "
        "WHERE use_case = 'group_regression' AND run_date = DATE '2031-01-02'"
    ).fetchone()
    con.close()
    assert row[:3] == (0, 1, "raw") and "no keys" in row[3] and "export.csv: missing required column(s)" in row[3]
    status = " ".join(mmp("status", "-u", "group_regression", home=home).stdout.split())
    assert "stopped at raw" in status, status


def test_the_run_summary_names_the_commonest_reasons_rows_were_dropped_or_merged():
    from many_models_platform.cli import _top_reasons

    files = [
        {"source": "source", "drops": {"null key": 30, "target is null": 2}},
        {"source": "source", "drops": {"null key": 6, "replaced by a later file": 4, "missing time value": 1}},
        {"source": "scoring_source", "drops": {"null key": 99}},  # the training source's rows only
    ]
    assert _top_reasons({"files": files}) == (
        " (null key 36, replaced by a later file 4, target is null 2, 1 more reason(s) 1)"
    )
    assert _top_reasons({"files": [{"source": "source", "drops": {}}]}) == ""
