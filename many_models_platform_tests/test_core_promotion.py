"""The promotion rule (pipeline.decide) on hand-made evaluation reports: no stores needed."""

from __future__ import annotations

import math

import pytest
from conftest_core import make_spec, regression_body

from many_models_platform.stages.promoted_model import decide


def spec(**promotion):
    return make_spec(regression_body(metric="rmse", promotion=promotion))


def report(rmse=1.0, champion=None, r2=0.8, rows_train=100, rows_holdout=25, champion_version=3):
    return {
        "metrics": {"rmse": rmse, "r2": r2, "mae": rmse, "mape": 0.1},
        "rows_train": rows_train,
        "rows_holdout": rows_holdout,
        "champion_version": champion_version if champion is not None else None,
        "champion_metrics": {"rmse": champion} if champion is not None else None,
    }


@pytest.mark.parametrize(
    ("rule", "rep", "decision", "reason"),
    [
        ({}, report(), "promoted", "first model for this key"),
        ({"threshold": 0.5}, report(rmse=0.7), "rejected", "below threshold: rmse 0.7 does not satisfy <= 0.5"),
        ({"threshold": 0.5}, report(rmse=0.4), "promoted", "first model"),
        ({}, report(rmse=0.9, champion=1.0), "promoted", "beats champion v3: rmse 0.9 vs 1"),
        ({}, report(rmse=1.1, champion=1.0), "kept_champion", "champion v3 stays: rmse 1.1 vs 1"),
        ({}, report(rmse=1.0, champion=1.0), "kept_champion", "champion v3 stays"),  # a tie keeps the champion
        ({"min_improvement": 0.05}, report(rmse=0.97, champion=1.0), "kept_champion", "needs 5% improvement"),
        ({"min_improvement": 0.05}, report(rmse=0.94, champion=1.0), "promoted", "beats champion"),
        ({"min_rows": 200}, report(rows_train=150), "rejected", "below min_rows: 150 training rows < 200"),
        ({"min_holdout_rows": 30}, report(), "rejected", "below min_holdout_rows: 25 holdout rows < 30"),
        ({"bounds": {"r2": {"min": 0.9}}}, report(r2=0.8), "rejected", "bound on r2: 0.8 < min 0.9"),
        ({"bounds": {"mae": {"max": 0.5}}}, report(rmse=0.7), "rejected", "bound on mae: 0.7 > max 0.5"),
        ({"bounds": {"r2": {"min": 0.5, "max": 1}}}, report(r2=0.8), "promoted", "first model"),
        ({}, report(rmse=math.nan), "rejected", "rmse is undefined on the holdout"),
        ({}, report(champion=math.nan), "promoted", "champion v3 has no rmse on the compared rows"),
    ],
)
def test_rule(rule, rep, decision, reason):
    got_decision, got_reason = decide(spec(**rule), rep)
    assert (got_decision, reason in got_reason) == (decision, True), got_reason


def test_higher_is_better_metric_thresholds_are_minimums():
    s = make_spec(regression_body(metric="r2", promotion={"threshold": 0.8}))
    assert decide(s, {**report(r2=0.79), "champion_metrics": None})[0] == "rejected"
    assert decide(s, {**report(r2=0.81), "champion_metrics": None})[0] == "promoted"
    better = {**report(r2=0.9), "champion_version": 1, "champion_metrics": {"r2": 0.85}}
    assert decide(s, better) == ("promoted", "beats champion v1: r2 0.9 vs 0.85")


def detector(metric="flag_rate", target=None, **promotion):
    return make_spec(
        regression_body(
            task="anomaly",
            target=target,
            features=["value"],
            metric=metric,
            promotion=promotion,
            candidates=[{"name": "iforest", "estimator": "sklearn.ensemble.IsolationForest"}],
        )
    )


def unlabelled(flag_rate=0.03, stability=math.nan, champion_flag_rate=None, champion_version=3, **extra):
    scored = champion_flag_rate is not None
    return {
        "metrics": {"flag_rate": flag_rate, "score_stability": stability, **extra},
        "rows_train": 100,
        "rows_holdout": 25,
        "champion_version": champion_version if scored else None,
        "champion_metrics": {"flag_rate": champion_flag_rate} if scored else None,
    }


BOUNDS = {"bounds": {"flag_rate": {"max": 0.05}, "score_stability": {"min": 0.5}}}


@pytest.mark.parametrize(
    ("spec_args", "rep", "decision", "reason"),
    [
        (
            BOUNDS,
            unlabelled(),
            "promoted",
            "first model for this key (bound on score_stability skipped: no champion scored on this holdout)",
        ),
        (BOUNDS, unlabelled(flag_rate=0.08), "rejected", "bound on flag_rate: 0.08 > max 0.05"),
        (
            BOUNDS,
            unlabelled(stability=0.3, champion_flag_rate=0.04),
            "rejected",
            "bound on score_stability: 0.3 < min 0.5",
        ),
        # a champion that flags fewer rows is not "better": without labels nothing is ranked
        (
            BOUNDS,
            unlabelled(flag_rate=0.04, stability=0.9, champion_flag_rate=0.01),
            "promoted",
            "no labels: champion v3 not ranked; candidate passes the rule (flag_rate 0.04, score_stability 0.9)",
        ),
        (
            {"threshold": 0.05},
            unlabelled(flag_rate=0.08),
            "rejected",
            "below threshold: flag_rate 0.08 does not satisfy <= 0.05",
        ),
        ({"threshold": 0.05}, unlabelled(flag_rate=0.02), "promoted", "first model for this key"),
    ],
)
def test_unlabelled_rule(spec_args, rep, decision, reason):
    assert decide(detector(**spec_args), rep) == (decision, reason)


def test_score_stability_as_the_metric_needs_a_champion_only_for_its_threshold():
    spec = detector(metric="score_stability", threshold=0.6)
    first = decide(spec, unlabelled())
    assert first == (
        "promoted",
        "first model for this key (threshold on score_stability skipped: no champion scored on this holdout)",
    )
    assert decide(spec, unlabelled(stability=0.4, champion_flag_rate=0.03))[0] == "rejected"
    assert decide(spec, unlabelled(stability=0.7, champion_flag_rate=0.03))[1].startswith("no labels: champion v3")
    # a champion that could not be scored leaves stability undefined: promoted, and said so
    assert "skipped" in decide(spec, {**unlabelled(), "champion_version": 2})[1]


def test_labelled_detectors_still_rank_on_their_label_metric():
    spec = detector(metric="f1", target="y", bounds={"score_stability": {"min": 0.5}})
    rep = {
        "metrics": {"f1": 0.6, "flag_rate": 0.05, "score_stability": math.nan},
        "rows_train": 100,
        "rows_holdout": 25,
        "champion_version": None,
        "champion_metrics": None,
    }
    assert decide(spec, rep)[0] == "promoted"
    worse = {**rep, "metrics": {**rep["metrics"], "score_stability": 0.8}, "champion_version": 4}
    worse["champion_metrics"] = {"f1": 0.7, "flag_rate": 0.05}
    assert decide(spec, worse) == ("kept_champion", "champion v4 stays: f1 0.6 vs 0.7")
