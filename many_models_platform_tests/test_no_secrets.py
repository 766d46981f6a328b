"""No credential in anything the platform emits.

A password is planted in every store URL (PostgreSQL on 127.0.0.1:5432 has trust auth, so any
password is accepted), `mmp` runs through its real entry point, once successfully and once with a
warehouse database that does not exist, and everything it emitted is searched for the password:
stdout and stderr, the Dagster runs (config, tags, every event), every file under the data
directory (lake state and run records, reports, the Dagster instance's SQLite files and compute
logs, MLflow artifacts) and the MLflow registries' tags and runs.
"""

import os
import subprocess
import sys

import pytest
from pg_helpers import PG_SERVER, postgres_database

from many_models_platform.storage.redaction import MASK, redact, redact_exception

pytestmark = pytest.mark.slow

PASSWORD = "Planted-S3cret"


def planted_url(database: str) -> str:
    """``postgresql+psycopg2://<user>:Planted-S3cret@<host>/<database>`` on the test server."""
    rest = PG_SERVER.split("://", 1)[1]
    user, host = rest.split("@", 1) if "@" in rest else ("postgres", rest)
    user = user.split(":", 1)[0]
    return f"postgresql+psycopg2://{user}:{PASSWORD}@{host}/{database}"


def mmp(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "many_models_platform.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_a_planted_password_appears_nowhere(tmp_path):
    home = tmp_path / "home"
    with (
        postgres_database("mmp_secret_wh") as wh,
        postgres_database("mmp_secret_cand") as cand,
        postgres_database("mmp_secret_prod") as prod,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MMP_", "DAGSTER_HOME"))}
        env.update(
            {
                "MMP_HOME": str(home),
                "COLUMNS": "200",
                "MMP_WAREHOUSE_URL": planted_url(wh),
                "MMP_CANDIDATE_REGISTRY_URI": planted_url(cand),
                "MMP_PRODUCTION_REGISTRY_URI": planted_url(prod),
                "MMP_PRODUCTION_REGISTRY_WRITE_URI": planted_url(prod),
            }
        )
        outputs = []

        def run(*args, expect: int) -> str:
            proc = mmp(*args, env=env)
            outputs.append(proc.stdout + proc.stderr)
            assert proc.returncode == expect, proc.stdout + proc.stderr
            return proc.stdout

        run("generate", "group_regression", "--keys", "4", "--rows", "40", expect=0)
        first = run("run", "-u", "group_regression", expect=0)
        assert f"postgres:{MASK}@" in first  # the locations are printed, masked
        run("status", "-u", "group_regression", expect=0)

        # once with a warehouse database that does not exist: the publish step fails as a whole
        env["MMP_WAREHOUSE_URL"] = planted_url(f"{wh}_missing")
        failed = run("run", "-u", "group_regression", "--run-date", "2031-01-02", expect=1)
        assert "step failed" in failed and "does not exist" in failed
        status = mmp("status", "-u", "group_regression", env=env)
        outputs.append(status.stdout + status.stderr)
        assert status.returncode == 1 and "error: OperationalError" in status.stderr
        assert "Traceback" not in status.stdout + status.stderr

        for text in outputs:
            assert PASSWORD not in text

        # the Dagster runs: config, tags and every event, including the failed step's error
        os.environ["DAGSTER_HOME"] = str(home / "dagster")
        from dagster import AssetKey, DagsterEventType, DagsterInstance, DynamicPartitionsDefinition
        from dagster._serdes import serialize_value

        from many_models_platform.defs.health import is_keys_not_ok_failure

        try:
            instance = DagsterInstance.get()
            runs = instance.get_runs()
            assert len(runs) == 2
            errors = []
            for dagster_run in runs:
                assert PASSWORD not in serialize_value(dagster_run)
                for entry in instance.all_logs(dagster_run.run_id):
                    assert PASSWORD not in serialize_value(entry), entry.dagster_event_type
                    if entry.dagster_event_type == DagsterEventType.STEP_FAILURE and not is_keys_not_ok_failure(
                        entry.dagster_event.event_specific_data
                    ):  # a run also fails to mark keys that were not ok (defs/health.py): not an error
                        errors.append(entry.dagster_event.event_specific_data.error.to_string())
            assert len(errors) == 1 and "OperationalError" in errors[0] and "does not exist" in errors[0]
            # the failed step marked every key of its range failed at `published`
            keys = instance.get_dynamic_partitions("group_regression_keys")
            partitions = DynamicPartitionsDefinition(name="group_regression_keys")
            status = instance.get_status_by_partition(AssetKey(["group_regression", "published"]), keys, partitions)
            assert {str(s) for s in status.values()} == {"AssetPartitionStatus.FAILED"}
            instance.dispose()
        finally:
            os.environ.pop("DAGSTER_HOME", None)

        # every file under the data directory: lake state and run records, reports, the instance's
        # SQLite storage and compute logs, MLflow artifacts, dbt's files
        files = [p for p in home.rglob("*") if p.is_file()]
        assert any(p.match("state/group_regression/*/_runs/*.json") for p in files)
        for path in files:
            assert PASSWORD.encode() not in path.read_bytes(), path

        # MLflow: registered models, versions, their tags, and the training runs
        from mlflow import MlflowClient

        for database in (cand, prod):
            client = MlflowClient(planted_url(database), planted_url(database))
            models = client.search_registered_models()
            assert models  # some keys' models reached the store (how many is the pipeline tests' business)
            texts = [repr(m.tags) for m in models]
            for version in client.search_model_versions():
                texts += [repr(version.tags), str(version.source), str(version.run_id)]
            for experiment in client.search_experiments():
                texts.append(str(experiment.artifact_location))
                for mlflow_run in client.search_runs([experiment.experiment_id]):
                    texts += [repr(mlflow_run.data.tags), repr(mlflow_run.data.params), mlflow_run.info.artifact_uri]
            assert not [t for t in texts if PASSWORD in t]


def test_an_exception_is_masked_without_changing_its_type():
    import sqlalchemy as sa

    try:
        try:
            raise ValueError(f"cannot open postgresql://u:{PASSWORD}@h/db")
        except ValueError as inner:
            raise sa.exc.OperationalError("SELECT 1", None, inner) from inner
    except sa.exc.DBAPIError as exc:
        original, masked = exc, redact_exception(exc)
    assert isinstance(masked, sa.exc.OperationalError) and type(masked).__name__ == "OperationalError"
    assert PASSWORD not in str(masked) and MASK in str(masked)
    assert isinstance(masked.__cause__, ValueError) and PASSWORD not in str(masked.__cause__)
    assert masked.__traceback__ is original.__traceback__
    clean = RuntimeError("nothing secret here")
    assert redact_exception(clean) is clean
    assert PASSWORD not in str(redact_exception(KeyError(f"pwd={PASSWORD}")))


def test_run_config_with_a_password_is_refused_and_env_references_are_not():
    from many_models_platform.defs.resources import refuse_credentials_in_run_config

    literal = {"resources": {"platform": {"config": {"warehouse_url": f"postgresql://u:{PASSWORD}@h/db"}}}}
    with pytest.raises(ValueError, match="MMP_WAREHOUSE_URL") as refused:
        refuse_credentials_in_run_config(literal)
    assert PASSWORD not in str(refused.value)
    refuse_credentials_in_run_config({"resources": {"platform": {"config": {"warehouse_url": {"env": "WH"}}}}})
    refuse_credentials_in_run_config({"resources": {"platform": {"config": {"warehouse_url": "duckdb:///w.duckdb"}}}})
    refuse_credentials_in_run_config(None)


def test_settings_name_their_secrets(monkeypatch, tmp_path):
    from many_models_platform.storage.settings import PlatformSettings

    monkeypatch.setenv("MMP_WAREHOUSE_URL", f"postgresql://u:{PASSWORD}@h/db")
    monkeypatch.setenv("MMP_CANDIDATE_REGISTRY_URI", "postgresql://u:p%40ss%2Fword@h/db")
    settings = PlatformSettings.from_env(tmp_path)
    assert PASSWORD in settings.secrets() and "p@ss/word" in settings.secrets()
    assert redact(f"password was {PASSWORD}", settings.secrets()) == f"password was {MASK}"
