"""The whole pipeline with the lake on ADLS (Azurite), through Dagster, started by the landing
sensor: its ranged train-lane run, then promotion and scoring of the same range; every lake
object is in the blob container (the local-folder runs are in test_dagster_pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import AssetKey, build_sensor_context

from many_models_platform.core.generators import GENERATORS, write_landing
from many_models_platform.core.spec import load_config
from many_models_platform.definitions import build_definitions
from many_models_platform.defs.factory import partitions_name, pipeline_job_name
from many_models_platform.defs.resources import PlatformResource
from many_models_platform.defs.runner import RANGE_END, RANGE_START
from many_models_platform.defs.sensors import build_landing_sensor, train_job_name
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
        # the landing sensor finds the keys and requests the train lane for them, as one range
        config = load_config()
        sensor = build_landing_sensor(spec, config)
        with build_sensor_context(instance=instance, resources={"platform": PlatformResource()}) as ctx:
            result = sensor(ctx)
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        keys = list(instance.get_dynamic_partitions(partitions_name("group_regression")))
        assert len(keys) == 3 and len(result.run_requests) == 1
        tags = result.run_requests[0].tags
        assert (tags[RANGE_START], tags[RANGE_END]) == (keys[0], keys[-1])
        defs = build_definitions()
        train = defs.resolve_job_def(train_job_name("group_regression"))
        assert train.execute_in_process(instance=instance, tags=tags, raise_on_error=False).success
        # then promotion and scoring of the same range (the promote and score lanes)
        rest = [AssetKey(["group_regression", s]) for s in ("promoted_model", "predictions", "published")]
        job = defs.resolve_job_def(pipeline_job_name("group_regression"))
        run = job.execute_in_process(
            instance=instance,
            tags={RANGE_START: keys[0], RANGE_END: keys[-1]},
            asset_selection=rest,
            raise_on_error=False,
        )
        assert run.success
        for stage in STAGES:
            assert set(instance.get_materialized_partitions(AssetKey(["group_regression", stage]))) == set(keys)
    finally:
        instance.dispose()
    # every per-key object is in the container, none in a local lake folder
    for area in ("bronze", "training", "predictions"):
        names = {f.name for f in lake.listing(f"{area}/group_regression/*.parquet")}
        assert names == {f"{area}/group_regression/{k}.parquet" for k in keys}, area
    assert len(lake.listing("state/group_regression/published/*.json")) == 3
    assert not (mmp_home / "lake").exists()
    engine = sa.create_engine(settings.warehouse_url)
    try:
        with engine.connect() as conn:
            published = {
                r[0]
                for r in conn.execute(
                    sa.text("SELECT DISTINCT key FROM key_status WHERE use_case = :u"), {"u": "group_regression"}
                )
            }
    finally:
        engine.dispose()
    assert published == set(keys)
