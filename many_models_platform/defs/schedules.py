"""The daily schedule per use case, ``<uc>_daily_train``: the train lane for every key, in key
ranges, from the spec's ``schedule: {cron, timezone, enabled}`` (off unless enabled). Keys
whose data and configuration are unchanged reuse their candidate, so promotion and scoring
follow only for what changed (defs/automation.py)."""

from __future__ import annotations

from dagster import DefaultScheduleStatus, ScheduleEvaluationContext, SkipReason, schedule

from ..core.spec import PlatformConfig, UseCaseSpec
from ..storage.lake import Lake
from .discovery import register_new_keys
from .lane_jobs import lane_job_name, ranged_run_requests
from .resources import PlatformResource


def schedule_name(use_case: str) -> str:
    return f"{use_case}_daily_train"


def build_daily_schedule(spec: UseCaseSpec, config: PlatformConfig):
    name = schedule_name(spec.name)

    @schedule(
        name=name,
        cron_schedule=spec.schedule.cron,
        execution_timezone=spec.schedule.timezone,
        job_name=lane_job_name(spec.name, "train"),
        default_status=DefaultScheduleStatus.RUNNING if spec.schedule.enabled else DefaultScheduleStatus.STOPPED,
        description=f"{spec.name}: the train lane for every key ({spec.schedule.cron}, {spec.schedule.timezone}).",
    )
    def _daily(context: ScheduleEvaluationContext, platform: PlatformResource):
        settings = platform.settings()
        register_new_keys(context.instance, spec, Lake(settings.lake_url, settings.lake_storage_options))
        ordered = list(context.instance.get_dynamic_partitions(f"{spec.name}_keys"))
        if not ordered:
            return SkipReason(f"no keys in the landing zone of {spec.name}")
        day = context.scheduled_execution_time.date().isoformat()
        return ranged_run_requests(
            spec, "train", ordered, ordered, config.run.max_keys_per_run, name, f"daily:{day}", run_date=day
        )

    return _daily
