"""The Dagster code location: one asset group per use case, from one factory, and above them
the warehouse tables and the dbt BI models (group ``bi``)."""

from __future__ import annotations

import os

from dagster import Definitions, in_process_executor

from .core.spec import load_config
from .defs.dbt import build_bi_assets
from .defs.discovery import build_discovery_job
from .defs.factory import build_pipeline_job, build_use_case_assets
from .defs.resources import PlatformResource
from .defs.sensors import build_landing_sensor


def build_definitions(config_path: str | None = None) -> Definitions:
    config = load_config(config_path or os.environ.get("MMP_CONFIG"))
    assets, jobs, sensors = [], [], []
    for spec in config.use_cases.values():
        assets += build_use_case_assets(spec, config)
        jobs += [build_pipeline_job(spec), build_discovery_job(spec)]
        # the landing sensor (defs/sensors.py); it launches the train lane's job (defs/lane_jobs.py)
        sensors.append(build_landing_sensor(spec, config))
    bi_assets, bi_jobs = build_bi_assets(config.use_cases)
    assets += bi_assets
    jobs += bi_jobs
    # automation (docs/operations.md#automation): conditions, lane jobs, sensors, daily schedules
    from .defs.automation import build_automation_sensors, with_automation_conditions
    from .defs.lane_jobs import build_lane_jobs
    from .defs.rollback import build_rollback_sensor
    from .defs.schedules import build_daily_schedule

    assets = with_automation_conditions(assets)
    sensors += build_automation_sensors(config, with_bi=bool(bi_assets))
    schedules = []
    for spec in config.use_cases.values():
        jobs += build_lane_jobs(spec)
        sensors.append(build_rollback_sensor(spec, config))
        schedules.append(build_daily_schedule(spec, config))
    # In process: each use case's assets are a chain, so step processes would add start-up
    # (about 8 s a step) and no parallelism. The parallelism is the per-key worker pool.
    return Definitions(
        assets=assets,
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources={"platform": PlatformResource()},
        executor=in_process_executor,
    )


defs = build_definitions()
