"""Typed, versioned per-key records between stages (``stages/records.py``, docs/architecture.md#records).

``snapshots/records_v1.json`` holds real version-1 records: the plain dicts the stages wrote
before records were typed, captured from that code's run of ``test_trust_chain``'s two days
(keys ``flip``, whose day-2 candidate replaced its champion, and ``steady``, reused). They must
read as typed records with nothing lost, and a lake of them must keep working; a record written
by a newer platform fails only its own key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from test_trust_chain import (  # noqa: F401 - empty_registry is a fixture
    BETTER,
    DAYS,
    FLIP,
    KEYS,
    STEADY,
    UC,
    WORSE,
    empty_registry,
    land,
    run_stages,
    settings_for,
    use_case,
)

from many_models_platform.core.engine import KeyOutcome
from many_models_platform.stages import STAGES, StageRun, run_stage
from many_models_platform.stages.base import finish, read_state, state_path
from many_models_platform.stages.records import (
    ALIASES,
    PINS,
    RECORD_TYPES,
    RECORD_VERSION,
    RecordVersionError,
    from_outcome,
    parse,
)
from many_models_platform.storage.lake import Lake
from many_models_platform.storage.warehouse import Warehouse

V1 = json.loads((Path(__file__).parent / "snapshots" / "records_v1.json").read_text())


def test_version_1_records_read_as_typed_records_with_nothing_lost():
    assert set(V1) == set(STAGES) == set(RECORD_TYPES)
    for stage, by_key in V1.items():
        for key, v1 in by_key.items():
            record = parse(stage, key, v1)
            assert type(record) is RECORD_TYPES[stage]
            assert (record.version, record.stage, record.key) == (RECORD_VERSION, stage, key)
            assert (record.status, record.reason, record.dagster_run_id) == (v1["status"], "", "day2")
            assert record.info.model_extra == {}, f"{stage}: undeclared fields {record.info.model_extra}"
            # every field of the old info survives, under its old name, pins included
            assert record.flat_info() == v1["info"], stage
            for pin in PINS:
                old = ALIASES.get((stage, pin), pin)
                assert getattr(record, pin) == v1["info"].get(old), (stage, pin)
                assert pin not in record.info.model_dump(exclude_unset=True)
            # written back in the current layout, it reads the same
            assert parse(stage, key, json.loads(record.to_json())) == record
    model = parse("model", "flip", V1["model"]["flip"])
    assert model.candidate_version == 2 and model.info.metrics["r2"] == V1["model"]["flip"]["info"]["metrics"]["r2"]
    assert parse("predictions", "flip", V1["predictions"]["flip"]).production_version == 2
    ev = parse("evaluation", "flip", V1["evaluation"]["flip"])
    assert ev.evaluation_id and ev.candidate_version == 2 and ev.info.champion_version == 1


def test_a_record_from_a_newer_platform_or_not_a_record_is_refused_with_its_reason():
    newer = {**json.loads(parse("model", "flip", V1["model"]["flip"]).to_json()), "version": RECORD_VERSION + 1}
    with pytest.raises(RecordVersionError, match=f"schema version {RECORD_VERSION + 1}, newer than this platform"):
        parse("model", "flip", newer)
    with pytest.raises(RecordVersionError, match="invalid field"):
        parse("model", "flip", {**V1["model"]["flip"], "status": "exploded"})
    with pytest.raises(RecordVersionError, match="not a stage record"):
        parse("model", "flip", {"version": "two"})
    # and a stage cannot write what the next one could not read: a metric must be a number
    outcome = KeyOutcome("flip", "ok", info={"metrics": {"r2": "n/a"}, "candidate_version": 1})
    with pytest.raises(ValidationError, match=r"metrics\.r2"):
        from_outcome("evaluation", outcome, "run")


def test_a_fact_of_the_wrong_type_fails_its_own_key_not_the_stage(tmp_path):
    """``finish`` writes the records of keys the stage did not write itself: one that does not
    validate fails that key, with why, and the others are recorded as they are."""
    settings = settings_for(tmp_path / "home")
    run = StageRun(use_case(), settings, run_id="typed", run_date=DAYS[1], workers=1)
    bad = KeyOutcome(FLIP, "ok", info={"metrics": {"r2": "n/a"}, "evaluation_id": "e1"})
    good = KeyOutcome(STEADY, "ok", info={"metrics": {"r2": 0.9}, "evaluation_id": "e2", "candidate_version": 1})
    report = finish(run, "evaluation", [bad, good])
    lake = Lake(settings.lake_url)
    assert [o.status for o in report.outcomes] == ["failed", "ok"]
    record = read_state(lake, UC, "evaluation", FLIP)
    assert record.status == "failed" and "record does not validate: ('info', 'metrics', 'r2')" in record.reason
    assert read_state(lake, UC, "evaluation", STEADY).info.metrics == {"r2": 0.9}


# fields a stage writes today that version 1 records did not have (read back with their default)
ADDED_SINCE_V1 = {"candidate_reused"}


def _as_v1(lake: Lake, stage: str, key: str) -> None:
    """Rewrite a key's record the way the code before typed records wrote it."""
    record = read_state(lake, UC, stage, key)
    info = {k: v for k, v in record.flat_info().items() if k not in ADDED_SINCE_V1}
    v1 = {
        "status": record.status,
        "reason": record.reason,
        "info": info,
        "dagster_run_id": record.dagster_run_id,
        "updated_at": record.updated_at,
    }
    real = set().union(*(r["info"] for r in V1[stage].values()))
    assert set(v1["info"]) <= real, f"{stage}: not the shape version 1 had: {set(v1['info']) - real}"
    lake.write_json(state_path(lake, UC, stage, key), v1)


def test_a_lake_of_version_1_records_keeps_working_and_a_newer_record_fails_only_its_key(
    tmp_path,
    empty_registry,  # noqa: F811 - the fixture imported above
):
    settings = settings_for(tmp_path / "home", empty_registry)
    lake = Lake(settings.lake_url)
    land(settings, 1)
    run_stages(settings, 1, ["raw", "training_set", "model", "evaluation"])
    for stage in ("raw", "training_set", "model", "evaluation"):
        for key in KEYS:
            _as_v1(lake, stage, key)
    # flip's evaluation was written by a newer platform
    path = state_path(lake, UC, "evaluation", FLIP)
    lake.write_json(path, {**lake.read_json(path), "version": RECORD_VERSION + 1})

    run = StageRun(use_case(), settings, run_id="day1-v1", run_date=DAYS[1], workers=1)
    later = ("promoted_model", "predictions", "published")
    outcomes = {stage: {o.key: o for o in run_stage(stage, run, KEYS).outcomes} for stage in later}
    promoted = outcomes["promoted_model"]
    assert {k: promoted[k].info["decision"] for k in (BETTER, STEADY, WORSE)} == dict.fromkeys(
        (BETTER, STEADY, WORSE), "promoted"
    )
    assert promoted[FLIP].status == "failed"
    assert f"evaluation record of this key has schema version {RECORD_VERSION + 1}" in promoted[FLIP].reason
    scored = outcomes["predictions"]
    assert {k for k, o in scored.items() if o.ok} == {BETTER, STEADY, WORSE}
    assert scored[FLIP].status == "skipped"
    # what promotion and scoring wrote is the current version, pins on the envelope
    for key in (BETTER, STEADY, WORSE):
        record = read_state(lake, UC, "promoted_model", key)
        assert record.version == RECORD_VERSION and record.production_version == 1
        assert record.evaluation_id == read_state(lake, UC, "evaluation", key).evaluation_id
        assert json.loads(lake.path("state", UC, "promoted_model", f"{key}.json").read_bytes())["version"] == 2
        assert read_state(lake, UC, "predictions", key).info.model_extra == {}
    # published: flip's evaluation row says why; the others publish
    wh = Warehouse(settings.warehouse_url)
    try:
        rows = wh.query("select key, stage, status, reason from key_status where use_case = :uc", uc=UC)
    finally:
        wh.dispose()
    status = {(r["key"], r["stage"]): (r["status"], r["reason"]) for r in rows.iter_rows(named=True)}
    assert status[(FLIP, "evaluation")][0] == "failed"
    assert "newer than this platform reads" in status[(FLIP, "evaluation")][1]
    assert {k for k in KEYS if status[(k, "published")][0] == "ok"} == {BETTER, STEADY, WORSE}
