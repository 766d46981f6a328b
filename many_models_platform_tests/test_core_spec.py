"""The use-case spec: the shipped file loads, and every error names the file, the use case and the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from conftest_core import forecast_body, make_spec, regression_body, write_config
from lightgbm import LGBMRegressor
from sklearn.linear_model import LinearRegression, Ridge

from many_models_platform.core.spec import DEFAULT_CONFIG, ConfigError, load_config, parse_config


def test_shipped_config_loads_three_use_cases():
    config = load_config()
    assert set(config.use_cases) == {"retail_demand", "sensor_anomaly", "group_regression"}
    assert config.source_file == str(DEFAULT_CONFIG)
    retail = config.use_case("retail_demand")
    assert retail.task == "forecast"
    assert retail.keys == ["store", "brand"]
    # the load-time guarantees hold on the shipped file itself
    assert min(retail.lags) >= retail.horizon
    assert min(retail.lags) >= retail.holdout.periods
    assert config.use_case("sensor_anomaly").task == "anomaly"
    group = config.use_case("group_regression")
    assert group.time_column is None
    assert group.holdout.fraction == pytest.approx(0.2)
    for spec in config.use_cases.values():
        assert spec.name in config.use_cases
        assert spec.candidates


def test_unknown_use_case_name_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        load_config().use_case("nope")
    assert "nope" in str(err.value)
    assert "retail_demand" in str(err.value)


def test_minimal_file_loads_and_derives_properties(tmp_path: Path):
    path = write_config(tmp_path, {"demo": regression_body()}, run={"max_keys_per_run": 5})
    config = load_config(path)
    spec = config.use_case("demo")
    assert spec.name == "demo"
    assert config.run.max_keys_per_run == 5
    assert config.source_file == str(path)
    assert spec.lower_is_better  # rmse
    assert not make_spec(regression_body(metric="r2")).lower_is_better
    assert spec.input_columns == ["segment", "x1", "x2", "y"]
    assert spec.source.file_format == "csv"


def _mutate(body: dict, dotted: str, value) -> dict:
    """Set ``a.b.0.c`` style paths in a nested body (value ``...`` deletes)."""
    parts = dotted.split(".")
    node = body
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[parts[-1]]
    elif isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value
    return body


ERROR_CASES = {
    "unknown estimator import path": (
        regression_body(),
        "candidates.1.estimator",
        "sklearn.linear_model.NoSuchRegression",
        ["candidates.1.estimator", "NoSuchRegression"],
    ),
    "estimator without module": (regression_body(), "candidates.0.estimator", "Ridge", ["candidates.0.estimator"]),
    "estimator that is not a class": (
        regression_body(),
        "candidates.0.estimator",
        "os.path.join",
        ["candidates.0.estimator", "os.path.join"],
    ),
    "unknown estimator parameter": (
        regression_body(),
        "candidates.1.params",
        {"fit_intercept": True, "alphaa": 1.0},
        ["candidates.1", "alphaa"],
    ),
    "metric does not fit the task": (regression_body(), "metric", "accuracy", ["metric", "accuracy", "regression"]),
    "unknown metric": (regression_body(), "metric", "auc", ["metric"]),
    "forecast without time_column": (forecast_body(), "time_column", ..., ["time_column", "forecast"]),
    "lag shorter than horizon": (
        forecast_body(holdout={"periods": 2}, horizon=4),
        "lags",
        [3, 6],
        ["lag", "horizon"],
    ),
    "lag shorter than holdout": (
        forecast_body(holdout={"periods": 6}, horizon=1),
        "lags",
        [3, 6],
        ["lag", "holdout.periods"],
    ),
    "holdout with periods and fraction": (
        forecast_body(),
        "holdout",
        {"periods": 4, "fraction": 0.2},
        ["holdout", "periods", "fraction"],
    ),
    "holdout with neither": (regression_body(), "holdout", {}, ["holdout"]),
    "holdout periods without time column": (regression_body(), "holdout", {"periods": 3}, ["holdout.periods"]),
    "extra unknown field": (regression_body(), "colour", "red", ["colour"]),
    "extra field in a candidate": (regression_body(), "candidates.0.estimatr", "x", ["candidates.0.estimatr"]),
    "unknown task": (regression_body(), "task", "clustering", ["task"]),
    "missing target": (regression_body(), "target", ..., ["target"]),
    "lags outside forecast": (regression_body(), "lags", [1], ["lags"]),
    "feature that is also the key": (regression_body(), "features", ["x1", "segment"], ["features", "segment"]),
    "duplicate candidate names": (
        regression_body(),
        "candidates.1.name",
        "dummy",
        ["candidate names", "dummy"],
    ),
    "source escaping the lake": (regression_body(), "source.path", "../secrets/*.csv", ["source.path"]),
    "no keys": (regression_body(), "keys", [], ["keys"]),
    "min_rows too small": (regression_body(), "min_rows", 1, ["min_rows"]),
    "promotion threshold outside the metric's range": (
        regression_body(),
        "promotion",
        {"threshold": -0.1},
        ["promotion.threshold", "-0.1", "rmse"],
    ),
    "promotion improvement of 100%": (regression_body(), "promotion", {"min_improvement": 1.0}, ["min_improvement"]),
    "promotion bound on a metric the task lacks": (
        regression_body(),
        "promotion",
        {"bounds": {"f1": {"min": 0.5}}},
        ["promotion.bounds", "'f1'", "regression"],
    ),
    "promotion bound without min or max": (
        regression_body(),
        "promotion",
        {"bounds": {"r2": {}}},
        ["promotion.bounds.r2", "set 'min', 'max' or both"],
    ),
    "promotion bound with min above max": (
        regression_body(),
        "promotion",
        {"bounds": {"mae": {"min": 3, "max": 1}}},
        ["promotion.bounds.mae", "greater than max"],
    ),
    "promotion unknown rule": (regression_body(), "promotion", {"accuracy_above": 0.8}, ["accuracy_above"]),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_invalid_use_case_error_names_file_use_case_and_field(tmp_path: Path, case):
    body, dotted, value, expected = ERROR_CASES[case]
    bad = _mutate(copy.deepcopy(body), dotted, value)
    path = write_config(tmp_path, {"good_one": regression_body(), "bad_one": bad})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    assert "'bad_one'" in message
    assert "'good_one'" not in message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_the_valid_bodies_used_above_are_themselves_valid():
    # otherwise the error tests could pass for the wrong reason
    make_spec(regression_body())
    make_spec(forecast_body())
    make_spec(forecast_body(holdout={"periods": 2}, horizon=4, lags=[4, 6]))


def test_bad_yaml_names_the_file(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("use_cases:\n  demo: {task: regression\n   keys: [a\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "YAML" in str(err.value)


def test_missing_file_names_the_file(tmp_path: Path):
    path = tmp_path / "does_not_exist.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "use_cases: {}\n", "use_cases: [a, b]\n"])
def test_file_without_use_cases_mapping_is_rejected(tmp_path: Path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "use_cases" in str(err.value)


def test_use_case_body_must_be_a_mapping(tmp_path: Path):
    path = tmp_path / "uc.yaml"
    path.write_text("use_cases:\n  demo: [1, 2]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "'demo'" in str(err.value)


def test_invalid_use_case_name_is_reported(tmp_path: Path):
    path = write_config(tmp_path, {"Bad-Name": regression_body()})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "'Bad-Name'" in str(err.value)
    assert "field 'name'" in str(err.value)


def test_unknown_top_level_section_and_bad_run_settings(tmp_path: Path):
    path = write_config(tmp_path, {"demo": regression_body()}, schedule={"cron": "daily"})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "schedule" in str(err.value)

    path = write_config(tmp_path, {"demo": regression_body()}, run={"max_keys_per_run": 0})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "run" in str(err.value)
    assert "max_keys_per_run" in str(err.value)


def test_parse_config_uses_given_source_name():
    with pytest.raises(ConfigError) as err:
        parse_config({"use_cases": {"demo": regression_body(metric="f1")}}, source="inline.yaml")
    assert str(err.value).startswith("inline.yaml:")


def test_source_format_inference():
    assert make_spec(regression_body(source={"path": "landing/x/*.parquet"})).source.file_format == "parquet"
    assert make_spec(regression_body(source={"path": "landing/x/*.csv.gz"})).source.file_format == "csv"
    for path in ("landing/x/*.CSV", "landing/x/*.tsv", "landing/x/*.TXT.gz"):  # the separator is detected
        assert make_spec(regression_body(source={"path": path})).source.file_format == "csv"
    assert make_spec(regression_body(source={"path": "landing/x/*.PARQUET"})).source.file_format == "parquet"
    explicit = make_spec(regression_body(source={"path": "landing/x/*", "format": "parquet"}))
    assert explicit.source.file_format == "parquet"
    with pytest.raises(ValueError):
        _ = make_spec(regression_body(source={"path": "landing/x/*"})).source.file_format


def test_candidate_build_gives_fresh_configured_estimators():
    spec = make_spec(
        regression_body(
            candidates=[
                {"name": "ridge", "estimator": "sklearn.linear_model.Ridge", "params": {"alpha": 3.0}},
                {"name": "linear4", "estimator": "sklearn.linear_model.LinearRegression", "params": {"n_jobs": 4}},
                {"name": "gbm", "estimator": "lightgbm.LGBMRegressor", "params": {"n_estimators": 5}},
            ]
        )
    )
    ridge, linear4, gbm = (c.build() for c in spec.candidates)
    assert isinstance(ridge, Ridge) and ridge.alpha == 3.0
    assert isinstance(linear4, LinearRegression) and linear4.n_jobs == 4  # an explicit choice is kept
    assert isinstance(gbm, LGBMRegressor) and gbm.n_estimators == 5
    assert gbm.get_params()["verbose"] == -1  # LightGBM is kept quiet unless asked otherwise
    assert spec.candidates[0].build() is not ridge
    assert spec.candidates[0].build().get_params() == ridge.get_params()


def test_trusted_types_name_estimators_where_they_are_defined():
    """skops names a type by its defining module, not by the path the config imports it from."""
    spec = make_spec(regression_body(trusted_modules=["xgboost"]))
    assert spec.trusted_types == [
        "sklearn.dummy.DummyRegressor",
        "sklearn.linear_model._base.LinearRegression",
        "xgboost",
    ]


def test_a_wide_exports_unpivot_names_columns_the_use_case_uses():
    wide = {"columns": "MT_*", "name": "meter", "value": "load"}
    body = forecast_body(source={"path": "landing/m/*.csv", "unpivot": wide}, keys=["meter"], target="load")
    assert make_spec(body).source.unpivot.name == "meter"
    with pytest.raises(ValueError, match=r"unpivot name 'client' is none of the use case's columns"):
        make_spec({**body, "source": {"path": "landing/m/*.csv", "unpivot": {**wide, "name": "client"}}})
    with pytest.raises(ValueError, match=r"'name' and 'value' must be two different columns"):
        make_spec({**body, "source": {"path": "landing/m/*.csv", "unpivot": {**wide, "name": "load"}}})


def test_target_labels_are_text_each_spelling_of_one_class_and_quoted_where_yaml_would_read_booleans():
    body = regression_body(task="classification", metric="accuracy")
    spec = make_spec({**body, "target_labels": {1: ["Y", 1.0], "0": ["N"]}})
    assert spec.target_labels == {"1": ["Y", "1"], "0": ["N"]}
    with pytest.raises(ValueError, match="'y' is listed for both '1' and '0'"):
        make_spec({**body, "target_labels": {"1": ["Y"], "0": ["y"]}})
    with pytest.raises(ValueError, match="applies to a 'target' of task 'classification' or 'anomaly'"):
        make_spec(regression_body(target_labels={"1": ["Y"]}))
    unquoted = yaml.safe_load("target_labels: {'1': [yes, Y], '0': [no]}")  # yes and no read as booleans
    with pytest.raises(ConfigError, match=r"True is YAML's reading of an unquoted yes, no, on, off"):
        parse_config({"use_cases": {"u": {**body, **unquoted}}})
