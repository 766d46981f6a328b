"""The naive many-models way, for the benchmark's side-by-side: one Dagster run per key and
a default ``mlflow.sklearn.log_model``. Reads the bronze data our pipeline already wrote."""

import os
from pathlib import Path

import mlflow
import mlflow.sklearn
from dagster import AssetExecutionContext, Definitions, DynamicPartitionsDefinition, asset

from many_models_platform.core import features as F
from many_models_platform.core.modeling import fit_key
from many_models_platform.core.spec import load_config
from many_models_platform.storage.lake import Lake

keys = DynamicPartitionsDefinition(name="naive_keys")


@asset(partitions_def=keys)
def naive_model(context: AssetExecutionContext) -> None:
    spec = load_config(os.environ["MMP_CONFIG"]).use_case("retail_demand")
    home = Path(os.environ["MMP_HOME"])
    lake = Lake(str(home / "lake"))
    bronze = lake.read_parquet(lake.key_path("bronze", spec.name, context.partition_key, ".parquet"))
    ts = F.build_training_set(spec, bronze)
    cols = [c for c in ts.columns if c not in (spec.time_column, spec.target, F.SPLIT)]
    fitted = fit_key(spec, ts, cols)
    mlflow.set_tracking_uri(f"sqlite:///{home / 'naive_mlflow.db'}")
    with mlflow.start_run():
        mlflow.log_metric(spec.metric, fitted.metrics[spec.metric])
        # MLflow 3's default skops format refuses LightGBM's types, so cloudpickle: the closest
        # default that works. Requirements are inferred, as by default.
        mlflow.sklearn.log_model(
            fitted.model,
            name="model",
            registered_model_name=f"naive.{context.partition_key}",
            serialization_format="cloudpickle",
        )


defs = Definitions(assets=[naive_model])
