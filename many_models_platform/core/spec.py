"""The declarative use-case spec: one YAML file, validated with pydantic.

Adding a use case is configuration only: estimators are named by import path and checked
at load time, so a typo fails when the file is read, not halfway through a 10k-key run.
"""

from __future__ import annotations

import codecs
import importlib
import inspect
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Task = Literal["forecast", "regression", "classification", "anomaly"]
MetricName = Literal[
    "mape",
    "rmse",
    "mae",
    "r2",
    "wape",
    "smape",
    "mase",
    "accuracy",
    "f1",
    "precision",
    "recall",
    "flag_rate",
    "score_stability",
]
Frequency = Literal["hourly", "daily", "business_daily", "weekly", "monthly", "quarterly", "yearly", "period"]
DuplicatePolicy = Literal["keep", "last", "first", "sum", "mean", "error"]
CalendarFeature = Literal["hour", "dayofweek", "dayofyear", "month", "quarter"]
TimePart = Literal["year", "quarter", "month", "week", "day", "hour", "minute"]
# The sets of parts that make a time, each from a year down (docs/use-cases.md#time-from-several-columns).
TIME_PART_SETS: tuple[frozenset[str], ...] = (
    frozenset({"year", "quarter"}),
    frozenset({"year", "week"}),
    frozenset({"year", "month"}),
    frozenset({"year", "month", "day"}),
    frozenset({"year", "month", "day", "hour"}),
    frozenset({"year", "month", "day", "hour", "minute"}),
)

LOWER_IS_BETTER: frozenset[str] = frozenset({"mape", "rmse", "mae", "wape", "smape", "mase"})
# Metrics of an anomaly use case without labels: they describe a detector, they do not rank it.
UNLABELLED_METRICS: frozenset[str] = frozenset({"flag_rate", "score_stability"})
TASK_METRICS: dict[str, frozenset[str]] = {
    "forecast": frozenset({"mape", "rmse", "mae", "r2", "wape", "smape", "mase"}),
    "regression": frozenset({"mape", "rmse", "mae", "r2", "wape", "smape", "mase"}),
    "classification": frozenset({"accuracy", "f1", "precision", "recall"}),
    "anomaly": frozenset({"f1", "precision", "recall", "accuracy", *UNLABELLED_METRICS}),
}
# Calendar features per frequency when `calendar_features: true` (docs/use-cases.md#calendar-features).
CALENDAR_DEFAULTS: dict[str, tuple[str, ...]] = {
    "hourly": ("hour", "dayofweek"),
    "daily": ("dayofweek", "dayofyear"),
    "business_daily": ("dayofweek", "dayofyear"),
    "weekly": ("month",),
    "monthly": ("month",),
    "quarterly": ("quarter",),
    "yearly": (),
    "period": (),
}
# Periods in one season, per frequency: the seasonal-naive baseline, the MASE scale and the
# default ``season_length`` of a statistical candidate. 1 (no season) when unknown.
SEASON_LENGTHS: dict[str, int] = {
    "hourly": 24,
    "daily": 7,
    "business_daily": 5,
    "weekly": 52,
    "monthly": 12,
    "quarterly": 4,
}
# Statistical forecasters are named by this import-path prefix and wrapped by core.statistical.
STATISTICAL_PREFIX = "statsforecast.models."


class ConfigError(ValueError):
    """A use-case file is invalid; the message names the file, the use case and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvSpec(_Strict):
    """How a CSV export is written when it is not plain UTF-8 with commas (docs/use-cases.md#csv-dialects).

    The separator is detected from the header when unset; so is each file's decimal mark, from
    its numbers (``3,5`` shows a comma), when ``decimal_comma`` is unset: a ';'-separated file
    whose numbers show nothing (only ``1.234``) is rejected until it is declared. An encoding
    other than UTF-8 cannot be told reliably from the bytes, so it is declared."""

    separator: str | None = Field(default=None, min_length=1, max_length=1)
    decimal_comma: bool | None = None  # None: each file's numbers decide
    encoding: str = "utf8"

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        if v.lower().replace("-", "").replace("_", "") in ("utf8", "utf8lossy"):
            return "utf8-lossy" if "lossy" in v.lower() else "utf8"
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r}; e.g. 'utf8', 'cp1252', 'latin-1', 'utf-16'") from None
        return v

    @model_validator(mode="after")
    def _decimal_comma_needs_another_separator(self) -> CsvSpec:
        if self.decimal_comma and self.separator == ",":
            raise ValueError("'decimal_comma' needs a separator other than ',' (usually ';')")
        return self


class UnpivotSpec(_Strict):
    """A wide export, one column per entity or per period (``MT_001``…``MT_370`` meters, years
    ``1960``…``2020`` as World Bank tables write them), read as rows: each value of the columns
    whose header matches ``columns`` becomes a row, its header in ``name`` and the value in
    ``value``, beside the file's other columns (docs/use-cases.md#wide-exports)."""

    columns: str = Field(min_length=1)  # a glob over header names: "MT_*", "[12][0-9][0-9][0-9]"
    name: str = Field(min_length=1)  # the column the headers become: a key or the time column
    value: str = Field(min_length=1)  # the column the values become: usually the target

    @model_validator(mode="after")
    def _two_columns(self) -> UnpivotSpec:
        if self.name == self.value:
            raise ValueError("'name' and 'value' must be two different columns")
        return self


class SourceSpec(_Strict):
    """A CSV or Parquet glob, relative to the lake root (usually under ``landing/``)."""

    path: str
    format: Literal["csv", "parquet"] | None = None
    csv: CsvSpec | None = None  # CSV dialect; None = UTF-8, separator detected, decimal point
    unpivot: UnpivotSpec | None = None  # a wide export's columns as rows
    # this source's files' time layout, where it differs from the use case's 'time_format' (future
    # values written by another tool: '01/07/2025' beside a history of ISO dates)
    time_format: str | None = None
    # scoring_source only: the column that names each row (a customer id, a Kaggle test.csv's
    # 'id'), read as text as keys are and published beside its prediction, so scored rows join
    # back to the rows the user sent
    row_id: str | None = None

    @field_validator("row_id")
    @classmethod
    def _names_a_column(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must name a column of the scoring files (or be left out)")
        return v

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if not v or v.startswith("/") or "://" in v or ".." in Path(v).parts:
            raise ValueError("must be a glob relative to the lake root, without '..'")
        return v

    @property
    def file_format(self) -> str:
        if self.format:
            return self.format
        path = self.path.lower()  # exports from Windows tools write SALES.CSV
        if path.endswith((".parquet", ".pq")):
            return "parquet"
        if path.removesuffix(".gz").endswith((".csv", ".tsv", ".txt")):  # the separator is detected
            return "csv"
        raise ValueError(f"cannot infer the format of {self.path!r}: set 'format'")

    @model_validator(mode="after")
    def _csv_options_for_csv(self) -> SourceSpec:
        if self.csv is not None and (self.format == "parquet" or self.path.lower().endswith((".parquet", ".pq"))):
            raise ValueError("'csv' options apply to CSV files only")
        return self


class HoldoutSpec(_Strict):
    """Last ``periods`` time steps per key, or a ``fraction`` of rows when there is no time column."""

    periods: int | None = Field(default=None, gt=0)
    fraction: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> HoldoutSpec:
        if (self.periods is None) == (self.fraction is None):
            raise ValueError("set exactly one of 'periods' or 'fraction'")
        return self


class ValidationSpec(_Strict):
    """Rows carved from the training part to pick the winning candidate, so the holdout that is
    reported never takes part in the choice. At most one of ``periods`` (the last N periods of
    the training part; needs a time column) or ``fraction`` (of the training rows: the latest
    with a time column, else a stable hash); neither = the task's default (forecasts: the
    holdout's periods; otherwise 20 %). ``windows`` > 1 (with ``periods``): rolling-origin
    backtest windows of ``periods`` each, ending at the holdout, as StatsForecast's
    ``cross_validation`` does; the candidates are ranked by their mean over the windows."""

    periods: int | None = Field(default=None, gt=0)
    fraction: float | None = Field(default=None, gt=0, lt=1)
    windows: int = Field(default=1, gt=0, le=52)

    @model_validator(mode="after")
    def _at_most_one(self) -> ValidationSpec:
        if self.periods is not None and self.fraction is not None:
            raise ValueError("set at most one of 'periods' or 'fraction'")
        if self.windows > 1 and self.fraction is not None:
            raise ValueError("'windows' > 1 needs 'periods' (windows of whole periods), not 'fraction'")
        return self


class CandidateSpec(_Strict):
    """Any scikit-learn-compatible estimator, by import path, with constructor parameters; or a
    statistical forecaster of ``statsforecast.models`` (wrapped by ``core.statistical``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("estimator")
    @classmethod
    def _importable(cls, v: str) -> str:
        if v.startswith(STATISTICAL_PREFIX):
            statistical_parameters(v)
        else:
            resolve_estimator(v)
        return v

    @property
    def statistical(self) -> bool:
        """A statsforecast model: fitted on the key's target series, not on the feature matrix."""
        return self.estimator.startswith(STATISTICAL_PREFIX)

    @model_validator(mode="after")
    def _params_accepted(self) -> CandidateSpec:
        if self.statistical:
            accepted, has_kwargs = statistical_parameters(self.estimator)
        else:
            signature = inspect.signature(resolve_estimator(self.estimator).__init__)
            accepted = set(signature.parameters) - {"self"}
            has_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
        unknown = sorted(set(self.params) - accepted)
        if unknown and not has_kwargs:
            raise ValueError(f"{self.estimator} does not accept parameter(s) {unknown}")
        return self

    def build(self) -> Any:
        """A fresh, unfitted estimator. Threads are limited by the worker environment
        (core.engine), since the parallelism is across keys."""
        est_cls = resolve_estimator(self.estimator)
        params = dict(self.params)
        if est_cls.__module__.startswith("lightgbm"):
            params.setdefault("verbose", -1)
        return est_cls(**params)


@cache
def statistical_parameters(path: str) -> tuple[frozenset[str], bool]:
    """The constructor parameters of a ``statsforecast.models`` class, read from the module's
    source without importing it: the import takes seconds (pandas, statsmodels), and the
    use-case file is loaded by every command, most of which never fit a model."""
    import ast
    import importlib.util

    name = path.removeprefix(STATISTICAL_PREFIX)
    found = importlib.util.find_spec("statsforecast")  # a top-level find_spec imports nothing
    if found is None or not found.submodule_search_locations:
        raise ValueError(f"cannot import estimator {path!r}: statsforecast is not installed (uv add statsforecast)")
    source = Path(next(iter(found.submodule_search_locations))) / "models.py"
    classes = {n.name: n for n in ast.parse(source.read_text()).body if isinstance(n, ast.ClassDef)}
    if name not in classes:
        raise ValueError(f"cannot import estimator {path!r}: statsforecast.models has no class {name!r}")
    methods = {f.name: f for f in classes[name].body if isinstance(f, ast.FunctionDef)}
    if "forecast" not in methods or "__init__" not in methods:
        raise ValueError(f"{path!r} is not a statsforecast model with forecast()")
    args = methods["__init__"].args
    return frozenset(a.arg for a in [*args.args, *args.kwonlyargs]) - {"self"}, args.kwarg is not None


def resolve_estimator(path: str) -> type:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{path!r} is not an import path like 'sklearn.linear_model.Ridge'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import estimator {path!r}: {exc}") from None
    if not (inspect.isclass(obj) and hasattr(obj, "fit") and hasattr(obj, "predict")):
        raise ValueError(f"{path!r} is not an estimator class with fit() and predict()")
    return obj


class MetricBound(_Strict):
    """An extra condition on one holdout metric: ``min`` and/or ``max`` (inclusive)."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> MetricBound:
        if self.min is None and self.max is None:
            raise ValueError("set 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class PromotionSpec(_Strict):
    """The business rule a candidate must pass to reach the production registry.

    ``threshold`` is an absolute bar on the use case's metric (its direction follows the
    metric: at most for errors, at least for scores). ``min_improvement`` is the relative
    margin by which a candidate must beat the current production model on the *same*
    holdout (0.05 = 5 % better). The rest are extra conditions.
    """

    threshold: float | None = None
    min_improvement: float = Field(default=0.0, ge=0, lt=1)
    min_rows: int | None = Field(default=None, gt=0)
    min_holdout_rows: int | None = Field(default=None, gt=0)
    bounds: dict[MetricName, MetricBound] = Field(default_factory=dict)
    # When true, a candidate no better than its naive baseline on the holdout (skill < 0) is
    # rejected. Off by default: such a key would then have no production model and no
    # predictions at all; its skill is published either way (key_metrics, the marts).
    beat_baseline: bool = False


METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    "mape": (0.0, None),
    "rmse": (0.0, None),
    "mae": (0.0, None),
    "r2": (None, 1.0),
    "wape": (0.0, None),
    "smape": (0.0, 2.0),
    "mase": (0.0, None),
    "accuracy": (0.0, 1.0),
    "f1": (0.0, 1.0),
    "precision": (0.0, 1.0),
    "recall": (0.0, 1.0),
    "flag_rate": (0.0, 1.0),
    "score_stability": (-1.0, 1.0),
}


def _check_in_range(metric: str, value: float, what: str) -> None:
    lo, hi = METRIC_RANGES[metric]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ValueError(f"{what} {value} is outside the range of {metric} {span}")


# --- Pod resources per lane (deployment, docs/deploy.md) -------------------------------------
# Kubernetes quantities: CPU in cores or millicores ("2", "500m"), memory in bytes with an
# optional suffix ("512Mi", "4Gi"). Checked here so a typo fails when the file is read, not
# when the cluster refuses a pod.
_QUANTITY_UNITS = {
    "": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip
_QUANTITY = r"^(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"


def quantity_value(text: str) -> float:
    """A Kubernetes quantity as a number (cores or bytes), to compare requests with limits."""
    import re

    match = re.match(_QUANTITY, text)
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity like '500m', '2', '512Mi' or '4Gi'")
    return float(match.group(1)) * _QUANTITY_UNITS[match.group(2) or ""]


class ComputeAmount(_Strict):
    """CPU and memory, as Kubernetes quantities."""

    cpu: str | None = None
    memory: str | None = None

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, v: str | None) -> str | None:
        if v is not None:
            quantity_value(v)
        return v

    @field_validator("memory")
    @classmethod
    def _memory_unit(cls, v: str | None) -> str | None:
        if v is not None and v.endswith("m"):
            raise ValueError(f"memory {v!r} is in millibytes; say '{v[:-1]}Mi'")
        return v

    def as_k8s(self) -> dict[str, str]:
        return {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v is not None}


class LaneResources(_Strict):
    """Requests and limits of one lane's run pod; a request never exceeds its limit."""

    requests: ComputeAmount = Field(default_factory=ComputeAmount)
    limits: ComputeAmount = Field(default_factory=ComputeAmount)

    @model_validator(mode="after")
    def _requests_within_limits(self) -> LaneResources:
        for name in ("cpu", "memory"):
            req, lim = getattr(self.requests, name), getattr(self.limits, name)
            if req is not None and lim is not None and quantity_value(req) > quantity_value(lim):
                raise ValueError(f"requests.{name} ({req}) is above limits.{name} ({lim})")
        return self


def _lane(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> LaneResources:
    return LaneResources(
        requests=ComputeAmount(cpu=cpu, memory=memory), limits=ComputeAmount(cpu=cpu_limit, memory=memory_limit)
    )


class ResourcesSpec(_Strict):
    """Pod resources per lane (defs/lanes.py). Training fits every key of its range in a process
    pool sized to the pod's cores; promotion only copies registry entries; scoring loads models."""

    train: LaneResources = Field(default_factory=lambda: _lane("4", "8Gi", "4", "8Gi"))
    promote: LaneResources = Field(default_factory=lambda: _lane("500m", "1Gi", "1", "2Gi"))
    score: LaneResources = Field(default_factory=lambda: _lane("2", "4Gi", "2", "4Gi"))

    def for_lane(self, lane: str) -> LaneResources:
        if lane not in type(self).model_fields:
            raise KeyError(f"no resources for lane {lane!r}")
        return getattr(self, lane)


# --- end of pod resources per lane ----------------------------------------------------------
# --- landing sensor -------------------------------------------------------------------------
class LandingSensorSpec(_Strict):
    """The use case's landing sensor: it turns files landed in the lake into new keys and
    training runs of the keys whose data changed (docs/operations.md#the-landing-sensor).

    Off unless ``enabled``, like every Dagster sensor: a deployment starts launching training
    runs on its own only when someone decided so. ``enabled: true`` starts it with the code
    location; the Dagster UI (Automation page) can start or stop it either way, and that
    choice, once made, wins over this default."""

    enabled: bool = False
    minimum_interval_seconds: int = Field(default=60, ge=5)
    # The tick's time budget, counted from its start (listing included): no file read starts
    # after it, and the files not reached wait for the next tick. So a tick stays well inside
    # Dagster's 60 s limit whatever the store's speed and however many files land at once.
    max_tick_seconds: float = Field(default=30.0, gt=0, le=50)
    # Files read per tick (key columns only), however fast the store: bounds one tick's work.
    max_files_per_tick: int = Field(default=10_000, gt=0)
    # Training runs per tick: beyond this, ranges of changed keys are merged over the unchanged
    # keys between them (at most ``run.max_keys_per_run`` keys a run), so a burst of scattered
    # changes never becomes a run storm.
    max_runs_per_tick: int = Field(default=25, gt=0)


# --- end landing sensor ---------------------------------------------------------------------


# --- automation (docs/operations.md#automation) -----------------------------------------
# Off by default: nothing starts on its own until a use case says so (or `mmp automation on`).
_CRON_FIELD = r"[0-9A-Za-z*?,/\-]+"


class ScheduleSpec(_Strict):
    """The use case's daily training schedule (``<uc>_daily_train``): the train lane for every key."""

    cron: str = "0 3 * * *"
    timezone: str = "UTC"
    enabled: bool = False

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        import re

        fields = v.split()
        if len(fields) != 5 or not all(re.fullmatch(_CRON_FIELD, f) for f in fields):
            raise ValueError(f"cron {v!r} is not a 5-field cron expression (minute hour day month weekday)")
        return " ".join(fields)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as 'UTC' or 'Europe/Paris'") from None
        return v


class AutomationSpec(_Strict):
    """Whether the use case's automation sensors (promote, score, rollback) start running."""

    enabled: bool = False
    # how often the sensors tick; small in tests, 30 s is plenty for daily data
    interval_seconds: int = Field(default=30, ge=1, le=3600)


def _label_text(value: Any) -> str:
    """A class label from YAML as text: 1 and 1.0 are '1'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class UseCaseSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    task: Task
    source: SourceSpec
    scoring_source: SourceSpec | None = None
    keys: list[str] = Field(min_length=1)
    # 'strip': a key value of digits only loses its leading zeros ('007' and '7' one key), for
    # exports that write one id both ways; 'keep': zero-padded ids stay distinct (docs/use-cases.md#keys)
    key_leading_zeros: Literal["keep", "strip"] = "keep"
    time_column: str | None = None
    # strftime format of a text (or integer) time column, e.g. "%y" for two-digit years;
    # without it ISO-8601 text, dates, datetimes and integer years are recognised.
    time_format: str | None = None
    # A time spread over several landing columns (Year, Month, Day, Hour): part -> column. The
    # parts make ``time_column``, a column of bronze, not of the landing files.
    time_parts: dict[TimePart, str] | None = None
    # Spacing of the time column; inferred per key when absent (docs/use-cases.md#time-columns).
    frequency: Frequency | None = None
    target: str | None = None
    # Classification and anomaly: class -> the ways exports write it ({"1": ["Y", "yes"], "0": ["N", "no"]}),
    # matched up to case and surrounding spaces; labels not listed stay as written
    target_labels: dict[str, list[str]] | None = None
    # Keep predictions at or above zero (counts, demand); targets below zero are refused.
    non_negative_target: bool = False
    features: list[str] = Field(default_factory=list)
    # Text (or code) columns: one-hot encoded for linear models, native categoricals for LightGBM.
    categorical_features: list[str] = Field(default_factory=list)
    lags: list[int] = Field(default_factory=list)
    # true: the defaults of the frequency; false: none; a list: exactly these.
    calendar_features: bool | list[CalendarFeature] = True
    # Rows sharing (key, time) inside one landing file; default: keep for events (regression,
    # classification, anomaly), error for forecasts, which need one row per key and period.
    duplicates: DuplicatePolicy | None = None
    holdout: HoldoutSpec
    # Where candidates are compared (never the holdout); defaults per task, see ValidationSpec.
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    # After evaluation, refit the winner on all rows (train + holdout) for production; the
    # reported metrics still come from the model fitted without the holdout. Default: forecasts.
    refit: bool | None = None
    candidates: list[CandidateSpec] = Field(min_length=1)
    metric: MetricName
    min_rows: int = Field(default=20, gt=1)
    horizon: int = Field(default=1, gt=0)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    # Exact type names (or, as the user's explicit choice, package prefixes) besides the
    # platform's own types and the configured estimator classes that a saved model may contain;
    # a model holding anything else is refused at save and at load.
    trusted_modules: list[str] = Field(default_factory=list)
    # Pod CPU/memory per lane when runs go to Kubernetes (docs/deploy.md); not part of model_hash.
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    # --- landing sensor (docs/operations.md#the-landing-sensor) ---------------------------
    landing_sensor: LandingSensorSpec = Field(default_factory=LandingSensorSpec)
    # --- end landing sensor ---------------------------------------------------------------
    # automation: the daily schedule and the automation sensors, both off unless enabled
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    automation: AutomationSpec = Field(default_factory=AutomationSpec)

    @field_validator("target_labels", mode="before")
    @classmethod
    def _label_spellings(cls, v: Any) -> Any:
        """Labels as text, each spelling of one class only. YAML reads yes, no, on, off, true and
        false unquoted as booleans, whose spelling is then lost: refused, saying so."""
        if v is None:
            return v
        if not isinstance(v, dict) or not all(isinstance(s, list) for s in v.values()):
            raise ValueError("must map each class to a list of the ways it is written, e.g. {'1': ['Y', 'yes']}")
        out: dict[str, list[str]] = {}
        seen: dict[str, str] = {}
        for label, spellings in v.items():
            for value in (label, *spellings):
                if isinstance(value, bool):
                    raise ValueError(
                        f"{value!r} is YAML's reading of an unquoted yes, no, on, off, true or false: "
                        "quote each label ('yes', 'N'), so that it stays as written"
                    )
            label = _label_text(label)
            out[label] = [_label_text(s) for s in spellings]
            for spelling in out[label]:
                other = seen.setdefault(spelling.strip().lower(), label)  # as core.ingest.class_labels matches
                if other != label:
                    raise ValueError(f"{spelling!r} is listed for both {other!r} and {label!r}")
        return out

    @model_validator(mode="after")
    def _consistent(self) -> UseCaseSpec:
        if self.metric not in TASK_METRICS[self.task]:
            raise ValueError(
                f"metric {self.metric!r} does not fit task {self.task!r}; use one of {sorted(TASK_METRICS[self.task])}"
            )
        if self.target is None and self.task != "anomaly":
            raise ValueError(f"task {self.task!r} needs a 'target' column")
        for src in (self.source, self.scoring_source):
            if src is not None:
                src.file_format  # noqa: B018 - raises when the format cannot be inferred
        if self.task == "anomaly" and self.target is None and self.metric not in UNLABELLED_METRICS:
            raise ValueError(
                f"an anomaly use case without a 'target' (labels) cannot compute {self.metric!r}; "
                f"use one of {sorted(UNLABELLED_METRICS)}"
            )
        if self.metric in UNLABELLED_METRICS and self.task != "anomaly":
            raise ValueError(f"metric {self.metric!r} only applies to task 'anomaly'")
        sources = [("source", self.source), ("scoring_source", self.scoring_source)]
        for label, source in [("", self)] + [(f"{n}.", s) for n, s in sources if s is not None]:
            if source.time_format and not self.time_column:
                raise ValueError(f"'{label}time_format' needs a 'time_column'")
            if label and source.time_format and self.time_parts is not None:
                raise ValueError(f"'time_parts' and '{label}time_format' exclude each other: the parts are numbers")
        if self.frequency and not self.time_column:
            raise ValueError("'frequency' needs a 'time_column'")
        self._check_row_id()
        if self.target_labels is not None and (self.task not in ("classification", "anomaly") or not self.target):
            raise ValueError("'target_labels' applies to a 'target' of task 'classification' or 'anomaly'")
        if self.time_parts is not None:
            self._check_time_parts()
        for src in (self.source, self.scoring_source):
            if src is not None and src.unpivot is not None:
                self._check_unpivot(src.unpivot, scoring=src is self.scoring_source)
        if self.duplicates in ("sum", "mean") and self.task in ("classification", "anomaly") and self.target:
            raise ValueError(f"duplicates: {self.duplicates!r} cannot aggregate the labels of task {self.task!r}")
        if self.task == "forecast" and self.duplicates == "keep":
            raise ValueError(
                "a forecast needs one row per key and period: duplicates must be sum, mean, last, first or error"
            )
        if self.duplicates not in (None, "keep") and not self.time_column:
            raise ValueError(f"duplicates: {self.duplicates!r} needs a 'time_column' to tell duplicates apart")
        if self.non_negative_target and self.task not in ("forecast", "regression"):
            raise ValueError("'non_negative_target' applies to tasks 'forecast' and 'regression'")
        if self.task == "forecast":
            if self.time_column is None:
                raise ValueError("task 'forecast' needs a 'time_column'")
            if self.holdout.periods is None:
                raise ValueError("task 'forecast' needs 'holdout.periods'")
            if any(lag < self.horizon for lag in self.lags):
                raise ValueError(
                    f"every lag must be >= horizon ({self.horizon}) so future rows never need "
                    f"unknown values; got {self.lags}"
                )
            if self.lags and min(self.lags) < self.holdout.periods:
                raise ValueError(
                    f"every lag must be >= holdout.periods ({self.holdout.periods}) so the holdout "
                    "never sees its own actuals"
                )
        elif self.lags:
            raise ValueError("'lags' only apply to task 'forecast'")
        if self.holdout.periods is not None and self.time_column is None:
            raise ValueError("'holdout.periods' needs a 'time_column'; use 'holdout.fraction'")
        if self.validation.windows > 1 and self.validation_periods is None:
            raise ValueError("'validation.windows' > 1 needs 'validation.periods' (or a holdout by periods)")
        if self.validation.periods is not None and self.time_column is None:
            raise ValueError("'validation.periods' needs a 'time_column'; use 'validation.fraction'")
        if self.lags and self.validation_periods and min(self.lags) < self.validation_periods:
            raise ValueError(
                f"every lag must be >= validation.periods ({self.validation_periods}) so a validation window "
                "never sees its own actuals"
            )
        if self.refit and not self.time_column:
            raise ValueError(
                "'refit: true' needs a 'time_column': a model fitted on every row leaves later holdouts no way "
                "to tell the rows it has not seen"
            )
        statistical = [c.name for c in self.candidates if c.statistical]
        if statistical and self.task != "forecast":
            raise ValueError(f"statistical candidates {statistical} forecast a series: they need task 'forecast'")
        if not self.features and not self.categorical_features and not self.lags and not self.wants_calendar:
            raise ValueError("declare at least one feature (or categorical features, lags, calendar features)")
        used = [*self.keys, self.time_column, self.target]
        overlap = sorted({f for f in [*self.features, *self.categorical_features] if f in used})
        if overlap:
            raise ValueError(f"features {overlap} are also key, time or target columns")
        both = sorted(set(self.features) & set(self.categorical_features))
        if both:
            raise ValueError(f"{both} listed in both 'features' and 'categorical_features'; keep one")
        names = [c.name for c in self.candidates]
        if len(names) != len(set(names)):
            raise ValueError(f"candidate names must be unique, got {names}")
        rule = self.promotion
        if rule.threshold is not None:
            _check_in_range(self.metric, rule.threshold, "promotion.threshold")
        for metric, bound in rule.bounds.items():
            if metric not in TASK_METRICS[self.task]:
                raise ValueError(
                    f"promotion.bounds: metric {metric!r} is not computed for task {self.task!r}; "
                    f"use one of {sorted(TASK_METRICS[self.task])}"
                )
            for value, side in ((bound.min, "min"), (bound.max, "max")):
                if value is not None:
                    _check_in_range(metric, value, f"promotion.bounds.{metric}.{side}")
        return self

    @property
    def estimator_types(self) -> list[str]:
        """The configured estimator classes by the exact names skops gives them: where they are
        defined (xgboost.sklearn.XGBRegressor), not always the config's import path (xgboost.XGBRegressor).
        A statistical candidate is saved as the platform's adapter, which stores the series and its
        forecasts as arrays: no statsforecast type is saved."""
        defined = [
            f"{(cls := resolve_estimator(c.estimator)).__module__}.{cls.__qualname__}"
            for c in self.candidates
            if not c.statistical
        ]
        if any(c.statistical for c in self.candidates):
            defined.append("many_models_platform.core.statistical.StatisticalForecaster")
        return defined

    @property
    def trusted_types(self) -> list[str]:
        """What a saved model of this use case may hold beyond the platform's types: the
        configured estimator classes (exact names) and ``trusted_modules`` (exact names or
        package prefixes)."""
        return [*self.estimator_types, *self.trusted_modules]

    @cached_property
    def model_hash(self) -> str:
        """Everything that shapes a fitted model besides the data: the modelling fields and
        the versions of the libraries that fit it. Equal hash + equal data = same model."""
        import hashlib
        import json
        from importlib.metadata import version

        fields = self.model_dump(
            include={
                "task",
                "time_column",
                "target",
                "time_format",
                "frequency",
                "non_negative_target",
                "features",
                "categorical_features",
                "lags",
                "calendar_features",
                "duplicates",
                "holdout",
                "validation",
                "refit",
                "candidates",
                "metric",
                "min_rows",
                "horizon",
            }
        )
        packages = ["scikit-learn", "lightgbm", "numpy"]
        if any(c.statistical for c in self.candidates):
            packages.append("statsforecast")
        libs = {p: version(p) for p in packages}
        blob = json.dumps({"spec": fields, "libs": libs}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def duplicate_policy(self) -> str:
        """The declared policy, else the task's default (see ``duplicates``)."""
        if self.duplicates:
            return self.duplicates
        return "error" if self.task == "forecast" else "keep"

    @property
    def wants_calendar(self) -> bool:
        """True when some calendar feature may be derived (the frequency decides which)."""
        return bool(self.time_column and self.calendar_features)

    def calendar_for(self, frequency: str | None) -> tuple[str, ...]:
        """The calendar features of a key whose time column has this frequency."""
        if not self.time_column or self.calendar_features is False or frequency is None:
            return ()
        if self.calendar_features is True:
            return CALENDAR_DEFAULTS[frequency]
        return tuple(self.calendar_features)

    @property
    def all_features(self) -> list[str]:
        """Declared input feature columns: numeric, then categorical."""
        return [*self.features, *self.categorical_features]

    @property
    def labelled(self) -> bool:
        """True when the use case's rows carry the target it is evaluated on."""
        return self.target is not None

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    @property
    def refits(self) -> bool:
        """Whether production gets the winner refitted on all rows (``refit``, else forecasts only)."""
        return self.refit if self.refit is not None else self.task == "forecast"

    @property
    def validation_periods(self) -> int | None:
        """Periods per validation window: declared, else the holdout's for time-ordered holdouts
        by periods; None when validation is by fraction."""
        if self.validation.periods is not None:
            return self.validation.periods
        if self.validation.fraction is None and self.holdout.periods is not None:
            return self.holdout.periods
        return None

    @property
    def validation_fraction(self) -> float | None:
        """Share of the training rows used for validation when not by periods (default 0.2)."""
        if self.validation_periods is not None:
            return None
        return self.validation.fraction if self.validation.fraction is not None else 0.2

    @cached_property
    def input_columns(self) -> list[str]:
        """Columns of a key's rows in bronze: keys, time, features, target."""
        cols = [*self.keys]
        if self.time_column:
            cols.append(self.time_column)
        cols += self.all_features
        if self.target:
            cols.append(self.target)
        return list(dict.fromkeys(cols))

    @property
    def landing_time_columns(self) -> list[str]:
        """The landing columns the time is read from: its parts' columns, or ``time_column``."""
        if self.time_parts:
            return list(self.time_parts.values())
        return [self.time_column] if self.time_column else []

    @property
    def landing_columns(self) -> list[str]:
        """Columns a landing file must provide: the input columns, with the time's part columns
        in place of ``time_column`` when the time is spread over several."""
        if not self.time_parts:
            return self.input_columns
        parts = self.landing_time_columns
        return list(dict.fromkeys(p for c in self.input_columns for p in (parts if c == self.time_column else [c])))

    @property
    def unpadded_keys(self) -> list[str]:
        """The key columns whose digit-only values lose their leading zeros."""
        return list(self.keys) if self.key_leading_zeros == "strip" else []

    @property
    def row_id(self) -> str | None:
        """The scoring source's row id column, if it names one."""
        return self.scoring_source.row_id if self.scoring_source else None

    def source_columns(self, scoring: bool) -> list[str]:
        """The landing columns read from one source's files: the scoring source's row id too."""
        return [*self.landing_columns, self.row_id] if scoring and self.row_id else self.landing_columns

    def _check_row_id(self) -> None:
        if self.source.row_id:
            raise ValueError(
                "'source.row_id' is not read: a row id names the rows of 'scoring_source' (set it there), "
                "whose predictions carry it"
            )
        # header names match up to case and spaces, so 'STORE' would read the key column 'store'
        taken = {c.strip().casefold(): c for c in [*self.input_columns, *self.landing_columns]}
        if self.row_id and self.row_id.strip().casefold() in taken:
            raise ValueError(
                f"'scoring_source.row_id' {self.row_id!r} is the use case's column "
                f"{taken[self.row_id.strip().casefold()]!r} (a key, time, time part, feature or target): "
                "a row id is a column of its own, published as it is"
            )

    def _check_unpivot(self, unpivot: UnpivotSpec, scoring: bool) -> None:
        used = [c for c in self.landing_columns if not (scoring and c == self.target)]
        for role in ("name", "value"):
            column = getattr(unpivot, role)
            if column not in used:
                raise ValueError(
                    f"unpivot {role} {column!r} is none of the use case's columns ({', '.join(used)}): "
                    "name the key, time, target or feature column it holds"
                )

    def _check_time_parts(self) -> None:
        parts = self.time_parts or {}
        if not self.time_column:
            raise ValueError("'time_parts' needs a 'time_column': the name of the time the parts make")
        if self.time_format:
            raise ValueError("'time_parts' and 'time_format' exclude each other: the parts are read as numbers")
        if frozenset(parts) not in TIME_PART_SETS:
            sets = ", ".join("+".join(sorted(s, key=list(get_args(TimePart)).index)) for s in TIME_PART_SETS)
            raise ValueError(f"'time_parts' {sorted(parts)} make no time; use one of: {sets}")
        columns = list(parts.values())
        if len(set(columns)) != len(columns):
            raise ValueError(f"'time_parts' names a column twice: {columns}")
        taken = sorted(set(columns) & {*self.keys, *self.features, *self.categorical_features, self.target})
        if taken:
            raise ValueError(f"time part column(s) {taken} are also key, feature or target columns")


class RunSettings(_Strict):
    """How work is cut: keys per Dagster run and worker processes per run."""

    max_keys_per_run: int = Field(default=2000, gt=0)
    workers: int | None = Field(default=None, gt=0)


class PlatformConfig(_Strict):
    use_cases: dict[str, UseCaseSpec]
    run: RunSettings = Field(default_factory=RunSettings)
    source_file: str | None = None

    def use_case(self, name: str) -> UseCaseSpec:
        try:
            return self.use_cases[name]
        except KeyError:
            raise ConfigError(f"unknown use case {name!r}; known: {', '.join(sorted(self.use_cases))}") from None


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "use_cases.yaml"


def load_config(path: str | Path | None = None) -> PlatformConfig:
    """Read and validate a use-case file; errors name the file, the use case and the field."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read use-case file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, source=str(path))


def parse_config(raw: Any, source: str = "<config>") -> PlatformConfig:
    if not isinstance(raw, dict) or not isinstance(raw.get("use_cases"), dict) or not raw["use_cases"]:
        raise ConfigError(f"{source}: expected a mapping with a non-empty 'use_cases' mapping")
    use_cases = {}
    for name, body in raw["use_cases"].items():
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: use case {name!r}: expected a mapping")
        try:
            use_cases[name] = UseCaseSpec.model_validate({"name": name, **body})
        except ValidationError as exc:
            raise ConfigError(_describe(source, f"use case {name!r}", exc)) from None
    try:
        run = RunSettings.model_validate(raw.get("run") or {})
    except ValidationError as exc:
        raise ConfigError(_describe(source, "section 'run'", exc)) from None
    extra = sorted(set(raw) - {"use_cases", "run"})
    if extra:
        raise ConfigError(f"{source}: unknown top-level section(s) {extra}")
    return PlatformConfig(use_cases=use_cases, run=run, source_file=source)


# fields of a nested section written at the use case's level
_BELONGS_UNDER = {"row_id": "scoring_source", "csv": "source", "unpivot": "source", "threshold": "promotion"}


def _describe(source: str, where: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(whole entry)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and loc in _BELONGS_UNDER:
            msg += f": it belongs under '{_BELONGS_UNDER[loc]}'"
        lines.append(f"{source}: {where}, field '{loc}': {msg}")
    return "\n".join(lines)
