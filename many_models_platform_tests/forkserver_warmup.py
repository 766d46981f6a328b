"""Imported once by the fork server of ``test_trust_chain``'s crash test, before it forks the
processes it kills: what every child would otherwise pay again (MLflow's SQL stores and the
model template that ``mlflow.sklearn.save_model`` writes, seconds on a busy machine)."""

import mlflow.store.model_registry.sqlalchemy_store
import mlflow.store.tracking.sqlalchemy_store
import mlflow.tracking._model_registry.client  # noqa: F401

from many_models_platform.storage.registry import model_template_dir

model_template_dir()
