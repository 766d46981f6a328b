"""The whole pipeline with the lake on ADLS (Azurite), through Dagster: the same stages, runs and
warehouse rows as on a local folder, with every lake object in the blob container."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import AssetKey
from dagster_helpers import run_pipeline

from many_models_platform.core.generators import GENERATORS, write_landing
from many_models_platform.core.spec import load_config
from many_models_platform.stages import STAGES
from many_models_platform.storage.lake import Lake

pytestmark = pytest.mark.slow


def test_whole_pipeline_with_the_lake_on_azurite(azurite_lake, mmp_home, monkeypatch, tmp_path):
    from many_models_platform.defs.runner import prepare_instance
    from many_models_platform.storage.settings import PlatformSettings

    for var, value in azurite_lake.env().items():
        monkeypatch.setenv(var, value)
    settings = PlatformSettings.from_env()
    settings.ensure_local_dirs()
    lake = Lake(settings.lake_url, settings.lake_storage_options)
    spec = load_config().use_case("group_regression")
    # generated landing files, uploaded the way an upstream system drops them into ADLS
    local = tmp_path / "generated" / Path(spec.source.path).parent
    write_landing(GENERATORS["group_regression"](keys=3, rows=60), local, "group_regression")
    for file in sorted(local.iterdir()):
        lake.write_bytes(lake.path(*Path(spec.source.path).parent.parts, file.name), file.read_bytes())

    instance = prepare_instance(settings)
    try:
        result = run_pipeline(settings, instance, None, "group_regression")
        assert result.success, result.errors
        assert len(result.keys) == 3
        for stage in STAGES:
            assert set(instance.get_materialized_partitions(AssetKey(["group_regression", stage]))) == set(result.keys)
    finally:
        instance.dispose()
    # every per-key object is in the container, none in a local lake folder
    for area in ("bronze", "training", "predictions"):
        names = {f.name for f in lake.listing(f"{area}/group_regression/*.parquet")}
        assert names == {f"{area}/group_regression/{k}.parquet" for k in result.keys}, area
    assert len(lake.listing("state/group_regression/published/*.json")) == 3
    assert not (mmp_home / "lake").exists()
    engine = sa.create_engine(settings.warehouse_url)
    try:
        with engine.connect() as conn:
            keys = {
                r[0]
                for r in conn.execute(
                    sa.text("SELECT DISTINCT key FROM key_status WHERE use_case = :u"), {"u": "group_regression"}
                )
            }
    finally:
        engine.dispose()
    assert keys == set(result.keys)
