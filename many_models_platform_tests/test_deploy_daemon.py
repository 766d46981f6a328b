"""`mmp run --submit` through the production instance (deploy/instance/dagster.production.yaml)
on the local PostgreSQL: one queued run per key range, launched by a real `dagster-daemon`,
events in PostgreSQL. The Kubernetes side (pods per range) is checked in test_deploy_k8s.py."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from many_models_platform.defs.lanes import LANE_TAG, USE_CASE_TAG
from many_models_platform.defs.runner import RANGE_END, RANGE_START
from many_models_platform_tests.dagster_helpers import land_generated, write_config
from many_models_platform_tests.pg_helpers import PG_SERVER, postgres_database, sqlalchemy_url

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = {
    "task": "regression",
    "source": {"path": "landing/group_regression/*.csv"},
    "keys": ["segment_id"],
    "target": "y",
    "features": ["x1", "x2", "x3", "x4", "x5"],
    "holdout": {"fraction": 0.2},
    "metric": "rmse",
    "min_rows": 20,
    "candidates": [{"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}],
}


def test_submit_queues_one_run_per_key_range_and_the_daemon_runs_them_into_postgres(tmp_path, mmp_home, monkeypatch):
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    from many_models_platform.storage.settings import PlatformSettings

    settings = PlatformSettings.from_env()
    settings.ensure_local_dirs()
    land_generated(settings, "group_regression", keys=3, rows=40)
    config = write_config(tmp_path / "use_cases.yaml", {"tiny": TINY}, run={"max_keys_per_run": 2})

    with postgres_database("mmp_deploy") as db:
        dagster_home = tmp_path / "dagster_home"
        dagster_home.mkdir()
        shutil.copyfile(REPO / "deploy/instance/dagster.production.yaml", dagster_home / "dagster.yaml")
        server = sa.engine.make_url(PG_SERVER.replace("postgresql://", "postgresql+psycopg2://", 1))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MMP_", "DAGSTER_"))}
        env |= {
            "MMP_HOME": str(mmp_home),
            "MMP_CONFIG": str(config),
            "DAGSTER_HOME": str(dagster_home),
            "DAGSTER_PG_HOST": server.host or "127.0.0.1",
            "DAGSTER_PG_PORT": str(server.port or 5432),
            "DAGSTER_PG_USER": server.username or "postgres",
            "DAGSTER_PG_PASSWORD": server.password or "unused-with-trust-auth",
            "DAGSTER_PG_DB": db,
        }
        submit = subprocess.run(
            [sys.executable, "-m", "many_models_platform.cli", "run", "--submit", "-u", "tiny"],
            env=env | {"COLUMNS": "200", "MMP_DEBUG": "1"},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        assert "tiny / train: 2 run(s) queued for 3 key(s)" in submit.stdout, submit.stdout

        for name in ("DAGSTER_HOME", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD"):
            monkeypatch.setenv(name, env[name])
        monkeypatch.setenv("DAGSTER_PG_DB", db)
        instance = DagsterInstance.get()
        try:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            runs = instance.get_runs(RunsFilter(tags={USE_CASE_TAG: "tiny"}))
            assert [r.status for r in runs] == [DagsterRunStatus.QUEUED] * 2
            keys = list(instance.get_dynamic_partitions("tiny_keys"))
            assert len(keys) == 3
            ranges = sorted((r.tags[RANGE_START], r.tags[RANGE_END]) for r in runs)
            assert ranges == sorted([(keys[0], keys[1]), (keys[2], keys[2])])
            assert {r.tags[LANE_TAG] for r in runs} == {"train"}
            assert all(
                r.asset_selection
                and {k.path[-1] for k in r.asset_selection} == {"raw", "training_set", "model", "evaluation"}
                for r in runs
            )

            daemon = subprocess.Popen(
                [sys.executable, "-m", "dagster._daemon", "run", "-w", str(REPO / "workspace.yaml")],
                env=env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + 600  # a ceiling for a loaded machine, not a timing check
                while time.monotonic() < deadline:
                    runs = instance.get_runs(RunsFilter(run_ids=[r.run_id for r in runs]))
                    if all(r.is_finished for r in runs):
                        break
                    assert daemon.poll() is None, daemon.stderr.read().decode()[-3000:]
                    time.sleep(1)
            finally:
                stop(daemon)
            assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS] * 2, failures(instance, runs)

            # the events are in PostgreSQL, written by the run workers the daemon launched
            engine = sa.create_engine(sqlalchemy_url(db))
            with engine.connect() as con:
                counts = dict(
                    con.execute(
                        sa.text(
                            "SELECT run_id, count(*) FROM event_logs "
                            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' GROUP BY run_id"
                        )
                    ).all()
                )
            engine.dispose()
            # four train assets per key: each run materialized its own keys, nothing else
            expected = {r.run_id: 4 * (2 if r.tags[RANGE_START] != r.tags[RANGE_END] else 1) for r in runs}
            assert counts == expected
        finally:
            instance.dispose()


def failures(instance, runs) -> str:
    """Why runs did not succeed, from their event logs (the database is dropped afterwards)."""
    lines = []
    for run in runs:
        lines.append(f"{run.run_id} {run.status}")
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if (event and event.is_failure) or entry.level >= 40:
                lines.append(f"  {entry.user_message[:500]}")
                error = getattr(event.event_specific_data, "error", None) if event else None
                if error:
                    lines.append(f"  {error.to_string()[-1500:]}")
    return "\n".join(lines)


def stop(daemon: subprocess.Popen) -> None:
    """Stop the daemon and every process it started (its code servers run in sessions of their
    own, so they outlive a signal to the daemon's process group)."""
    import psutil

    started = psutil.Process(daemon.pid).children(recursive=True)
    daemon.send_signal(signal.SIGINT)  # the daemon shuts its workspace down on KeyboardInterrupt
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=30)
    for child in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(started, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
