"""Shared fixtures: every test gets its own data directory with real Dagster (SQLite),
MLflow (SQLite) and DuckDB stores in it."""

import os
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore")

ENV_VARS = (
    "MMP_HOME",
    "MMP_CONFIG",
    "MMP_LAKE_URL",
    "MMP_CANDIDATE_REGISTRY_URI",
    "MMP_PRODUCTION_REGISTRY_URI",
    "MMP_PRODUCTION_REGISTRY_WRITE_URI",
    "MMP_ARTIFACT_ROOT",
    "MMP_PRODUCTION_ARTIFACT_ROOT",
    "MMP_WAREHOUSE_URL",
    "DAGSTER_HOME",
)


# --- parallel runs (pytest-xdist: pyproject's addopts has -n auto --dist loadfile) ---------------
# Modules that take minutes, longest first: under --dist loadfile each module runs whole on one
# worker, so they start at once and the short modules fill in around them instead of one of them
# starting last on an otherwise idle machine.
LONGEST_FIRST = (  # measured with -n 2 --durations on 2 cores, 2026-12-07
    "test_cli.py",
    "test_automation_daemon.py",
    "test_dagster_pipeline.py",
    "test_dbt.py",
    "test_zoo.py",
    "test_dagster_ui.py",
    "test_deploy_daemon.py",
    "test_pipeline_bench.py",
    "test_no_secrets.py",
    "test_stage_raw.py",
    "test_registry.py",
    "test_trust_chain.py",
)
MAX_WORKERS = 4  # beyond this, PostgreSQL, Dagster and the loky pools only contend


def pytest_configure(config):
    """The platform's own modules compiled once (uv compiles only the installed packages): with
    PYTHONDONTWRITEBYTECODE set, every `mmp`, daemon, code server and run process of the suite
    would compile them again. Once per session, by the controller, not by each xdist worker."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        import compileall

        compileall.compile_dir(Path(__file__).resolve().parents[1] / "many_models_platform", quiet=2)


def pytest_collection_modifyitems(config, items):
    """Under xdist, the longest modules first, then any other module with a ``slow`` test, then
    the rest (a stable sort: the order inside a module is unchanged). A serial run keeps its order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow_modules = {item.path.name for item in items if item.get_closest_marker("slow")}

    def rank(item) -> int:
        name = item.path.name
        if name in LONGEST_FIRST:
            return LONGEST_FIRST.index(name)
        return len(LONGEST_FIRST) + (0 if name in slow_modules else 1)

    items.sort(key=rank)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per usable core, at most MAX_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


@pytest.fixture
def mmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data directory; nothing from the developer's environment leaks in."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "mmp"
    monkeypatch.setenv("MMP_HOME", str(home))
    return home


@pytest.fixture
def platform(mmp_home: Path):
    """(settings, instance) for the embedded defaults under ``mmp_home``."""
    from many_models_platform.defs.runner import prepare_instance
    from many_models_platform.storage.settings import PlatformSettings

    settings = PlatformSettings.from_env()
    settings.ensure_local_dirs()
    instance = prepare_instance(settings)
    yield settings, instance
    instance.dispose()
    os.environ.pop("DAGSTER_HOME", None)


# Azurite (the Azure Storage emulator) for the lake-on-ADLS tests: see azurite.py
from azurite import azurite, azurite_lake  # noqa: E402, F401
