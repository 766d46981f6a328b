"""MLflow registries: a *candidate* store that training writes, a *production* store that
only promotion writes.

Costs shape this module (see DESIGN.md): ``log_model`` with defaults takes seconds per
model, so workers write the MLflow model directory themselves from a template saved once
per process; registration goes through ``MlflowClient``; and the key -> version map is
resolved with a constant number of paginated searches, never one search per key.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import pickle
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import yaml

PRODUCTION_ALIAS = "production"
MODEL_FILE = "model.pkl"
_PINNED = ("scikit-learn", "lightgbm", "numpy", "scipy", "cloudpickle")


def registered_model_name(use_case: str, key: str) -> str:
    """``<use case>.<encoded key>``: use-case names are ``[a-z0-9_]`` and keys are encoded
    (``core.keys``), so distinct (use case, key) pairs never share a name."""
    return f"{use_case}.{key}"


@dataclass(frozen=True)
class ModelRef:
    key: str
    name: str
    version: int
    source: str
    tags: dict[str, str]


# --- worker side: no MLflow import --------------------------------------------------------
def write_model_dir(model: Any, dst: str, template_dir: str) -> None:
    """Write an MLflow sklearn-flavour model directory without importing MLflow."""
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(template_dir):
        if name not in ("MLmodel", MODEL_FILE):
            shutil.copyfile(os.path.join(template_dir, name), os.path.join(dst, name))
    with open(os.path.join(dst, MODEL_FILE), "wb") as f:
        pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)
    with open(os.path.join(template_dir, "MLmodel")) as f:
        mlmodel = yaml.safe_load(f)
    mlmodel["model_uuid"] = uuid.uuid4().hex
    mlmodel["utc_time_created"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    mlmodel["model_size_bytes"] = os.path.getsize(os.path.join(dst, MODEL_FILE))
    with open(os.path.join(dst, "MLmodel"), "w") as f:
        yaml.safe_dump(mlmodel, f, sort_keys=False)


def load_model_from_source(source: str) -> Any:
    """Load a registered model's estimator from its artifact location."""
    path = local_path(source)
    if path is not None:
        with open(os.path.join(path, MODEL_FILE), "rb") as f:
            return pickle.load(f)
    import mlflow.sklearn  # remote artifact store: let MLflow download it

    return mlflow.sklearn.load_model(source)


def local_path(uri: str) -> str | None:
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    if "://" not in uri:
        return uri
    return None


# --- main process -------------------------------------------------------------------------
@cache
def model_template_dir() -> str:
    """Save one tiny model with explicit requirements; workers copy its metadata files."""
    import mlflow.sklearn
    from sklearn.dummy import DummyRegressor

    path = Path(tempfile.mkdtemp(prefix="mmp-model-template-")) / "model"
    reqs = [f"{p}=={pkg_version(p)}" for p in _PINNED]
    # MLflow warns that pickle is unsafe (skops arrives with the registry issue) and that it
    # cannot find pip in a uv environment; neither says anything new on every run.
    quiet = [logging.getLogger(n) for n in ("mlflow.sklearn", "mlflow.utils.environment")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        mlflow.sklearn.save_model(DummyRegressor(), str(path), serialization_format="pickle", pip_requirements=reqs)
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    return str(path)


class ModelRegistry:
    """One MLflow registry (tracking + registry URI) with the few calls the platform needs."""

    def __init__(self, tracking_uri: str, artifact_root: str, role: str):
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.role = role
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    # experiments and runs: one MLflow run per stage run, holding every key's artifacts
    def experiment_id(self, use_case: str) -> str:
        name = f"mmp/{use_case}"
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = f"{self.artifact_root.rstrip('/')}/{self.role}/{use_case}"
        return self.client.create_experiment(name, artifact_location=location)

    def start_run(self, use_case: str, run_name: str, tags: dict[str, str]) -> tuple[str, str]:
        run = self.client.create_run(self.experiment_id(use_case), run_name=run_name, tags=tags)
        return run.info.run_id, run.info.artifact_uri

    def finish_run(self, run_id: str, metrics: dict[str, float], status: str = "FINISHED") -> None:
        from mlflow.entities import Metric

        now = int(dt.datetime.now().timestamp() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v == v]
        if items:
            self.client.log_batch(run_id, metrics=items)
        self.client.set_terminated(run_id, status=status)

    # registry
    def _names(self, use_case: str) -> dict[str, Any]:
        prefix = f"{use_case}."
        found, token = {}, None
        while True:
            page = self.client.search_registered_models(
                filter_string=f"name LIKE '{use_case}.%'", max_results=1000, page_token=token
            )
            found.update({m.name: m for m in page if m.name.startswith(prefix)})
            token = page.token
            if not token:
                return found

    def _versions(self, use_case: str) -> list[Any]:
        out, token = [], None
        while True:
            page = self.client.search_model_versions(
                filter_string=f"tags.use_case = '{use_case}'", max_results=200_000, page_token=token
            )
            out.extend(page)
            token = page.token
            if not token:
                return out

    def register(
        self, use_case: str, key: str, source: str, run_id: str | None, tags: dict[str, str], existing: set[str]
    ) -> int:
        name = registered_model_name(use_case, key)
        if name not in existing:
            self.client.create_registered_model(name, tags={"use_case": use_case, "key": key})
            existing.add(name)
        mv = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags)
        return int(mv.version)

    def existing_names(self, use_case: str) -> set[str]:
        return set(self._names(use_case))

    def latest_versions(self, use_case: str) -> dict[str, ModelRef]:
        """The newest version of every key: one paginated search for the whole use case."""
        latest: dict[str, ModelRef] = {}
        for mv in self._versions(use_case):
            key = mv.tags.get("key")
            if key and (key not in latest or int(mv.version) > latest[key].version):
                latest[key] = ModelRef(key, mv.name, int(mv.version), mv.source, dict(mv.tags))
        return latest

    def aliased_versions(self, use_case: str, alias: str = PRODUCTION_ALIAS) -> dict[str, ModelRef]:
        """key -> the version holding ``alias``, resolved once per run."""
        aliased = {
            name: int(m.aliases[alias]) for name, m in self._names(use_case).items() if alias in (m.aliases or {})
        }
        out: dict[str, ModelRef] = {}
        for mv in self._versions(use_case):
            if aliased.get(mv.name) == int(mv.version):
                key = mv.tags["key"]
                out[key] = ModelRef(key, mv.name, int(mv.version), mv.source, dict(mv.tags))
        return out

    def set_alias(self, use_case: str, key: str, version: int, alias: str = PRODUCTION_ALIAS) -> None:
        self.client.set_registered_model_alias(registered_model_name(use_case, key), alias, str(version))


def requirements_pins() -> list[str]:
    return [f"{p}=={pkg_version(p)}" for p in _PINNED]
