"""Declarative automation: what runs on its own after a stage lands (docs/operations.md#automation).

- a new candidate (an ``evaluation`` materialization of a key whose candidate was not reused)
  requests ``promoted_model`` of exactly those keys (promote lane);
- a new production version (a ``promoted_model`` materialization whose decision is
  ``promoted``) requests ``predictions`` and ``published`` of exactly those keys (score lane);
- a finished ``published`` (it reports the ``warehouse/<table>`` assets, defs/marts.py)
  requests the dbt models of group ``bi``.

Per-key facts live in each key's materialization metadata, so a custom condition,
:class:`NewlyMaterializedWith`, reads the metadata of the partitions materialized since the
previous tick (one paged event-log query per tick and asset, however many keys exist). One
``AutomationConditionSensorDefinition`` per lane and use case emits backfills, so the assets'
``BackfillPolicy`` turns a burst of keys into a few ranged runs, never a run per key.

Conditions never request a partition whose parent was not materialized (nothing fires on a
key that is merely added, Dagster issue 34094): they are triggered by a parent's
materialization only, never by ``newly_missing``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    AutomationContext,
    AutomationResult,
    BetaWarning,
    DefaultSensorStatus,
)

from ..core.spec import PlatformConfig, UseCaseSpec
from .lanes import LANE_TAG, LANES, lane_tags

BI_LANE = "bi"  # runs of the dbt marts: no use case of their own
_PAGE = 1000


@dataclass(frozen=True)
class NewlyMaterializedWith(AutomationCondition):
    """True for the partitions of this asset materialized since the previous evaluation whose
    latest such materialization has metadata ``field`` in ``values`` (and status ``ok``).

    ``values=None`` with ``not_true=True`` means "``field`` is not ``True``" (absent counts).
    Reads only the events after the previous tick's storage id, in pages of 1000.
    """

    field: str
    values: tuple[str, ...] | None = None
    not_true: bool = False
    label_text: str = ""

    @property
    def name(self) -> str:
        return "newly_materialized_with"

    @property
    def description(self) -> str:
        return self.label_text or f"newly materialized with {self.field}"

    @property
    def label(self) -> str | None:
        return self.label_text or None

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        if _value(metadata.get("status")) != "ok":
            return False
        value = _value(metadata.get(self.field))
        if self.not_true:
            return value is not True
        return self.values is not None and value in self.values

    def evaluate(self, context: AutomationContext) -> AutomationResult:
        if context.previous_evaluation_time is None or not isinstance(context.key, AssetKey):
            return AutomationResult(context, context.get_empty_subset())
        # no storage id on the previous tick: the event log was empty then
        after = context.previous_max_storage_id or 0
        latest = latest_materialization_metadata(
            context.asset_graph_view.instance, context.key, after, context.max_storage_id
        )
        keys = {k for k, md in latest.items() if self.matches(md)}
        subset = context.candidate_subset.compute_intersection_with_partition_keys(keys)
        return AutomationResult(context, subset)


def _value(v: Any) -> Any:
    return getattr(v, "value", v)


def latest_materialization_metadata(
    instance, key: AssetKey, after_storage_id: int, up_to_storage_id: int | None
) -> dict[str, Mapping[str, Any]]:
    """partition -> metadata of its latest materialization in (after, up_to]: paged, oldest first."""
    out: dict[str, Mapping[str, Any]] = {}
    cursor = None
    while True:
        result = instance.fetch_materializations(
            AssetRecordsFilter(
                asset_key=key,
                after_storage_id=after_storage_id,
                before_storage_id=(up_to_storage_id + 1) if up_to_storage_id is not None else None,
            ),
            limit=_PAGE,
            cursor=cursor,
            ascending=True,
        )
        for record in result.records:
            mat = record.asset_materialization
            if mat is not None and mat.partition is not None:
                out[mat.partition] = mat.metadata
        if not result.has_more:
            return out
        cursor = result.cursor


def new_candidate() -> AutomationCondition:
    """promoted_model: its evaluation was newly materialized for a candidate that is new."""
    return (
        AutomationCondition.any_deps_match(
            NewlyMaterializedWith("candidate_reused", not_true=True, label_text="evaluated a new candidate")
        ).since_last_handled()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("new candidate evaluated")


def new_production_version() -> AutomationCondition:
    """predictions: promoted_model newly materialized with decision ``promoted``."""
    return (
        AutomationCondition.any_deps_match(
            NewlyMaterializedWith("decision", values=("promoted",), label_text="promoted to production")
        ).since_last_handled()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("new production version")


def with_its_parent() -> AutomationCondition:
    """published: requested together with predictions (one score-lane run for both)."""
    return AutomationCondition.any_deps_match(AutomationCondition.will_be_requested()).with_label(
        "scored in this request"
    )


def marts_after_publish() -> AutomationCondition:
    """bi models: a warehouse table (or an upstream model in the same request) was updated."""
    return (
        AutomationCondition.any_deps_updated().since_last_handled()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("warehouse updated")


CONDITIONS = {
    "promoted_model": new_candidate,
    "predictions": new_production_version,
    "published": with_its_parent,
}


def with_automation_conditions(assets: Sequence[Any]) -> list[Any]:
    """The use cases' stage assets and the bi models, each given its condition (others unchanged)."""
    out = []
    for a in assets:
        if isinstance(a, AssetsDefinition):
            a = a.map_asset_specs(_with_condition)
        out.append(a)
    return out


def _with_condition(spec):
    path = spec.key.path
    if len(path) == 2 and path[1] in CONDITIONS and spec.group_name == path[0]:
        return spec.replace_attributes(automation_condition=CONDITIONS[path[1]]())
    if spec.group_name == BI_LANE:
        return spec.replace_attributes(automation_condition=marts_after_publish())
    return spec


def automation_sensor_name(use_case: str, lane: str) -> str:
    return f"{use_case}_{lane}_automation"


BI_SENSOR = "bi_marts_automation"


def _status(enabled: bool) -> DefaultSensorStatus:
    return DefaultSensorStatus.RUNNING if enabled else DefaultSensorStatus.STOPPED


def build_automation_sensors(config: PlatformConfig, with_bi: bool = True) -> list[AutomationConditionSensorDefinition]:
    """Per use case one sensor per automated lane (promote, score); one for the marts.

    Custom conditions run in the code server (``use_user_code_server``, a beta parameter). The
    sensors start stopped unless the use case's ``automation.enabled`` (or `mmp automation on`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=BetaWarning)
        return _automation_sensors(config, with_bi)


def _automation_sensors(config: PlatformConfig, with_bi: bool) -> list[AutomationConditionSensorDefinition]:
    sensors = []
    for spec in config.use_cases.values():
        sensors += [_lane_sensor(spec, "promote"), _lane_sensor(spec, "score")]
    if with_bi and config.use_cases:
        specs = list(config.use_cases.values())
        sensors.append(
            AutomationConditionSensorDefinition(
                BI_SENSOR,
                target=AssetSelection.groups(BI_LANE),
                run_tags={LANE_TAG: BI_LANE},
                default_status=_status(any(s.automation.enabled for s in specs)),
                minimum_interval_seconds=min(s.automation.interval_seconds for s in specs),
                description="Builds the dbt marts (group bi) after a published run updated the warehouse.",
                emit_backfills=True,
                use_user_code_server=True,
            )
        )
    return sensors


def _lane_sensor(spec: UseCaseSpec, lane: str) -> AutomationConditionSensorDefinition:
    what = {
        "promote": "promotes the keys whose new candidate was evaluated",
        "score": "scores and publishes the keys that got a new production version",
    }[lane]
    return AutomationConditionSensorDefinition(
        automation_sensor_name(spec.name, lane),
        target=AssetSelection.assets(*[AssetKey([spec.name, stage]) for stage in LANES[lane]]),
        run_tags=lane_tags(spec, lane),
        default_status=_status(spec.automation.enabled),
        minimum_interval_seconds=spec.automation.interval_seconds,
        description=f"{spec.name}: {what} (ranged runs through the assets' BackfillPolicy).",
        emit_backfills=True,
        use_user_code_server=True,
    )


def automation_names(spec: UseCaseSpec) -> list[str]:
    """The instigators `mmp automation on|off <uc>` toggles: its lane sensors and rollback sensor."""
    from .rollback import rollback_sensor_name

    return [automation_sensor_name(spec.name, lane) for lane in ("promote", "score")] + [
        rollback_sensor_name(spec.name)
    ]
