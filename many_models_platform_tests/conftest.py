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
