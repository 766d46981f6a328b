"""`mmp automation status|on|off <uc>`: a use case's sensors and schedule on the instance.

The code location is loaded in process under the workspace's location name, so the states
written here (running / stopped) are the ones the daemon and the UI read: Dagster keys them by
location, repository and name (the selector), not by how the code was loaded."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dagster import DagsterInstance

from ..core.spec import UseCaseSpec
from .automation import BI_SENSOR, automation_names
from .runner import REPO_ROOT
from .schedules import schedule_name

LOCATION_NAME = "many_models_platform"  # workspace.yaml
MODULE = "many_models_platform.definitions"


@dataclass
class InstigatorStatus:
    name: str
    kind: str  # sensor | schedule
    running: bool
    detail: str  # the cron of a schedule, the interval of a sensor
    cursor: str | None
    last_tick: str | None  # "<UTC time> <status>: <skip reason or runs>"


@contextmanager
def code_location(instance: DagsterInstance) -> Iterator:
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=MODULE, working_directory=str(REPO_ROOT)), location_name=LOCATION_NAME
    )
    with origin.create_location(instance) as location:
        yield location.get_repository(next(iter(location.get_repository_names())))


def names_of(spec: UseCaseSpec) -> list[str]:
    return [*automation_names(spec), BI_SENSOR, schedule_name(spec.name)]


def status(instance: DagsterInstance, spec: UseCaseSpec) -> list[InstigatorStatus]:
    with code_location(instance) as repo:
        return [_status(instance, repo, name) for name in names_of(spec) if _find(repo, name)]


def set_running(instance: DagsterInstance, spec: UseCaseSpec, running: bool, others_running: bool = False) -> None:
    """Start (or stop) the use case's automation sensors, rollback sensor and daily schedule.

    The marts' sensor serves every use case: started with any, stopped only when
    ``others_running`` is false."""
    with code_location(instance) as repo:
        for name in names_of(spec):
            target = _find(repo, name)
            if target is None or (name == BI_SENSOR and not running and others_running):
                continue
            kind, remote = target
            state = remote.get_current_instigator_state(
                instance.get_instigator_state(remote.get_remote_origin_id(), remote.selector_id)
            )
            if state.is_running == running:
                continue
            if kind == "sensor":
                if running:
                    instance.start_sensor(remote)
                else:
                    instance.stop_sensor(remote.get_remote_origin_id(), remote.selector_id, remote)
            elif running:
                instance.start_schedule(remote)
            else:
                instance.stop_schedule(remote.get_remote_origin_id(), remote.selector_id, remote)


def _find(repo, name: str):
    if repo.has_sensor(name):
        return "sensor", repo.get_sensor(name)
    if repo.has_schedule(name):
        return "schedule", repo.get_schedule(name)
    return None


def _status(instance: DagsterInstance, repo, name: str) -> InstigatorStatus:
    kind, remote = _find(repo, name)
    stored = instance.get_instigator_state(remote.get_remote_origin_id(), remote.selector_id)
    state = remote.get_current_instigator_state(stored)
    ticks = instance.get_ticks(remote.get_remote_origin_id(), remote.selector_id, limit=1)
    last = None
    if ticks:
        t = ticks[0]
        when = dt.datetime.fromtimestamp(t.timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        what = t.skip_reason or (f"{len(t.run_ids)} run(s)" if t.run_ids else "")
        if t.error:
            what = t.error.message.splitlines()[0][:200]
        last = f"{when} {t.status.value.lower()}" + (f": {what}" if what else "")
    cursor = None
    data = getattr(state, "instigator_data", None)
    if kind == "sensor" and data is not None and getattr(data, "cursor", None):
        cursor = data.cursor if len(data.cursor) <= 60 else data.cursor[:57] + "..."
    if kind == "schedule":
        detail = f"{remote.cron_schedule} ({remote.execution_timezone or 'UTC'})"
    else:
        detail = f"every {remote.min_interval_seconds}s" if getattr(remote, "min_interval_seconds", None) else ""
    return InstigatorStatus(name, kind, state.is_running, detail, cursor, last)
