"""The asset graph, snapshotted: a change in the graph shows up in review.

Regenerate after an intended change with ``MMP_UPDATE_SNAPSHOTS=1 uv run pytest -k snapshot``.
"""

import json
import os
from pathlib import Path

from dagster import AssetKey, DagsterEventType, EventRecordsFilter
from dagster_helpers import land_generated

from many_models_platform.core.keys import decode_key
from many_models_platform.definitions import build_definitions

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def graph_snapshot() -> dict:
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    out = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        policy = node.backfill_policy
        out[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "partitions": getattr(node.partitions_def, "name", None),
            "backfill": None if policy is None else [policy.policy_type.value, policy.max_partitions_per_run],
            "kinds": sorted(node.kinds),
            "checks": sorted(k.name for k in node.check_keys),
        }
    out["jobs"] = sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__"))
    return out


def test_asset_graph_snapshot():
    current = graph_snapshot()
    if os.environ.get("MMP_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert SNAPSHOT.exists(), "no snapshot yet: run with MMP_UPDATE_SNAPSHOTS=1 and review it"
    assert current == json.loads(SNAPSHOT.read_text())


def test_each_use_case_is_one_group_of_seven_assets_on_one_partitions_definition():
    snap = graph_snapshot()
    snap.pop("jobs")
    groups: dict[str, set] = {}
    for node in snap.values():
        groups.setdefault(node["group"], set()).add(node["partitions"])
    # plus the warehouse tables and the dbt models over them (not partitioned)
    assert set(groups) == {"retail_demand", "sensor_anomaly", "group_regression", "warehouse", "bi"}
    assert all(len(parts) == 1 for parts in groups.values()) and groups["bi"] == {None}
    assert sum(1 for n in snap.values() if n["group"] == "retail_demand") == 7
    assert snap["retail_demand/raw"]["backfill"] == ["SINGLE_RUN", None]
    assert snap["retail_demand/model"]["backfill"][0] == "MULTI_RUN"


def test_the_discovery_job_adds_landing_keys_as_partitions(platform):
    settings, instance = platform
    land_generated(settings, "group_regression", keys=5, rows=30)
    job = build_definitions().resolve_job_def("group_regression_discover_keys")
    assert job.execute_in_process(instance=instance).success
    keys = instance.get_dynamic_partitions("group_regression_keys")
    assert sorted(decode_key(k)[0] for k in keys) == [f"seg-{i:03d}" for i in range(1, 6)]
    # a second discovery adds nothing new
    assert job.execute_in_process(instance=instance).success
    assert len(instance.get_dynamic_partitions("group_regression_keys")) == 5


def test_every_stage_asset_has_the_keys_ok_check_and_nothing_else_runs_checks_per_key():
    snap = graph_snapshot()
    for uc in ("retail_demand", "sensor_anomaly", "group_regression"):
        for stage in ("raw", "training_set", "model", "evaluation", "promoted_model", "predictions", "published"):
            assert snap[f"{uc}/{stage}"]["checks"] == ["keys_ok"], f"{uc}/{stage}"


def test_evaluation_reports_the_metric_distribution_and_worst_keys_on_its_check(platform):
    """The run report is the result of the asset's keys_ok check (the asset's Checks tab), with
    numbers rounded for display, and never a copy on every key's materialization."""
    from dagster_helpers import run_pipeline

    settings, instance = platform
    land_generated(settings, "group_regression", keys=12, rows=60)
    result = run_pipeline(settings, instance, None, "group_regression")
    assert result.success and len(result.run_ids) == 1
    records = [
        e
        for e in instance.all_logs(result.run_ids[0], of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        if e.dagster_event.event_specific_data.asset_key == AssetKey(["group_regression", "evaluation"])
    ]
    assert len(records) == 1
    evaluation = records[0].dagster_event.event_specific_data
    assert evaluation.check_name == "keys_ok" and evaluation.passed
    md = evaluation.metadata
    assert md["keys_in_run"].value == 12 and md["keys_ok"].value == 12 and md["keys_failed"].value == 0
    assert md["metric_distribution"].value.startswith("![rmse distribution](data:image/png;base64,")
    worst = md["worst_keys"].value.splitlines()
    assert worst[0] == "| key | rmse |" and len(worst) == 2 + 10
    for line in worst[2:]:
        shown = line.split("|")[2].strip()
        assert shown == f"{float(shown):.4g}", line  # 4 significant digits
    for q in ("rmse_p10", "rmse_p50", "rmse_p90"):
        assert md[q].value == float(f"{md[q].value:.4g}")
    assert Path(md["report_path"].value).exists()
    # no key's materialization carries the report
    mats = instance.get_event_records(
        EventRecordsFilter(
            DagsterEventType.ASSET_MATERIALIZATION, asset_key=AssetKey(["group_regression", "evaluation"])
        )
    )
    assert len(mats) == 12 and not any("worst_keys" in r.asset_materialization.metadata for r in mats)
    assert not instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_OBSERVATION, asset_key=AssetKey(["group_regression", "evaluation"]))
    )


def test_the_metric_chart_leaves_out_infinite_errors_instead_of_failing_the_stage():
    from many_models_platform.defs.factory import metric_histogram

    png = metric_histogram("rmse", [0.7, 1.2, float("inf"), float("nan"), 0.9], not_ok=2)
    assert png.startswith(b"\x89PNG")
