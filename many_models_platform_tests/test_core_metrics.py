"""Holdout metrics against small hand-computed examples, and which direction is better."""

from __future__ import annotations

import math

import numpy as np
import pytest

from many_models_platform.core.metrics import (
    explain_undefined,
    flag_rate,
    higher_is_worse,
    is_better,
    label_metrics,
    regression_metrics,
    score_stability,
    task_metrics,
)


def test_regression_metrics_hand_computed():
    # actual [1, 2, 4], predicted [2, 2, 2]: errors +1, 0, -2
    m = regression_metrics(np.array([1.0, 2.0, 4.0]), np.array([2.0, 2.0, 2.0]))
    assert m["mape"] == pytest.approx((1 / 1 + 0 / 2 + 2 / 4) / 3)  # 0.5
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert m["mae"] == pytest.approx((1 + 0 + 2) / 3)
    # mean actual 7/3; SS_tot = (16 + 1 + 25) / 9 = 42/9; SS_res = 5
    assert m["r2"] == pytest.approx(1 - 5 / (42 / 9))  # -1/14: worse than predicting the mean


def test_regression_metrics_perfect_fit():
    a = np.array([3.0, -1.0, 10.0, 7.5])
    m = regression_metrics(a, a.copy(), scale=2.0)
    assert m == {"mape": 0.0, "rmse": 0.0, "mae": 0.0, "r2": 1.0, "wape": 0.0, "smape": 0.0, "mase": 0.0}


def test_mape_is_undefined_over_any_zero_actual_not_an_average_of_the_rest():
    # before: the zero was skipped and MAPE read 0.5, from the second point alone
    assert math.isnan(regression_metrics(np.array([0.0, 2.0]), np.array([1.0, 3.0]))["mape"])
    assert math.isnan(regression_metrics(np.array([0.0, 0.0]), np.array([1.0, 3.0]))["mape"])


def test_r2_undefined_for_constant_actuals():
    m = regression_metrics(np.array([5.0, 5.0, 5.0]), np.array([4.0, 5.0, 6.0]))
    assert math.isnan(m["r2"])
    assert m["rmse"] == pytest.approx(math.sqrt(2 / 3))


def test_binary_label_metrics_hand_computed():
    # TP at 0 and 3, FP at 1, FN at 2, TN at 4
    m = label_metrics(np.array([1, 0, 1, 1, 0]), np.array([1, 1, 0, 1, 0]))
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)


def test_binary_label_metrics_asymmetric():
    # one TP, no FP, two FN: precision 1, recall 1/3, F1 = 2 * 1 * 1/3 / (4/3) = 0.5
    m = label_metrics(np.array([1, 1, 1, 0]), np.array([1, 0, 0, 0]))
    assert m == pytest.approx({"accuracy": 0.5, "precision": 1.0, "recall": 1 / 3, "f1": 0.5})


def test_no_positive_predictions_leaves_precision_undefined_but_recall_and_f1_zero():
    # a positive exists and was missed: recall and F1 are 0; precision has nothing to divide
    m = label_metrics(np.array([1, 0, 0]), np.array([0, 0, 0]))
    assert math.isnan(m["precision"])
    assert m["recall"] == 0.0
    assert m["f1"] == 0.0
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_multiclass_metrics_are_macro_averaged():
    # class 0: P=1 R=1 F1=1; class 1: P=0 R=0 F1=0; class 2: P=1/2 R=1/2 F1=1/2
    m = label_metrics(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]))
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)


def test_a_model_and_a_baseline_are_averaged_over_the_keys_classes_whatever_each_predicts():
    """Three classes in training, the holdout without c: a model that predicts some c and the
    majority baseline that predicts only b are both macro-averaged over a, b, c (c undefined for
    both, left out), not the model over three classes and the baseline as a binary b-vs-rest."""
    classes = np.array(["a", "b", "c"])
    actual = np.array(["a", "a", "b", "b", "b"])
    model = label_metrics(actual, np.array(["a", "c", "b", "b", "a"]), classes=classes)
    majority = label_metrics(actual, np.array(["b"] * 5), classes=classes)
    # model: a P=1/2 R=1/2 F1=1/2, b P=1 R=2/3 F1=4/5, c P=0 (F1 undefined): F1 (1/2 + 4/5) / 2
    assert model["f1"] == pytest.approx(0.65) and model["accuracy"] == pytest.approx(0.6)
    # majority: a F1=0, b P=3/5 R=1 F1=3/4: (0 + 3/4) / 2, below the model as its accuracy is
    assert majority["f1"] == pytest.approx(0.375) and majority["accuracy"] == pytest.approx(0.6)
    # without the key's classes the baseline looked binary: b's F1 alone, 0.75, above the model
    assert label_metrics(actual, np.array(["b"] * 5))["f1"] == pytest.approx(0.75)


def test_an_undefined_f1_names_the_keys_positive_class_or_its_only_class():
    """yes/no labels, a holdout of 'no' only: the positive class is 'yes' (from the key's
    classes), not the default 1; a key whose labels are one class says so."""
    actual = np.array(["no"] * 4)
    m = label_metrics(actual, actual.copy(), classes=np.array(["no", "yes"]))
    notes = explain_undefined("classification", actual, actual.copy(), m, classes=np.array(["no", "yes"]))
    assert notes["f1"] == "the holdout holds no positive (class 'yes')"
    notes = explain_undefined("classification", actual, actual.copy(), m, classes=np.array(["no"]))
    assert notes["f1"].startswith("the key's labels are all 'no'")


def test_perfect_predictions_score_perfect_f1_whatever_the_labels():
    perfect = np.array([0, 2, 2, 0, 2])
    m = label_metrics(perfect, perfect.copy())
    assert m["accuracy"] == 1.0
    assert m["f1"] == 1.0


def test_task_metrics_routes_by_task():
    reg = task_metrics("forecast", np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    assert set(reg) == {"mape", "rmse", "mae", "r2", "wape", "smape", "mase"}
    assert task_metrics("regression", np.array([1.0, 3.0]), np.array([2.0, 2.0]))["mae"] == pytest.approx(1.0)
    for task in ("classification", "anomaly"):
        lab = task_metrics(task, np.array([0, 1, 1]), np.array([0, 1, 0]))
        assert set(lab) == {"accuracy", "precision", "recall", "f1"}
        assert lab["recall"] == pytest.approx(0.5)


@pytest.mark.parametrize("metric", ["mape", "rmse", "mae", "wape", "smape", "mase"])
def test_lower_is_better_metrics(metric):
    assert is_better(0.1, 0.2, metric)
    assert not is_better(0.2, 0.1, metric)
    assert not is_better(0.2, 0.2, metric)  # strictly better only


@pytest.mark.parametrize("metric", ["r2", "accuracy", "f1", "precision", "recall"])
def test_higher_is_better_metrics(metric):
    assert is_better(0.9, 0.5, metric)
    assert not is_better(0.5, 0.9, metric)
    assert not is_better(0.5, 0.5, metric)


@pytest.mark.parametrize("metric", ["rmse", "r2"])
def test_nan_is_never_better_and_always_beaten(metric):
    nan = float("nan")
    assert not is_better(nan, 1.0, metric)
    assert not is_better(nan, nan, metric)
    assert is_better(1e9, nan, metric)
    assert is_better(-1e9, nan, metric)


def test_flag_rate_is_the_share_of_flagged_rows():
    assert flag_rate(np.array([0, 1, 0, 0, 1], dtype=np.int8)) == pytest.approx(0.4)
    assert math.isnan(flag_rate(np.array([], dtype=np.int8)))


def test_score_stability_is_spearman_rank_correlation():
    a = np.array([0.1, 0.5, 0.2, 0.9])
    assert score_stability(a, a * 100 + 3) == pytest.approx(1.0)  # any increasing transform ranks alike
    assert score_stability(a, -a) == pytest.approx(-1.0)
    # ranks [1, 2, 3, 4] vs [1, 3, 2, 4]: 1 - 6 * (1 + 1) / (4 * 15) = 0.8
    assert score_stability(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)
    assert math.isnan(score_stability(a, np.ones(4)))  # a constant score ranks nothing
    assert math.isnan(score_stability(a[:1], a[:1]))


@pytest.mark.parametrize(
    ("metric", "worse_when_higher"),
    [("rmse", True), ("mape", True), ("flag_rate", True), ("r2", False), ("f1", False), ("score_stability", False)],
)
def test_direction_of_thresholds(metric, worse_when_higher):
    assert higher_is_worse(metric) is worse_when_higher
