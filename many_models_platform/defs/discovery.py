"""Key discovery: keys found in the landing zone become dynamic partitions."""

from dagster import DagsterInstance, OpExecutionContext, job, op

from ..core.spec import UseCaseSpec
from ..stages.raw import discover_keys
from ..storage.lake import Lake
from .factory import partitions_name
from .resources import PlatformResource


def register_new_keys(instance: DagsterInstance, spec: UseCaseSpec, lake: Lake) -> tuple[list[str], list[str]]:
    """Add keys seen in landing that are not partitions yet; returns (all keys, new keys)."""
    found = discover_keys(spec, lake)
    name = partitions_name(spec.name)
    known = set(instance.get_dynamic_partitions(name))
    new = [k for k in found if k not in known]
    if new:
        instance.add_dynamic_partitions(name, new)
    return found, new


def build_discovery_job(spec: UseCaseSpec):
    @op(name=f"discover_{spec.name}_keys", description=f"Scan the landing zone of {spec.name} for new keys.")
    def _discover(context: OpExecutionContext, platform: PlatformResource) -> None:
        settings = platform.settings()
        found, new = register_new_keys(context.instance, spec, Lake(settings.lake_url, settings.lake_storage_options))
        context.log.info(f"{len(found)} keys in landing, {len(new)} new partitions added")

    @job(name=f"{spec.name}_discover_keys", description=_discover.description)
    def _job():
        _discover()

    return _job
